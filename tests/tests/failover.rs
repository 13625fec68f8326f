//! Kill the leader again and again: every time a new leader must serve
//! appends, and nothing acknowledged may be lost. Prints the failover time
//! (kill → first append acknowledged by the new leader) as p50/p99/max; the
//! figures go in the README, they are never asserted.

mod harness;

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use harness::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills() {
    let kills: usize = std::env::var("FAILOVER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut c = Cluster::start(3, 1, 1);
    let mut client = c.client(0);
    let mut acked: Vec<(u64, u64, Bytes)> = Vec::new();
    let mut failover_ms = Vec::new();
    for k in 0..kills {
        let leader = c.leader(0).await;
        for s in 0..5 {
            let p = Bytes::from(format!("k{k}-{s}"));
            let (i, t) = client.append(p.clone()).await.unwrap();
            acked.push((i, t, p));
        }
        let t0 = Instant::now();
        c.kill(leader);
        let p = Bytes::from(format!("k{k}-after"));
        let (i, t) = client.append(p.clone()).await.unwrap_or_else(|e| panic!("kill {k}: no new leader served: {e}"));
        failover_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        acked.push((i, t, p));
        c.start_node(leader);
    }
    failover_ms.sort_by(f64::total_cmp);
    let q = |p: f64| failover_ms[((failover_ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "failover over {kills} leader kills (kill -9 to first acknowledged append): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(0.5),
        q(0.99),
        failover_ms.last().unwrap()
    );
    // Nothing acknowledged was lost or moved, on any node once it caught up.
    let last = acked.iter().map(|a| a.0).max().unwrap();
    for id in 1..=3 {
        c.wait_commit(id, 0, last).await;
        let log: HashMap<u64, (u64, Bytes)> =
            c.committed_log(id, 0, last).await.into_iter().map(|(i, t, p)| (i, (t, p))).collect();
        for (i, t, p) in &acked {
            assert_eq!(log.get(i), Some(&(*t, p.clone())), "node {id}: acknowledged entry {i} lost or changed");
        }
    }
}
