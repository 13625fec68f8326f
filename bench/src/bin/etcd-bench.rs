//! `etcd-bench`: closed-loop puts against an etcd cluster, reported like
//! `dledger bench --json`, for `bench/compare.sh`. Built only with
//! `--features etcd` (it needs protoc for the etcd client).

use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop etcd puts: throughput and latency")]
struct Args {
    /// Comma-separated client URLs (http://127.0.0.1:2379,...).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Connections shared by the clients (etcd multiplexes requests on each).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let mut conns = Vec::new();
        for _ in 0..args.connections.clamp(1, args.clients.max(1)) {
            conns.push(etcd_client::Client::connect(&args.endpoints, None).await.expect("connect to etcd"));
        }
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        let end = measure_from + Duration::from_secs_f64(args.seconds);
        let value = vec![b'v'; args.value_size];
        let mut tasks = Vec::new();
        for k in 0..args.clients {
            let mut kv = conns[k % conns.len()].kv_client();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
                let (mut ok, mut errors, mut seq) = (0u64, 0u64, 0u64);
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let key = format!("bench/{k}/{seq}");
                    seq += 1;
                    let r = kv.put(key, value.clone(), None).await;
                    if sent < measure_from {
                        continue;
                    }
                    match r {
                        Ok(_) => {
                            h.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                            ok += 1;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (h, ok, errors)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        let (mut ok, mut errors) = (0u64, 0u64);
        for t in tasks {
            let (h, o, e) = t.await.expect("client task");
            all.add(&h).expect("same bounds");
            ok += o;
            errors += e;
        }
        let eps = ok as f64 / args.seconds;
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "system": "etcd",
                "clients": args.clients,
                "value_size": args.value_size,
                "entries_per_sec": eps,
                "mb_per_sec": eps * args.value_size as f64 / 1e6,
                "p50_ms": ms(0.5),
                "p99_ms": ms(0.99),
                "p999_ms": ms(0.999),
                "max_ms": all.max() as f64 / 1000.0,
                "errors": errors,
            })
        );
    });
}
