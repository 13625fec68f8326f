//! The log's lifecycle under real processes: retention purges the log while
//! appends go on, and a follower that was down while the leader purged past
//! its last entry catches up from the leader's log start.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use dledger_proto::GroupStatus;
use harness::{eventually, move_data_to, Cluster, SmallFs};

/// Small segments, so that a few MiB of appends seal and purge several.
const SMALL_LOG: &str = "segment_mib = 1\nmax_batch_kib = 64\nlog_memory_mib = 1\n\
                         [retention]\nmax_log_mib = 2\nhold_for_followers_mib = 1\n";

async fn group_status(c: &Cluster, id: u64) -> Option<GroupStatus> {
    c.status(id).await.and_then(|s| s.into_iter().find(|g| g.group == 0))
}

/// Appends `batches` batches of 32 entries of about 1 KiB; returns each acknowledged (first, last) range.
async fn append_batches(c: &Cluster, tag: &str, batches: usize) -> Vec<(u64, u64, Vec<Bytes>)> {
    let mut client = c.client(0);
    let mut acked = Vec::new();
    for b in 0..batches {
        let payloads: Vec<Bytes> =
            (0..32).map(|k| Bytes::from(format!("{tag}-{b}-{k}-{}", "x".repeat(1000)))).collect();
        let (first, last, _) = client.append_batch(payloads.clone()).await.unwrap();
        assert_eq!(last + 1 - first, 32);
        acked.push((first, last, payloads));
    }
    acked
}

/// Every node's committed log above the largest log start, once all three
/// can be read there (a purge may pass the start between the status and the
/// read: then the start is taken again).
async fn logs_above_largest_start(c: &Cluster, last: u64) -> (u64, [Vec<(u64, u64, Bytes)>; 3]) {
    eventually("every log readable above the largest start", Duration::from_secs(20), || async move {
        let mut from = 0;
        for id in 1..=3 {
            from = from.max(group_status(c, id).await?.first_index);
        }
        let a = c.try_committed_log_from(1, 0, from, last).await.ok()?;
        let b = c.try_committed_log_from(2, 0, from, last).await.ok()?;
        let d = c.try_committed_log_from(3, 0, from, last).await.ok()?;
        Some((from, [a, b, d]))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_catches_up_from_it() {
    follower_left_behind(SMALL_LOG, 8 << 20).await;
}

/// The hold's byte cap is beyond what the test writes (256 MiB), its time cap one second: a
/// follower whose log stops moving is held for no longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_for_a_stopped_follower_ends_after_its_time_cap() {
    let config = "segment_mib = 1\nmax_batch_kib = 64\nlog_memory_mib = 1\n\
                  [retention]\nmax_log_mib = 2\nhold_for_followers_mib = 256\nhold_for_followers_secs = 1\n";
    follower_left_behind(config, 260 << 20).await;
}

/// Stops a follower, appends until the leader's log starts past it (its log
/// never above `max_disk_bytes`), restarts it, and checks that it caught up
/// from the leader's start with every acknowledged entry there.
async fn follower_left_behind(config: &str, max_disk_bytes: u64) {
    let mut c = Cluster::start_with_config(3, 1, config);
    let leader = c.leader(0).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    append_batches(&c, "before", 20).await;
    let stopped_at = eventually("the follower to hold the first appends", Duration::from_secs(20), || {
        let c = &c;
        async move { group_status(c, follower).await.filter(|g| g.commit_index >= 640).map(|g| g.last_index) }
    })
    .await;
    assert!(c.stop(follower).success());

    // Keep appending until the leader's log starts past everything the follower holds.
    let mut acked = Vec::new();
    let leader_first = loop {
        acked.extend(append_batches(&c, "while-down", 20).await);
        let g = group_status(&c, leader).await.expect("leader answers");
        assert!(g.disk_bytes <= max_disk_bytes, "the leader's log stays bounded: {} bytes", g.disk_bytes);
        if g.first_index > stopped_at + 1 {
            break g.first_index;
        }
        assert!(acked.len() < 2000, "the leader never purged past the stopped follower: {g:?}");
    };
    println!(
        "follower {follower} stopped at {stopped_at}; the leader's log starts at {leader_first} after {} batches",
        acked.len()
    );
    // Below the start, a read is refused with the first index named.
    let err = c.client(0).get(1).await.unwrap_err().to_string();
    assert!(err.contains(&format!("the log starts at {leader_first}")) || err.contains("purged"), "{err}");

    c.start_node(follower);
    acked.extend(append_batches(&c, "after", 5).await);
    let (_, last, _) = *acked.last().unwrap();
    c.wait_commit(follower, 0, last).await;
    let g = group_status(&c, follower).await.unwrap();
    assert!(g.first_index > stopped_at, "the follower starts at the leader's log start: {g:?}");
    assert!(c.log_text(follower).contains("installing the leader's log start"));

    // Every node's log is identical above the largest start, and holds every acknowledged entry there.
    let (from, logs) = logs_above_largest_start(&c, last).await;
    assert!(logs[0] == logs[1] && logs[1] == logs[2], "logs differ above index {from}");
    for (first, _, payloads) in acked.iter().filter(|(first, _, _)| *first >= from) {
        for (k, p) in payloads.iter().enumerate() {
            let (index, _, payload) = &logs[0][(first + k as u64 - from) as usize];
            assert_eq!((*index, payload), (first + k as u64, p), "acknowledged entry at {}", first + k as u64);
        }
    }
}

/// Each node on its own 64 MiB ext4: ten times that is written, and size
/// retention keeps every disk far from full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_forever_on_a_bounded_disk() {
    const FS_MIB: u64 = 64;
    let mut disks = Vec::new();
    for _ in 0..3 {
        match SmallFs::new(FS_MIB) {
            Ok(fs) => disks.push(fs),
            Err(why) => return println!("SKIP: no loop-mounted ext4 here: {why}"),
        }
    }
    let config = "segment_mib = 2\nmax_batch_kib = 256\nlog_memory_mib = 4\n\
                  [retention]\nmax_log_mib = 12\nhold_for_followers_mib = 8\n\
                  purge_below_free_percent = 40\nrefuse_below_free_percent = 5\n";
    let mut c = Cluster::start_with_config(3, 1, config);
    c.leader(0).await;
    for (id, fs) in (1..=3).zip(&disks) {
        move_data_to(&mut c, id, fs);
        c.leader(0).await;
    }
    let target_bytes = 10 * (FS_MIB << 20);
    let clients = 4;
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut client = c.client(0);
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            let mut last = 0;
            let mut b = 0;
            while written < target_bytes / clients {
                let payloads: Vec<Bytes> =
                    (0..32).map(|e| Bytes::from(format!("{k}-{b}-{e}-{}", "y".repeat(4000)))).collect();
                written += payloads.iter().map(|p| p.len() as u64).sum::<u64>();
                let (_, l, _) = client.append_batch(payloads).await.unwrap_or_else(|e| panic!("append: {e}"));
                last = last.max(l);
                b += 1;
            }
            last
        }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    c.wait_commit(1, 0, last).await;
    c.wait_commit(2, 0, last).await;
    c.wait_commit(3, 0, last).await;
    for id in 1..=3 {
        let g = group_status(&c, id).await.unwrap();
        println!("node {id}: first index {}, last {}, {} MiB of log", g.first_index, g.last_index, g.disk_bytes >> 20);
        assert!(g.disk_bytes <= 24 << 20, "node {id} keeps a bounded log: {g:?}");
        assert!(g.first_index > 1, "node {id} purged");
        assert!(!c.log_text(id).contains("disk full") && !c.log_text(id).contains("appends refused"));
    }
    let (from, logs) = logs_above_largest_start(&c, last).await;
    assert!(logs[0] == logs[1] && logs[1] == logs[2], "logs differ above index {from}");
    for id in 1..=3 {
        c.kill(id);
    }
}

/// An operator's purge is a replicated command: refused above the commit
/// index, and once committed every replica drops its whole segments up to
/// it, with retention off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_purge_reaches_every_replica_and_is_refused_above_the_commit_index() {
    let c = Cluster::start_with_config(3, 1, "segment_mib = 1\nmax_batch_kib = 64\nlog_memory_mib = 1\n");
    c.leader(0).await;
    // About 4 MiB: several sealed 1 MiB segments.
    let acked = append_batches(&c, "kept", 120).await;
    let (_, last, _) = *acked.last().unwrap();
    for id in 1..=3 {
        c.wait_commit(id, 0, last).await;
    }
    let mut client = c.client(0);
    let err = client.purge_to(last + 1000).await.unwrap_err().to_string();
    assert!(err.contains("cannot purge to index") && err.contains("committed only up to"), "{err}");
    for id in 1..=3 {
        assert_eq!(group_status(&c, id).await.unwrap().first_index, 1, "a refused purge purges nothing");
    }
    let to = last - 500;
    let at = client.purge_to(to).await.unwrap();
    assert!(at > last, "the purge is an entry of its own, after what it purges");
    for id in 1..=3 {
        let first = eventually("the replica to purge", Duration::from_secs(20), || {
            let c = &c;
            async move { group_status(c, id).await.map(|g| g.first_index).filter(|&f| f > 1) }
        })
        .await;
        assert!(first <= to + 1, "node {id} purged past the purge point: first index {first}, purge to {to}");
        println!("node {id}: the log starts at {first} after a purge to {to}");
    }
    // Above the purge point every entry is still there, on every node; the purge entry reads as empty.
    let (from, logs) = logs_above_largest_start(&c, at).await;
    assert!(logs[0] == logs[1] && logs[1] == logs[2], "logs differ above index {from}");
    assert!(logs[0].last().is_some_and(|(i, _, p)| *i == at && p.is_empty()));
    let err = client.get(1).await.unwrap_err().to_string();
    assert!(err.contains("was purged"), "{err}");
}
