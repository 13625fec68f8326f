//! Idempotent producers against real processes: a retried session append
//! is in the log once, through a leader's death, a restart of every node
//! and a purge of the entries themselves; the client library's session
//! keeps a paused leader from costing a duplicate or the whole deadline.

mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dledger_proto::{Request, Response, ServerError};
use harness::{eventually, Cluster};

/// One session append at whichever node leads now (asked again while
/// there is none, or it is not ready).
async fn at_leader(c: &Cluster, request: Request) -> Response {
    eventually("a leader to answer the session append", Duration::from_secs(20), || {
        let request = request.clone();
        async move {
            let endpoint = c.endpoints()[c.leader(0).await as usize - 1].clone();
            match c.client(0).call_at(&endpoint, request, Duration::from_secs(5)).await {
                Ok(Response::Error(ServerError::NotLeader { .. } | ServerError::NotReady(_))) | Err(_) => None,
                Ok(r) => Some(r),
            }
        }
    })
    .await
}

fn append(epoch: u32, seq: u64, payloads: &[&'static str]) -> Request {
    let payloads = payloads.iter().map(|p| Bytes::from_static(p.as_bytes())).collect();
    Request::AppendSession { producer_id: 0xfeed, epoch, seq, payloads }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_session_append_is_in_the_log_once_across_failover_restart_and_purge() {
    let mut c = Cluster::start_with_config(3, 1, "segment_mib = 1\nmax_batch_kib = 64\nlog_memory_mib = 1\n");
    let first = at_leader(&c, append(1, 0, &["a"])).await;
    let Response::Appended { first_index: a, term: a_term, .. } = first else { panic!("{first:?}") };
    let dup_a = Response::Duplicate { first_index: a, last_index: a, term: a_term };
    assert_eq!(at_leader(&c, append(1, 0, &["a"])).await, dup_a, "a retry at the same leader");
    assert_eq!(
        at_leader(&c, append(1, 2, &["gap"])).await,
        Response::Error(ServerError::OutOfOrderSequence { expected: 1 })
    );
    let second = at_leader(&c, append(1, 1, &["b", "c"])).await;
    let Response::Appended { first_index: b, last_index: bc, term } = second else { panic!("{second:?}") };
    assert_eq!(bc, b + 1);
    let duplicate = Response::Duplicate { first_index: b, last_index: bc, term };

    // The new leader has the stamp (in its log, committed or not).
    let leader = c.leader(0).await;
    c.kill(leader);
    c.leader_other_than(0, leader).await;
    assert_eq!(at_leader(&c, append(1, 1, &["b", "c"])).await, duplicate, "after the leader's death");
    assert_eq!(at_leader(&c, append(0, 9, &["old"])).await, Response::Error(ServerError::ProducerFenced { epoch: 1 }));
    c.start_node(leader);

    // Purge the entries themselves (about 4 MiB of other appends after them),
    // then restart every node: the table travels with the log start.
    let mut client = c.client(0).without_session();
    let big = Bytes::from(vec![7u8; 32 << 10]);
    let mut last = 0;
    for _ in 0..128 {
        last = client.append_batch(vec![big.clone()]).await.unwrap().1;
    }
    for id in 1..=3 {
        c.wait_commit(id, 0, last).await;
    }
    client.purge_to(last - 10).await.unwrap();
    for id in 1..=3 {
        eventually("every replica to purge past the session's entries", Duration::from_secs(30), || {
            let c = &c;
            async move {
                let s = c.status(id).await?;
                s.iter().find(|g| g.group == 0 && g.first_index > bc).map(|_| ())
            }
        })
        .await;
    }
    for id in 1..=3 {
        c.stop(id);
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    assert_eq!(at_leader(&c, append(1, 1, &["b", "c"])).await, duplicate, "after a purge and a restart of all");
    let next = at_leader(&c, append(1, 3, &["d"])).await;
    assert!(matches!(next, Response::Appended { first_index, .. } if first_index > last), "{next:?}");
}

/// The library's default session under SIGSTOP of the leader: every append
/// is in the log exactly once, and the first append after a pause is
/// acknowledged once a new leader is found rather than after the whole
/// deadline. The pause-to-acknowledgement times are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_costs_the_session_client_neither_a_duplicate_nor_its_deadline() {
    let pauses: usize = std::env::var("PRODUCER_PAUSES").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut c = Cluster::start(3, 1, 1);
    let mut client = c.client(0);
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let mut after_pause_ms = Vec::new();
    let mut duplicates = 0;
    for k in 0..pauses {
        let leader = c.leader(0).await;
        for s in 0..20 {
            let p = Bytes::from(format!("p{k}-{s}"));
            let a = client.append_outcome(vec![p.clone()]).await.unwrap();
            duplicates += usize::from(a.duplicate);
            acked.push((a.first_index, p));
        }
        c.pause(leader);
        let t0 = Instant::now();
        let p = Bytes::from(format!("p{k}-after"));
        let a = client.append_outcome(vec![p.clone()]).await.unwrap_or_else(|e| panic!("pause {k}: {e}"));
        after_pause_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        duplicates += usize::from(a.duplicate);
        acked.push((a.first_index, p));
        c.resume(leader);
    }
    after_pause_ms.sort_by(f64::total_cmp);
    println!(
        "pause (SIGSTOP) of the leader to first acknowledged session append, over {pauses} pauses: p50 {:.0} ms, \
         max {:.0} ms; {duplicates} retries found their original",
        after_pause_ms[after_pause_ms.len() / 2],
        after_pause_ms.last().unwrap()
    );
    let last = acked.iter().map(|a| a.0).max().unwrap();
    c.wait_commit(1, 0, last).await;
    let mut seen: HashMap<Bytes, Vec<u64>> = HashMap::new();
    for (i, _, p) in c.committed_log(1, 0, last).await {
        if !p.is_empty() {
            seen.entry(p).or_default().push(i);
        }
    }
    for (i, p) in &acked {
        assert_eq!(seen.get(p), Some(&vec![*i]), "{p:?} is in the log exactly once, where it was acknowledged");
    }
}
