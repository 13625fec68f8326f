//! The load generator behind `dledger bench`: many clients append to a
//! running cluster through the client library, and a report says what the
//! cluster did: entries/s, MB/s, latency percentiles, errors by kind, and a
//! per-second timeline, checkable against an SLO.
//!
//! Closed loop: each client keeps one request in flight and sends the next as
//! soon as the last is answered. Open loop (`rate`): requests are due on a
//! fixed schedule and latency is measured from the *intended* send time, so a
//! stall that delays later requests shows in their latency instead of
//! silently lowering the offered load (coordinated omission).
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use dledger_client::{Client, ClientError, SharedConns};

#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub clients: usize,
    /// Connections (to each endpoint) the clients share; `None`: one per client.
    pub connections: Option<usize>,
    pub entry_size: usize,
    /// Entries per request.
    pub batch: usize,
    /// Clients are spread over groups `0..groups`.
    pub groups: u64,
    pub seconds: f64,
    pub warmup: f64,
    /// Open loop: requests per second over all clients.
    pub rate: Option<f64>,
    pub timeout: Duration,
    /// Each client appends with a producer session.
    pub idempotent: bool,
}

/// One second of the measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Second {
    pub second: u64,
    pub entries: u64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub spec: BenchSpec,
    pub seconds: f64,
    pub entries: u64,
    pub requests: u64,
    pub latency_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    /// Session appends answered as already in the log (a retry's original).
    pub duplicates: u64,
    /// Plain appends acknowledged after an unanswered attempt: possibly in the log twice.
    pub maybe_twice: u64,
    pub timeline: Vec<Second>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::NoQuorum { .. } => "no_quorum".into(),
        ClientError::Timeout(_) => "timeout".into(),
        ClientError::Unreachable { .. } => "unreachable".into(),
        ClientError::ConnectionLost { .. } => "connection_lost".into(),
        ClientError::Refused { .. } => "refused".into(),
        ClientError::Protocol { .. } => "protocol".into(),
        ClientError::Server(s) => format!("server: {s}"),
    }
}

struct ClientResult {
    latency_us: Histogram<u64>,
    per_second: Vec<(u64, Histogram<u64>)>,
    entries: u64,
    requests: u64,
    errors: BTreeMap<String, u64>,
    duplicates: u64,
    maybe_twice: u64,
}

async fn one_client(
    k: usize,
    spec: BenchSpec,
    conns: Option<SharedConns>,
    start: Instant,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> ClientResult {
    let group = k as u64 % spec.groups.max(1);
    let client = match conns {
        Some(c) => Client::shared(spec.endpoints.clone(), &spec.cluster, group, spec.timeout, c),
        None => Client::new(spec.endpoints.clone(), &spec.cluster, group, spec.timeout),
    };
    let mut client = if spec.idempotent { client } else { client.without_session() };
    let payload = Bytes::from(vec![0x5Au8; spec.entry_size]);
    let batch: Vec<Bytes> = (0..spec.batch.max(1)).map(|_| payload.clone()).collect();
    let measure_from = start + Duration::from_secs_f64(spec.warmup);
    let end = measure_from + Duration::from_secs_f64(spec.seconds);
    // Open loop: this client's share of the rate, phase-shifted so clients do not send in lockstep.
    let interval = spec.rate.map(|r| Duration::from_secs_f64(spec.clients as f64 / r.max(1e-9)));
    let mut due = start + interval.map_or(Duration::ZERO, |i| i.mul_f64(k as f64 / spec.clients as f64));
    let mut r = ClientResult {
        latency_us: new_hist(),
        per_second: Vec::new(),
        entries: 0,
        requests: 0,
        errors: BTreeMap::new(),
        duplicates: 0,
        maybe_twice: 0,
    };
    loop {
        if interval.is_some() && due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = if interval.is_some() { due } else { Instant::now() };
        if sent >= end {
            break;
        }
        let outcome = client.append_outcome(batch.clone()).await;
        let done = Instant::now();
        if let Some(i) = interval {
            due += i;
        }
        if sent < measure_from {
            continue;
        }
        match outcome {
            Ok(a) => {
                r.duplicates += u64::from(a.duplicate);
                r.maybe_twice += u64::from(a.earlier_attempt_may_commit);
                let us = done.duration_since(sent).as_micros().max(1) as u64;
                r.latency_us.saturating_record(us);
                let second = sent.duration_since(measure_from).as_secs();
                if r.per_second.last().is_none_or(|(s, _)| *s != second) {
                    r.per_second.push((second, new_hist()));
                }
                r.per_second.last_mut().expect("pushed").1.saturating_record(us);
                r.entries += batch.len() as u64;
                r.requests += 1;
                progress.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => *r.errors.entry(error_kind(&e)).or_default() += 1,
        }
    }
    r
}

/// Runs the load; `on_tick` is called about every 100 ms with (elapsed, entries so far).
pub async fn run(spec: BenchSpec, mut on_tick: impl FnMut(Duration, u64)) -> BenchReport {
    let start = Instant::now();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let pools: Vec<SharedConns> = match spec.connections {
        Some(n) => (0..n.clamp(1, spec.clients.max(1))).map(|_| SharedConns::default()).collect(),
        None => Vec::new(),
    };
    for k in 0..spec.clients.max(1) {
        let conns = (!pools.is_empty()).then(|| pools[k % pools.len()].clone());
        tasks.push(tokio::spawn(one_client(k, spec.clone(), conns, start, progress.clone())));
    }
    let total = Duration::from_secs_f64(spec.warmup + spec.seconds);
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        on_tick(start.elapsed(), progress.load(std::sync::atomic::Ordering::Relaxed));
    }
    let mut latency_us = new_hist();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut seconds: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let (mut entries, mut requests, mut duplicates, mut maybe_twice) = (0, 0, 0, 0);
    for t in tasks {
        let Ok(r) = t.await else { continue };
        latency_us.add(&r.latency_us).expect("same bounds");
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        for (s, h) in r.per_second {
            seconds.entry(s).or_insert_with(new_hist).add(&h).expect("same bounds");
        }
        entries += r.entries;
        requests += r.requests;
        duplicates += r.duplicates;
        maybe_twice += r.maybe_twice;
    }
    let timeline = seconds
        .into_iter()
        .map(|(second, h)| Second {
            second,
            entries: h.len() * spec.batch.max(1) as u64,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
        })
        .collect();
    BenchReport {
        seconds: spec.seconds,
        spec,
        entries,
        requests,
        latency_us,
        errors,
        duplicates,
        maybe_twice,
        timeline,
    }
}

impl BenchReport {
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.seconds.max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.entries_per_sec() * self.spec.entry_size as f64 / 1e6
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "clients": self.spec.clients,
            "connections": self.spec.connections,
            "entry_size": self.spec.entry_size,
            "batch": self.spec.batch,
            "groups": self.spec.groups,
            "rate": self.spec.rate,
            "seconds": self.seconds,
            "entries": self.entries,
            "requests": self.requests,
            "entries_per_sec": self.entries_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "p50_ms": self.quantile_ms(0.5),
            "p90_ms": self.quantile_ms(0.9),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "p9999_ms": self.quantile_ms(0.9999),
            "max_ms": self.max_ms(),
            "errors": self.errors,
            "idempotent": self.spec.idempotent,
            "duplicates": self.duplicates,
            "maybe_twice": self.maybe_twice,
            "timeline": self.timeline,
        })
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.spec;
        let mode = match s.rate {
            Some(r) => format!("open loop at {r:.0} requests/s"),
            None => "closed loop".into(),
        };
        writeln!(
            f,
            "{} clients{}, {} B entries, {} per request, {} group(s), {mode}, {:.0} s measured",
            s.clients,
            s.connections.map_or(String::new(), |n| format!(" over {n} connection(s) per node")),
            s.entry_size,
            s.batch,
            s.groups,
            self.seconds
        )?;
        writeln!(
            f,
            "throughput  {:.0} entries/s, {:.2} MB/s ({} requests)",
            self.entries_per_sec(),
            self.mb_per_sec(),
            self.requests
        )?;
        writeln!(
            f,
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(0.9999),
            self.max_ms()
        )?;
        if self.errors.is_empty() {
            writeln!(f, "errors      none")?;
        } else {
            for (k, n) in &self.errors {
                writeln!(f, "errors      {n} x {k}")?;
            }
        }
        if self.spec.idempotent {
            writeln!(f, "sessions    one producer per client; {} retries found their original", self.duplicates)?;
        } else if self.maybe_twice > 0 {
            writeln!(
                f,
                "retries     {} appends acknowledged after an unanswered attempt (may be in the log twice)",
                self.maybe_twice
            )?;
        }
        writeln!(f, "second  entries/s  p99 ms")?;
        for sec in &self.timeline {
            writeln!(f, "{:>6}  {:>9}  {:>6.3}", sec.second, sec.entries, sec.p99_ms)?;
        }
        Ok(())
    }
}

/// One clause of an SLO: `p99<=5ms`, `max<=100ms`, `p50<=500us`.
#[derive(Debug, Clone, PartialEq)]
pub struct SloClause {
    pub name: String,
    /// `None` for `max`.
    pub quantile: Option<f64>,
    pub limit_ms: f64,
}

/// Parses `"p99<=5ms,p999<=20ms"`.
pub fn parse_slo(text: &str) -> Result<Vec<SloClause>, String> {
    let mut out = Vec::new();
    for raw in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (name, limit) = raw.split_once("<=").ok_or_else(|| format!("SLO clause {raw:?}: expected NAME<=LIMIT"))?;
        let name = name.trim().to_string();
        let quantile = match name.as_str() {
            "max" => None,
            "p50" => Some(0.5),
            "p90" => Some(0.9),
            "p99" => Some(0.99),
            "p999" | "p99.9" => Some(0.999),
            "p9999" | "p99.99" => Some(0.9999),
            _ => {
                return Err(format!(
                    "SLO clause {raw:?}: unknown percentile {name:?} (p50, p90, p99, p999, p9999, max)"
                ))
            }
        };
        let limit = limit.trim();
        let (num, scale) = if let Some(v) = limit.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = limit.strip_suffix("us") {
            (v, 0.001)
        } else if let Some(v) = limit.strip_suffix('s') {
            (v, 1000.0)
        } else {
            return Err(format!("SLO clause {raw:?}: limit needs a unit (us, ms, s)"));
        };
        let v: f64 = num.trim().parse().map_err(|_| format!("SLO clause {raw:?}: {num:?} is not a number"))?;
        out.push(SloClause { name, quantile, limit_ms: v * scale });
    }
    if out.is_empty() {
        return Err("empty SLO".into());
    }
    Ok(out)
}

/// The clauses the report misses, each as a sentence; empty when the SLO is met.
pub fn check_slo(report: &BenchReport, slo: &[SloClause]) -> Vec<String> {
    let mut missed = Vec::new();
    if report.requests == 0 {
        missed.push("no request succeeded".to_string());
    }
    for c in slo {
        let got = c.quantile.map_or(report.max_ms(), |q| report.quantile_ms(q));
        if got > c.limit_ms {
            missed.push(format!("{} was {got:.3} ms, above the SLO of {:.3} ms", c.name, c.limit_ms));
        }
    }
    missed
}

/// Writes an SVG: latency by percentile, and per-second throughput and p99.
pub fn plot_svg(report: &BenchReport, path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((3, 1));
    // 1. Latency by percentile, x = number of nines.
    let qs = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999];
    let pts: Vec<(f64, f64)> = qs.iter().map(|&q| (-(1.0f64 - q).log10(), report.quantile_ms(q))).collect();
    let ymax = pts.iter().map(|p| p.1).fold(0.001, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&areas[0])
        .caption("latency by percentile (x: 1 = p90, 2 = p99, 3 = p99.9 ...)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..5.0f64, 0.0..ymax)
        .map_err(|e| err(&e))?;
    c.configure_mesh().y_desc("ms").draw().map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(pts, &BLUE)).map_err(|e| err(&e))?;
    // 2. Entries per second, 3. p99 per second.
    let n = report.timeline.len().max(1) as f64;
    let tmax = report.timeline.iter().map(|s| s.entries as f64).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&areas[1])
        .caption("entries per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..tmax)
        .map_err(|e| err(&e))?;
    c.configure_mesh().x_desc("second").draw().map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(report.timeline.iter().map(|s| (s.second as f64, s.entries as f64)), &GREEN))
        .map_err(|e| err(&e))?;
    let pmax = report.timeline.iter().map(|s| s.p99_ms).fold(0.001, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&areas[2])
        .caption("p99 latency per second (ms)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n, 0.0..pmax)
        .map_err(|e| err(&e))?;
    c.configure_mesh().x_desc("second").draw().map_err(|e| err(&e))?;
    c.draw_series(LineSeries::new(report.timeline.iter().map(|s| (s.second as f64, s.p99_ms)), &RED))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_parsing() {
        let s = parse_slo("p99<=5ms, p999<=20ms,max<=1s,p50<=300us").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], SloClause { name: "p99".into(), quantile: Some(0.99), limit_ms: 5.0 });
        assert_eq!(s[2].limit_ms, 1000.0);
        assert!((s[3].limit_ms - 0.3).abs() < 1e-9);
        for bad in ["", "p99<5ms", "p98<=5ms", "p99<=5", "p99<=xms"] {
            assert!(parse_slo(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn report(latencies_us: &[u64]) -> BenchReport {
        let mut h = new_hist();
        for &l in latencies_us {
            h.record(l).unwrap();
        }
        BenchReport {
            spec: BenchSpec {
                endpoints: vec![],
                cluster: "c".into(),
                clients: 1,
                connections: None,
                entry_size: 100,
                batch: 1,
                groups: 1,
                seconds: 2.0,
                warmup: 0.0,
                rate: None,
                timeout: Duration::from_secs(1),
                idempotent: false,
            },
            seconds: 2.0,
            entries: latencies_us.len() as u64,
            requests: latencies_us.len() as u64,
            latency_us: h,
            errors: BTreeMap::new(),
            duplicates: 0,
            maybe_twice: 0,
            timeline: vec![],
        }
    }

    #[test]
    fn slo_check_names_what_was_missed() {
        let r = report(&[1000; 99].iter().copied().chain([50_000]).collect::<Vec<_>>());
        assert!(check_slo(&r, &parse_slo("p50<=2ms").unwrap()).is_empty());
        let missed = check_slo(&r, &parse_slo("p50<=2ms,max<=10ms").unwrap());
        assert_eq!(missed.len(), 1);
        assert!(missed[0].starts_with("max was 50"), "{missed:?}");
        assert_eq!(r.entries_per_sec(), 50.0);
        let j = r.to_json();
        for k in ["entries_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms", "max_ms", "errors"] {
            assert!(j.get(k).is_some(), "json lacks {k}");
        }
        assert!(!check_slo(&report(&[]), &parse_slo("p99<=1s").unwrap()).is_empty(), "no successes is a miss");
    }
}
