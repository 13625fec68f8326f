//! `dledger bench` against a real cluster: the report, its JSON, the plot and
//! the SLO gate (figures are printed, never asserted beyond sanity).

mod harness;

use std::process::Command;

use harness::{dledger_bin, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_json_plots_and_gates_on_an_slo() {
    let c = Cluster::start(3, 2, 1);
    c.leader(0).await;
    c.leader(1).await;
    let eps = c.endpoints().join(",");
    let plot = c.path().join("bench.svg");
    let o = Command::new(dledger_bin())
        .args(["bench", "--endpoints", &eps, "--clients", "8", "--groups", "2", "--batch", "4"])
        .args(["--seconds", "1", "--warmup", "0.2", "--json", "--plot", plot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    for k in ["entries_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms", "max_ms", "errors", "timeline"] {
        assert!(j.get(k).is_some(), "report lacks {k}: {j}");
    }
    assert!(j["entries_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(j["entries"].as_u64().unwrap() % 4, 0, "whole batches of 4");
    let per_second: u64 = j["timeline"].as_array().unwrap().iter().map(|s| s["entries"].as_u64().unwrap()).sum();
    assert_eq!(per_second, j["entries"].as_u64().unwrap(), "the timeline adds up to the total");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "an SVG with lines");
    println!("bench: {}", String::from_utf8_lossy(&o.stdout).lines().take(12).collect::<Vec<_>>().join(" "));

    // Eight clients multiplexed over two shared connections per node: every request answered.
    let o = Command::new(dledger_bin())
        .args(["bench", "--endpoints", &eps, "--clients", "8", "--connections", "2", "--groups", "2"])
        .args(["--seconds", "1", "--warmup", "0.2", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert!(j["entries"].as_u64().unwrap() > 0 && j["errors"].as_object().unwrap().is_empty(), "{j}");
    assert_eq!(j["connections"].as_u64(), Some(2));

    // Open loop with an SLO nobody can meet: non-zero exit naming what was missed.
    let o = Command::new(dledger_bin())
        .args(["bench", "--endpoints", &eps, "--clients", "2", "--rate", "100", "--seconds", "0.5", "--warmup", "0"])
        .args(["--slo", "p99<=1us"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SLO missed: p99 was"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("open loop at 100 requests/s"));
}
