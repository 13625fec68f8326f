//! Unbounded simulation soak: runs random seeds until one fails (or forever),
//! printing each seed as it passes.
//!
//! ```text
//! cargo run -p dledger-raft --release --features sim --example soak
//! SIM_EVENTS=5000 cargo run -p dledger-raft --release --features sim --example soak
//! ```
//!
//! The seeds come from the system clock mixed with a counter; the printed
//! seed alone replays a run (`SIM_SEED=<seed> ... sim::tests::sweep`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dledger_raft::sim::{env_u64, replay_command, run_seed, SimOptions};

fn main() {
    let events = env_u64("SIM_EVENTS").unwrap_or(2000);
    let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let started = Instant::now();
    for k in 0u64.. {
        // splitmix64 of (start + k): distinct, well-spread seeds.
        let mut z = start.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let seed = z ^ (z >> 31);
        let options = SimOptions::new(seed, events);
        match run_seed(options) {
            Ok(report) => println!(
                "seed {seed} ok: {} nodes, {} events, {} leaders, {} crashes, {} acked ({} seeds, {:.0?})",
                report.node_count,
                report.events_run,
                report.leaders_elected,
                report.crashes,
                report.acked_entries,
                k + 1,
                started.elapsed()
            ),
            Err(violation) => {
                eprintln!("seed {seed} FAILED {}: {}", violation.checker, violation.detail);
                eprintln!("replay: {}", replay_command(&options));
                std::process::exit(1);
            }
        }
    }
}
