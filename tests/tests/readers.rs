//! Readers of the commit log, with real processes: a subscription reads
//! every committed entry in order from any replica and goes on across the
//! loss of the one it reads from; a long poll waits for entries and answers
//! idle with a heartbeat; a start below the log start resolves as asked;
//! `dledger tail` prints the log.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use dledger_client::{Client, ClientError, OnPurged, StartAt};
use dledger_proto::{Request, Response, ServerError};
use harness::{eventually, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_reads_every_entry_in_order_across_the_loss_of_its_replica() {
    let mut c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    // An appender in the background: 60 batches of 20 distinct payloads.
    let mut writer = c.client(0);
    let appends = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for b in 0..60 {
            let payloads: Vec<Bytes> = (0..20).map(|k| Bytes::from(format!("b{b}-{k}"))).collect();
            if let Ok((first, _, _)) = writer.append_batch(payloads.clone()).await {
                for (k, p) in payloads.into_iter().enumerate() {
                    acked.insert(first + k as u64, p);
                }
            }
        }
        acked
    });
    let mut sub = c.client(0).subscribe(StartAt::Earliest, OnPurged::Fail);
    let mut got: Vec<(u64, Bytes)> = Vec::new();
    let mut killed = None;
    while got.len() < 600 {
        let e = sub.next().await.unwrap();
        got.push((e.index, e.payload));
        if killed.is_none() && got.len() == 300 {
            // Kill the replica being read from; the subscription moves on.
            let replica = sub.replica().to_string();
            let id = c.endpoints().iter().position(|e| *e == replica).unwrap() as u64 + 1;
            c.kill(id);
            killed = Some(id);
        }
    }
    let acked = appends.await.unwrap();
    let last_acked = *acked.keys().last().unwrap();
    while got.last().unwrap().0 < last_acked {
        let e = sub.next().await.unwrap();
        got.push((e.index, e.payload));
    }
    assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1), "consecutive indexes, no gap, no repeat");
    assert_eq!(got[0].0, 1);
    let delivered: BTreeMap<u64, Bytes> = got.into_iter().collect();
    for (i, p) in &acked {
        assert_eq!(delivered.get(i), Some(p), "acknowledged entry {i}");
    }
    println!("read {} entries; node {:?} killed half-way", delivered.len(), killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_an_async_stream_of_the_log() {
    use futures_util::StreamExt;
    let c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    let mut writer = c.client(0);
    for k in 0..5 {
        writer.append(Bytes::from(format!("s{k}"))).await.unwrap();
    }
    // The first five commands, in order (index 1 is the first leader's no-op, read as empty).
    let stream = c.client(0).subscribe(StartAt::Earliest, OnPurged::Fail).into_stream();
    let got: Vec<_> = stream
        .map(|e| e.unwrap())
        .filter(|e| std::future::ready(!e.payload.is_empty()))
        .take(5)
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect()
        .await;
    assert_eq!(got, ["s0", "s1", "s2", "s3", "s4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_idle_with_a_heartbeat_and_early_with_new_entries() {
    let c = Cluster::start(3, 1, 1);
    let leader = c.leader(0).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let (last, _) = c.client(0).append(Bytes::from_static(b"first")).await.unwrap();
    c.wait_commit(follower, 0, last).await;
    let ep = c.endpoints()[follower as usize - 1].clone();
    let mut raw = Client::new(vec![ep.clone()], "dledger", 0, Duration::from_secs(10));
    // Idle: nothing after `last` within 300 ms: an empty batch naming where the follower stands.
    let idle = Request::Subscribe { from: last + 1, max_bytes: 0, min_bytes: 1, max_wait_ms: 300 };
    match raw.call_at(&ep, idle, Duration::from_secs(5)).await.unwrap() {
        Response::Batch { entries, commit_index, log_start, leader: hint } => {
            assert!(entries.is_empty());
            assert_eq!((commit_index, log_start, hint), (last, 1, Some(leader)));
        }
        other => panic!("{other:?}"),
    }
    // A long poll held by the follower is answered when an entry commits, well before its 20 s.
    let waiting = tokio::spawn(async move {
        let poll = Request::Subscribe { from: last + 1, max_bytes: 0, min_bytes: 1, max_wait_ms: 20_000 };
        raw.call_at(&ep, poll, Duration::from_secs(15)).await
    });
    let (next, _) = c.client(0).append(Bytes::from_static(b"second")).await.unwrap();
    match waiting.await.unwrap().unwrap() {
        Response::Batch { entries, .. } => {
            assert_eq!((entries[0].index, &entries[0].payload[..]), (next, &b"second"[..]));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_below_the_log_start_fails_or_skips_to_it_as_asked() {
    let config = "segment_mib = 1\nmax_batch_kib = 64\nlog_memory_mib = 1\n[retention]\nmax_log_mib = 2\n";
    let c = Cluster::start_with_config(3, 1, config);
    c.leader(0).await;
    let mut client = c.client(0);
    for b in 0..100 {
        let payloads: Vec<Bytes> = (0..32).map(|k| Bytes::from(format!("{b}-{k}-{}", "x".repeat(1000)))).collect();
        client.append_batch(payloads).await.unwrap();
    }
    let first = eventually("every node to purge", Duration::from_secs(20), || {
        let c = &c;
        async move {
            let mut min = u64::MAX;
            for id in 1..=3 {
                let g = c.status(id).await?.into_iter().find(|g| g.group == 0)?;
                min = min.min(g.first_index);
            }
            (min > 1).then_some(min)
        }
    })
    .await;
    let mut strict = client.subscribe(StartAt::Index(1), OnPurged::Fail);
    match strict.next().await {
        Err(ClientError::Server(ServerError::OutOfRange { index: 1, first: f, .. })) => assert!(f >= first),
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    let mut skipping = client.subscribe(StartAt::Index(1), OnPurged::Earliest);
    let e = skipping.next().await.unwrap();
    assert!(e.index >= first && e.index == skipping.log_start, "{} from log start {}", e.index, skipping.log_start);
    let mut latest = client.subscribe(StartAt::Latest, OnPurged::Fail);
    latest.max_wait = Duration::from_millis(200);
    assert!(latest.poll().await.unwrap().is_empty(), "nothing new yet");
    let (i, _) = client.append(Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(latest.next().await.unwrap().index, i);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dledger_tail_prints_the_log() {
    let c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    let mut client = c.client(0);
    let (first, last, _) =
        client.append_batch((0..5).map(|k| Bytes::from(format!("line-{k}"))).collect()).await.unwrap();
    let out = std::process::Command::new(harness::dledger_bin())
        .args(["tail", "--endpoints", &c.endpoints().join(","), "--earliest"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for (k, i) in (first..=last).enumerate() {
        assert!(
            text.lines().any(|l| l == format!("{i}\t1\tline-{k}")
                || l.starts_with(&format!("{i}\t")) && l.ends_with(&format!("line-{k}"))),
            "{text}"
        );
    }
    let out = std::process::Command::new(harness::dledger_bin())
        .args(["tail", "--endpoints", &c.endpoints().join(","), "--from", &last.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.ends_with("line-4\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_over_a_pooled_connection_to_a_restarted_node_is_sent_again_on_a_fresh_one() {
    let mut c = Cluster::start(3, 1, 1);
    let leader = c.leader(0).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let (i, _) = c.client(0).append(Bytes::from_static(b"kept")).await.unwrap();
    c.wait_commit(follower, 0, i).await;
    let ep = c.endpoints()[follower as usize - 1].clone();
    let mut client = c.client(0);
    assert_eq!(&client.read_at(&ep, i, i + 1, 0).await.unwrap()[0].payload[..], b"kept");
    assert!(c.stop(follower).success());
    c.start_node(follower);
    c.wait_commit(follower, 0, i).await;
    // The client's connection to the follower belongs to the old process.
    assert_eq!(&client.read_at(&ep, i, i + 1, 0).await.unwrap()[0].payload[..], b"kept");
}
