//! The engine load generator behind `engine-bench`.
//!
//! P producers append to one log, each with exactly one entry in flight: when
//! its entry is reported durable, the producer records the latency and appends
//! its next entry at once (a closed loop). The producers are logical clients
//! on the log's own thread, as requests are on a node's core, so the figures
//! are the engine's, without cross-thread hand-off. Latency runs from the
//! append call to the completion that reports the entry durable.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dledger_engine::{Error, Log, LogConfig, RetentionPolicy};
use hdrhistogram::Histogram;

/// One run's settings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub producers: usize,
    pub entry_size_bytes: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Apply size retention (keep about this many bytes of segments) as the run goes,
    /// as a deployment with retention does; purged segments are then recycled.
    pub retain_bytes: Option<u64>,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub backend: &'static str,
    pub producers: usize,
    pub entry_size_bytes: usize,
    pub entries: u64,
    pub seconds: f64,
    pub entries_per_sec: f64,
    pub mb_per_sec: f64,
    pub batches: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LoadReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend,
            "producers": self.producers,
            "entry_size": self.entry_size_bytes,
            "entries": self.entries,
            "seconds": self.seconds,
            "entries_per_sec": self.entries_per_sec,
            "mb_per_sec": self.mb_per_sec,
            "batches": self.batches,
            "mean_batch_entries": if self.batches == 0 { 0.0 } else { self.entries as f64 / self.batches as f64 },
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
        })
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend={} producers={} entry_size={}B: {:.0} entries/s, {:.1} MB/s, {:.1} entries/batch, \
             latency us p50={} p99={} p99.9={} max={}",
            self.backend,
            self.producers,
            self.entry_size_bytes,
            self.entries_per_sec,
            self.mb_per_sec,
            if self.batches == 0 { 0.0 } else { self.entries as f64 / self.batches as f64 },
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// Runs the closed loop on a freshly opened log.
pub fn run(cfg: LogConfig, spec: &LoadSpec) -> Result<LoadReport, Error> {
    let mut log = Log::open(cfg)?;
    // Activate the first segment and let the next one finish filling, so that the run
    // measures appends, not the one-off preparation of segments.
    let term = log.last_term().unwrap_or(1).max(1);
    let first = log.append(term, b"warm")?;
    log.wait_durable(first)?;
    log.wait_spare_ready();
    let payload = vec![0xA5u8; spec.entry_size_bytes];
    // Outstanding entries in index order: (index, append time).
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::with_capacity(spec.producers);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut entries = 0u64;
    let mut batches = 0u64;
    let mut waiting = spec.producers;
    let mut measuring = false;
    loop {
        // Every idle producer appends its next entry.
        while waiting > 0 {
            match log.append(term, &payload) {
                Ok(index) => {
                    outstanding.push_back((index, Instant::now()));
                    waiting -= 1;
                }
                Err(Error::Backpressure { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        log.flush()?;
        let Some(&(oldest, _)) = outstanding.front() else { break };
        log.wait_durable(oldest)?;
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            hist.reset();
            entries = 0;
            batches = 0;
        }
        batches += 1;
        let durable = log.durable_index();
        while let Some(&(index, t)) = outstanding.front() {
            if index > durable {
                break;
            }
            outstanding.pop_front();
            hist.saturating_record(now.duration_since(t).as_micros().max(1) as u64);
            entries += 1;
            waiting += 1;
        }
        if let Some(max) = spec.retain_bytes {
            let policy = RetentionPolicy { max_age: None, max_total_bytes: Some(max) };
            log.apply_retention(&policy, durable + 1)?;
        }
        if now >= end {
            break;
        }
    }
    log.sync_all()?;
    let seconds = Instant::now().duration_since(measure_from).as_secs_f64().max(1e-9);
    let entries_per_sec = entries as f64 / seconds;
    Ok(LoadReport {
        backend: log.backend().name(),
        producers: spec.producers,
        entry_size_bytes: spec.entry_size_bytes,
        entries,
        seconds,
        entries_per_sec,
        mb_per_sec: entries_per_sec * spec.entry_size_bytes as f64 / 1e6,
        batches,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_counts_entries_and_latencies() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LogConfig::new(dir.path());
        cfg.segment_size_bytes = 4 << 20;
        cfg.ring_size_bytes = 8 << 20;
        let spec = LoadSpec {
            producers: 8,
            entry_size_bytes: 128,
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
            retain_bytes: Some(8 << 20),
        };
        let r = run(cfg, &spec).unwrap();
        assert!(r.entries > 0 && r.batches > 0);
        assert!(r.entries >= r.batches, "a batch carries at least one producer's entry");
        assert!(r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
        let j = r.to_json();
        for k in ["entries_per_sec", "mb_per_sec", "p50_us", "p99_us", "p999_us", "max_us", "backend"] {
            assert!(j.get(k).is_some(), "json lacks {k}");
        }
    }
}
