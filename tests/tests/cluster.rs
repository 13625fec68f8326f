//! A real three-node cluster on 127.0.0.1: replication, failover, quorum loss,
//! leadership transfer, several groups per node, bad input.

mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use dledger_client::ClientError;
use harness::{eventually, Cluster};

fn payload(client: usize, seq: usize) -> Bytes {
    Bytes::from(format!("c{client}-{seq}"))
}

/// Appends from `clients` concurrent clients, `per_client` each; returns every
/// acknowledged (index, term, payload).
async fn append_many(c: &Cluster, group: u64, clients: usize, per_client: usize) -> Vec<(u64, u64, Bytes)> {
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut client = c.client(group);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for s in 0..per_client {
                let p = payload(k, s);
                let (index, term) = client.append(p.clone()).await.unwrap_or_else(|e| panic!("append {k}/{s}: {e}"));
                acked.push((index, term, p));
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|a| a.0);
    all
}

fn assert_acked_present(acked: &[(u64, u64, Bytes)], log: &[(u64, u64, Bytes)]) {
    let by_index: HashMap<u64, &(u64, u64, Bytes)> = log.iter().map(|e| (e.0, e)).collect();
    for a in acked {
        let e = by_index.get(&a.0).unwrap_or_else(|| panic!("acknowledged entry {} is missing", a.0));
        assert_eq!((e.1, &e.2), (a.1, &a.2), "acknowledged entry {} moved or changed", a.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_appends_leave_identical_logs() {
    let c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    let acked = append_many(&c, 0, 20, 500).await;
    assert_eq!(acked.len(), 10_000);
    let last = acked.last().unwrap().0;
    for id in 1..=3 {
        c.wait_commit(id, 0, last).await;
    }
    let logs =
        [c.committed_log(1, 0, last).await, c.committed_log(2, 0, last).await, c.committed_log(3, 0, last).await];
    assert_eq!(logs[0], logs[1], "nodes 1 and 2 differ");
    assert_eq!(logs[0], logs[2], "nodes 1 and 3 differ");
    assert_acked_present(&acked, &logs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_nothing_and_it_catches_up() {
    let mut c = Cluster::start(3, 1, 1);
    let old = c.leader(0).await;
    let mut acked = append_many(&c, 0, 4, 50).await;
    c.kill(old);
    let new = c.leader_other_than(0, old).await;
    assert_ne!(new, old);
    acked.extend(append_many(&c, 0, 4, 50).await);
    c.start_node(old);
    let last = acked.iter().map(|a| a.0).max().unwrap();
    c.wait_commit(old, 0, last).await;
    let leader_log = c.committed_log(new, 0, last).await;
    assert_acked_present(&acked, &leader_log);
    assert_eq!(c.committed_log(old, 0, last).await, leader_log, "the restarted old leader caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_log_in_memory_a_follower_catches_up_from_the_leaders_files() {
    // Every applied, durable entry leaves memory at once: the leader can only
    // send the missed entries by reading them back from its log files, and
    // every read below is served from the files too.
    let mut c = Cluster::start_with_config(3, 1, "segment_mib = 8\nlog_memory_mib = 0\n");
    let leader = c.leader(0).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut acked = append_many(&c, 0, 4, 50).await;
    c.kill(follower);
    acked.extend(append_many(&c, 0, 8, 250).await);
    c.start_node(follower);
    acked.extend(append_many(&c, 0, 2, 20).await);
    let last = acked.iter().map(|a| a.0).max().unwrap();
    c.wait_commit(follower, 0, last).await;
    let leader_log = c.committed_log(leader, 0, last).await;
    assert_acked_present(&acked, &leader_log);
    assert_eq!(c.committed_log(follower, 0, last).await, leader_log, "the follower caught up from the files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_across_the_memory_window_are_whole_and_in_order() {
    // 1 MiB of entries in memory, about 2.5 MiB written: reads start in the
    // files and end in memory, cut by byte limits at every kind of place.
    let c = Cluster::start_with_config(3, 1, "segment_mib = 8\nlog_memory_mib = 1\n");
    let leader = c.leader(0).await;
    let mut client = c.client(0);
    let big = Bytes::from(vec![b'x'; 250]);
    let mut last = 0;
    for _ in 0..40 {
        last = client.append_batch(vec![big.clone(); 256]).await.unwrap().1;
    }
    c.wait_commit(leader, 0, last).await;
    let ep = c.endpoints()[leader as usize - 1].clone();
    let mut reader = dledger_client::Client::new(vec![ep.clone()], "dledger", 0, Duration::from_secs(10));
    for max_bytes in [251, 70_000, 700_000] {
        let mut next = 1;
        while next <= last {
            let chunk = reader.read_at(&ep, next, last + 1, max_bytes).await.unwrap();
            assert!(!chunk.is_empty(), "nothing at {next} (max {max_bytes})");
            for e in chunk {
                assert_eq!(e.index, next, "a gap in an answer with max_bytes {max_bytes}");
                next += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_connections_get_their_own_answers_and_fail_over() {
    let mut c = Cluster::start(3, 1, 1);
    let old = c.leader(0).await;
    let shared = dledger_client::SharedConns::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..16 {
        let mut client =
            dledger_client::Client::shared(c.endpoints(), "dledger", 0, Duration::from_secs(10), shared.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut s = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || s < 20 {
                let p = payload(k, s);
                // A kill mid-request may fail it; a failed one is not counted as acked.
                if let Ok((index, term)) = client.append(p.clone()).await {
                    acked.push((index, term, p));
                }
                s += 1;
            }
            acked
        }));
    }
    eventually("appends through the shared connections", Duration::from_secs(10), || {
        let c = &c;
        async move { (c.status(old).await?.first()?.commit_index > 200).then_some(()) }
    })
    .await;
    c.kill(old);
    let new = c.leader_other_than(0, old).await;
    let before = c.status(new).await.unwrap()[0].commit_index;
    eventually("appends after the failover", Duration::from_secs(10), || {
        let c = &c;
        async move { (c.status(new).await?.first()?.commit_index > before + 200).then_some(()) }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // Each answer went to the client that asked: every acknowledged index is distinct.
    let mut indexes: Vec<u64> = acked.iter().map(|a| a.0).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), acked.len(), "two clients were told the same index");
    let last = *indexes.last().unwrap();
    c.wait_commit(new, 0, last).await;
    assert_acked_present(&acked, &c.committed_log(new, 0, last).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_with_no_quorum_and_restart_loses_nothing() {
    let mut c = Cluster::start(3, 1, 1);
    let leader = c.leader(0).await;
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let mut acked = append_many(&c, 0, 2, 20).await;
    // One follower down: appends go on.
    c.kill(followers[0]);
    acked.extend(append_many(&c, 0, 2, 20).await);
    // Two of three down (the other one by SIGTERM): no quorum.
    assert!(c.stop(followers[1]).success(), "clean exit on SIGTERM");
    let mut client = dledger_client::Client::new(c.endpoints(), "dledger", 0, Duration::from_secs(2));
    let err = client.append(Bytes::from_static(b"doomed")).await.unwrap_err();
    assert!(matches!(err, ClientError::NoQuorum { .. }), "expected NoQuorum, got {err}");
    c.start_node(followers[0]);
    c.start_node(followers[1]);
    let new = c.leader(0).await;
    acked.extend(append_many(&c, 0, 1, 5).await);
    let last = acked.iter().map(|a| a.0).max().unwrap();
    c.wait_commit(new, 0, last).await;
    assert_acked_present(&acked, &c.committed_log(new, 0, last).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_named_node() {
    let c = Cluster::start(3, 1, 1);
    let leader = c.leader(0).await;
    let target = if leader == 3 { 1 } else { 3 };
    let mut client = c.client(0);
    client.append(Bytes::from_static(b"before")).await.unwrap();
    client.transfer_leader(target).await.unwrap();
    let now = eventually("the target to lead", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let l = c.leader(0).await;
            (l == target).then_some(l)
        }
    })
    .await;
    assert_eq!(now, target);
    let (index, _) = client.append(Bytes::from_static(b"after")).await.unwrap();
    assert!(index >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_groups_on_two_cores_with_leaders_on_different_nodes() {
    let c = Cluster::start(3, 4, 2);
    for g in 0..4u64 {
        let target = g % 3 + 1;
        c.leader(g).await;
        let mut client = c.client(g);
        client.append(Bytes::from(format!("g{g}-first"))).await.unwrap();
        if c.leader(g).await != target {
            client.transfer_leader(target).await.unwrap();
        }
    }
    let mut leaders = Vec::new();
    for g in 0..4u64 {
        let want = g % 3 + 1;
        let l = eventually(&format!("node {want} to lead group {g}"), Duration::from_secs(10), || {
            let c = &c;
            async move {
                let l = c.leader(g).await;
                (l == want).then_some(l)
            }
        })
        .await;
        leaders.push(l);
    }
    leaders.sort_unstable();
    leaders.dedup();
    assert_eq!(leaders.len(), 3, "leaders spread over the three nodes");
    for g in 0..4u64 {
        let mut client = c.client(g);
        for s in 0..20 {
            client.append(Bytes::from(format!("g{g}-{s}"))).await.unwrap();
        }
    }
    for g in 0..4u64 {
        let l = c.leader(g).await;
        let status = c.status(l).await.unwrap();
        let last = status.iter().find(|s| s.group == g).unwrap().commit_index;
        let log = c.committed_log(l, g, last).await;
        let mine: Vec<_> = log.iter().filter(|e| !e.2.is_empty()).collect();
        assert!(
            mine.iter().all(|e| e.2.starts_with(format!("g{g}-").as_bytes())),
            "group {g} holds only its own entries"
        );
        assert_eq!(mine.len(), 21);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_closes_that_connection_only() {
    let c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x44, 0x4c, 9, 9, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0][..]]
    {
        let mut s = std::net::TcpStream::connect(&c.endpoints()[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the node closed the connection without answering");
    }
    let mut client = c.client(0);
    client.append(Bytes::from_static(b"still fine")).await.unwrap();
    assert!(c.log_text(1).contains("closing connection"), "the reason is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_not_leader_with_the_leaders_address() {
    let c = Cluster::start(3, 1, 1);
    let leader = c.leader(0).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let ep = c.endpoints()[follower as usize - 1].clone();
    let mut client = dledger_client::Client::new(vec![ep.clone()], "dledger", 0, Duration::from_secs(5));
    let r = client
        .call_at(
            &ep,
            dledger_proto::Request::Append { payloads: vec![Bytes::from_static(b"x")] },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let want = c.endpoints()[leader as usize - 1].clone();
    assert_eq!(
        r,
        dledger_proto::Response::Error(dledger_proto::ServerError::NotLeader {
            leader: Some(leader),
            address: Some(want)
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_mid_load_loses_nothing_acknowledged() {
    let mut c = Cluster::start(3, 1, 1);
    let leader = c.leader(0).await;
    // Clients keep appending while the leader is asked to stop.
    let mut tasks = Vec::new();
    for k in 0..4 {
        let mut client = c.client(0);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for s in 0..150 {
                let p = payload(k, s);
                if let Ok((i, t)) = client.append(p.clone()).await {
                    acked.push((i, t, p));
                }
            }
            acked
        }));
    }
    eventually("some appends before the stop", Duration::from_secs(10), || {
        let c = &c;
        async move { c.status(leader).await.and_then(|s| (s[0].commit_index > 50).then_some(())) }
    })
    .await;
    assert!(c.stop(leader).success(), "the leader exits cleanly on SIGTERM");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    c.start_node(leader);
    let new = c.leader(0).await;
    let last = acked.iter().map(|a| a.0).max().unwrap();
    c.wait_commit(new, 0, last).await;
    c.wait_commit(leader, 0, last).await;
    assert_acked_present(&acked, &c.committed_log(new, 0, last).await);
    assert_acked_present(&acked, &c.committed_log(leader, 0, last).await);
    assert!(c.log_text(leader).contains("group stopped"), "the group shut down in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_speaks_prometheus_text() {
    // A single-node cluster with the metrics endpoint on.
    let dir = tempfile::tempdir().unwrap();
    let ports = harness::free_ports(2);
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = 1\nlisten = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n[[peers]]\nid = 1\naddress = \"127.0.0.1:{0}\"\n",
            ports[0],
            ports[1],
            dir.path().join("d").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(harness::dledger_bin())
        .args(["server", "--bootstrap", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("127.0.0.1:{}", ports[0]);
    let mut lone = dledger_client::Client::new(vec![endpoint], "dledger", 0, Duration::from_secs(10));
    lone.append(Bytes::from_static(b"x")).await.unwrap();
    let text = eventually("the metrics endpoint", Duration::from_secs(10), || async {
        let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{}", ports[1])).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for name in [
        "dledger_term{",
        "dledger_role{",
        "dledger_commit_index{",
        "dledger_append_latency_us{",
        "dledger_bytes_written_total{",
        "dledger_write_sync_latency_us{",
        "dledger_log_memory_bytes{",
        "dledger_entries_read_back_total{",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_append_is_refused_and_more_cores_than_groups_serve() {
    // Two cores, one group: every connection, whatever core takes it, must be served.
    let c = Cluster::start(3, 1, 2);
    c.leader(0).await;
    let mut client = c.client(0);
    // Entries up to a batch (here a quarter of an 8 MiB segment) are taken and replicated;
    // a larger one is refused.
    let (big, _) = client.append(Bytes::from(vec![7u8; 3 << 19])).await.unwrap();
    for id in 1..=3 {
        c.wait_commit(id, 0, big).await;
    }
    let err = client.append(Bytes::from(vec![0u8; 5 << 20])).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Server(dledger_proto::ServerError::BadRequest(_))),
        "expected BadRequest, got {err}"
    );
    for k in 0..20 {
        client.append(Bytes::from(format!("after-{k}"))).await.unwrap();
    }
    for _ in 0..10 {
        let mut fresh = c.client(0);
        fresh.append(Bytes::from_static(b"new connection")).await.unwrap();
    }
}
