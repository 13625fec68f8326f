//! `engine-bench`: P closed-loop producers append to one log for T seconds.
//!
//! Example: `engine-bench --dir /mnt/nvme/bench --producers 256 --entry-size 128 --seconds 10 --json`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dledger_bench::engine_load::{run, LoadSpec};
use dledger_engine::{BackendChoice, LogConfig, SyncMode};

#[derive(Parser, Debug)]
#[command(about = "Durable append throughput and latency of one dledger-engine log")]
struct Args {
    /// Directory for the log (a fresh subdirectory is made and removed).
    #[arg(long, default_value = "./engine-bench-data")]
    dir: PathBuf,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 128)]
    entry_size: usize,
    /// Concurrent producers, each with one entry in flight; a comma list runs each.
    #[arg(long, default_value = "1,8,64,256", value_delimiter = ',')]
    producers: Vec<usize>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Unmeasured seconds before each run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// auto, uring or portable.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// fdatasync (write linked to fdatasync) or dsync (RWF_DSYNC write).
    #[arg(long, default_value = "fdatasync")]
    sync_mode: SyncMode,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 256)]
    segment_mib: u64,
    /// Keep about this many MiB of segments, purging (and recycling) older ones as
    /// a deployment with retention does; 0 keeps everything.
    #[arg(long, default_value_t = 0)]
    retain_mib: u64,
    /// Print one JSON object per run instead of a line of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    for &producers in &args.producers {
        let dir = args.dir.join(format!("run-{producers}-{}", std::process::id()));
        let mut cfg = LogConfig::new(&dir);
        cfg.backend = args.backend;
        cfg.sync_mode = args.sync_mode;
        cfg.segment_size_bytes = args.segment_mib << 20;
        cfg.max_batch_bytes = (args.entry_size + 4096).next_power_of_two().max(1 << 20);
        cfg.ring_size_bytes = (8 * cfg.max_batch_bytes).max(64 << 20);
        let spec = LoadSpec {
            producers,
            entry_size_bytes: args.entry_size,
            duration: Duration::from_secs_f64(args.seconds),
            warmup: Duration::from_secs_f64(args.warmup),
            retain_bytes: (args.retain_mib > 0).then_some(args.retain_mib << 20),
        };
        let result = run(cfg, &spec);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(r) if args.json => println!("{}", r.to_json()),
            Ok(r) => println!("{r}"),
            Err(e) => {
                eprintln!("engine-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = std::fs::remove_dir(&args.dir);
    ExitCode::SUCCESS
}
