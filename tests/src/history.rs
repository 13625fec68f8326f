//! The history checker of the fault tests (issue 6). The nemesis harness
//! records what every client did and saw ([`Op`]), each node's commit index
//! over time ([`CommitSample`]), the faults it injected and the failover times
//! it measured, and, once the cluster has healed and every node has caught
//! up, each node's committed log ([`NodeLog`]). [`check`] holds that
//! [`History`] against the promises of a replicated log and returns a
//! [`Report`].
//!
//! # Properties
//!
//! One function and one [`Violation`] variant (one [`Property`]) each, named
//! for the Raft paper's section (Ongaro & Ousterhout, 2014) where one applies:
//!
//! | # | property | function | variant |
//! |---|----------|----------|---------|
//! | 1 | an acked append is at its acked index, with its term and payload, on every node (§5.4 Leader Completeness, seen by a client) | `check_acked_durable` | `AckedLost` |
//! | 2 | nodes' committed logs agree wherever two of them hold an index (§5.4.3 State Machine Safety) | `check_prefix_agreement` | `Divergent` |
//! | 3 | no payload a client did not write appears: unparseable, never appended, or every append of it definitely failed | `check_no_foreign_payload` | `ForeignPayload` |
//! | 4 | no log holds a payload more often than appends of it could have applied (§8 client interaction) | `check_no_duplicate` | `DuplicatePayload` |
//! | 5 | a node's commit index never decreases within one process run (§5.3) | `check_commit_monotonic` | `CommitDecreased` |
//! | 6 | a client's sequential acked appends get increasing indexes (linearizability, §8) | `check_client_order` | `ClientOrder` |
//! | 7 | a barrier or read started after an append of index `i` was acked observes an index ≥ `i` (§8 read-only operations) | `check_read_linearizable` | `StaleRead` |
//!
//! Duplicates: an append whose outcome was unknown may have been applied, and
//! its retry (same [`PayloadId`]) applied again. So a payload may appear in a
//! log as many times as there were appends of it that did not definitely fail
//! (acked or unknown). Up to that count the extra copies are counted in
//! [`Report::duplicates`] (one per payload id) and are not a violation; beyond
//! it (for example a payload appended once, acked, and found twice) they are.
//! A client in [`History::exactly_once_clients`] appends with a producer
//! session: any second copy of its payloads is a violation.
//!
//! # What the harness must record (the checker's preconditions)
//!
//! * Every append writes [`payload_for`]`(id)`; a retry after an unknown
//!   outcome reuses the id, a fresh append takes a fresh `seq`.
//! * Every time is a [`Duration`] since the start of the test on one monotonic
//!   clock, and `start ≤ end` for every op (asserted).
//! * [`NodeLog::entries`] is the node's committed log, contiguous from its
//!   [`NodeLog::first_index`] (asserted), read after every node caught up: a
//!   log shorter than an acked index has lost that entry. Indexes below a
//!   node's first index expired (a purge): properties 1 and 2 skip them on
//!   that node, so an acked entry must still be where it was acked on every
//!   node that holds its index, and two nodes must agree wherever both hold
//!   one.
//! * [`OpKind::Read`] holds every committed entry from `from` up to at least
//!   the read index of a barrier issued after the read's `start` (a read with
//!   no upper bound, or up to such a barrier's read index; no byte limit). A
//!   read that failed is not recorded; a barrier that failed is recorded with
//!   `read_index: None`.
//! * [`CommitSample::run`] numbers the process runs of a node (0, then +1 per
//!   restart): a restarted node's commit index begins again from 0, so the
//!   commit index is compared only within one run.
//! * A client is sequential: its ops do not overlap in time. Overlapping ops
//!   of one client are concurrent and have no order for property 6 to check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

/// Identifies a test client.
pub type ClientId = u64;

/// One committed entry as read from a node: `(index, term, payload)`. A
/// leader's no-op entry has an empty payload.
pub type LogEntry = (u64, u64, Vec<u8>);

/// A unique payload id: the payload bytes a client appends are exactly
/// `format!("p{client}-{seq}")` (see [`payload_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadId {
    pub client: ClientId,
    pub seq: u64,
}

impl fmt::Display for PayloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}-{}", self.client, self.seq)
    }
}

/// The payload bytes of `id`: `b"p{client}-{seq}"`.
pub fn payload_for(id: PayloadId) -> Vec<u8> {
    id.to_string().into_bytes()
}

/// The inverse of [`payload_for`]: `None` for anything that is not exactly
/// what `payload_for` writes (empty no-op entries, other bytes, or another
/// spelling of the numbers such as `p01-2` or `p+1-2`).
pub fn parse_payload(bytes: &[u8]) -> Option<PayloadId> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (client, seq) = text.strip_prefix('p')?.split_once('-')?;
    let id = PayloadId { client: client.parse().ok()?, seq: seq.parse().ok()? };
    (payload_for(id) == bytes).then_some(id)
}

/// What a client learnt of one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed at `index` in `term`, as the leader answered.
    Acked { index: u64, term: u64 },
    /// Definitely not applied (for example `NotLeader` before sending).
    Failed,
    /// May or may not have been applied (timeout, leadership lost).
    Unknown,
}

/// What one client operation was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// An append of `payload_for(id)`.
    Append { id: PayloadId, outcome: Outcome },
    /// A linearizable read barrier; `None` if it failed.
    Barrier { read_index: Option<u64> },
    /// A read of committed entries from index `from` on (see the module docs
    /// for how far it must reach).
    Read { from: u64, entries: Vec<LogEntry> },
}

/// One client operation and when it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: ClientId,
    /// When the client sent it, since the start of the test.
    pub start: Duration,
    /// When the client had its answer (or gave up), since the start of the test.
    pub end: Duration,
    pub kind: OpKind,
}

/// A node's committed log, read after the cluster healed and every node
/// caught up: contiguous, in index order from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLog {
    pub node: u64,
    /// The first index the node's log holds: entries below it were purged
    /// (retention) and are *expired* there, not lost.
    pub first_index: u64,
    /// Contiguous from `first_index`.
    pub entries: Vec<LogEntry>,
}

impl NodeLog {
    /// The entry at `index`, if this log holds it.
    pub fn at(&self, index: u64) -> Option<&LogEntry> {
        self.entries.get(usize::try_from(index.checked_sub(self.first_index)?).ok()?)
    }

    fn end(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }
}

/// A node's commit index as the harness saw it at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitSample {
    pub node: u64,
    /// Which process run of the node answered: 0 for the first start, +1 per
    /// restart (a restarted node's commit index begins again from 0).
    pub run: u64,
    pub at: Duration,
    pub commit_index: u64,
}

/// Everything a fault test recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
    pub final_logs: Vec<NodeLog>,
    pub commit_samples: Vec<CommitSample>,
    /// Time from losing a leader to having a new one, per failover.
    pub failover_times: Vec<Duration>,
    /// Each fault injected, described for the report.
    pub faults: Vec<String>,
    /// Clients that append through the client library's producer session:
    /// however often the library retried an append, its payload is in a log
    /// at most once.
    pub exactly_once_clients: BTreeSet<u64>,
}

/// The properties [`check`] holds a history to, one per [`Violation`] variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Property {
    AckedDurable,
    PrefixAgreement,
    NoForeignPayload,
    NoDuplicate,
    CommitMonotonic,
    ClientOrder,
    ReadLinearizable,
}

impl Property {
    /// Every property, in the order of the module docs.
    pub const ALL: [Property; 7] = [
        Property::AckedDurable,
        Property::PrefixAgreement,
        Property::NoForeignPayload,
        Property::NoDuplicate,
        Property::CommitMonotonic,
        Property::ClientOrder,
        Property::ReadLinearizable,
    ];

    /// The property's name, with its Raft paper section where one applies.
    pub fn name(self) -> &'static str {
        match self {
            Property::AckedDurable => "Acked Append Never Lost Or Moved (§5.4)",
            Property::PrefixAgreement => "Committed Logs Agree (§5.4.3)",
            Property::NoForeignPayload => "No Failed Or Unwritten Payload",
            Property::NoDuplicate => "No Payload Applied More Than Appended (§8)",
            Property::CommitMonotonic => "Commit Index Never Decreases (§5.3)",
            Property::ClientOrder => "Client's Sequential Appends Get Increasing Indexes (§8)",
            Property::ReadLinearizable => "Read Or Barrier Sees Earlier Acks (§8)",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a stale barrier or read returned instead of an acked index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A barrier returned this read index, below the acked index.
    ReadIndex(u64),
    /// A read from `from` returned entries up to `last_index` (`None`: no
    /// entries) and not the acked index.
    Missing { from: u64, last_index: Option<u64> },
    /// A read returned the acked index holding another entry.
    Differs { term: u64, payload: Vec<u8> },
}

/// A broken property; `op`, `earlier_op`, ... are positions in [`History::ops`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Property 1: acked append `op` is not at `index` with `term` and its payload on
    /// `node`: `found` is what is there (`None`: the log is shorter), and
    /// `payload_at` lists where that node holds the payload instead.
    AckedLost {
        op: usize,
        id: PayloadId,
        index: u64,
        term: u64,
        node: u64,
        found: Option<(u64, Vec<u8>)>,
        payload_at: Vec<u64>,
    },
    /// Property 2: nodes hold different entries at `index`: `(node, term, payload)` of
    /// every node that holds it.
    Divergent { index: u64, entries: Vec<(u64, u64, Vec<u8>)> },
    /// Property 3: `node` holds at `index` a payload no client wrote: unparseable,
    /// never appended, or appended only by `failed_ops`, which definitely failed.
    ForeignPayload { node: u64, index: u64, term: u64, payload: Vec<u8>, failed_ops: Vec<usize> },
    /// Property 4: `node` holds `id` at `indexes`, more often than the appends of it
    /// that may have applied (`attempt_ops`, acked or unknown).
    DuplicatePayload { node: u64, id: PayloadId, indexes: Vec<u64>, attempt_ops: Vec<usize> },
    /// Property 5: in one run, `node`'s commit index fell between two samples.
    CommitDecreased {
        node: u64,
        run: u64,
        at_before: Duration,
        commit_index_before: u64,
        at_after: Duration,
        commit_index_after: u64,
    },
    /// Property 6: sequential acked appends of `client` got a non-increasing index.
    ClientOrder { client: ClientId, earlier_op: usize, index_earlier: u64, later_op: usize, index_later: u64 },
    /// Property 7: barrier or read `reader_op`, started after append `append_op` was
    /// acked at `index`, did not observe it; `missed_count` acked appends in
    /// all went unseen, of which `append_op` has the highest index.
    StaleRead {
        reader_op: usize,
        reader_client: ClientId,
        reader_start: Duration,
        append_op: usize,
        id: PayloadId,
        index: u64,
        append_end: Duration,
        observed: Observed,
        missed_count: usize,
    },
}

impl Violation {
    /// The property this violation breaks.
    pub fn property(&self) -> Property {
        match self {
            Violation::AckedLost { .. } => Property::AckedDurable,
            Violation::Divergent { .. } => Property::PrefixAgreement,
            Violation::ForeignPayload { .. } => Property::NoForeignPayload,
            Violation::DuplicatePayload { .. } => Property::NoDuplicate,
            Violation::CommitDecreased { .. } => Property::CommitMonotonic,
            Violation::ClientOrder { .. } => Property::ClientOrder,
            Violation::StaleRead { .. } => Property::ReadLinearizable,
        }
    }
}

/// A payload for a one-line message: its id, `<no-op>`, or the bytes quoted.
fn show(payload: &[u8]) -> String {
    match parse_payload(payload) {
        Some(id) => id.to_string(),
        None if payload.is_empty() => "<no-op>".to_string(),
        None => {
            let text = String::from_utf8_lossy(&payload[..payload.len().min(40)]);
            format!("{text:?}{}", if payload.len() > 40 { "..." } else { "" })
        }
    }
}

fn list<T: fmt::Display>(items: &[T], prefix: &str) -> String {
    items.iter().map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::AckedLost { op, id, index, term, node, found, payload_at } => {
                write!(f, "acked append {id} (op #{op}, index {index} term {term}) ")?;
                match found {
                    None => write!(f, "is lost on node {node}: its log ends before index {index}")?,
                    Some((t, p)) => write!(f, "is moved on node {node}: index {index} holds term {t} {}", show(p))?,
                }
                match payload_at.as_slice() {
                    [] => write!(f, "; the payload is nowhere in that log"),
                    at => write!(f, "; the payload is at index {}", list(at, "")),
                }
            }
            Violation::Divergent { index, entries } => {
                let held: Vec<String> =
                    entries.iter().map(|(n, t, p)| format!("node {n} term {t} {}", show(p))).collect();
                write!(f, "committed logs diverge at index {index}: {}", held.join(", "))
            }
            Violation::ForeignPayload { node, index, term, payload, failed_ops } => {
                write!(f, "node {node} holds at index {index} (term {term}) payload {} ", show(payload))?;
                match failed_ops.as_slice() {
                    [] => write!(f, "that no client appended"),
                    ops => write!(f, "whose every append definitely failed ({})", list(ops, "op #")),
                }
            }
            Violation::DuplicatePayload { node, id, indexes, attempt_ops } => write!(
                f,
                "node {node} holds {id} at indexes {} but only {} append(s) of it may have applied ({})",
                list(indexes, ""),
                attempt_ops.len(),
                list(attempt_ops, "op #")
            ),
            Violation::CommitDecreased { node, run, at_before, commit_index_before, at_after, commit_index_after } => {
                write!(
                    f,
                    "node {node} (run {run}) commit index fell from {commit_index_before} at {at_before:.3?} \
                     to {commit_index_after} at {at_after:.3?}"
                )
            }
            Violation::ClientOrder { client, earlier_op, index_earlier, later_op, index_later } => write!(
                f,
                "client {client}'s sequential acked appends got index {index_earlier} (op #{earlier_op}) \
                 then index {index_later} (op #{later_op})"
            ),
            Violation::StaleRead {
                reader_op,
                reader_client,
                reader_start,
                append_op,
                id,
                index,
                append_end,
                observed,
                missed_count,
            } => {
                let kind = if matches!(observed, Observed::ReadIndex(_)) { "barrier" } else { "read" };
                write!(f, "{kind} op #{reader_op} (client {reader_client}, started {reader_start:.3?}) ")?;
                match observed {
                    Observed::ReadIndex(r) => write!(f, "returned read index {r}")?,
                    Observed::Missing { from, last_index: None } => write!(f, "from index {from} returned nothing")?,
                    Observed::Missing { from, last_index: Some(l) } => {
                        write!(f, "from index {from} returned up to index {l}")?
                    }
                    Observed::Differs { term, payload } => {
                        write!(f, "returned index {index} holding term {term} {}", show(payload))?
                    }
                }
                write!(
                    f,
                    ", but index {index} was acked to {id} (op #{append_op}, ended {append_end:.3?}) before it \
                     started; {missed_count} earlier ack(s) unseen"
                )
            }
        }
    }
}

/// Failover times summarised (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |pct: usize| sorted[(pct * sorted.len()).div_ceil(100).max(1) - 1];
        let max = *sorted.last()?;
        Some(Percentiles { count: sorted.len(), p50: rank(50), p99: rank(99), max })
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Appends by outcome.
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Barriers and reads recorded.
    pub barrier_count: usize,
    pub read_count: usize,
    /// Nodes whose final log was checked.
    pub node_count: usize,
    /// Acked appends lost or moved on at least one node.
    pub lost: usize,
    /// Indexes where two nodes' committed logs differ.
    pub divergent: usize,
    /// Payload ids that retries after unknown outcomes put in a log more than
    /// once (counted once per id, not a violation).
    pub duplicates: usize,
    pub faults: Vec<String>,
    /// Every failover time, as recorded.
    pub failover_times: Vec<Duration>,
    pub failover: Option<Percentiles>,
    pub violations: Vec<Violation>,
}

impl Report {
    /// No property broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations break `property`.
    pub fn violation_count(&self, property: Property) -> usize {
        self.violations.iter().filter(|v| v.property() == property).count()
    }

    /// The summary's last line: `acked=N lost=N divergent=N duplicates=N violations=N`.
    pub fn final_line(&self) -> String {
        format!(
            "acked={} lost={} divergent={} duplicates={} violations={}",
            self.acked,
            self.lost,
            self.divergent,
            self.duplicates,
            self.violations.len()
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "appends: acked={} failed={} unknown={}; barriers={} reads={}; final logs from {} node(s)",
            self.acked, self.failed, self.unknown, self.barrier_count, self.read_count, self.node_count
        )?;
        writeln!(f, "faults injected: {}", self.faults.len())?;
        for fault in &self.faults {
            writeln!(f, "  - {fault}")?;
        }
        match self.failover {
            None => writeln!(f, "failovers: none")?,
            Some(p) => {
                writeln!(f, "failovers: {} p50={:.3?} p99={:.3?} max={:.3?}", p.count, p.p50, p.p99, p.max)?;
                let times: Vec<String> = self.failover_times.iter().map(|t| format!("{t:.3?}")).collect();
                writeln!(f, "failover times: {}", times.join(" "))?;
            }
        }
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  [{}] {v}", v.property())?;
        }
        write!(f, "{}", self.final_line())
    }
}

/// Checks `h` against every property of the module docs.
///
/// Panics if `h` breaks a precondition the harness owns: a final log not
/// contiguous from index 1, an op ending before it starts, or acked appends
/// but no final log to check them against.
pub fn check(h: &History) -> Report {
    for log in &h.final_logs {
        for (position, entry) in log.entries.iter().enumerate() {
            assert_eq!(
                entry.0,
                log.first_index + position as u64,
                "node {}'s final log is not contiguous from its first index {}",
                log.node,
                log.first_index
            );
        }
    }
    for (i, op) in h.ops.iter().enumerate() {
        assert!(op.start <= op.end, "op #{i} ends ({:?}) before it starts ({:?})", op.end, op.start);
    }
    let mut report = Report {
        node_count: h.final_logs.len(),
        faults: h.faults.clone(),
        failover_times: h.failover_times.clone(),
        failover: Percentiles::of(&h.failover_times),
        ..Report::default()
    };
    for op in &h.ops {
        match op.kind {
            OpKind::Append { outcome: Outcome::Acked { .. }, .. } => report.acked += 1,
            OpKind::Append { outcome: Outcome::Failed, .. } => report.failed += 1,
            OpKind::Append { outcome: Outcome::Unknown, .. } => report.unknown += 1,
            OpKind::Barrier { .. } => report.barrier_count += 1,
            OpKind::Read { .. } => report.read_count += 1,
        }
    }
    assert!(
        report.acked == 0 || !h.final_logs.is_empty(),
        "{} appends were acked but no final log was recorded",
        report.acked
    );

    let appends = appends_by_id(h);
    let (lost, lost_count) = check_acked_durable(h);
    let (divergent, divergent_count) = check_prefix_agreement(h);
    let (duplicate, duplicate_count) = check_no_duplicate(h, &appends);
    report.lost = lost_count;
    report.divergent = divergent_count;
    report.duplicates = duplicate_count;
    report.violations.extend(lost);
    report.violations.extend(divergent);
    report.violations.extend(check_no_foreign_payload(h, &appends));
    report.violations.extend(duplicate);
    report.violations.extend(check_commit_monotonic(h));
    report.violations.extend(check_client_order(h));
    report.violations.extend(check_read_linearizable(h));
    report
}

/// Positions in `h.ops` of the appends of each payload id.
fn appends_by_id(h: &History) -> HashMap<PayloadId, Vec<usize>> {
    let mut out: HashMap<PayloadId, Vec<usize>> = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let OpKind::Append { id, .. } = op.kind {
            out.entry(id).or_default().push(i);
        }
    }
    out
}

/// Whether append op `op` may have put its payload in the log.
fn may_have_applied(op: &Op) -> bool {
    !matches!(op.kind, OpKind::Append { outcome: Outcome::Failed, .. })
}

/// The acked appends: `(op position, op, id, index, term)`.
fn acked_appends(h: &History) -> impl Iterator<Item = (usize, &Op, PayloadId, u64, u64)> {
    h.ops.iter().enumerate().filter_map(|(i, op)| match op.kind {
        OpKind::Append { id, outcome: Outcome::Acked { index, term } } => Some((i, op, id, index, term)),
        _ => None,
    })
}

/// Property 1. Returns the violations and how many acked appends they concern.
fn check_acked_durable(h: &History) -> (Vec<Violation>, usize) {
    let mut out = Vec::new();
    let mut lost_count = 0;
    for (op, _, id, index, term) in acked_appends(h) {
        let payload = payload_for(id);
        let before = out.len();
        for log in h.final_logs.iter().filter(|l| index >= l.first_index) {
            let found = log.at(index);
            if matches!(found, Some((_, t, p)) if *t == term && *p == payload) {
                continue;
            }
            out.push(Violation::AckedLost {
                op,
                id,
                index,
                term,
                node: log.node,
                found: found.map(|(_, t, p)| (*t, p.clone())),
                payload_at: log.entries.iter().filter(|e| e.2 == payload).map(|e| e.0).collect(),
            });
        }
        if out.len() > before {
            lost_count += 1;
        }
    }
    (out, lost_count)
}

/// Property 2, at every index two or more nodes hold. Returns the violations,
/// one per divergent index.
fn check_prefix_agreement(h: &History) -> (Vec<Violation>, usize) {
    let mut out = Vec::new();
    let lo = h.final_logs.iter().map(|l| l.first_index).min().unwrap_or(1);
    let hi = h.final_logs.iter().map(NodeLog::end).max().unwrap_or(1);
    for index in lo..hi {
        let held: Vec<(u64, &LogEntry)> =
            h.final_logs.iter().filter_map(|l| l.at(index).map(|e| (l.node, e))).collect();
        if held.windows(2).any(|w| w[0].1 != w[1].1) {
            let entries = held.iter().map(|(node, (_, term, payload))| (*node, *term, payload.clone())).collect();
            out.push(Violation::Divergent { index, entries });
        }
    }
    let count = out.len();
    (out, count)
}

/// Property 3, over every non-empty entry of every final log.
fn check_no_foreign_payload(h: &History, appends: &HashMap<PayloadId, Vec<usize>>) -> Vec<Violation> {
    let mut out = Vec::new();
    for log in &h.final_logs {
        for (index, term, payload) in &log.entries {
            if payload.is_empty() {
                continue; // a leader's no-op
            }
            let ops = parse_payload(payload).and_then(|id| appends.get(&id)).map_or(&[][..], Vec::as_slice);
            if ops.iter().any(|&i| may_have_applied(&h.ops[i])) {
                continue;
            }
            out.push(Violation::ForeignPayload {
                node: log.node,
                index: *index,
                term: *term,
                payload: payload.clone(),
                failed_ops: ops.to_vec(),
            });
        }
    }
    out
}

/// Property 4. Payloads no append may have applied are property 3's. Returns
/// the violations and the number of payload ids duplicated by retries.
fn check_no_duplicate(h: &History, appends: &HashMap<PayloadId, Vec<usize>>) -> (Vec<Violation>, usize) {
    let mut out = Vec::new();
    let mut duplicated = BTreeSet::new();
    for log in &h.final_logs {
        let mut indexes_by_id: BTreeMap<PayloadId, Vec<u64>> = BTreeMap::new();
        for (index, _, payload) in &log.entries {
            if let Some(id) = parse_payload(payload) {
                indexes_by_id.entry(id).or_default().push(*index);
            }
        }
        for (id, indexes) in indexes_by_id.into_iter().filter(|(_, at)| at.len() > 1) {
            let attempt_ops: Vec<usize> =
                appends.get(&id).into_iter().flatten().copied().filter(|&i| may_have_applied(&h.ops[i])).collect();
            if attempt_ops.is_empty() {
                continue;
            }
            if indexes.len() > attempt_ops.len() || h.exactly_once_clients.contains(&id.client) {
                out.push(Violation::DuplicatePayload { node: log.node, id, indexes, attempt_ops });
            } else {
                duplicated.insert(id);
            }
        }
    }
    (out, duplicated.len())
}

/// Property 5, per node and run, in time order.
fn check_commit_monotonic(h: &History) -> Vec<Violation> {
    let mut runs: BTreeMap<(u64, u64), Vec<&CommitSample>> = BTreeMap::new();
    for s in &h.commit_samples {
        runs.entry((s.node, s.run)).or_default().push(s);
    }
    let mut out = Vec::new();
    for ((node, run), mut samples) in runs {
        samples.sort_by_key(|s| s.at); // stable: equal times keep their recorded order
        for w in samples.windows(2) {
            if w[1].commit_index < w[0].commit_index {
                out.push(Violation::CommitDecreased {
                    node,
                    run,
                    at_before: w[0].at,
                    commit_index_before: w[0].commit_index,
                    at_after: w[1].at,
                    commit_index_after: w[1].commit_index,
                });
            }
        }
    }
    out
}

/// Property 6: each acked append of a client against the one before it.
fn check_client_order(h: &History) -> Vec<Violation> {
    let mut by_client: BTreeMap<ClientId, Vec<(usize, &Op, u64)>> = BTreeMap::new();
    for (i, op, _, index, _) in acked_appends(h) {
        by_client.entry(op.client).or_default().push((i, op, index));
    }
    let mut out = Vec::new();
    for (client, mut acked) in by_client {
        acked.sort_by_key(|(i, op, _)| (op.start, op.end, *i));
        for w in acked.windows(2) {
            let ((earlier_op, earlier, index_earlier), (later_op, later, index_later)) = (w[0], w[1]);
            if earlier.end <= later.start && index_later <= index_earlier {
                out.push(Violation::ClientOrder { client, earlier_op, index_earlier, later_op, index_later });
            }
        }
    }
    out
}

/// An acked append, for property 7.
#[derive(Clone, Copy)]
struct Ack {
    op: usize,
    id: PayloadId,
    index: u64,
    term: u64,
    end: Duration,
}

/// Property 7. Walks barriers and reads in start order, adding each acked
/// append to `known` once it ended before the reader started; a reader must
/// observe every known ack (a barrier: the highest; a read: each at or after
/// its `from`). At most one violation per reader, naming the highest missed index.
fn check_read_linearizable(h: &History) -> Vec<Violation> {
    let mut acks: Vec<Ack> =
        acked_appends(h).map(|(op, o, id, index, term)| Ack { op, id, index, term, end: o.end }).collect();
    acks.sort_by_key(|a| a.end);
    let mut readers: Vec<usize> =
        (0..h.ops.len()).filter(|&i| !matches!(h.ops[i].kind, OpKind::Append { .. })).collect();
    readers.sort_by_key(|&i| h.ops[i].start);

    let mut known: BTreeMap<(u64, usize), Ack> = BTreeMap::new();
    let mut next_ack = 0;
    let mut out = Vec::new();
    for reader_op in readers {
        let reader = &h.ops[reader_op];
        while next_ack < acks.len() && acks[next_ack].end < reader.start {
            let a = acks[next_ack];
            known.insert((a.index, a.op), a);
            next_ack += 1;
        }
        let mut missed: Vec<(Ack, Observed)> = Vec::new();
        match &reader.kind {
            OpKind::Append { .. } | OpKind::Barrier { read_index: None } => {}
            OpKind::Barrier { read_index: Some(read_index) } => {
                missed.extend(known.range((read_index + 1, 0)..).map(|(_, a)| (*a, Observed::ReadIndex(*read_index))));
            }
            OpKind::Read { from, entries } => {
                for a in known.range((*from, 0)..).map(|(_, a)| *a) {
                    let position = (a.index - from) as usize;
                    let seen = entries
                        .get(position)
                        .filter(|e| e.0 == a.index)
                        .or_else(|| entries.iter().find(|e| e.0 == a.index));
                    match seen {
                        Some((_, term, payload)) if *term == a.term && *payload == payload_for(a.id) => {}
                        Some((_, term, payload)) => {
                            missed.push((a, Observed::Differs { term: *term, payload: payload.clone() }))
                        }
                        None => {
                            missed.push((a, Observed::Missing { from: *from, last_index: entries.last().map(|e| e.0) }))
                        }
                    }
                }
            }
        }
        let missed_count = missed.len();
        if let Some((a, observed)) = missed.pop() {
            out.push(Violation::StaleRead {
                reader_op,
                reader_client: reader.client,
                reader_start: reader.start,
                append_op: a.op,
                id: a.id,
                index: a.index,
                append_end: a.end,
                observed,
                missed_count,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pid(client: ClientId, seq: u64) -> PayloadId {
        PayloadId { client, seq }
    }

    fn append(client: ClientId, seq: u64, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
        Op { client, start: ms(start_ms), end: ms(end_ms), kind: OpKind::Append { id: pid(client, seq), outcome } }
    }

    fn acked(index: u64, term: u64) -> Outcome {
        Outcome::Acked { index, term }
    }

    fn entry(index: u64, term: u64, client: ClientId, seq: u64) -> LogEntry {
        (index, term, payload_for(pid(client, seq)))
    }

    fn noop(index: u64, term: u64) -> LogEntry {
        (index, term, Vec::new())
    }

    fn sample(node: u64, run: u64, at_ms: u64, commit_index: u64) -> CommitSample {
        CommitSample { node, run, at: ms(at_ms), commit_index }
    }

    /// Op positions in [`clean`], for the mutations below.
    const P2_1: usize = 2;
    const P2_2: usize = 3;
    const BARRIER: usize = 5;
    const READ: usize = 6;

    /// Three nodes, two leaders (terms 1 and 2), two appending clients and one
    /// reading client; node 2 restarts (run 1) and its commit index begins
    /// again from 0. Every property holds.
    fn clean() -> History {
        let log = vec![
            noop(1, 1),
            entry(2, 1, 1, 1),
            entry(3, 1, 2, 1),
            noop(4, 2),
            entry(5, 2, 1, 2), // p1-2 timed out but was applied
            entry(6, 2, 2, 2),
        ];
        History {
            ops: vec![
                append(1, 1, 0, 10, acked(2, 1)),
                append(1, 3, 40, 45, Outcome::Failed),
                append(2, 1, 5, 15, acked(3, 1)),
                append(2, 2, 50, 60, acked(6, 2)),
                append(2, 3, 65, 70, Outcome::Unknown), // never applied
                Op { client: 3, start: ms(16), end: ms(18), kind: OpKind::Barrier { read_index: Some(3) } },
                Op {
                    client: 3,
                    start: ms(61),
                    end: ms(62),
                    kind: OpKind::Read { from: 5, entries: vec![entry(5, 2, 1, 2), entry(6, 2, 2, 2)] },
                },
                append(1, 2, 20, 30, Outcome::Unknown),
                Op { client: 3, start: ms(19), end: ms(25), kind: OpKind::Barrier { read_index: None } },
            ],
            final_logs: [1, 2, 3].map(|node| NodeLog { node, first_index: 1, entries: log.clone() }).to_vec(),
            commit_samples: vec![
                sample(1, 0, 0, 0),
                sample(1, 0, 20, 3),
                sample(1, 0, 70, 6),
                sample(2, 0, 20, 2),
                sample(2, 1, 40, 0),
                sample(2, 1, 70, 6),
                sample(3, 0, 70, 6),
                sample(3, 0, 20, 3), // recorded out of time order
            ],
            failover_times: vec![ms(300), ms(150)],
            faults: vec!["kill -9 node 2 (leader)".into(), "partition {1} | {2,3}".into()],
            exactly_once_clients: BTreeSet::new(),
        }
    }

    fn on_every_log(h: &mut History, f: impl Fn(&mut Vec<LogEntry>)) {
        for log in &mut h.final_logs {
            f(&mut log.entries);
        }
    }

    struct Case {
        name: &'static str,
        break_it: fn(&mut History),
        property: Property,
        violation_count: usize,
    }

    /// Each case breaks exactly one property of the clean history.
    const CASES: &[Case] = &[
        Case {
            name: "acked_append_missing_from_a_short_log",
            break_it: |h| {
                h.final_logs[2].entries.truncate(5);
            },
            property: Property::AckedDurable,
            violation_count: 1,
        },
        Case {
            name: "acked_append_moved_to_another_index",
            break_it: |h| {
                on_every_log(h, |e| {
                    *e =
                        vec![e[0].clone(), e[1].clone(), e[2].clone(), noop(4, 2), entry(5, 2, 2, 2), entry(6, 2, 1, 2)]
                })
            },
            property: Property::AckedDurable,
            violation_count: 3,
        },
        Case {
            name: "acked_append_with_another_term",
            break_it: |h| h.ops[P2_1].kind = OpKind::Append { id: pid(2, 1), outcome: acked(3, 2) },
            property: Property::AckedDurable,
            violation_count: 3,
        },
        Case {
            name: "nodes_differ_at_an_unacked_index",
            break_it: |h| h.final_logs[1].entries[4].1 = 3,
            property: Property::PrefixAgreement,
            violation_count: 1,
        },
        Case {
            name: "definitely_failed_append_applied",
            break_it: |h| on_every_log(h, |e| e.push(entry(7, 2, 1, 3))),
            property: Property::NoForeignPayload,
            violation_count: 3,
        },
        Case {
            name: "payload_never_appended",
            break_it: |h| on_every_log(h, |e| e.push(entry(7, 2, 9, 9))),
            property: Property::NoForeignPayload,
            violation_count: 3,
        },
        Case {
            name: "unparseable_payload",
            break_it: |h| on_every_log(h, |e| e.push((7, 2, b"p1-02".to_vec()))),
            property: Property::NoForeignPayload,
            violation_count: 3,
        },
        Case {
            name: "acked_payload_applied_twice",
            break_it: |h| on_every_log(h, |e| e.push(entry(7, 2, 2, 1))),
            property: Property::NoDuplicate,
            violation_count: 3,
        },
        Case {
            name: "unknown_payload_applied_more_often_than_tried",
            break_it: |h| on_every_log(h, |e| e.push(entry(7, 2, 1, 2))),
            property: Property::NoDuplicate,
            violation_count: 3,
        },
        Case {
            name: "commit_index_falls_within_a_run",
            break_it: |h| h.commit_samples.push(sample(1, 0, 80, 4)),
            property: Property::CommitMonotonic,
            violation_count: 1,
        },
        Case {
            name: "later_append_of_a_client_gets_a_lower_index",
            // p2-1 (index 3) now runs after p2-2 (index 6), and after the read began.
            break_it: |h| (h.ops[P2_1].start, h.ops[P2_1].end) = (ms(62), ms(64)),
            property: Property::ClientOrder,
            violation_count: 1,
        },
        Case {
            name: "barrier_below_an_earlier_ack",
            break_it: |h| h.ops[BARRIER].kind = OpKind::Barrier { read_index: Some(2) },
            property: Property::ReadLinearizable,
            violation_count: 1,
        },
        Case {
            name: "read_misses_an_earlier_ack",
            break_it: |h| h.ops[READ].kind = OpKind::Read { from: 5, entries: vec![entry(5, 2, 1, 2)] },
            property: Property::ReadLinearizable,
            violation_count: 1,
        },
        Case {
            name: "read_returns_another_payload_at_an_acked_index",
            break_it: |h| {
                h.ops[READ].kind = OpKind::Read { from: 5, entries: vec![entry(5, 2, 1, 2), entry(6, 2, 1, 2)] }
            },
            property: Property::ReadLinearizable,
            violation_count: 1,
        },
    ];

    #[test]
    fn clean_history_passes() {
        let report = check(&clean());
        assert!(report.is_clean(), "{report}");
        assert_eq!((report.acked, report.failed, report.unknown), (3, 1, 2));
        assert_eq!((report.barrier_count, report.read_count, report.node_count), (2, 1, 3));
        assert_eq!((report.lost, report.divergent, report.duplicates), (0, 0, 0));
        assert_eq!(report.final_line(), "acked=3 lost=0 divergent=0 duplicates=0 violations=0");
    }

    #[test]
    fn each_broken_property_is_reported_alone() {
        for case in CASES {
            let mut h = clean();
            (case.break_it)(&mut h);
            let report = check(&h);
            let kinds: BTreeSet<Property> = report.violations.iter().map(Violation::property).collect();
            assert_eq!(kinds, BTreeSet::from([case.property]), "case {}:\n{report}", case.name);
            assert_eq!(report.violations.len(), case.violation_count, "case {}:\n{report}", case.name);
            assert_eq!(report.duplicates, 0, "case {}:\n{report}", case.name);
        }
    }

    /// Node 2 purged below index 4 (retention): its first entries expired.
    fn purge_node_2(h: &mut History) {
        let log = &mut h.final_logs[1];
        log.entries.drain(..3);
        log.first_index = 4;
    }

    #[test]
    fn a_purged_prefix_is_expired_not_lost() {
        let mut h = clean();
        purge_node_2(&mut h);
        let report = check(&h);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.acked, 3);
    }

    #[test]
    fn above_a_purge_a_moved_or_missing_entry_is_still_caught() {
        let mut h = clean();
        purge_node_2(&mut h);
        let acked_index = h.final_logs[0].entries.iter().rposition(|e| !e.2.is_empty()).unwrap() as u64 + 1;
        assert!(acked_index >= 4, "the clean history acks an entry above the purge");
        h.final_logs[1].entries.truncate((acked_index - 4) as usize);
        let report = check(&h);
        assert!(report.violation_count(Property::AckedDurable) >= 1, "{report}");

        let mut h = clean();
        purge_node_2(&mut h);
        h.final_logs[1].entries[0].1 += 1;
        let report = check(&h);
        assert_eq!(report.violation_count(Property::PrefixAgreement), 1, "{report}");
    }

    #[test]
    #[should_panic(expected = "not contiguous from its first index 4")]
    fn a_log_that_does_not_start_at_its_first_index_is_a_harness_bug() {
        let mut h = clean();
        h.final_logs[1].first_index = 4;
        check(&h);
    }

    #[test]
    fn every_property_has_a_case() {
        let covered: BTreeSet<Property> = CASES.iter().map(|c| c.property).collect();
        assert_eq!(covered, BTreeSet::from(Property::ALL));
    }

    #[test]
    fn violations_carry_what_is_involved() {
        let run = |break_it: fn(&mut History)| {
            let mut h = clean();
            break_it(&mut h);
            check(&h)
        };
        let report = run(|h| h.final_logs[2].entries.truncate(5));
        assert_eq!(report.lost, 1);
        assert_eq!(
            report.violations,
            [Violation::AckedLost {
                op: P2_2,
                id: pid(2, 2),
                index: 6,
                term: 2,
                node: 3,
                found: None,
                payload_at: vec![]
            }]
        );
        let report = run(|h| h.final_logs[1].entries[4].1 = 3);
        assert_eq!(report.divergent, 1);
        assert_eq!(
            report.violations,
            [Violation::Divergent {
                index: 5,
                entries: vec![(1, 2, b"p1-2".to_vec()), (2, 3, b"p1-2".to_vec()), (3, 2, b"p1-2".to_vec())]
            }]
        );
        let report = run(|h| h.ops[BARRIER].kind = OpKind::Barrier { read_index: Some(1) });
        assert!(
            matches!(
                &report.violations[..],
                [Violation::StaleRead {
                    reader_op: BARRIER,
                    append_op: P2_1,
                    index: 3,
                    observed: Observed::ReadIndex(1),
                    missed_count: 2,
                    ..
                }]
            ),
            "{report}"
        );
        let text = report.to_string();
        assert!(text.contains("barrier op #5 (client 3, started 16.000ms) returned read index 1"), "{text}");
        assert!(text.contains("but index 3 was acked to p2-1 (op #2, ended 15.000ms) before it started"), "{text}");
    }

    #[test]
    fn a_second_copy_of_a_session_clients_payload_is_a_violation() {
        let mut h = clean();
        h.exactly_once_clients.insert(1);
        h.ops.push(append(1, 2, 31, 35, acked(7, 2)));
        on_every_log(&mut h, |e| e.push(entry(7, 2, 1, 2)));
        let OpKind::Read { entries, .. } = &mut h.ops[READ].kind else { unreachable!("op {READ} is the read") };
        entries.push(entry(7, 2, 1, 2));
        let report = check(&h);
        assert!(
            report
                .violations
                .iter()
                .any(|v| matches!(v, Violation::DuplicatePayload { indexes, .. } if indexes == &[5, 7])),
            "{report}"
        );
    }

    #[test]
    fn retried_unknown_append_counts_a_duplicate_not_a_violation() {
        let mut h = clean();
        // p1-2 timed out (applied at index 5); its retry was acked at index 7.
        h.ops.push(append(1, 2, 31, 35, acked(7, 2)));
        on_every_log(&mut h, |e| e.push(entry(7, 2, 1, 2)));
        let OpKind::Read { entries, .. } = &mut h.ops[READ].kind else { unreachable!("op {READ} is the read") };
        entries.push(entry(7, 2, 1, 2));
        let report = check(&h);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.duplicates, 1);
        assert!(report.to_string().ends_with("\nacked=4 lost=0 divergent=0 duplicates=1 violations=0"), "{report}");
    }

    #[test]
    fn report_summarises_outcomes_faults_and_failovers() {
        let mut h = clean();
        h.final_logs[0].entries.truncate(5);
        let text = check(&h).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "appends: acked=3 failed=1 unknown=2; barriers=2 reads=1; final logs from 3 node(s)");
        assert_eq!(lines[1], "faults injected: 2");
        assert_eq!(lines[2], "  - kill -9 node 2 (leader)");
        assert_eq!(lines[4], "failovers: 2 p50=150.000ms p99=300.000ms max=300.000ms");
        assert_eq!(lines[5], "failover times: 300.000ms 150.000ms");
        assert_eq!(lines[6], "violations: 1");
        assert!(lines[7].starts_with(
            "  [Acked Append Never Lost Or Moved (§5.4)] acked append p2-2 (op #3, index 6 term 2) is lost on node 1"
        ));
        assert_eq!(lines[8], "acked=3 lost=1 divergent=0 duplicates=0 violations=1");
        assert_eq!(lines.len(), 9);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(Percentiles::of(&[]), None);
        let one = Percentiles::of(&[ms(7)]).unwrap();
        assert_eq!((one.count, one.p50, one.p99, one.max), (1, ms(7), ms(7), ms(7)));
        let hundred: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let p = Percentiles::of(&hundred).unwrap();
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, ms(50), ms(99), ms(100)));
    }

    #[test]
    fn payloads_round_trip_and_nothing_else_parses() {
        for id in [pid(0, 0), pid(1, 2), pid(u64::MAX, 17)] {
            assert_eq!(parse_payload(&payload_for(id)), Some(id));
        }
        assert_eq!(payload_for(pid(3, 41)), b"p3-41");
        for bad in [&b""[..], b"p", b"p1", b"p1-", b"p-1", b"p01-2", b"p+1-2", b"p1-2-3", b"q1-2", b"p1-2 ", b"\xff"] {
            assert_eq!(parse_payload(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    #[should_panic(expected = "node 2's final log is not contiguous from its first index 1")]
    fn a_log_with_a_gap_is_a_harness_error() {
        let mut h = clean();
        h.final_logs[1].entries.remove(2);
        check(&h);
    }
}
