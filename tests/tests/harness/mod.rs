//! Real `dledger` processes on 127.0.0.1 for integration and fault tests.
//!
//! Ports are free ones below the kernel's ephemeral range (see
//! `dledger::ports`: port 0 then release races with outgoing
//! connections), data
//! lives in a temporary directory, every wait polls with a deadline and says
//! what it waited for, and dropping a [`Cluster`] kills its processes.

#![allow(dead_code)]

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dledger_client::Client;
use dledger_proto::GroupStatus;

pub fn dledger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dledger-under-test"))
}

/// Free ports below the ephemeral range (see `dledger::ports`).
pub fn free_ports(n: usize) -> Vec<u16> {
    dledger::ports::free_ports(n).expect("free ports")
}

/// A cluster secret for the nodes of one test (peers authenticate with it).
pub fn write_secret(dir: &Path) -> PathBuf {
    let p = dir.join("peer.secret");
    let bytes: [u8; 16] = rand::random();
    std::fs::write(&p, bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
    p
}

/// Polls `f` until it returns `Some`, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await; // poll interval
    }
}

pub struct NodeProc {
    pub id: u64,
    pub endpoint: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Starts so far; the first one bootstraps (or joins, for a node added later).
    pub starts: u64,
    /// Added to a running cluster: its first start is `--join`.
    pub joins: bool,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub groups: u64,
    /// With `start_proxied`: the proxy carrying (from → to).
    pub proxies: std::collections::HashMap<(u64, u64), proxy::Proxy>,
    /// Starts of each node so far (index id - 1): a restarted node's volatile
    /// commit index begins again at 0, so samples are compared per run.
    pub runs: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>>,
    /// Extra arguments of every `dledger server` (a built-in state machine).
    pub server_args: Vec<String>,
}

impl Cluster {
    /// Writes configs for `n` nodes hosting `groups` groups on `cores` cores each, and starts them.
    pub fn start(n: usize, groups: u64, cores: usize) -> Cluster {
        Self::start_with(n, groups, cores, "segment_mib = 8\n")
    }

    /// `start` with extra TOML lines (which must not repeat the harness's own keys).
    pub fn start_with_config(n: usize, groups: u64, extra: &str) -> Cluster {
        Self::start_with(n, groups, 1, extra)
    }

    /// `start`, with peers not authenticated (no `peer_secret_file`).
    pub fn start_unauthenticated(n: usize, groups: u64) -> Cluster {
        Self::start_inner(n, groups, 1, "segment_mib = 8\n", false, &[])
    }

    fn start_with(n: usize, groups: u64, cores: usize, extra: &str) -> Cluster {
        Self::start_inner(n, groups, cores, extra, true, &[])
    }

    /// `start_with_config`, every node running the built-in state machine `machine`.
    pub fn start_with_state_machine(n: usize, groups: u64, extra: &str, machine: &str) -> Cluster {
        Self::start_inner(n, groups, 1, extra, true, &["--state-machine", machine])
    }

    /// Starts a cluster and waits until every node listens. A port taken by
    /// someone else between `free_ports` and the node's bind (a node then exits
    /// with "Address already in use" and the cluster runs a node short) is
    /// retried with fresh ports; any other failure to start is a test failure.
    fn start_inner(n: usize, groups: u64, cores: usize, extra: &str, authenticated: bool, args: &[&str]) -> Cluster {
        for attempt in 1.. {
            let mut c = Self::try_start(n, groups, cores, extra, authenticated, args);
            match c.wait_all_listening() {
                Ok(()) => return c,
                Err(log) if log.contains("Address already in use") && attempt < 3 => {
                    eprintln!("a port was taken under the cluster; starting again with fresh ports: {log}");
                }
                Err(log) => panic!("a node did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Polls until every node accepts connections; the log of one that exited instead.
    fn wait_all_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut up = 0;
            for n in &mut self.nodes {
                if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    return Err(format!(
                        "node {} exited ({status}): {}",
                        n.id,
                        std::fs::read_to_string(&n.log).unwrap_or_default()
                    ));
                }
                // Connect and close at once: the node sees a clean end of stream and says nothing.
                if std::net::TcpStream::connect(&n.endpoint).is_ok() {
                    up += 1;
                }
            }
            if up == self.nodes.len() {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "nodes did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    fn try_start(n: usize, groups: u64, cores: usize, extra: &str, authenticated: bool, args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(n);
        let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let peers: String = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| format!("[[peers]]\nid = {}\naddress = \"{e}\"\n", i + 1))
            .collect();
        let mut nodes = Vec::new();
        let secret = if authenticated {
            format!("peer_secret_file = \"{}\"\n", write_secret(dir.path()).display())
        } else {
            String::new()
        };
        for (i, ep) in endpoints.iter().enumerate() {
            let id = i as u64 + 1;
            let config = dir.path().join(format!("n{id}.toml"));
            let text = format!(
                "node_id = {id}\nlisten = \"{ep}\"\ndata_dir = \"{}\"\ngroups = {groups}\ncores = {cores}\ncpus = []\n{secret}{extra}\n{peers}",
                dir.path().join(format!("n{id}")).display(),
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(NodeProc {
                id,
                endpoint: ep.clone(),
                config,
                log: dir.path().join(format!("n{id}.log")),
                child: None,
                starts: 0,
                joins: false,
            });
        }
        let runs = std::sync::Arc::new((0..n).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
        let server_args = args.iter().map(|a| a.to_string()).collect();
        let mut c = Cluster { dir, nodes, groups, proxies: Default::default(), runs, server_args };
        for id in 1..=n as u64 {
            c.start_node(id);
        }
        c
    }

    /// Like `start`, but every node reaches every other through a [`proxy::Proxy`]
    /// the test controls (clients still use the real ports).
    pub async fn start_proxied(n: usize, groups: u64, extra_config: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(n);
        let real: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut proxies = std::collections::HashMap::new();
        for a in 1..=n as u64 {
            for b in 1..=n as u64 {
                if a != b {
                    proxies.insert((a, b), proxy::Proxy::start(real[b as usize - 1].clone()).await);
                }
            }
        }
        let mut nodes = Vec::new();
        let secret = write_secret(dir.path());
        for a in 1..=n as u64 {
            let mut peers = String::new();
            for b in 1..=n as u64 {
                let r = &real[b as usize - 1];
                if a == b {
                    peers.push_str(&format!("[[peers]]\nid = {b}\naddress = \"{r}\"\n"));
                } else {
                    let p = proxies[&(a, b)].port;
                    peers.push_str(&format!(
                        "[[peers]]\nid = {b}\naddress = \"127.0.0.1:{p}\"\nclient_address = \"{r}\"\n"
                    ));
                }
            }
            let config = dir.path().join(format!("n{a}.toml"));
            let text = format!(
                "node_id = {a}\nlisten = \"{}\"\ndata_dir = \"{}\"\ngroups = {groups}\ncores = 1\ncpus = []\nsegment_mib = 8\npeer_secret_file = \"{}\"\n{extra_config}\n{peers}",
                real[a as usize - 1],
                dir.path().join(format!("n{a}")).display(),
                secret.display()
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(NodeProc {
                id: a,
                endpoint: real[a as usize - 1].clone(),
                config,
                log: dir.path().join(format!("n{a}.log")),
                child: None,
                starts: 0,
                joins: false,
            });
        }
        let runs = std::sync::Arc::new((0..n).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
        let mut c = Cluster { dir, nodes, groups, proxies, runs, server_args: Vec::new() };
        for id in 1..=n as u64 {
            c.start_node(id);
        }
        c
    }

    /// Cuts every link between nodes of different sides (both directions).
    pub fn partition(&self, sides: &[&[u64]]) {
        let side = |id: u64| sides.iter().position(|s| s.contains(&id));
        for (&(a, b), p) in &self.proxies {
            if side(a) != side(b) {
                p.cut();
            }
        }
    }

    /// Cuts only `from → to`.
    pub fn cut_link(&self, from: u64, to: u64) {
        self.proxies[&(from, to)].cut();
    }

    pub fn heal(&self) {
        for p in self.proxies.values() {
            p.heal();
        }
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.iter().any(|n| n.id == id && n.child.is_some())
    }

    fn signal(&mut self, id: u64, sig: i32) {
        let pid = self.node(id).child.as_ref().map(|c| c.id() as i32);
        if let Some(pid) = pid {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGSTOP: the process freezes (no ticks, no I/O) until `resume`.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint.clone()).collect()
    }

    /// The process id of running node `id`.
    pub fn pid(&self, id: u64) -> u32 {
        self.nodes.iter().find(|n| n.id == id).and_then(|n| n.child.as_ref()).map(|c| c.id()).expect("running")
    }

    fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    pub fn start_node(&mut self, id: u64) {
        let args = self.server_args.clone();
        let n = self.node(id);
        assert!(n.child.is_none(), "node {id} already running");
        let first_start = n.starts == 0;
        n.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
        let mut cmd = Command::new(dledger_bin());
        cmd.arg("server").arg("--config").arg(&n.config).args(&args);
        // The bootstrap (or join) at the first start only: a restart must find the node's data.
        match (first_start, n.joins) {
            (true, false) => {
                cmd.arg("--bootstrap");
            }
            (true, true) => {
                cmd.arg("--join");
            }
            (false, _) => {}
        }
        let child = cmd
            .env("RUST_LOG", std::env::var("DLEDGER_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dledger server");
        n.child = Some(child);
        if let Some(runs) = self.runs.get(id as usize - 1) {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Writes a config for a new node (the next id, a free port, every
    /// node so far as its peers) and starts it with `--join`; waits until
    /// it listens. It serves nothing until an operator adds it.
    pub fn add_joining_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let port = free_ports(1)[0];
        let ep = format!("127.0.0.1:{port}");
        let template = std::fs::read_to_string(&self.nodes[0].config).unwrap();
        let head: String = template
            .split("[[peers]]")
            .next()
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("node_id") {
                    format!("node_id = {id}")
                } else if l.starts_with("listen") {
                    format!("listen = \"{ep}\"")
                } else if l.starts_with("data_dir") {
                    format!("data_dir = \"{}\"", self.dir.path().join(format!("n{id}")).display())
                } else {
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        let mut peers: String =
            self.nodes.iter().map(|n| format!("[[peers]]\nid = {}\naddress = \"{}\"\n", n.id, n.endpoint)).collect();
        peers += &format!("[[peers]]\nid = {id}\naddress = \"{ep}\"\n");
        let config = self.dir.path().join(format!("n{id}.toml"));
        std::fs::write(&config, format!("{head}\n{peers}")).unwrap();
        self.nodes.push(NodeProc {
            id,
            endpoint: ep.clone(),
            config,
            log: self.dir.path().join(format!("n{id}.log")),
            child: None,
            starts: 0,
            joins: true,
        });
        self.start_node(id);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&ep).is_err() {
            assert!(Instant::now() < deadline, "node {id} did not listen: {}", self.log_text(id));
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
        id
    }

    /// SIGKILL: no chance to sync or answer.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) -> std::process::ExitStatus {
        let mut c = self.node(id).child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "node {id} did not exit within 20 s of SIGTERM");
            std::thread::yield_now();
        }
    }

    pub fn client(&self, group: u64) -> Client {
        Client::new(self.endpoints(), "dledger", group, Duration::from_secs(10))
    }

    pub async fn status(&self, id: u64) -> Option<Vec<GroupStatus>> {
        let ep = self.nodes.iter().find(|n| n.id == id).unwrap().endpoint.clone();
        let mut c = Client::new(vec![ep.clone()], "dledger", 0, Duration::from_millis(500));
        c.node_status(&ep).await.ok()
    }

    /// The leader of `group` once one is known to every running node... or at least one.
    pub async fn leader(&self, group: u64) -> u64 {
        eventually(&format!("a leader of group {group}"), Duration::from_secs(20), || async move {
            for n in &self.nodes {
                if n.child.is_none() {
                    continue;
                }
                if let Some(s) = self.status(n.id).await {
                    if let Some(g) = s.iter().find(|g| g.group == group && g.role == "leader") {
                        return Some(g.node);
                    }
                }
            }
            None
        })
        .await
    }

    /// The leader of `group` once it is a node other than `old` (after `old` was killed).
    pub async fn leader_other_than(&self, group: u64, old: u64) -> u64 {
        eventually(&format!("a new leader of group {group}"), Duration::from_secs(10), || async move {
            let l = self.leader(group).await;
            (l != old).then_some(l)
        })
        .await
    }

    /// Waits until `id` has committed at least `index` in `group`.
    pub async fn wait_commit(&self, id: u64, group: u64, index: u64) {
        eventually(&format!("node {id} to commit {index} in group {group}"), Duration::from_secs(30), || async move {
            let s = self.status(id).await?;
            s.iter().find(|g| g.group == group && g.commit_index >= index).map(|_| ())
        })
        .await
    }

    /// Every committed entry `[1, upto]` of `group` as node `id` holds it.
    pub async fn committed_log(&self, id: u64, group: u64, upto: u64) -> Vec<(u64, u64, Bytes)> {
        self.committed_log_from(id, group, 1, upto).await
    }

    /// Every committed entry `[from, upto]` of `group` as node `id` holds it.
    pub async fn committed_log_from(&self, id: u64, group: u64, from: u64, upto: u64) -> Vec<(u64, u64, Bytes)> {
        match self.try_committed_log_from(id, group, from, upto).await {
            Ok(log) => log,
            Err(e) => panic!("reading node {id}'s log from {from}: {e}"),
        }
    }

    /// `committed_log_from`, with the read's error (a retention purge may have
    /// passed `from` meanwhile: `OutOfRange`).
    pub async fn try_committed_log_from(
        &self,
        id: u64,
        group: u64,
        from: u64,
        upto: u64,
    ) -> Result<Vec<(u64, u64, Bytes)>, dledger_client::ClientError> {
        let ep = self.nodes.iter().find(|n| n.id == id).unwrap().endpoint.clone();
        let mut c = Client::new(vec![ep.clone()], "dledger", group, Duration::from_secs(10));
        let mut out = Vec::new();
        let mut next = from;
        while next <= upto {
            let chunk = c.read_at(&ep, next, upto + 1, 1 << 20).await?;
            assert!(!chunk.is_empty(), "node {id} returned nothing at {next}");
            for e in chunk {
                assert_eq!(e.index, next);
                next += 1;
                out.push((e.index, e.term, e.payload));
            }
        }
        Ok(out)
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes.iter().find(|n| n.id == id).unwrap().log).unwrap_or_default()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("---- log of node {} ----\n{}", n.id, std::fs::read_to_string(&n.log).unwrap_or_default());
            }
        }
    }
}

/// A small ext4 file system on a loop device, unmounted on drop.
pub struct SmallFs {
    pub mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn new(mib: u64) -> Result<SmallFs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&img).and_then(|f| f.set_len(mib << 20)).map_err(|e| e.to_string())?;
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&img)) {
            return Err("mkfs.ext4 failed or missing".into());
        }
        if !ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt)) {
            return Err("mount -o loop failed".into());
        }
        Ok(SmallFs { mnt, _dir: dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
    }
}

/// Moves node `id`'s data onto `fs` (stopped, copied, config rewritten, started).
pub fn move_data_to(c: &mut Cluster, id: u64, fs: &SmallFs) {
    assert!(c.stop(id).success());
    let small_data = fs.mnt.join("data");
    let status = Command::new("cp").arg("-a").arg(c.data_dir(id)).arg(&small_data).status().unwrap();
    assert!(status.success());
    let cfg = &c.nodes[id as usize - 1].config;
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace(&*c.data_dir(id).to_string_lossy(), &small_data.to_string_lossy());
    std::fs::write(cfg, text).unwrap();
    c.start_node(id);
}
