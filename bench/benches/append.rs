//! Append throughput of one log by entry size and batch size: each iteration
//! appends `batch` entries and waits until the last is durable.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dledger_engine::{Log, LogConfig};

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let mut cfg = LogConfig::new(dir.path().join("log"));
    cfg.segment_size_bytes = 256 << 20;
    cfg.ring_size_bytes = 128 << 20;
    let mut log = Log::open(cfg).unwrap();
    for entry_size in [128usize, 1024, 16 * 1024] {
        let mut group = c.benchmark_group(format!("append/{entry_size}B"));
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        let payload = vec![7u8; entry_size];
        for batch in [1u64, 16, 256, 4096] {
            group.throughput(Throughput::Bytes(batch * entry_size as u64));
            group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
                b.iter(|| {
                    let mut last = 0;
                    for _ in 0..batch {
                        last = loop {
                            match log.append(1, &payload) {
                                Ok(i) => break i,
                                Err(dledger_engine::Error::Backpressure { .. }) => {
                                    log.wait_durable(log.durable_index() + 1).unwrap()
                                }
                                Err(e) => panic!("{e}"),
                            }
                        };
                    }
                    log.wait_durable(last).unwrap();
                });
            });
        }
        group.finish();
        // Keep the disk footprint bounded across groups.
        log.purge_prefix(log.durable_index()).unwrap();
    }
}

criterion_group!(benches, append);
criterion_main!(benches);
