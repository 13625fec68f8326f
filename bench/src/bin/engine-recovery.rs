//! `engine-recovery`: how long a node takes to open a large log at start-up.
//!
//! Fills a fresh log with `--gib` GiB of `--entry-size`-byte entries (in
//! large batches, synced), closes it, optionally drops the page cache (so
//! the open reads the disk, as after a reboot), and times `Log::open`.
//!
//! Example: `engine-recovery --dir /var/tmp/rec --gib 10 --entry-size 4096 --drop-caches`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use dledger_engine::{Log, LogConfig};

#[derive(Parser, Debug)]
#[command(about = "Start-up (recovery) time of one dledger-engine log holding many GiB")]
struct Args {
    /// Directory for the log (a fresh subdirectory is made and removed).
    #[arg(long, default_value = "./engine-recovery-data")]
    dir: PathBuf,
    /// GiB of entries to write first.
    #[arg(long, default_value_t = 10.0)]
    gib: f64,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 4096)]
    entry_size: usize,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 256)]
    segment_mib: u64,
    /// Drop the page cache before the timed open (needs root).
    #[arg(long)]
    drop_caches: bool,
    /// Opens to time.
    #[arg(long, default_value_t = 3)]
    opens: usize,
}

fn config(dir: &std::path::Path, segment_mib: u64) -> LogConfig {
    let mut cfg = LogConfig::new(dir);
    cfg.segment_size_bytes = segment_mib << 20;
    cfg.max_batch_bytes = 4 << 20;
    cfg.ring_size_bytes = 64 << 20;
    cfg
}

fn main() -> Result<(), String> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let dir = args.dir.join(format!("rec-{}", std::process::id()));
    let total = (args.gib * (1u64 << 30) as f64) as u64;
    let started = Instant::now();
    {
        let mut log = Log::open(config(&dir, args.segment_mib)).map_err(|e| e.to_string())?;
        let payload = vec![0xA5u8; args.entry_size];
        let mut written = 0u64;
        while written < total {
            for _ in 0..256 {
                log.append(1, &payload).map_err(|e| e.to_string())?;
                written += args.entry_size as u64;
            }
            log.flush().map_err(|e| e.to_string())?;
            // Keep at most a few batches in flight: wait for the disk.
            let behind = log.last_index().saturating_sub(1024);
            if log.durable_index() < behind {
                log.wait_durable(behind).map_err(|e| e.to_string())?;
            }
        }
        log.sync_all().map_err(|e| e.to_string())?;
        println!(
            "wrote {:.2} GiB ({} entries) in {:.1?}",
            written as f64 / (1u64 << 30) as f64,
            log.last_index(),
            started.elapsed()
        );
    }
    for k in 0..args.opens {
        if args.drop_caches {
            std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop caches: {e}"))?;
        }
        let t = Instant::now();
        let log = Log::open(config(&dir, args.segment_mib)).map_err(|e| e.to_string())?;
        let took = t.elapsed();
        println!(
            "open {}: {:.3} s for {} entries in {} segments ({:.2} GiB), page cache {}",
            k + 1,
            took.as_secs_f64(),
            log.last_index(),
            log.segment_count(),
            log.disk_bytes() as f64 / (1u64 << 30) as f64,
            if args.drop_caches { "dropped" } else { "warm" }
        );
    }
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(())
}
