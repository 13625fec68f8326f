//! Storage faults under real processes: a corrupt sealed segment on a
//! stopped follower, a follower whose data directory is wiped or whose vote
//! record is lost, a follower whose disk fills up, and a leader whose disk
//! fills up.

mod harness;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use dledger_proto::ServerError;
use harness::{eventually, move_data_to, Cluster, SmallFs};

async fn fill(c: &Cluster, entries: usize, size: usize) -> Vec<(u64, u64)> {
    let mut tasks = Vec::new();
    for k in 0..8 {
        let mut client = c.client(0);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for s in 0..entries / 8 {
                let p = Bytes::from(format!("{k}-{s}-{}", "x".repeat(size)));
                acked.push(client.append(p).await.unwrap());
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// A bit flipped in a sealed segment of a stopped follower. With the
/// segment's summary, the node starts (its other entries, and every other
/// group, serve) and a read of a damaged entry answers an error naming the
/// damage, never wrong bytes; without the summary, the open scans the
/// segment and refuses, naming it, and truncates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_sealed_segment_on_a_follower_serves_nothing_wrong() {
    let mut c = Cluster::start_with_config(3, 1, "segment_mib = 2\n");
    c.leader(0).await;
    let acked = fill(&c, 4000, 1000).await;
    // The leader may have moved during the load: pick a follower now.
    let leader = c.leader(0).await;
    let follower = if leader == 3 { 2 } else { 3 };
    assert!(c.stop(follower).success());
    let dir = c.data_dir(follower).join("group-0");
    let segs = segments(&dir);
    assert!(segs.len() >= 2, "a sealed segment exists: {segs:?}");
    let mut img = std::fs::read(&segs[0]).unwrap();
    // Flip a bit inside the entries of the segment's first batch (not its padding, which
    // holds no data): the batch header at 4096 gives the body length at bytes 20..24.
    let body_len = u32::from_le_bytes(img[4096 + 20..4096 + 24].try_into().unwrap()) as usize;
    assert!(body_len > 0);
    img[4096 + 32 + body_len / 2] ^= 0x10;
    std::fs::write(&segs[0], &img).unwrap();
    let before = std::fs::read(&segs[0]).unwrap();

    // Summarized: it starts, and its damaged entries are errors, the rest the leader's.
    c.start_node(follower);
    let max = acked.iter().map(|a| a.0).max().unwrap();
    c.wait_commit(follower, 0, max).await;
    let endpoint = c.endpoints()[follower as usize - 1].clone();
    let mut client = c.client(0);
    let leader_log = c.committed_log(c.leader(0).await, 0, max).await;
    let mut damaged = 0;
    for i in 1..=max.min(200) {
        match client.read_at(&endpoint, i, i + 1, 0).await {
            Ok(e) => assert_eq!((e[0].index, e[0].term), (i, leader_log[i as usize - 1].1), "entry {i}"),
            Err(e) => {
                assert!(e.to_string().contains("corrupt"), "entry {i}: {e}");
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0, "the damaged batch's entries are refused");
    assert!(c.stop(follower).success(), "the node ran on with a damaged segment");
    assert_eq!(std::fs::read(&segs[0]).unwrap(), before, "nothing was truncated or rewritten");

    // Without the summary: the open scans the segment and refuses, with a reason naming it.
    std::fs::remove_file(format!("{}.idx", segs[0].display())).unwrap();
    let err = start_expecting_refusal(&c, follower).await;
    assert!(err.contains("corrupt log") && err.contains(&*segs[0].to_string_lossy()), "{err}");
    assert_eq!(std::fs::read(&segs[0]).unwrap(), before, "nothing was truncated or rewritten");
    // The two others go on, with every acknowledged entry.
    the_others_keep_every_acknowledged_entry(&c, acked).await;
}

/// A new append commits, and the leader's committed log holds every `acked` (index, term).
async fn the_others_keep_every_acknowledged_entry(c: &Cluster, acked: Vec<(u64, u64)>) {
    let mut client = c.client(0);
    let (last, _) = client.append(Bytes::from_static(b"after")).await.unwrap();
    let max = acked.iter().map(|a| a.0).max().unwrap();
    assert!(last > max);
    let log = c.committed_log(c.leader(0).await, 0, max).await;
    for (i, t) in acked {
        assert_eq!(log[i as usize - 1].1, t, "entry {i}");
    }
}

/// Starts `id` as an operator would restart it (its own config, no bootstrap)
/// and returns what it printed when it refused to start.
async fn start_expecting_refusal(c: &Cluster, id: u64) -> String {
    let mut child = Command::new(harness::dledger_bin())
        .args(["server", "--config", c.nodes[id as usize - 1].config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("the node to refuse to start", Duration::from_secs(20), || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "node {id} must not start");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

/// The held-back fault test's first step, and the meta-record fault: a
/// follower whose vote record (`meta`) is deleted, then one whose whole
/// data directory is wiped, is restarted with its old config. Either would
/// come back with no vote and an empty or shorter log and could vote twice
/// in a term (the test that found it lost 28,246 acknowledged appends); both
/// are refused, with a reason, and the other two keep every acknowledged
/// entry and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_vote_record_or_its_data_refuses_to_rejoin() {
    let mut c = Cluster::start(3, 1, 1);
    c.leader(0).await;
    let acked = fill(&c, 800, 100).await;
    let leader = c.leader(0).await;
    let follower = if leader == 3 { 2 } else { 3 };
    assert!(c.stop(follower).success());

    let meta = c.data_dir(follower).join("group-0").join("meta");
    let saved = std::fs::read(&meta).unwrap();
    std::fs::remove_file(&meta).unwrap();
    let err = start_expecting_refusal(&c, follower).await;
    // The identity check refuses it first (the group's record is gone); the
    // engine would too ("missing beside the log's segments").
    assert!(err.contains("gone or emptied") && err.contains("must not rejoin"), "{err}");
    assert!(!meta.exists(), "the refusal created nothing");
    // Both copies damaged: refused too.
    let mut damaged = saved.clone();
    damaged[10] ^= 0xff;
    damaged[4096 + 10] ^= 0xff;
    std::fs::write(&meta, &damaged).unwrap();
    let err = start_expecting_refusal(&c, follower).await;
    assert!(err.contains("both copies of the record are damaged"), "{err}");
    // Zeroed (reads as never written) beside a log with entries: refused too.
    std::fs::write(&meta, vec![0u8; saved.len()]).unwrap();
    let err = start_expecting_refusal(&c, follower).await;
    assert!(err.contains("reads as never written") && err.contains("must not rejoin"), "{err}");

    std::fs::remove_dir_all(c.data_dir(follower)).unwrap();
    let err = start_expecting_refusal(&c, follower).await;
    assert!(err.contains("missing or empty") && err.contains("must not rejoin as the same voter"), "{err}");
    assert!(!c.data_dir(follower).exists(), "nothing was created");

    // The two others go on, with every acknowledged entry.
    the_others_keep_every_acknowledged_entry(&c, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_loses_nothing_and_resumes_when_space_returns() {
    let fs = match SmallFs::new(64) {
        Ok(fs) => fs,
        Err(why) => return println!("SKIP: no loop-mounted ext4 here: {why}"),
    };
    let mut c = Cluster::start_with_config(3, 1, "segment_mib = 2\n");
    let leader = c.leader(0).await;
    let follower = if leader == 3 { 2 } else { 3 };
    // Move the follower's data onto the small file system, and fill that almost up.
    move_data_to(&mut c, follower, &fs);
    let filler = fs.mnt.join("filler");
    let _ = Command::new("fallocate").args(["-l", "50M"]).arg(&filler).status();
    let acked = fill(&c, 8000, 1000).await;
    let max = acked.iter().map(|a| a.0).max().unwrap();
    eventually("the follower to report a full disk", Duration::from_secs(30), || {
        let c = &c;
        async move { c.log_text(follower).contains("disk full").then_some(()) }
    })
    .await;
    let stuck = c.status(follower).await.expect("the follower still answers").first().unwrap().last_index;
    assert!(stuck < max, "the follower could not take everything ({stuck} < {max})");
    // Space returns: the follower catches up on its own.
    std::fs::remove_file(&filler).unwrap();
    c.wait_commit(follower, 0, max).await;
    let on_follower = c.committed_log(follower, 0, max).await;
    let on_leader = c.committed_log(leader, 0, max).await;
    assert_eq!(on_follower, on_leader);
    for (i, t) in acked {
        assert_eq!(on_leader[i as usize - 1].1, t, "entry {i}");
    }
    assert!(c.log_text(follower).contains("appends resume"));
    c.kill(follower);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_full_disk_refuses_appends_with_disk_full_and_loses_nothing() {
    let fs = match SmallFs::new(64) {
        Ok(fs) => fs,
        Err(why) => return println!("SKIP: no loop-mounted ext4 here: {why}"),
    };
    let mut c = Cluster::start_with_config(3, 1, "segment_mib = 2\n");
    let first = c.leader(0).await;
    let small = if first == 3 { 2 } else { 3 };
    move_data_to(&mut c, small, &fs);
    let mut client = c.client(0);
    eventually("leadership on the node with the small disk", Duration::from_secs(30), || {
        let c = &c;
        let mut client = c.client(0);
        async move {
            let _ = client.transfer_leader(small).await;
            (c.leader(0).await == small).then_some(())
        }
    })
    .await;
    let filler = fs.mnt.join("filler");
    let _ = Command::new("fallocate").args(["-l", "50M"]).arg(&filler).status();
    // Appends until the leader says its disk is full (14 MB of room, 1 KB entries).
    let mut acked = Vec::new();
    let refused = loop {
        let p = Bytes::from(format!("{}-{}", acked.len(), "x".repeat(1000)));
        match client.append(p.clone()).await {
            Ok((index, term)) => acked.push((index, term, p)),
            Err(dledger_client::ClientError::Server(e @ ServerError::DiskFull(_))) => break e,
            Err(e) => panic!("append {} failed with {e}, not a disk-full refusal", acked.len()),
        }
        assert!(acked.len() < 40_000, "64 MB of appends and no refusal");
    };
    println!("refused after {} appends: {refused}", acked.len());
    // Space returns: appends are taken again, and nothing acknowledged is lost.
    std::fs::remove_file(&filler).unwrap();
    let (index, term) = eventually("appends accepted again", Duration::from_secs(30), || {
        let mut client = c.client(0);
        async move { client.append(Bytes::from_static(b"after")).await.ok() }
    })
    .await;
    let leader = c.leader(0).await;
    c.wait_commit(leader, 0, index).await;
    let log = c.committed_log(leader, 0, index).await;
    assert_eq!((log[index as usize - 1].1, &log[index as usize - 1].2[..]), (term, &b"after"[..]));
    for (i, t, p) in acked {
        assert_eq!((log[i as usize - 1].1, &log[i as usize - 1].2), (t, &p), "entry {i}");
    }
    c.kill(small);
}

/// The segment files of a group directory, oldest first.
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Waits until node `id` reports group 1 as failed; its status row.
async fn group_failed_on(c: &Cluster, id: u64, limit: Duration) -> dledger_proto::GroupStatus {
    eventually(&format!("group 1 to be failed on node {id}"), limit, || async move {
        c.status(id).await?.into_iter().find(|g| g.group == 1 && g.role == "failed")
    })
    .await
}

/// Flips a byte in the body of every batch of the first `batches` of segment image `img`.
fn damage_batches(img: &mut [u8], batches: usize) {
    let mut at = 4096;
    for _ in 0..batches {
        if at + 32 > img.len() {
            return;
        }
        let body_len = u32::from_le_bytes(img[at + 20..at + 24].try_into().unwrap()) as usize;
        if body_len == 0 {
            return;
        }
        img[at + 32 + body_len / 2] ^= 0x10;
        at += (32 + body_len).div_ceil(4096) * 4096;
    }
}

/// A group whose log fails on a running node (here: the leader must send a
/// lagging follower entries from batches damaged on its disk) stops serving
/// and says why, while the node's other group goes on; the failed group goes
/// on too, on the other two nodes, with a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_stops_alone_and_the_nodes_other_groups_go_on() {
    let mut c = Cluster::start_with_config(3, 2, "segment_mib = 1\nmax_batch_kib = 64\nlog_memory_mib = 1\n");
    let damaged = c.leader(1).await;
    let lagging = (1..=3).find(|&id| id != damaged).unwrap();
    assert!(c.stop(lagging).success());
    let mut g1 = c.client(1);
    let mut last = 0;
    for b in 0..60 {
        let payloads: Vec<Bytes> = (0..32).map(|k| Bytes::from(format!("{b}-{k}-{}", "z".repeat(1000)))).collect();
        last = g1.append_batch(payloads).await.unwrap().1;
    }
    // Damage the oldest batches of group 1 on one node while it is down (a fresh process
    // reads them from the disk, not from memory), then make it the leader again.
    assert!(c.stop(damaged).success());
    let dir = c.data_dir(damaged).join("group-1");
    let segs = segments(&dir);
    let mut img = std::fs::read(&segs[0]).unwrap();
    damage_batches(&mut img, 8);
    std::fs::write(&segs[0], &img).unwrap();
    c.start_node(damaged);
    c.wait_commit(damaged, 1, last).await;
    eventually("the damaged node to lead group 1", Duration::from_secs(20), || {
        let mut g1 = c.client(1);
        let c = &c;
        async move {
            if c.leader(1).await != damaged {
                let _ = g1.transfer_leader(damaged).await;
            }
            (c.leader(1).await == damaged).then_some(())
        }
    })
    .await;
    // The lagging node returns: the leader must read the damaged batches for it.
    c.start_node(lagging);
    let failed = group_failed_on(&c, damaged, Duration::from_secs(30)).await;
    assert_eq!(failed.node, damaged);
    assert!(c.log_text(damaged).contains("the node's other groups go on"));
    // The node is up, and its group 0 still serves.
    c.client(0).append(Bytes::from_static(b"group 0 goes on")).await.unwrap();
    assert!(c.status(damaged).await.unwrap().iter().any(|g| g.group == 0 && g.role != "failed"));
    // Group 1 goes on elsewhere, with a new leader; the failed node names why it refuses.
    let (i, _) = g1.append(Bytes::from_static(b"group 1 goes on")).await.unwrap();
    c.wait_commit(lagging, 1, i).await;
    let ep = c.endpoints()[damaged as usize - 1].clone();
    let err = c.client(1).read_at(&ep, i, i + 1, 0).await.unwrap_err().to_string();
    assert!(err.contains("group 1 failed") && err.contains("restart the node"), "{err}");
}

/// A node with two groups, one of whose logs is corrupt in the middle (a
/// sealed segment without its summary, so the open scans it): the node
/// starts, the corrupt group is refused alone and says why, the other serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_corrupt_at_start_is_refused_alone() {
    let mut c = Cluster::start_with_config(3, 2, "segment_mib = 1\nmax_batch_kib = 64\n");
    c.leader(1).await;
    let mut g1 = c.client(1);
    for b in 0..60 {
        let payloads: Vec<Bytes> = (0..32).map(|k| Bytes::from(format!("{b}-{k}-{}", "w".repeat(1000)))).collect();
        g1.append_batch(payloads).await.unwrap();
    }
    let victim = c.leader(0).await % 3 + 1;
    c.wait_commit(victim, 1, g1.append(Bytes::from_static(b"x")).await.unwrap().0).await;
    assert!(c.stop(victim).success());
    let dir = c.data_dir(victim).join("group-1");
    let segs = segments(&dir);
    let mut img = std::fs::read(&segs[0]).unwrap();
    damage_batches(&mut img, 1);
    std::fs::write(&segs[0], &img).unwrap();
    let _ = std::fs::remove_file(format!("{}.idx", segs[0].display()));
    c.start_node(victim);
    let failed = group_failed_on(&c, victim, Duration::from_secs(20)).await;
    assert_eq!(failed.node, victim);
    assert!(c.log_text(victim).contains("group refused at start"));
    let ep = c.endpoints()[victim as usize - 1].clone();
    let mut fresh = c.client(1);
    let err = fresh.read_at(&ep, 1, 2, 0).await.unwrap_err().to_string();
    assert!(err.contains("corrupt log"), "{err}");
    // Its group 0 serves and follows the cluster.
    let (i, _) = c.client(0).append(Bytes::from_static(b"group 0")).await.unwrap();
    c.wait_commit(victim, 0, i).await;
}
