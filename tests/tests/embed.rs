//! The embedding API in one process: three servers, each with its own state
//! machine, over real TCP on 127.0.0.1; restarts replay only what a snapshot
//! or the state machine's own storage does not cover; a failing state
//! machine stops only its server, with a typed error.

mod harness;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dledger_server::{
    CommittedEntry, Fatal, GroupError, GroupHandle, Peer, Role, Server, ServerConfig, ServerError, StateMachine,
    StateMachineError,
};
use harness::{eventually, free_ports};

/// What a test sees of a state machine from outside.
#[derive(Default)]
struct Probe {
    /// Indexes applied, in order, since start.
    applied: Mutex<Vec<u64>>,
    /// The index of the snapshot restored at start, if one was.
    restored: AtomicU64,
}

/// A replicated sum: each entry adds the u64 it holds; the output is the new sum.
/// `fail_at`: apply fails (or panics) on the entry holding this value.
struct Sum {
    sum: u64,
    probe: Arc<Probe>,
    fail_at: Option<(u64, bool)>,
    durable: u64,
}

impl Sum {
    fn new(probe: Arc<Probe>) -> Self {
        Sum { sum: 0, probe, fail_at: None, durable: 0 }
    }
}

fn num(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

fn bytes(v: u64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

impl StateMachine for Sum {
    fn apply(&mut self, entries: &[CommittedEntry], out: &mut Vec<Bytes>) -> Result<(), StateMachineError> {
        for e in entries {
            let v = num(&e.payload);
            match self.fail_at {
                Some((at, true)) if at == v => panic!("the application's bug at {v}"),
                Some((at, false)) if at == v => return Err(StateMachineError::Invalid(format!("refusing {v}"))),
                _ => {}
            }
            self.sum += v;
            self.probe.applied.lock().unwrap().push(e.index);
            out.push(bytes(self.sum));
        }
        Ok(())
    }
    fn query(&mut self, q: &[u8]) -> Result<Bytes, StateMachineError> {
        if q == b"bad" {
            return Err(StateMachineError::Invalid("no such query".into()));
        }
        Ok(bytes(self.sum))
    }
    fn applied_index(&self) -> u64 {
        self.durable
    }
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        out.write_all(&self.sum.to_le_bytes())?;
        Ok(())
    }
    fn restore(&mut self, r: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        self.sum = u64::from_le_bytes(b);
        self.probe.restored.store(1, Ordering::SeqCst);
        Ok(())
    }
}

fn configs(dir: &Path, n: u64, snapshot_every: u64) -> Vec<ServerConfig> {
    let ports = free_ports(n as usize);
    let peers: Vec<Peer> = (1..=n)
        .map(|id| Peer { id, address: format!("127.0.0.1:{}", ports[id as usize - 1]), client_address: None })
        .collect();
    (1..=n)
        .map(|id| {
            let mut c = ServerConfig::new(
                id,
                peers[id as usize - 1].address.clone(),
                dir.join(format!("n{id}")),
                peers.clone(),
            );
            c.cores = 1;
            c.cpus = Some(vec![]);
            c.segment_mib = 4;
            c.snapshot_every_entries = snapshot_every;
            c
        })
        .collect()
}

async fn leader_of(handles: &[GroupHandle]) -> usize {
    eventually("a leader", Duration::from_secs(20), || {
        let handles = handles.to_vec();
        async move {
            for (i, h) in handles.iter().enumerate() {
                if h.events().borrow().role == Role::Leader {
                    return Some(i);
                }
            }
            None
        }
    })
    .await
}

fn stop_all(servers: Vec<Server>) {
    for s in &servers {
        s.stop();
    }
    for s in servers {
        s.wait().expect("a clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_return_outputs_reads_are_linearizable_and_followers_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let probes: Vec<Arc<Probe>> = (0..3).map(|_| Arc::default()).collect();
    let servers: Vec<Server> = configs(dir.path(), 3, 0)
        .into_iter()
        .zip(&probes)
        .map(|(c, p)| Server::builder(c).bootstrap(true).state_machine(0, Sum::new(p.clone())).start().unwrap())
        .collect();
    let handles: Vec<GroupHandle> = servers.iter().map(|s| s.group(0).unwrap()).collect();
    let l = leader_of(&handles).await;
    let mut want = 0;
    for v in 1..=50u64 {
        let a = handles[l].append(vec![bytes(v), bytes(1000)]).await.unwrap();
        want += v + 1000;
        assert_eq!(a.last_index, a.first_index + 1);
        assert_eq!(a.outputs.len(), 2);
        assert_eq!(num(&a.outputs[1]), want, "the output of the second entry is the sum after it");
        // A read right after an acknowledged append sees it.
        assert_eq!(num(&handles[l].read(Bytes::new()).await.unwrap()), want);
    }
    // A follower refuses appends and reads, naming the leader.
    let f = (l + 1) % 3;
    let leader_id = l as u64 + 1;
    match handles[f].append(vec![bytes(1)]).await {
        Err(GroupError::Server(ServerError::NotLeader { leader: Some(id), address: Some(_) })) => {
            assert_eq!(id, leader_id)
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert!(matches!(handles[f].read(Bytes::new()).await, Err(GroupError::Server(ServerError::NotLeader { .. }))));
    // A query the state machine refuses fails that read only.
    assert!(matches!(handles[l].read(Bytes::from_static(b"bad")).await, Err(GroupError::Query(_))));
    assert_eq!(num(&handles[l].read(Bytes::new()).await.unwrap()), want);
    // Every replica applied every entry once, in order (no-ops are not handed over).
    let last = handles[l].status().await.unwrap().commit_index;
    eventually("every replica to apply everything", Duration::from_secs(10), || {
        let done = probes.iter().all(|p| p.applied.lock().unwrap().last() == Some(&last));
        async move { done.then_some(()) }
    })
    .await;
    for p in &probes {
        let applied = p.applied.lock().unwrap().clone();
        assert_eq!(applied.len(), 100);
        assert!(applied.windows(2).all(|w| w[0] < w[1]), "in order, once");
    }
    let metrics = servers[l].metrics().await;
    assert!(metrics.contains("dledger_applied_index{group=\"0\"}"), "{metrics}");
    stop_all(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_only_what_the_snapshot_does_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = configs(dir.path(), 1, 40).remove(0);
    let probe = Arc::new(Probe::default());
    let server =
        Server::builder(cfg.clone()).bootstrap(true).state_machine(0, Sum::new(probe.clone())).start().unwrap();
    let h = server.group(0).unwrap();
    h.leader().await.unwrap();
    for v in 1..=100u64 {
        h.append(vec![bytes(v)]).await.unwrap();
    }
    let last = h.status().await.unwrap().commit_index;
    server.stop();
    server.wait().unwrap();
    let snaps: Vec<_> = std::fs::read_dir(dir.path().join("n1/snapshots/group-0")).unwrap().flatten().collect();
    assert_eq!(snaps.len(), 2, "the newest two snapshots are kept: {snaps:?}");

    // Restart: the newest snapshot (at 80 or later) is restored, and only the rest is applied again.
    let probe = Arc::new(Probe::default());
    let server = Server::builder(cfg.clone()).state_machine(0, Sum::new(probe.clone())).start().unwrap();
    let h = server.group(0).unwrap();
    h.leader().await.unwrap();
    let a = h.append(vec![bytes(1)]).await.unwrap();
    assert_eq!(num(&a.outputs[0]), 5050 + 1, "the restored state plus the replay plus the new entry");
    assert_eq!(probe.restored.load(Ordering::SeqCst), 1);
    let replayed = probe.applied.lock().unwrap().clone();
    assert!(replayed.len() < 40, "replayed at most one snapshot interval: {replayed:?}");
    assert!(replayed.windows(2).all(|w| w[0] < w[1]));
    assert!(replayed.iter().all(|&i| i + 40 > last || i > last), "{replayed:?} against last {last}");
    server.stop();
    server.wait().unwrap();

    // A state machine that keeps its own state durably up to the end replays nothing
    // (and is not restored from a snapshot behind it).
    let probe = Arc::new(Probe::default());
    let mut own = Sum::new(probe.clone());
    own.sum = 5051;
    own.durable = a.last_index;
    let server = Server::builder(cfg).state_machine(0, own).start().unwrap();
    let h = server.group(0).unwrap();
    h.leader().await.unwrap();
    let b = h.append(vec![bytes(9)]).await.unwrap();
    assert_eq!(num(&b.outputs[0]), 5060);
    assert_eq!(probe.restored.load(Ordering::SeqCst), 0, "the snapshot is older than the state machine's own state");
    let applied = probe.applied.lock().unwrap().clone();
    assert_eq!(applied, vec![b.first_index], "only the new entry was applied");
    server.stop();
    server.wait().unwrap();
}

async fn a_failing_state_machine_stops_only_its_server(panics: bool) {
    let dir = tempfile::tempdir().unwrap();
    let probes: Vec<Arc<Probe>> = (0..3).map(|_| Arc::default()).collect();
    let mut cfgs = configs(dir.path(), 3, 0);
    // Node 2 leads (once caught up), so that node 1, whose state machine fails, is a follower.
    for c in &mut cfgs {
        c.preferred_leader = Some(2);
    }
    let mut servers: Vec<Option<Server>> = Vec::new();
    for (i, (c, p)) in cfgs.into_iter().zip(&probes).enumerate() {
        let mut m = Sum::new(p.clone());
        // Node 1's state machine fails on the value 7.
        if i == 0 {
            m.fail_at = Some((7, panics));
        }
        servers.push(Some(Server::builder(c).bootstrap(true).state_machine(0, m).start().unwrap()));
    }
    let handles: Vec<GroupHandle> = servers.iter().map(|s| s.as_ref().unwrap().group(0).unwrap()).collect();
    let l = 1;
    eventually("node 2 to lead", Duration::from_secs(20), || {
        let leads = handles[l].events().borrow().role == Role::Leader;
        async move { leads.then_some(()) }
    })
    .await;
    for v in [1u64, 2, 7, 3] {
        handles[l].append(vec![bytes(v)]).await.unwrap();
    }
    // Node 1 stops with the state machine's error; the process lives on.
    let s1 = servers[0].take().unwrap();
    // A stopper alive elsewhere (a signal handler, an HTTP front) must not hide the error.
    let _stopper = s1.stopper();
    let waited = tokio::task::spawn_blocking(move || s1.wait()).await.unwrap();
    match waited {
        Err(Fatal::StateMachine { group: 0, error }) => {
            let text = error.to_string();
            if panics {
                assert!(matches!(error, StateMachineError::Panicked(_)) && text.contains("bug at 7"), "{text}");
            } else {
                assert!(matches!(error, StateMachineError::Invalid(_)) && text.contains("refusing 7"), "{text}");
            }
        }
        other => panic!("expected a state machine failure, got {other:?}"),
    }
    assert!(matches!(handles[0].append(vec![bytes(1)]).await, Err(GroupError::Stopped)));
    // The two others go on: the leader takes and applies appends.
    let a = handles[l].append(vec![bytes(100)]).await.unwrap();
    assert_eq!(num(&a.outputs[0]), 1 + 2 + 7 + 3 + 100);
    stop_all(servers.into_iter().flatten().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_machine_stops_only_its_server_with_a_typed_error() {
    a_failing_state_machine_stops_only_its_server(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_error_stops_only_its_server_with_a_typed_error() {
    a_failing_state_machine_stops_only_its_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_only_embedding_appends_without_outputs_and_has_nothing_to_query() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = configs(dir.path(), 1, 0).remove(0);
    let server = Server::builder(cfg).bootstrap(true).start().unwrap();
    let h = server.group(0).unwrap();
    assert!(!h.has_state_machine());
    h.leader().await.unwrap();
    let a = h.append(vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]).await.unwrap();
    assert_eq!((a.last_index - a.first_index, a.outputs.len()), (1, 0));
    assert!(matches!(h.read(Bytes::new()).await, Err(GroupError::NoStateMachine(0))));
    let too_big = Bytes::from(vec![0u8; 8 << 20]);
    assert!(matches!(h.append(vec![too_big]).await, Err(GroupError::Server(ServerError::BadRequest(_)))));
    assert!(server.group(1).is_none());
    server.stop();
    server.wait().unwrap();
    assert!(matches!(h.append(vec![Bytes::from_static(b"z")]).await, Err(GroupError::Stopped)));
}

/// A state machine that falls far behind (it is held for a while): the
/// group stops feeding it at the lag bound (the append path goes on; the
/// entries wait in the log, and leave memory), then feeds it the rest from
/// memory and the log files; it applies every entry exactly once, in order.
struct Gated {
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    applied: Arc<Mutex<Vec<u64>>>,
}

impl StateMachine for Gated {
    fn apply(&mut self, entries: &[CommittedEntry], out: &mut Vec<Bytes>) -> Result<(), StateMachineError> {
        let (open, cv) = &*self.gate;
        let mut o = open.lock().unwrap();
        while !*o {
            o = cv.wait(o).unwrap();
        }
        let mut a = self.applied.lock().unwrap();
        for e in entries {
            a.push(e.index);
            out.push(Bytes::new());
        }
        Ok(())
    }
    fn query(&mut self, _: &[u8]) -> Result<Bytes, StateMachineError> {
        Ok(bytes(self.applied.lock().unwrap().len() as u64))
    }
    fn snapshot(&mut self, _: &mut dyn Write) -> Result<(), StateMachineError> {
        Ok(())
    }
    fn restore(&mut self, _: &mut dyn Read) -> Result<(), StateMachineError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_far_behind_is_fed_every_entry_once_in_order_from_memory_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = configs(dir.path(), 1, 0).remove(0);
    cfg.log_memory_mib = 1; // applied entries leave memory early: the catch-up reads the files
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let applied = Arc::new(Mutex::new(Vec::new()));
    let machine = Gated { gate: gate.clone(), applied: applied.clone() };
    let server = Server::builder(cfg).bootstrap(true).state_machine(0, machine).start().unwrap();
    let endpoint = server.local_addr().to_string();
    server.group(0).unwrap().leader().await.unwrap();
    // Appends through the network commit without waiting for the state machine.
    let mut client = dledger_client::Client::new(vec![endpoint], "dledger", 0, Duration::from_secs(20));
    let batches = 100u64;
    let per = 1000u64;
    let mut last = 0;
    for b in 0..batches {
        let payloads = (0..per).map(|i| bytes(b * per + i)).collect();
        last = client.append_batch(payloads).await.unwrap().1;
    }
    let metrics = server.metrics().await;
    let lag: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dledger_apply_lag_entries{group=\"0\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(lag <= 64 * 1024 + per, "the group stopped feeding at the lag bound: {lag} entries in flight");
    // Open the gate: everything arrives, once and in order.
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let h = server.group(0).unwrap();
    eventually("the state machine to catch up", Duration::from_secs(30), || {
        let n = applied.lock().unwrap().len() as u64;
        async move { (n == batches * per).then_some(()) }
    })
    .await;
    let a = applied.lock().unwrap().clone();
    assert!(a.windows(2).all(|w| w[0] < w[1]), "in order, each once");
    assert_eq!(*a.last().unwrap(), last);
    assert_eq!(num(&h.read(Bytes::new()).await.unwrap()), batches * per, "a read sees all of them");
    server.stop();
    server.wait().unwrap();
}

/// Empty entries count no payload bytes: a read of many of them is capped
/// by count, so that the answer fits in a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_many_empty_entries_is_capped_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = configs(dir.path(), 1, 0).remove(0);
    let server = Server::builder(cfg).bootstrap(true).start().unwrap();
    let endpoint = server.local_addr().to_string();
    server.group(0).unwrap().leader().await.unwrap();
    let mut client = dledger_client::Client::new(vec![endpoint], "dledger", 0, Duration::from_secs(20));
    for _ in 0..2 {
        client.append_batch(vec![Bytes::new(); 50_000]).await.unwrap();
    }
    let got = client.read(1, u64::MAX, 0).await.unwrap();
    assert_eq!(got.len() as u64, dledger_server::MAX_READ_ENTRIES);
    assert!(got.windows(2).all(|w| w[1].index == w[0].index + 1));
    server.stop();
    server.wait().unwrap();
}

#[test]
fn a_state_machine_for_a_group_the_server_lacks_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = configs(dir.path(), 1, 0).remove(0);
    let err = Server::builder(cfg).bootstrap(true).state_machine(3, Sum::new(Arc::default())).start().err().unwrap();
    assert!(err.to_string().contains("group 3"), "{err}");
    assert!(!dir.path().join("n1").exists(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_on_demand_and_by_bytes_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = configs(dir.path(), 1, 0).remove(0);
    cfg.snapshot_every_mib = 1;
    let snapshots = dir.path().join("n1/snapshots/group-0");
    let count = || std::fs::read_dir(&snapshots).map_or(0, |d| d.flatten().count());
    let probe = Arc::new(Probe::default());
    let server = Server::builder(cfg).bootstrap(true).state_machine(0, Sum::new(probe)).start().unwrap();
    let h = server.group(0).unwrap();
    h.leader().await.unwrap();
    let a = h.append((1..=10).map(bytes).collect()).await.unwrap();
    assert_eq!(count(), 0, "no policy has fired yet");
    let at = h.snapshot().await.unwrap();
    assert_eq!(at, a.last_index, "on demand: a snapshot of everything applied");
    assert_eq!(count(), 1);
    assert_eq!(h.snapshot().await.unwrap(), at, "nothing applied since: the same snapshot");
    assert_eq!(count(), 1);
    // 8-byte payloads: 1 MiB is 131,072 entries; the byte policy takes one after it.
    let mut last = 0;
    for k in 0..34u64 {
        last = h.append((0..4096).map(|i| bytes(k * 4096 + i)).collect()).await.unwrap().last_index;
    }
    eventually("a snapshot by bytes applied", Duration::from_secs(20), || {
        let n = count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert!(h.snapshot().await.unwrap() <= last);
    stop_all(vec![server]);
}
