//! The key-value store run as a user runs it: three `dledger-kv` processes,
//! clients over HTTP doing put, get, delete and compare-and-set on a few
//! keys, the leader killed with SIGKILL mid-run and restarted; then every
//! key's recorded history (invocations and answers in real-time order,
//! writes of unknown outcome left open) must be linearizable, checked with
//! stateright's `LinearizabilityTester` against a register per key
//! (linearizability is compositional, so keys are checked one by one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put(String),
    Get,
    Delete,
    Cas(Option<String>, Option<String>),
}

/// Its answer: a write's (`ok`, previous value) or a read's value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ret {
    Wrote(bool, Option<String>),
    Read(Option<String>),
}

/// The sequential specification: one register that may be absent.
#[derive(Debug, Clone, Default)]
struct Register(Option<String>);

impl SequentialSpec for Register {
    type Op = Op;
    type Ret = Ret;
    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Put(v) => Ret::Wrote(true, self.0.replace(v.clone())),
            Op::Get => Ret::Read(self.0.clone()),
            Op::Delete => {
                let prev = self.0.take();
                Ret::Wrote(prev.is_some(), prev)
            }
            Op::Cas(expected, new) => {
                let prev = self.0.clone();
                let ok = prev == *expected;
                if ok {
                    self.0 = new.clone();
                }
                Ret::Wrote(ok, prev)
            }
        }
    }
}

/// One entry of the history, in the order it happened.
#[derive(Debug, Clone)]
enum Event {
    Invoke {
        op: usize,
        thread: u64,
        key: String,
        what: Op,
    },
    /// The answer; `None`: it certainly did not happen (refused before it was proposed).
    Return {
        op: usize,
        ret: Option<Ret>,
    },
}

/// Checks each key's history; `Err` names the first key that is not linearizable.
fn check(history: &[Event]) -> Result<usize, String> {
    let failed: Vec<usize> = history
        .iter()
        .filter_map(|e| match e {
            Event::Return { op, ret: None } => Some(*op),
            _ => None,
        })
        .collect();
    let mut keys: BTreeMap<String, LinearizabilityTester<u64, Register>> = BTreeMap::new();
    let mut key_of = BTreeMap::new();
    let mut checked = 0;
    for e in history {
        match e {
            Event::Invoke { op, thread, key, what } if !failed.contains(op) => {
                key_of.insert(*op, (key.clone(), *thread));
                let t = keys.entry(key.clone()).or_insert_with(|| LinearizabilityTester::new(Register::default()));
                t.on_invoke(*thread, what.clone()).map_err(|e| format!("invalid history: {e}"))?;
            }
            Event::Return { op, ret: Some(ret) } => {
                let (key, thread) = key_of.get(op).cloned().expect("returned after invoked");
                keys.get_mut(&key).expect("invoked").on_return(thread, ret.clone()).map_err(|e| e.to_string())?;
                checked += 1;
            }
            _ => {}
        }
    }
    for (key, t) in &keys {
        if !t.is_consistent() {
            return Err(format!("key {key:?}: the history is not linearizable: {t:?}"));
        }
    }
    Ok(checked)
}

#[test]
fn the_checker_catches_a_stale_read_and_a_lost_write() {
    let inv = |op, thread, what| Event::Invoke { op, thread, key: "k".into(), what };
    let ret = |op, r| Event::Return { op, ret: Some(r) };
    // Put 1 acknowledged, then (after it) a read that misses it.
    let stale =
        [inv(0, 1, Op::Put("1".into())), ret(0, Ret::Wrote(true, None)), inv(1, 2, Op::Get), ret(1, Ret::Read(None))];
    assert!(check(&stale).is_err());
    // Two acknowledged puts, then a CAS that saw the older one as current.
    let lost = [
        inv(0, 1, Op::Put("1".into())),
        ret(0, Ret::Wrote(true, None)),
        inv(1, 1, Op::Put("2".into())),
        ret(1, Ret::Wrote(true, Some("1".into()))),
        inv(2, 2, Op::Cas(Some("1".into()), Some("3".into()))),
        ret(2, Ret::Wrote(true, Some("1".into()))),
    ];
    assert!(check(&lost).is_err());
    // A write whose outcome is unknown may or may not have happened: both readings pass.
    let open = |seen: Option<&str>| {
        vec![
            inv(0, 1, Op::Put("1".into())),
            inv(1, 2, Op::Get),
            ret(1, Ret::Read(seen.map(Into::into))),
            inv(2, 2, Op::Get),
            ret(2, Ret::Read(seen.map(Into::into))),
        ]
    };
    assert!(check(&open(Some("1"))).is_ok() && check(&open(None)).is_ok());
    // A refused write is left out; a read seeing it would be caught.
    let refused = [
        inv(0, 1, Op::Put("1".into())),
        Event::Return { op: 0, ret: None },
        inv(1, 2, Op::Get),
        ret(1, Ret::Read(Some("1".into()))),
    ];
    assert!(check(&refused).is_err());
}

struct Node {
    id: u64,
    http: String,
    config: PathBuf,
    child: Option<Child>,
    started: bool,
}

impl Node {
    fn start(&mut self, dir: &Path) {
        // The bootstrap at the first start only: the restart must find its data.
        let bootstrap = !std::mem::replace(&mut self.started, true);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("n{}.log", self.id))).unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_dledger-kv"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .args(bootstrap.then_some("--bootstrap"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_configs(dir: &Path) -> Vec<Node> {
    let ports = dledger::ports::free_ports(6).unwrap();
    let http = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let raft = |i: usize| format!("127.0.0.1:{}", ports[3 + i]);
    (0..3)
        .map(|i| {
            let id = i as u64 + 1;
            let mut t = format!("http = \"{}\"\n", http(i));
            for j in 0..3 {
                t += &format!("[[http_peers]]\nid = {}\naddress = \"{}\"\n", j + 1, http(j));
            }
            t += &format!(
                "[server]\nnode_id = {id}\nlisten = \"{}\"\ndata_dir = \"{}\"\ncores = 1\ncpus = []\nsegment_mib = 4\nsnapshot_every_entries = 200\n",
                raft(i),
                dir.join(format!("n{id}")).display()
            );
            for j in 0..3 {
                t += &format!("[[server.peers]]\nid = {}\naddress = \"{}\"\n", j + 1, raft(j));
            }
            let config = dir.join(format!("n{id}.toml"));
            std::fs::write(&config, t).unwrap();
            Node { id, http: http(i), config, child: None, started: false }
        })
        .collect()
}

/// How one attempt at an operation ended.
enum Outcome {
    Done(Ret),
    /// Certainly not applied: try again (at `leader`, if named).
    Refused(Option<String>),
    /// Sent, no answer: it may or may not have happened.
    Unknown,
}

async fn attempt(http: &reqwest::Client, base: &str, key: &str, op: &Op) -> Outcome {
    let url = format!("http://{base}/kv/{key}");
    let req = match op {
        Op::Put(v) => http.put(&url).body(v.clone()),
        Op::Get => http.get(&url),
        Op::Delete => http.delete(&url),
        Op::Cas(e, n) => http.post(format!("{url}/cas")).json(&serde_json::json!({"expected": e, "new": n})),
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Refused(None),
        Err(_) => return Outcome::Unknown,
    };
    let code = resp.status().as_u16();
    let Ok(body) = resp.json::<serde_json::Value>().await else { return Outcome::Unknown };
    match code {
        200 => match op {
            Op::Get => Outcome::Done(Ret::Read(body["value"].as_str().map(Into::into))),
            _ => Outcome::Done(Ret::Wrote(body["ok"].as_bool().unwrap(), body["previous"].as_str().map(Into::into))),
        },
        // A follower: it proposed nothing; the leader's address, if it knows one.
        307 | 421 => Outcome::Refused(body["leader_http"].as_str().map(Into::into)),
        _ => Outcome::Unknown,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_operation_is_linearizable_across_a_leader_kill() {
    let seed: u64 = std::env::var("KV_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("KV_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = write_configs(dir.path());
    for n in nodes.iter_mut() {
        n.start(dir.path());
    }
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.http.clone()).collect());
    // Redirects are followed by hand: a 307 is a refusal the history must see as such.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let history = Arc::new(Mutex::new(Vec::<Event>::new()));
    let next_op = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let guess = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (http, history, next_op, acked, done, guess, bases) =
            (http.clone(), history.clone(), next_op.clone(), acked.clone(), done.clone(), guess.clone(), bases.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ w);
            let mut thread = w << 32;
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("k{}", rng.gen_range(0..3));
                let value = || format!("w{w}-{n}");
                let what = match rng.gen_range(0..10) {
                    0..=2 => Op::Put(value()),
                    3..=5 => Op::Get,
                    6 => Op::Delete,
                    _ => Op::Cas(
                        if rng.gen_bool(0.3) {
                            None
                        } else {
                            Some(format!("w{}-{}", rng.gen_range(0..4), rng.gen_range(1..n + 1)))
                        },
                        Some(value()),
                    ),
                };
                let op = next_op.fetch_add(1, Ordering::SeqCst);
                history.lock().unwrap().push(Event::Invoke { op, thread, key: key.clone(), what: what.clone() });
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut at = bases[guess.load(Ordering::SeqCst) % 3].clone();
                let ret = loop {
                    match attempt(&http, &at, &key, &what).await {
                        Outcome::Done(r) => break Some(Some(r)),
                        Outcome::Unknown => break None,
                        Outcome::Refused(leader) => {
                            if Instant::now() > deadline {
                                break Some(None);
                            }
                            at = match leader {
                                Some(l) => l,
                                None => {
                                    let g = guess.fetch_add(1, Ordering::SeqCst) + 1;
                                    tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
                                    bases[g % 3].clone()
                                }
                            };
                        }
                    }
                };
                match ret {
                    Some(ret) => {
                        if ret.is_some() {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        history.lock().unwrap().push(Event::Return { op, ret });
                    }
                    // Unknown outcome: the operation stays open; this client goes on as a new thread.
                    None => thread += 1,
                }
            }
        }));
    }
    let wait_acked = |min: u64, what: &'static str| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.load(Ordering::SeqCst) < min {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
            }
        }
    };
    wait_acked(300, "operations before the kill").await;
    // Kill the leader.
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader.is_none() {
        assert!(Instant::now() < deadline, "no leader found");
        for (i, b) in bases.iter().enumerate() {
            if let Ok(r) = http.get(format!("http://{b}/status")).send().await {
                if let Ok(s) = r.json::<serde_json::Value>().await {
                    if s["role"] == "leader" {
                        leader = Some(i);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
    let leader = leader.unwrap();
    nodes[leader].kill();
    let before = acked.load(Ordering::SeqCst);
    wait_acked(before + 300, "operations after the kill").await;
    // Restart it: it restores its snapshot, replays the rest, and rejoins.
    nodes[leader].start(dir.path());
    let before = acked.load(Ordering::SeqCst);
    wait_acked(before + 300, "operations after the restart").await;
    done.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    let checked = check(&history).unwrap_or_else(|e| panic!("KV_SEED={seed}: {e}"));
    let invoked = history.iter().filter(|e| matches!(e, Event::Invoke { .. })).count();
    println!("{checked} answered operations of {invoked} invoked: linearizable");
    assert!(checked >= 900);
    let snapshots = dir.path().join(format!("n{}/snapshots/group-0", nodes[(leader + 1) % 3].id));
    assert!(std::fs::read_dir(&snapshots).unwrap().count() > 0, "snapshots were taken");
}
