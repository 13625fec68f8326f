//! Membership changes on real processes: grow and shrink under load, a
//! wiped node refused as its old self and replaced, and bad input refused.
//! Every acknowledged append is checked against the final committed log.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dledger_client::{ClientError, MembershipChange};
use dledger_proto::ServerError;
use harness::{dledger_bin, eventually, Cluster};

/// Appends unique payloads until stopped; returns what was acknowledged.
fn writer(c: &Cluster, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(u64, Bytes)>> {
    let mut client = c.client(0);
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut k = 0u64;
        while !stop.load(Ordering::SeqCst) {
            k += 1;
            let payload = Bytes::from(format!("w{k}"));
            if let Ok((index, _)) = client.append(payload.clone()).await {
                acked.push((index, payload));
            }
        }
        acked
    })
}

/// Every acknowledged append is at its index in node `id`'s committed log.
async fn check_acked(c: &Cluster, id: u64, acked: &[(u64, Bytes)]) {
    let upto = acked.iter().map(|a| a.0).max().expect("something was acknowledged");
    c.wait_commit(id, 0, upto).await;
    let log = c.committed_log(id, 0, upto).await;
    let by_index: std::collections::HashMap<u64, &Bytes> = log.iter().map(|(i, _, p)| (*i, p)).collect();
    for (index, payload) in acked {
        assert_eq!(by_index.get(index), Some(&payload), "acknowledged append at {index} lost on node {id}");
    }
}

/// `dledger member replace` of `old` by the node at `address`.
fn replace(endpoints: &str, old: u64, address: &str) -> (bool, String) {
    let old = old.to_string();
    cli(&["member", "replace", "--endpoints", endpoints, "--old", &old, "--new-address", address, "--wait-secs", "60"])
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(dledger_bin()).args(args).output().expect("run dledger");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Adds `id` (running, joined) as a learner and promotes it once caught up.
async fn grow(c: &Cluster, id: u64) {
    let mut client = c.client(0);
    let address = c.nodes.iter().find(|n| n.id == id).unwrap().endpoint.clone();
    client.change_membership(MembershipChange::AddLearner { id, address }, None, false).await.unwrap();
    eventually(&format!("node {id} promoted"), Duration::from_secs(30), || {
        let mut client = c.client(0);
        async move {
            match client.change_membership(MembershipChange::Promote { id }, None, false).await {
                Ok(v) => Some(v),
                // Behind (or not yet heard from): the leader refuses; nothing changed.
                Err(ClientError::Server(ServerError::MembershipRefused(_))) => None,
                Err(e) => panic!("promote {id}: {e}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_three_to_five_and_shrink_to_three_under_load_lose_nothing() {
    let mut c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(&c, stop.clone());
    let four = c.add_joining_node();
    let five = c.add_joining_node();
    // A joined node serves nothing until it is added.
    assert!(c.status(four).await.unwrap()[0].voters.is_empty());
    grow(&c, four).await;
    grow(&c, five).await;
    let v = c.client(0).members().await.unwrap();
    assert_eq!(v.members.iter().filter(|m| m.role == "voter").count(), 5, "{v:?}");

    // Shrink through the CLI: remove 1 and 2 (the leader hands over first).
    let endpoints = c.endpoints().join(",");
    for old in ["1", "2"] {
        let (ok, out) = cli(&["member", "remove", "--endpoints", &endpoints, "--id", old]);
        assert!(ok, "member remove {old}: {out}");
    }
    let (ok, out) = cli(&["member", "list", "--endpoints", &endpoints]);
    assert!(ok, "{out}");
    let ids: Vec<&str> = out.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["3", "4", "5"], "{out}");
    assert!(out.lines().skip(2).all(|l| l.contains("voter")), "{out}");
    // Replace the leader itself, under the same load: it hands over first.
    let leader = c.leader(0).await;
    let six = c.add_joining_node();
    let address = c.nodes.iter().find(|n| n.id == six).unwrap().endpoint.clone();
    let (ok, out) = replace(&endpoints, leader, &address);
    assert!(ok && out.contains("handing leadership"), "member replace of the leader: {out}");
    tokio::time::sleep(Duration::from_millis(300)).await; // poll interval: more load after the last change
    stop.store(true, Ordering::SeqCst);
    let acked = load.await.unwrap();
    assert!(acked.len() > 50, "the load ran: {} appends", acked.len());
    let survivors: Vec<u64> = [3, four, five, six].into_iter().filter(|&id| id != leader).collect();
    for &id in &survivors {
        check_acked(&c, id, &acked).await;
    }
    // A member restarted with its stale [[peers]] (nodes 1-3 only) finds the
    // cluster from the replicated membership, and says the file is stale.
    let stale = *survivors.iter().find(|&&id| id <= 3).unwrap_or(&survivors[0]);
    c.stop(stale);
    let (after, _) = c.client(0).append(Bytes::from_static(b"while it was down")).await.unwrap();
    c.start_node(stale);
    c.wait_commit(stale, 0, after).await;
    if stale <= 3 {
        assert!(c.log_text(stale).contains("differ from the group's replicated membership"));
    }
    // A removed node says why and serves nothing of the group.
    eventually("node 1 says it was removed", Duration::from_secs(10), || {
        let text = c.log_text(1);
        async move { text.contains("this node was removed from the group").then_some(()) }
    })
    .await;
    let (ok, out) = cli(&["cluster", "--endpoints", &endpoints]);
    assert!(ok && out.contains("MEMBER") && out.contains("learner") == out.contains(" learner "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_cannot_return_as_itself_and_is_replaced() {
    // Nothing kept in memory: the new node is sent every entry, configuration
    // entries included, from the log files (the path a 1 GiB replacement takes).
    let mut c = Cluster::start_with_config(3, 1, "segment_mib = 8\nlog_memory_mib = 0\n");
    let leader = c.leader(0).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(&c, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await; // poll interval: some load first
    c.kill(follower);
    std::fs::remove_dir_all(c.data_dir(follower)).unwrap();

    // Restarted as it was: refused, with one line that says what to do.
    let config = c.nodes.iter().find(|n| n.id == follower).unwrap().config.clone();
    let (ok, out) = cli(&["server", "--config", config.to_str().unwrap()]);
    assert!(!ok && out.contains("missing or empty") && out.contains("replace it"), "{out}");
    // Told to join under its old id: the others refuse it as a replaced directory.
    let child = std::process::Command::new(dledger_bin())
        .args(["server", "--join", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Arc::new(Mutex::new(child));
    eventually("the wiped node is refused as its old self", Duration::from_secs(20), || {
        let text = c.log_text(leader);
        async move { text.contains("came back with a new data directory").then_some(()) }
    })
    .await;
    let wiped = c.status(follower).await.unwrap();
    assert_eq!((wiped[0].last_index, wiped[0].voters.len()), (0, 0), "it got nothing: {wiped:?}");
    child.lock().unwrap().kill().unwrap();
    let _ = child.lock().unwrap().wait();

    // Replaced by a new node, with the one command.
    let new = c.add_joining_node();
    let address = c.nodes.iter().find(|n| n.id == new).unwrap().endpoint.clone();
    let endpoints: Vec<String> = c.endpoints().into_iter().filter(|e| *e != address).collect();
    let endpoints = endpoints.join(",");
    let (ok, out) = replace(&endpoints, follower, &address);
    assert!(ok, "member replace: {out}");
    assert!(out.contains("[1/4]") && out.contains("[3/4]") && out.contains("replaced by node"), "{out}");
    // Run again: it finds the work done.
    let (ok, again) = replace(&endpoints, follower, &address);
    assert!(ok && again.contains("already replaced"), "{again}");
    stop.store(true, Ordering::SeqCst);
    let acked = load.await.unwrap();
    let survivor = (1..=3).find(|&id| id != follower).unwrap();
    check_acked(&c, survivor, &acked).await;
    check_acked(&c, new, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_changes_are_refused_and_change_nothing() {
    let mut c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    let endpoints = c.endpoints().join(",");
    let mut client = c.client(0);
    let before = client.members().await.unwrap();
    let refused = |r: Result<_, ClientError>| match r {
        Err(ClientError::Server(ServerError::MembershipRefused(reason))) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let add2 = MembershipChange::AddLearner { id: 2, address: "127.0.0.1:1".into() };
    assert!(refused(client.change_membership(add2, None, false).await).contains("already a member"));
    let stale = MembershipChange::Remove { id: 3 };
    assert!(refused(client.change_membership(stale, Some(before.version + 5), false).await).contains("version"));
    // Promoting a node that is not a learner, and removing the leader's own vote.
    assert!(refused(client.change_membership(MembershipChange::Promote { id: 3 }, None, false).await)
        .contains("not a learner"));
    let leader = c.leader(0).await;
    let demote = MembershipChange::Demote { id: leader };
    assert!(refused(client.change_membership(demote, None, false).await).contains("transfer leadership first"));
    // A learner nobody answers for: the CLI refuses before anything changes.
    let port = harness::free_ports(1)[0].to_string();
    let nobody = format!("127.0.0.1:{port}");
    let (ok, out) = cli(&["member", "add-learner", "--endpoints", &endpoints, "--id", "9", "--address", &nobody]);
    assert!(!ok && out.contains("does not answer"), "{out}");
    // A learner far behind is not promoted: added while it is stopped.
    let four = c.add_joining_node();
    c.kill(four);
    let address = c.nodes.iter().find(|n| n.id == four).unwrap().endpoint.clone();
    client.change_membership(MembershipChange::AddLearner { id: four, address }, None, false).await.unwrap();
    let reason = refused(client.change_membership(MembershipChange::Promote { id: four }, None, false).await);
    assert!(reason.contains("behind"), "{reason}");
    let after = client.members().await.unwrap();
    assert_eq!(after.version, before.version + 1, "only the learner was added");
    assert_eq!(after.members.iter().filter(|m| m.role == "voter").count(), 3);
}
