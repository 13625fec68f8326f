//! Starting and stopping a node: data directory checks, one pinned thread
//! per core with a single-threaded runtime, group tasks, apply threads for
//! groups with a state machine, the acceptor, the metrics endpoint and
//! signal handling.
//!
//! A fatal error (a group's log fails, a state machine fails, a core's task
//! panics) never exits the process: it is recorded once in [`Shared`], the
//! whole server is asked to stop, and [`Server::wait`] returns it.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dledger_engine::{BackendChoice, Log, LogConfig};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::apply::{guarded, ApplyProgress, ApplyWorker};
use crate::config::ServerConfig;
use crate::embed::GroupHandle;
use crate::error::Fatal;
use crate::group::ApplyFeed;
use crate::group::{GroupHost, GroupInput};
use crate::snapshot::SnapshotStore;
use crate::state_machine::{StateMachine, StateMachineError};
use crate::transport::{serve_connection, ConnContext, Links};
use dledger_proto::ServerError;

/// Why a server could not start: one line an operator can act on. Nothing
/// on disk is changed by a start that fails, except a new data directory's
/// `IDENTITY` file.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening address (or the metrics address) cannot be bound.
    #[error("cannot listen on {address}: {source}{hint}")]
    Listen {
        /// The address.
        address: String,
        /// The bind error.
        source: std::io::Error,
        /// What probably causes it.
        hint: &'static str,
    },
    /// The data directory was made by another node or cluster.
    #[error(
        "data directory {dir} belongs to {found}, not to node {node} of cluster {cluster:?}; refusing to touch it"
    )]
    ForeignDataDir {
        /// The directory.
        dir: PathBuf,
        /// Whose it is, from its `IDENTITY` file.
        found: String,
        /// This node.
        node: u64,
        /// This cluster.
        cluster: String,
    },
    /// The data directory cannot be used.
    #[error("data directory {dir}: {message}")]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// The data directory has not been created by a bootstrap (it is missing
    /// or empty): a new node of a new cluster starts with `dledger init` or
    /// `--bootstrap`; a node whose data was lost must not come back as the
    /// same voter.
    #[error(
        "data directory {dir} is missing or empty: this node has no state. For a new cluster, initialize it \
         (dledger init --config ..., or server --bootstrap); a node whose data was lost must not rejoin as the \
         same voter (it could vote twice in a term and lose acknowledged entries): replace it with a new member"
    )]
    NotInitialized {
        /// The directory.
        dir: PathBuf,
    },
    /// A group's directory that this node created is gone.
    #[error(
        "group {group}'s directory {dir} was created by this node and is gone or emptied: its votes and \
         acknowledged entries are lost, so the node must not rejoin as the same voter (restore it, or replace the node)"
    )]
    GroupLost {
        /// The group.
        group: u64,
        /// Its directory.
        dir: PathBuf,
    },
    /// A group's log cannot be opened (corrupt, unreadable).
    #[error("cannot open the log of group {group}: {source}")]
    Log {
        /// The group.
        group: u64,
        /// The engine's error.
        source: dledger_engine::Error,
    },
    /// A group cannot start from what its log holds.
    #[error("group {group}: {message}")]
    Group {
        /// The group.
        group: u64,
        /// Why.
        message: String,
    },
    /// A state machine was registered for a group the config does not have.
    #[error("a state machine is registered for group {group}, but the server has groups 0..{groups}")]
    NoSuchGroup {
        /// The group asked.
        group: u64,
        /// The groups configured.
        groups: u64,
    },
    /// A group's state machine could not be restored from its snapshot.
    #[error("group {group}: restoring the state machine: {error}")]
    Restore {
        /// The group.
        group: u64,
        /// The state machine's (or the snapshot file's) error.
        #[source]
        error: StateMachineError,
    },
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The peer secret cannot be used.
    #[error("{0}")]
    Secret(String),
    /// Threads or the async runtime could not be started.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// Why [`run`] returned: the server did not start, or it stopped on a fatal error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// It started and then stopped on this error.
    #[error(transparent)]
    Fatal(#[from] Fatal),
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

/// What every thread of a server shares: the stop flag, the group inboxes
/// (to wake them), and the first fatal error.
pub(crate) struct Shared {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) wake: Vec<mpsc::UnboundedSender<GroupInput>>,
    /// The first fatal error (a mutex, not a `OnceLock`, so that `wait` can
    /// take it out while other holders of `Shared` — a signal thread, a
    /// [`Stopper`] — are still alive).
    pub(crate) fatal: std::sync::Mutex<Option<Fatal>>,
    /// Set once, when the server is asked to stop (for [`Stopper::stopping`]).
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// Bytes of peer frames received, all cores (`dledger_peer_bytes_received_total`).
    pub(crate) peer_bytes_in: Arc<std::sync::atomic::AtomicU64>,
    /// Client connections open and refused, accept errors (all cores).
    pub(crate) conns: Arc<crate::transport::ConnCounters>,
    /// Groups of this node, and those whose log failed (isolated, see `run_group`).
    pub(crate) groups: usize,
    pub(crate) failed_groups: std::sync::atomic::AtomicUsize,
    /// This node's data-directory incarnation (sent in its hellos).
    pub(crate) incarnation: u64,
    /// The incarnations of the peers it has met.
    pub(crate) incarnations: Arc<crate::members::PeerIncarnations>,
}

impl Shared {
    /// Asks every group to finish what is in flight and stop.
    pub(crate) fn stop(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            self.stopping.send_replace(true);
            for w in &self.wake {
                let _ = w.send(GroupInput::Shutdown);
            }
        }
    }

    /// Records `fatal` (the first one wins) and stops the server.
    pub(crate) fn fail(&self, fatal: Fatal) {
        let mut first = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(fatal);
        }
        drop(first);
        self.stop();
    }
}

/// A running server: its groups serve peers and network clients on
/// [`local_addr`](Server::local_addr), and the application in its process
/// through [`GroupHandle`]s. Built by [`ServerBuilder`](crate::ServerBuilder)
/// (or [`start`] for a server without state machines).
pub struct Server {
    pub(crate) shared: Arc<Shared>,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
    pub(crate) local_addr: std::net::SocketAddr,
    pub(crate) handles: Vec<GroupHandle>,
}

impl Server {
    /// Where peers and network clients reach this server (the bound `listen`
    /// address, with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// The handle of group `group`, if the server has it.
    pub fn group(&self, group: u64) -> Option<GroupHandle> {
        self.handles.get(group as usize).cloned()
    }

    /// Every group's metrics in the Prometheus text format (what
    /// `metrics_listen` serves).
    pub async fn metrics(&self) -> String {
        let mut body = String::new();
        for h in &self.handles {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if h.inbox.send(GroupInput::Metrics(tx)).is_ok() {
                if let Ok(text) = rx.await {
                    body.push_str(&text);
                }
            }
        }
        body
    }

    /// Asks the server to stop: requests in flight get up to two seconds to
    /// commit, every log is synced, then the threads end. Returns at once;
    /// [`wait`](Server::wait) joins.
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Whether the server has stopped or is stopping (asked to, or on a fatal error).
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// A handle that stops the server or waits for it to stop, usable where
    /// the [`Server`] itself is not (a signal handler, an HTTP front's
    /// graceful shutdown).
    pub fn stopper(&self) -> Stopper {
        Stopper { shared: self.shared.clone() }
    }

    /// Blocks until every thread of the server has ended (after
    /// [`stop`](Server::stop), a signal under [`run`], or a fatal error);
    /// returns the fatal error that stopped it, if any. From async code, call
    /// it through `tokio::task::spawn_blocking`.
    pub fn wait(self) -> Result<(), Fatal> {
        for t in self.threads {
            let _ = t.join();
        }
        drop(self.handles);
        match self.shared.fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Stops a [`Server`], or waits until it is stopping; see [`Server::stopper`].
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
}

impl Stopper {
    /// Asks the server to stop (see [`Server::stop`]).
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Returns once the server is stopping: asked to, or on a fatal error.
    pub async fn stopping(&self) {
        let mut rx = self.shared.stopping.subscribe();
        // The sender lives in `shared`, which this handle keeps alive.
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Opens everything and starts the cores of a server without state machines
/// (a replicated log, as `dledger server` runs); returns once it serves.
pub fn start(cfg: ServerConfig) -> Result<Server, StartError> {
    start_with(cfg, Vec::new(), crate::identity::Creation::Never)
}

/// Opens everything, restores each state machine, starts the cores.
pub(crate) fn start_with(
    cfg: ServerConfig,
    machines: Vec<(u64, Box<dyn StateMachine>)>,
    creation: crate::identity::Creation,
) -> Result<Server, StartError> {
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
    let secret = match &cfg.peer_secret_file {
        Some(p) => Some(crate::auth::PeerSecret::load(p).map_err(StartError::Secret)?),
        None => {
            if !local_addr.ip().is_loopback() && cfg.peers.len() > 1 {
                tracing::warn!(%local_addr, "peers are not authenticated (no peer_secret_file) on a non-loopback address: anyone who reaches this port can act as a peer");
            }
            None
        }
    };
    let mut machines_by_group: HashMap<u64, Box<dyn StateMachine>> = HashMap::new();
    for (group, m) in machines {
        if group >= cfg.groups {
            return Err(StartError::NoSuchGroup { group, groups: cfg.groups });
        }
        machines_by_group.insert(group, m);
    }
    let identity = crate::identity::check(&cfg, creation)?;
    let incarnations = crate::members::PeerIncarnations::load(&cfg.data_dir)
        .map_err(|message| StartError::DataDir { dir: cfg.data_dir.clone(), message })?;
    let founding = if identity.joined {
        crate::group::Founding::Join
    } else {
        let peers = cfg.peers.iter().map(|p| (p.id, p.address.clone()));
        crate::group::Founding::Bootstrap(dledger_raft::Membership::bootstrap(peers))
    };
    let static_addresses: HashMap<u64, String> = cfg.peers.iter().map(|p| (p.id, p.address.clone())).collect();

    // Open every group's log and restore its core (and state machine) before serving anything.
    // A group that cannot be opened (a corrupt log, a lost vote record) is refused: alone when
    // the node has other groups (it then serves nothing and says why, see `group::serve_failed`),
    // with the whole start when it is the only one.
    let mut hosts = Vec::new();
    let mut workers = Vec::new();
    let mut first_failure = None;
    for group in 0..cfg.groups {
        let mut lc = LogConfig::new(crate::identity::group_dir(&cfg.data_dir, group));
        lc.segment_size_bytes = cfg.segment_mib << 20;
        lc.backend = backend;
        lc.max_batch_bytes = cfg.batch_bytes();
        let opened = Log::open(lc).map_err(|source| StartError::Log { group, source }).and_then(|log| {
            let dir = crate::identity::group_dir(&cfg.data_dir, group);
            let mut host = GroupHost::open(
                group,
                cfg.node_id,
                founding.clone(),
                cfg.addresses(),
                static_addresses.clone(),
                cfg.raft(),
                log,
                &dir,
            )
            .map_err(|message| StartError::Group { group, message })?;
            host.set_retention(cfg.retention.clone());
            host.set_max_read_bytes(cfg.max_read_bytes());
            if let Some(machine) = machines_by_group.remove(&group) {
                let (feed, worker, rx) = restore_state_machine(&cfg, group, machine)?;
                host.attach_state_machine(feed).map_err(|message| StartError::Group { group, message })?;
                workers.push((worker, rx));
            }
            Ok(host)
        });
        match opened {
            Ok(host) => hosts.push(Slot::Running(Box::new(host))),
            Err(e @ (StartError::Log { .. } | StartError::Group { .. })) if cfg.groups > 1 => {
                tracing::error!(group, error = %e, "group refused at start: it serves nothing until repaired; the node's other groups start");
                hosts.push(Slot::Failed { group, reason: e.to_string() });
                first_failure.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    let failed_at_start = hosts.iter().filter(|h| matches!(h, Slot::Failed { .. })).count();
    if failed_at_start == cfg.groups as usize {
        return Err(first_failure.expect("a failed group recorded its error"));
    }
    let incarnation = identity.incarnation;
    crate::identity::record_groups(&cfg, identity)?;
    // A core without a group would have nothing to run: never more cores than groups.
    let cores = cfg.cores().max(1).min(cfg.groups as usize);
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..cfg.groups {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(tx);
        receivers.push(Some(rx));
    }
    let shared = Arc::new(Shared {
        stop: Arc::new(AtomicBool::new(false)),
        wake: inboxes.clone(),
        fatal: std::sync::Mutex::new(None),
        stopping: tokio::sync::watch::Sender::new(false),
        peer_bytes_in: Default::default(),
        conns: Default::default(),
        groups: cfg.groups as usize,
        failed_groups: Default::default(),
        incarnation,
        incarnations: Arc::new(incarnations),
    });
    let handles: Vec<GroupHandle> = hosts
        .iter()
        .map(|slot| match slot {
            Slot::Running(h) => {
                GroupHandle::new(h.group, inboxes[h.group as usize].clone(), h.subscribe(), h.has_state_machine())
            }
            Slot::Failed { group, .. } => {
                let event = crate::GroupEvent {
                    group: *group,
                    role: dledger_raft::Role::Follower,
                    term: 0,
                    leader: None,
                    voters: cfg.voters(),
                };
                let (_, events) = tokio::sync::watch::channel(event);
                GroupHandle::new(*group, inboxes[*group as usize].clone(), events, false)
            }
        })
        .collect();
    let inboxes = Arc::new(inboxes);
    let mut threads = Vec::new();
    for (mut worker, rx) in workers {
        let s = shared.clone();
        worker.on_fatal = Arc::new(move |f| s.fail(f));
        worker.to_group = Some(inboxes[worker.group as usize].clone());
        let on_fatal = worker.on_fatal.clone();
        let group = worker.group;
        let t = std::thread::Builder::new().name(format!("dledger-apply-{group}")).spawn(move || {
            // The state machine's own panics are caught inside; this catches the
            // thread's invariant checks, which must stop the server, not only the thread.
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run(rx))) {
                let message = crate::apply::panic_message(&*p);
                on_fatal(Fatal::Core { core: usize::MAX, message: format!("group {group}: apply thread: {message}") });
            }
        });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => return Err(abandon_start(&shared, threads, e)),
        }
    }
    let mut conn_txs = Vec::new();
    let mut conn_rxs = Vec::new();
    for _ in 0..cores {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        conn_txs.push(tx);
        conn_rxs.push(Some(rx));
    }
    shared.failed_groups.store(failed_at_start, Ordering::SeqCst);
    let mut per_core: Vec<Vec<(Slot, mpsc::UnboundedReceiver<GroupInput>)>> = (0..cores).map(|_| Vec::new()).collect();
    for (g, host) in hosts.into_iter().enumerate() {
        per_core[g % cores].push((host, receivers[g].take().expect("one receiver per group")));
    }
    let mut listener = Some(listener);
    let mut metrics = metrics;
    for (core, groups) in per_core.into_iter().enumerate() {
        let cfg = cfg.clone();
        let core_shared = shared.clone();
        let secret = secret.clone();
        let inboxes = inboxes.clone();
        let conn_rx = conn_rxs[core].take().expect("one per core");
        let acceptor =
            if core == 0 { Some((listener.take().expect("listener"), conn_txs.clone(), metrics.take())) } else { None };
        let t = std::thread::Builder::new().name(format!("dledger-core-{core}")).spawn(move || {
            if let Some(cpu) = cfg.cpu_of(core) {
                pin_to_cpu(cpu);
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    core_shared.fail(Fatal::Core { core, message: format!("cannot start runtime: {e}") });
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run_core(core, cfg, groups, inboxes, conn_rx, acceptor, core_shared, secret));
        });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => return Err(abandon_start(&shared, threads, e)),
        }
    }
    tracing::info!(node = cfg.node_id, %local_addr, cores, groups = cfg.groups, "node started");
    Ok(Server { shared, threads, local_addr, handles })
}

/// A thread could not be spawned part-way through a start: stops and joins
/// the threads already running (they must not serve a half-started server).
fn abandon_start(shared: &Shared, threads: Vec<std::thread::JoinHandle<()>>, e: std::io::Error) -> StartError {
    shared.stop();
    for t in threads {
        let _ = t.join();
    }
    StartError::Runtime(format!("cannot spawn a thread: {e}"))
}

/// A group as the node starts it: running, or refused at start (with why).
enum Slot {
    Running(Box<GroupHost>),
    Failed { group: u64, reason: String },
}

/// Restores a group's state machine: the newest whole snapshot if it is
/// ahead of what the state machine reports durable, then the index to feed from.
#[allow(clippy::type_complexity)]
fn restore_state_machine(
    cfg: &ServerConfig,
    group: u64,
    mut machine: Box<dyn StateMachine>,
) -> Result<(ApplyFeed, ApplyWorker, crossbeam_channel::Receiver<crate::apply::ApplyMsg>), StartError> {
    let restore_err = |error: StateMachineError| StartError::Restore { group, error };
    let dir = cfg.data_dir.join("snapshots").join(format!("group-{group}"));
    let store = SnapshotStore::open(dir, cfg.snapshots_kept).map_err(|e| restore_err(e.into()))?;
    let own = guarded(|| Ok(machine.applied_index())).map_err(restore_err)?;
    let mut snapshot_index = 0;
    let newest = store.newest().map_err(|e| restore_err(e.into()))?;
    if let Some(snap) = &newest {
        snapshot_index = snap.index;
        if snap.index > own {
            let mut r = SnapshotStore::reader(snap).map_err(|e| restore_err(e.into()))?;
            guarded(|| machine.restore(&mut r)).map_err(restore_err)?;
            tracing::info!(group, index = snap.index, bytes = snap.len, "state machine restored from its snapshot");
        }
    }
    let from = own.max(snapshot_index);
    let progress = Arc::new(ApplyProgress::default());
    progress.applied.store(from, Ordering::Relaxed);
    progress.snapshot_index.store(snapshot_index, Ordering::Relaxed);
    // A fetch a restart interrupted goes on from the byte it reached.
    let partial = store.partial().map_err(|e| restore_err(e.into()))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let worker = ApplyWorker {
        group,
        machine,
        store,
        snapshot_every: cfg.snapshot_every_entries,
        snapshot_every_bytes: cfg.snapshot_every_mib << 20,
        progress: progress.clone(),
        on_fatal: Arc::new(|_| {}),
        newest,
        to_group: None,
    };
    let mut feed = ApplyFeed::new(tx, progress, from);
    feed.partial = partial;
    Ok((feed, worker, rx))
}

/// Runs a server without state machines until SIGTERM or SIGINT, then shuts
/// it down cleanly; returns the fatal error that stopped it, if one did.
pub fn run(cfg: ServerConfig) -> Result<(), RunError> {
    run_until_signal(start(cfg)?)
}

/// Waits for SIGTERM or SIGINT (or a fatal error), then stops `server` and joins it.
pub(crate) fn run_until_signal(server: Server) -> Result<(), RunError> {
    let shared = server.shared.clone();
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
            shared.stop();
        });
    });
    server.wait().map_err(RunError::Fatal)
}

type Acceptor = (TcpListener, Vec<mpsc::UnboundedSender<std::net::TcpStream>>, Option<TcpListener>);

#[allow(clippy::too_many_arguments)]
async fn run_core(
    core: usize,
    cfg: ServerConfig,
    groups: Vec<(Slot, mpsc::UnboundedReceiver<GroupInput>)>,
    inboxes: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>,
    mut conn_rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
    acceptor: Option<Acceptor>,
    shared: Arc<Shared>,
    secret: Option<crate::auth::PeerSecret>,
) {
    let stop = shared.stop.clone();
    let limits = crate::transport::PeerLimits {
        max_entry_bytes: cfg.batch_bytes() as u64,
        max_frame_bytes: cfg.max_frame_mib << 20,
        producer_expiry_ms: cfg.producer_expiry_secs.saturating_mul(1000),
        max_producers: cfg.max_producers as u64,
    };
    // This core's links to other nodes, opened as its groups first send to them.
    let links = Rc::new(Links::new(crate::transport::LinkParams {
        me: cfg.node_id,
        incarnation: shared.incarnation,
        cluster: cfg.cluster.clone(),
        secret: secret.clone(),
        limits,
        stop: stop.clone(),
    }));
    let ctx = Rc::new(ConnContext {
        me: cfg.node_id,
        cluster: cfg.cluster.clone(),
        groups: inboxes.clone(),
        max_frame_bytes: (cfg.max_frame_mib << 20) as usize,
        stopping: stop.clone(),
        max_entry_bytes: cfg.batch_bytes(),
        incarnations: shared.incarnations.clone(),
        secret,
        limits,
        peer_bytes_in: shared.peer_bytes_in.clone(),
        conns: shared.conns.clone(),
        max_clients: cfg.max_client_connections,
        max_read_bytes: cfg.max_read_bytes(),
        client_idle: (cfg.client_idle_timeout_secs > 0).then(|| Duration::from_secs(cfg.client_idle_timeout_secs)),
    });
    if let Some((listener, conn_txs, metrics)) = acceptor {
        tokio::task::spawn_local(accept_loop(listener, conn_txs, stop.clone(), shared.conns.clone()));
        if let Some(m) = metrics {
            let counters = (shared.peer_bytes_in.clone(), shared.conns.clone());
            tokio::task::spawn_local(metrics_loop(m, inboxes.clone(), stop.clone(), counters));
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
    for (slot, mut inbox) in groups {
        let host = match slot {
            Slot::Running(host) => *host,
            Slot::Failed { group, reason } => {
                let node = cfg.node_id;
                tasks.push(tokio::task::spawn_local(async move {
                    crate::group::serve_failed(group, node, reason, &mut inbox).await;
                }));
                continue;
            }
        };
        let group = tokio::task::spawn_local(run_group(host, inbox, links.clone(), cfg.tick_ms, shared.clone()));
        // Each group is watched on its own: a panic stops the server at once, not
        // when the groups before it on this core happen to end.
        let shared = shared.clone();
        tasks.push(tokio::task::spawn_local(async move {
            if let Err(e) = group.await {
                // A group that panicked is a replica lost: stop the server loudly, as for a disk failure.
                tracing::error!(core, error = %e, "a group task failed; the server stops");
                shared.fail(Fatal::Core { core, message: format!("group task failed: {e}") });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tracing::debug!(core, "core finished");
}

async fn accept_loop(
    listener: TcpListener,
    cores: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    stop: Arc<AtomicBool>,
    counters: Arc<crate::transport::ConnCounters>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    let mut next = 0usize;
    let mut last_warned: Option<Instant> = None;
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
            Err(e) => {
                // Out of descriptors (or memory), the pending connection stays queued and
                // accept fails again at once: pause instead of spinning, and say so once
                // in a while, not once per attempt. Peers already connected go on.
                counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "accept failed (out of file descriptors?); pausing new connections");
                    last_warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves `GET /metrics` (any path, really) in the Prometheus text format.
async fn metrics_loop(
    listener: TcpListener,
    groups: Arc<Vec<mpsc::UnboundedSender<GroupInput>>>,
    stop: Arc<AtomicBool>,
    counters: (Arc<std::sync::atomic::AtomicU64>, Arc<crate::transport::ConnCounters>),
) {
    let (peer_bytes_in, conns) = counters;
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    while !stop.load(Ordering::Relaxed) {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let Ok((mut s, _)) = accepted else { continue };
        let groups = groups.clone();
        let peer_bytes = peer_bytes_in.load(Ordering::Relaxed);
        let node_lines = conns.render();
        tokio::task::spawn_local(async move {
            let mut req = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut req)).await;
            let mut body = format!("dledger_peer_bytes_received_total {peer_bytes}\n{node_lines}");
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
        Some(GroupInput::Snapshot { from, message }) => host.on_snapshot_message(from, message),
        Some(GroupInput::Installer(event)) => host.on_install_event(event),
        Some(GroupInput::Client { id, request, reply }) => {
            if stopping_since.is_some() {
                let response = dledger_proto::Response::Error(ServerError::ShuttingDown);
                let _ = reply.send(dledger_proto::Frame::Response { id, response });
                Ok(())
            } else {
                host.on_client(id, request, reply)
            }
        }
        Some(GroupInput::Local(request)) => {
            if stopping_since.is_some() {
                crate::group::refuse_local(request, ServerError::ShuttingDown);
                Ok(())
            } else {
                host.on_local(request)
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

/// Answers a request that reached a stopped group.
fn answer_stopped(input: GroupInput) {
    match input {
        GroupInput::Client { id, reply, .. } => {
            let response = dledger_proto::Response::Error(ServerError::ShuttingDown);
            let _ = reply.send(dledger_proto::Frame::Response { id, response });
        }
        GroupInput::Local(r) => crate::group::refuse_local(r, ServerError::ShuttingDown),
        GroupInput::Raft(_)
        | GroupInput::Snapshot { .. }
        | GroupInput::Installer(_)
        | GroupInput::Metrics(_)
        | GroupInput::Shutdown => {}
    }
}

/// How long a stopping group waits for requests in flight to commit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

async fn run_group(
    mut host: GroupHost,
    mut inbox: mpsc::UnboundedReceiver<GroupInput>,
    links: Rc<Links>,
    tick_ms: u64,
    shared: Arc<Shared>,
) {
    let group = host.group;
    // SAFETY: the eventfd belongs to the log inside `host`, which outlives `efd` (declared
    // later, dropped first) and never closes or replaces the fd while open.
    let efd = match unsafe { AsyncFd::register_with_interest(Fd(host.eventfd()), tokio::io::Interest::READABLE) } {
        Ok(f) => f,
        Err(e) => {
            let message = format!("group {group}: cannot watch the log's eventfd: {}", e.into_parts().1);
            shared.fail(Fatal::Core { core: usize::MAX, message });
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
            let reason = e.to_string();
            host.fail_all(ServerError::Internal(reason.clone()));
            let failed = shared.failed_groups.fetch_add(1, Ordering::SeqCst) + 1;
            if failed >= shared.groups {
                tracing::error!(group, error = %e, "log failed; the node stops so that a restart recovers it");
                // The log is broken: no final sync; the other groups stop cleanly.
                shared.fail(Fatal::Log(e));
                inbox.close();
                while let Ok(input) = inbox.try_recv() {
                    answer_stopped(input);
                }
                return;
            }
            // Other groups are healthy: this one stops serving (no vote, no ack, no
            // read: nothing of a broken log reaches anyone) and says why; they go on.
            tracing::error!(
                group,
                error = %e,
                failed,
                groups = shared.groups,
                "group failed: it stops serving until the node restarts (which recovers it from its files); the \
                 node's other groups go on"
            );
            // (A node already stopping has sent its one Shutdown: nothing to wait for.)
            if stopping_since.is_none() && !shared.stop.load(Ordering::SeqCst) {
                crate::group::serve_failed(group, host.node(), reason, &mut inbox).await;
            }
            return;
        }
        // Wake only the writers that got something: an idle link costs no syscall.
        // The address is borrowed from the configuration: nothing allocated per message.
        let mut outbox = std::mem::take(&mut host.outbox);
        for (to, g, m) in outbox.drain(..) {
            match host.peer_address(to) {
                Some(address) => links.link(to, address).push(g, m),
                None => tracing::debug!(group, to, "no address known for a peer; message dropped"),
            }
        }
        host.outbox = outbox; // its capacity, for the next turn
        links.wake_queued();
        if let Some(since) = stopping_since {
            if !host.has_pending() || since.elapsed() > SHUTDOWN_GRACE {
                if let Err(e) = host.sync() {
                    tracing::error!(group, error = %e, "final sync failed");
                    shared.fail(Fatal::Log(e));
                }
                host.fail_all(ServerError::ShuttingDown);
                // Whatever is still queued gets an answer too.
                inbox.close();
                while let Ok(input) = inbox.try_recv() {
                    answer_stopped(input);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A start that fails part-way stops and joins what it had started.
    #[test]
    fn an_abandoned_start_stops_and_joins_the_threads_it_started() {
        let shared = Arc::new(Shared {
            stop: Arc::new(AtomicBool::new(false)),
            wake: Vec::new(),
            fatal: std::sync::Mutex::new(None),
            stopping: tokio::sync::watch::Sender::new(false),
            peer_bytes_in: Default::default(),
            conns: Default::default(),
            groups: 1,
            failed_groups: Default::default(),
            incarnation: 1,
            incarnations: Arc::new(
                crate::members::PeerIncarnations::load(std::path::Path::new("/nonexistent")).unwrap(),
            ),
        });
        let mut rx = shared.stopping.subscribe();
        let running = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let _ = rx.wait_for(|stopping| *stopping).await;
            });
        });
        let e = abandon_start(&shared, vec![running], std::io::Error::other("no more threads"));
        assert!(e.to_string().contains("cannot spawn a thread: no more threads"), "{e}");
        assert!(shared.stop.load(Ordering::SeqCst));
    }
}
