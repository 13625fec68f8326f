//! Starting and stopping a node: data directory checks, one pinned thread
//! per core with a single-threaded runtime, group tasks, the acceptor, the
//! metrics endpoint and signal handling.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dledger_engine::{BackendChoice, Log, LogConfig};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::ServerConfig;
use crate::group::{GroupHost, GroupInput};
use crate::transport::{peer_writer, serve_connection, ConnContext, PeerLink};
use dledger_proto::ServerError;

/// Why a node could not start: one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}{hint}")]
    Listen { address: String, source: std::io::Error, hint: &'static str },
    #[error(
        "data directory {dir} belongs to {found}, not to node {node} of cluster {cluster:?}; refusing to touch it"
    )]
    ForeignDataDir { dir: PathBuf, found: String, node: u64, cluster: String },
    #[error("data directory {dir}: {message}")]
    DataDir { dir: PathBuf, message: String },
    #[error("cannot open the log of group {group}: {source}")]
    Log { group: u64, source: dledger_engine::Error },
    #[error("group {group}: {message}")]
    Group { group: u64, message: String },
    #[error("runtime: {0}")]
    Runtime(String),
}

const IDENTITY_FILE: &str = "IDENTITY";

/// Checks (or, for a new directory, records) which node and cluster own `dir`.
/// Nothing is written unless the directory is new.
pub fn check_identity(dir: &Path, node: u64, cluster: &str) -> Result<(), StartError> {
    let want = format!("cluster={cluster}\nnode={node}\n");
    let path = dir.join(IDENTITY_FILE);
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir { dir: dir.into(), message: e.to_string() })?;
    }
    match std::fs::read_to_string(&path) {
        Ok(found) if found == want => Ok(()),
        Ok(found) => Err(StartError::ForeignDataDir {
            dir: dir.into(),
            found: found.trim().replace('\n', ", "),
            node,
            cluster: cluster.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let non_empty = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
            if non_empty {
                return Err(StartError::DataDir {
                    dir: dir.into(),
                    message: "not empty and has no IDENTITY file (not a dledger data directory?)".into(),
                });
            }
            let err = |e: std::io::Error| StartError::DataDir { dir: dir.into(), message: e.to_string() };
            std::fs::create_dir_all(dir).map_err(err)?;
            let tmp = dir.join("IDENTITY.tmp");
            std::fs::write(&tmp, &want).map_err(err)?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
            std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(err)?;
            Ok(())
        }
        Err(e) => Err(StartError::DataDir { dir: dir.into(), message: e.to_string() }),
    }
}

struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin core thread");
        }
    }
}

/// A started node. `stop` asks it to shut down; `wait` joins it.
pub struct Node {
    stop: Arc<AtomicBool>,
    wake: Vec<mpsc::UnboundedSender<GroupInput>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub local_addr: std::net::SocketAddr,
    fatal: Arc<std::sync::OnceLock<String>>,
}

impl Node {
    /// Stops accepting requests, lets in-flight ones finish (bounded), syncs, exits.
    pub fn stop(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            for w in &self.wake {
                let _ = w.send(GroupInput::Shutdown);
            }
        }
    }

    /// Waits until every core has finished; returns the fatal error that stopped it, if any.
    pub fn wait(self) -> Result<(), String> {
        for t in self.threads {
            let _ = t.join();
        }
        match self.fatal.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// Opens everything and starts the cores; returns once the node serves.
pub fn start(cfg: ServerConfig) -> Result<Node, StartError> {
    // Ports first: a node that cannot listen must not create or change anything on disk.
    let listener = TcpListener::bind(&cfg.listen).map_err(|source| StartError::Listen {
        address: cfg.listen.clone(),
        hint: if source.kind() == std::io::ErrorKind::AddrInUse { " (another process has this port)" } else { "" },
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Runtime(e.to_string()))?;
    listener.set_nonblocking(true).map_err(|e| StartError::Runtime(e.to_string()))?;
    let metrics = match &cfg.metrics_listen {
        Some(a) => {
            let l = TcpListener::bind(a).map_err(|source| StartError::Listen {
                address: a.clone(),
                hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (another process has this port)"
                } else {
                    ""
                },
                source,
            })?;
            l.set_nonblocking(true).map_err(|e| StartError::Runtime(e.to_string()))?;
            Some(l)
        }
        None => None,
    };
    let backend: BackendChoice = cfg.backend.as_deref().unwrap_or("auto").parse().map_err(StartError::Runtime)?;
    check_identity(&cfg.data_dir, cfg.node_id, &cfg.cluster)?;

    // Open every group's log and restore its core before serving anything.
    let mut hosts = Vec::new();
    for group in 0..cfg.groups {
        let mut lc = LogConfig::new(cfg.data_dir.join(format!("group-{group}")));
        lc.segment_size_bytes = cfg.segment_mib << 20;
        lc.backend = backend;
        lc.max_batch_bytes = cfg.batch_bytes();
        let log = Log::open(lc).map_err(|source| StartError::Log { group, source })?;
        let host = GroupHost::open(group, cfg.node_id, cfg.voters(), cfg.addresses(), cfg.raft(), log)
            .map_err(|message| StartError::Group { group, message })?;
        hosts.push(host);
    }
    // A core without a group would have nothing to run: never more cores than groups.
    let cores = cfg.cores().max(1).min(cfg.groups as usize);
    let stop = Arc::new(AtomicBool::new(false));
    let fatal = Arc::new(std::sync::OnceLock::new());
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..cfg.groups {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(tx);
        receivers.push(Some(rx));
    }
    let inboxes = Arc::new(inboxes);
    let mut conn_txs = Vec::new();
    let mut conn_rxs = Vec::new();
    for _ in 0..cores {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        conn_txs.push(tx);
        conn_rxs.push(Some(rx));
    }
    let mut per_core: Vec<Vec<(GroupHost, mpsc::UnboundedReceiver<GroupInput>)>> =
        (0..cores).map(|_| Vec::new()).collect();
    for (g, host) in hosts.into_iter().enumerate() {
        per_core[g % cores].push((host, receivers[g].take().expect("one receiver per group")));
    }
    let mut listener = Some(listener);
    let mut metrics = metrics;
    let mut threads = Vec::new();
    for (core, groups) in per_core.into_iter().enumerate() {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let fatal = fatal.clone();
        let inboxes = inboxes.clone();
        let conn_rx = conn_rxs[core].take().expect("one per core");
        let acceptor =
            if core == 0 { Some((listener.take().expect("listener"), conn_txs.clone(), metrics.take())) } else { None };
        let t = std::thread::Builder::new()
            .name(format!("dledger-core-{core}"))
            .spawn(move || {
                if let Some(cpu) = cfg.cpu_of(core) {
                    pin_to_cpu(cpu);
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = fatal.set(format!("core {core}: cannot start runtime: {e}"));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run_core(core, cfg, groups, inboxes, conn_rx, acceptor, stop, fatal));
            })
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        threads.push(t);
    }
    tracing::info!(node = cfg.node_id, %local_addr, cores, groups = cfg.groups, "node started");
    Ok(Node { stop, wake: inboxes.iter().cloned().collect(), threads, local_addr, fatal })
}

/// Runs a node until SIGTERM or SIGINT, then shuts it down cleanly.
pub fn run(cfg: ServerConfig) -> Result<(), StartError> {
    let node = start(cfg)?;
    let stop = node.stop.clone();
    let wake = node.wake.clone();
    // A small thread turns signals into a stop request.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received; shutting down");
            if !stop.swap(true, Ordering::SeqCst) {
                for w in &wake {
                    let _ = w.send(GroupInput::Shutdown);
                }
            }
        });
    });
    node.wait().map_err(StartError::Runtime)
}

type Acceptor = (TcpListener, Vec<mpsc::UnboundedSender<std::net::TcpStream>>, Option<TcpListener>);

#[allow(clippy::too_many_arguments)]
async fn run_core(
    core: usize,
    cfg: ServerConfig,
    groups: Vec<(GroupHost, mpsc::UnboundedReceiver<GroupInput>)>,
    inboxes: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>,
    mut conn_rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
    acceptor: Option<Acceptor>,
    stop: Arc<AtomicBool>,
    fatal: Arc<std::sync::OnceLock<String>>,
) {
    // This core's links to every other node.
    let mut links: HashMap<u64, Rc<PeerLink>> = HashMap::new();
    for p in cfg.peers.iter().filter(|p| p.id != cfg.node_id) {
        let link = Rc::new(PeerLink::default());
        tokio::task::spawn_local(peer_writer(
            link.clone(),
            cfg.node_id,
            cfg.cluster.clone(),
            p.address.clone(),
            stop.clone(),
        ));
        links.insert(p.id, link);
    }
    let links = Rc::new(links);
    let ctx = Rc::new(ConnContext {
        me: cfg.node_id,
        cluster: cfg.cluster.clone(),
        groups: inboxes.clone(),
        max_frame_bytes: (cfg.max_frame_mib << 20) as usize,
        stopping: stop.clone(),
    });
    if let Some((listener, conn_txs, metrics)) = acceptor {
        tokio::task::spawn_local(accept_loop(listener, conn_txs, stop.clone()));
        if let Some(m) = metrics {
            tokio::task::spawn_local(metrics_loop(m, inboxes.clone(), stop.clone()));
        }
    }
    let conn_ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        while let Some(s) = conn_rx.recv().await {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(s) = tokio::net::TcpStream::from_std(s) {
                tokio::task::spawn_local(serve_connection(s, conn_ctx.clone()));
            }
        }
    });
    let mut tasks = Vec::new();
    for (host, inbox) in groups {
        tasks.push(tokio::task::spawn_local(run_group(host, inbox, links.clone(), cfg.tick_ms, fatal.clone())));
    }
    for t in tasks {
        if let Err(e) = t.await {
            // A group that panicked is a replica lost: stop the node loudly, as for a disk failure.
            tracing::error!(core, error = %e, "a group task failed; the node stops");
            let _ = fatal.set(format!("core {core}: group task failed: {e}"));
            std::process::exit(70);
        }
    }
    tracing::debug!(core, "core finished");
}

async fn accept_loop(
    listener: TcpListener,
    cores: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        match accepted {
            Ok((s, _)) => {
                let Ok(std_stream) = s.into_std() else { continue };
                let _ = cores[next % cores.len()].send(std_stream);
                next += 1;
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}

/// Serves `GET /metrics` (any path, really) in the Prometheus text format.
async fn metrics_loop(
    listener: TcpListener,
    groups: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    while !stop.load(Ordering::Relaxed) {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let Ok((mut s, _)) = accepted else { continue };
        let groups = groups.clone();
        tokio::task::spawn_local(async move {
            let mut req = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut req)).await;
            let mut body = String::new();
            for g in groups.iter() {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if g.send(GroupInput::Metrics(tx)).is_ok() {
                    if let Ok(text) = rx.await {
                        body.push_str(&text);
                    }
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

/// Inputs one group handles in a turn beyond the one that woke it.
const MAX_INPUTS_PER_TURN: usize = 256;

fn handle_input(
    host: &mut GroupHost,
    input: Option<GroupInput>,
    stopping_since: &mut Option<Instant>,
) -> Result<(), crate::group::GroupFatal> {
    match input {
        Some(GroupInput::Raft(m)) => host.on_message(m),
        Some(GroupInput::Client { id, request, reply }) => {
            if stopping_since.is_some() {
                let response = dledger_proto::Response::Error(ServerError::ShuttingDown);
                let _ = reply.send(dledger_proto::Frame::Response { id, response });
                Ok(())
            } else {
                host.on_client(id, request, reply)
            }
        }
        Some(GroupInput::Metrics(tx)) => {
            let mut s = String::new();
            host.render_metrics(&mut s);
            let _ = tx.send(s);
            Ok(())
        }
        Some(GroupInput::Shutdown) | None => {
            stopping_since.get_or_insert_with(Instant::now);
            Ok(())
        }
    }
}

/// How long a stopping group waits for requests in flight to commit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

async fn run_group(
    mut host: GroupHost,
    mut inbox: mpsc::UnboundedReceiver<GroupInput>,
    links: Rc<HashMap<u64, Rc<PeerLink>>>,
    tick_ms: u64,
    fatal: Arc<std::sync::OnceLock<String>>,
) {
    let group = host.group;
    // SAFETY: the eventfd belongs to the log inside `host`, which outlives `efd` (declared
    // later, dropped first) and never closes or replaces the fd while open.
    let efd = match unsafe { AsyncFd::register_with_interest(Fd(host.eventfd()), tokio::io::Interest::READABLE) } {
        Ok(f) => f,
        Err(e) => {
            let _ = fatal.set(format!("group {group}: cannot watch the log's eventfd: {}", e.into_parts().1));
            return;
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(tick_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut stopping_since: Option<Instant> = None;
    loop {
        let r = tokio::select! {
            biased;
            // Ticks first: the core must see time pass before anything that arrived after it.
            _ = ticker.tick() => host.tick(),
            ready = efd.readable() => {
                if let Ok(mut g) = ready {
                    g.clear_ready();
                }
                host.on_storage_ready()
            }
            input = inbox.recv() => {
                let mut r = handle_input(&mut host, input, &mut stopping_since);
                // Take what else has arrived, so that one turn (one engine batch, one
                // message per peer) serves many requests; bounded, so ticks keep time.
                for _ in 0..MAX_INPUTS_PER_TURN {
                    let Ok(input) = inbox.try_recv() else { break };
                    r = r.and_then(|()| handle_input(&mut host, Some(input), &mut stopping_since));
                }
                r
            }
        };
        // End of the turn: one engine batch, one wake-up per peer.
        let r = r.and_then(|()| host.flush());
        if let Err(e) = r {
            tracing::error!(group, error = %e, "log failed; the node stops so that a restart recovers it");
            let _ = fatal.set(e.to_string());
            host.fail_all(ServerError::Internal(e.to_string()));
            std::process::exit(70);
        }
        // Wake only the writers that got something: an idle link costs no syscall.
        for (to, g, m) in host.outbox.drain(..) {
            if let Some(l) = links.get(&to) {
                l.push(g, m);
            }
        }
        for l in links.values() {
            if l.has_queued() {
                l.wake();
            }
        }
        if let Some(since) = stopping_since {
            if !host.has_pending() || since.elapsed() > SHUTDOWN_GRACE {
                if let Err(e) = host.sync() {
                    tracing::error!(group, error = %e, "final sync failed");
                }
                host.fail_all(ServerError::ShuttingDown);
                // Whatever is still queued gets an answer too.
                inbox.close();
                while let Ok(input) = inbox.try_recv() {
                    if let GroupInput::Client { id, reply, .. } = input {
                        let response = dledger_proto::Response::Error(ServerError::ShuttingDown);
                        let _ = reply.send(dledger_proto::Frame::Response { id, response });
                    }
                }
                tracing::info!(group, "group stopped");
                // Let the connection writers send the last answers.
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
                return;
            }
        }
    }
}
