//! Deterministic simulation of Raft clusters, with safety checkers.
//!
//! One `u64` seed derives everything: cluster size (1, 3 or 5), Raft
//! configuration (pre-vote, check-quorum, lease, preferred leader, window
//! sizes), network behaviour, disk latency, client traffic, faults, and each
//! core's own election-timeout generator. A run is a pure function of
//! (seed, event count, injected bugs), so a failing seed replays exactly:
//!
//! ```text
//! SIM_SEED=<seed> cargo test -p dledger-raft --release sim::tests::sweep -- --nocapture
//! ```
//!
//! * [`cluster`]: the driver and the fault schedule.
//! * [`network`]: delay, reordering, drop, duplication, partitions.
//! * [`storage`]: the simulated disk and its fault model (lost unsynced
//!   writes, torn tail, atomic metadata).
//! * [`machine`]: the state machine some seeds run on every node, its
//!   snapshots, and what a source serves of them.
//! * [`checkers`]: one checker per safety property, named for the paper.
//!
//! Commands:
//! * CI sweep (2,000 seeds × 10,000 fault-phase events in release):
//!   `cargo test -p dledger-raft --release` (`SIM_SEEDS`, `SIM_EVENTS`
//!   override the counts; a debug-build `cargo test` runs 2,000 seeds ×
//!   2,000 events).
//! * Unbounded soak with random seeds, printing each:
//!   `cargo run -p dledger-raft --release --features sim --example soak`.
//!
//! Measured on the 2-core development VM (shared with other builds, load
//! average 4–5): the release sweep runs 2,000 seeds × 10,000 fault-phase
//! events (≈ 21 million events including the heal phases) in 6–12 s; the
//! whole `cargo test -p dledger-raft --release` takes ≈ 13 s. The
//! debug-build sweep (2,000 × 2,000) takes ≈ 12–16 s. Soaks run so far:
//! 18,214 seeds × 50,000 events and ≈ 60,000 seeds × 10,000 events in
//! release, 21,512 seeds × 5,000 events in debug, all passing.
//!
//! Bug-injection switches (`InjectedBugs`, plus the host bug
//! `host_skips_tick_catch_up`) each have a test that passes only if a safety
//! checker (never the liveness check) reports a violation within a bounded
//! number of seeds; see `tests.rs`.

pub mod checkers;
pub mod cluster;
pub mod machine;
pub mod network;
pub mod storage;

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use checkers::{names, Violation};
pub use cluster::{SimOptions, SimReport, Simulation};

use crate::InjectedBugs;

/// Runs one seed; a panic inside the core is reported as a violation.
pub fn run_seed(options: SimOptions) -> Result<SimReport, Violation> {
    match catch_unwind(AssertUnwindSafe(|| Simulation::new(options).run())) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(Violation { checker: names::CORE_ASSERTION, detail })
        }
    }
}

/// Picks one switch out of [`InjectedBugs`].
pub type BugSwitch = fn(&mut InjectedBugs) -> &mut bool;

/// Each bug-injection switch by name, for `SIM_BUGS` and replay commands.
pub const BUG_SWITCHES: [(&str, BugSwitch); 7] = [
    ("skip_prev_log_term_check", |b| &mut b.skip_prev_log_term_check),
    ("commit_old_term_by_count", |b| &mut b.commit_old_term_by_count),
    ("vote_without_log_check", |b| &mut b.vote_without_log_check),
    ("ack_before_durable", |b| &mut b.ack_before_durable),
    ("read_without_quorum_round", |b| &mut b.read_without_quorum_round),
    ("purge_above_commit", |b| &mut b.purge_above_commit),
    ("log_start_skips_term_check", |b| &mut b.log_start_skips_term_check),
];

/// The command that replays `options` exactly.
pub fn replay_command(options: &SimOptions) -> String {
    let mut bugs = options.bugs;
    let mut names: Vec<&str> =
        BUG_SWITCHES.iter().filter(|(_, field)| *field(&mut bugs)).map(|(name, _)| *name).collect();
    if options.host_skips_tick_catch_up {
        names.push("host_skips_tick_catch_up");
    }
    if options.host_skips_snapshot_install {
        names.push("host_skips_snapshot_install");
    }
    let bug_env = if names.is_empty() { String::new() } else { format!("SIM_BUGS={} ", names.join(",")) };
    format!(
        "{bug_env}SIM_SEED={} SIM_EVENTS={} cargo test -p dledger-raft --release sim::tests::sweep -- --nocapture",
        options.seed, options.events
    )
}

/// `template` with the bugs named in `SIM_BUGS` (comma-separated switch
/// names, including the host bugs `host_skips_tick_catch_up` and
/// `host_skips_snapshot_install`) switched on, for replays.
pub fn options_from_env(template: SimOptions) -> SimOptions {
    let mut options = template;
    for name in std::env::var("SIM_BUGS").unwrap_or_default().split(',').filter(|n| !n.is_empty()) {
        if name == "host_skips_tick_catch_up" {
            options.host_skips_tick_catch_up = true;
            continue;
        }
        if name == "host_skips_snapshot_install" {
            options.host_skips_snapshot_install = true;
            continue;
        }
        let (_, field) = BUG_SWITCHES
            .iter()
            .find(|(known, _)| *known == name)
            .unwrap_or_else(|| panic!("unknown SIM_BUGS entry {name:?}"));
        *field(&mut options.bugs) = true;
    }
    options
}

/// Reads a `u64` from the environment.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a u64, got {v:?}")))
}

/// Runs `seeds` on all cores; returns the first failure (lowest seed) found.
pub fn run_seeds(seeds: &[u64], template: SimOptions) -> Result<Vec<SimReport>, (SimOptions, Violation)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(seeds.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= seeds.len() || !failures.lock().expect("no poison").is_empty() {
                    return;
                }
                let options = SimOptions { seed: seeds[k], ..template };
                match run_seed(options) {
                    Ok(report) => results.lock().expect("no poison").push(report),
                    Err(violation) => failures.lock().expect("no poison").push((options, violation)),
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("no poison");
    failures.sort_by_key(|(o, _)| o.seed);
    match failures.into_iter().next() {
        Some(failure) => Err(failure),
        None => Ok(results.into_inner().expect("no poison")),
    }
}

#[cfg(test)]
mod tests;
