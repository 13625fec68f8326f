//! Idempotent producers: the producer-session table every replica keeps
//! from its own log, so that a retried append is in the log at most once.
//!
//! A producer names itself `(producer_id, epoch)` and numbers its appends
//! with a sequence: an append of `n` payloads at sequence `s` takes
//! `s..s+n`, and the next one starts at `s+n` (Kafka's idempotent producer;
//! the client sessions of the Raft thesis §6.3). The leader checks each
//! append against the table ([`Sessions::check`]):
//!
//! | the append | the answer |
//! |---|---|
//! | a producer the table does not hold (new, or expired) | appended; its session starts at `s` |
//! | an epoch below the producer's | `ProducerFenced { epoch }`: a newer instance took over |
//! | an epoch above the producer's, at sequence 0 | appended; the older epoch is fenced from now on |
//! | an epoch above the producer's, not at 0 | `OutOfOrderSequence { expected: 0 }` |
//! | `s` and `n` of one of the last [`RETAINED_BATCHES`] appends | `Duplicate`: answered with that append's indexes and term, once it commits |
//! | `s` the next sequence | appended |
//! | `s` past the next sequence (a gap) | `OutOfOrderSequence { expected }` |
//! | `s` before the retained appends | `SequenceTooOld { oldest }`: not appended again, its index is no longer known |
//!
//! **The stamp travels in the log.** The last entry of an accepted append is
//! an [`EntryKind::SessionCommand`](crate::EntryKind::SessionCommand): its
//! payload is the client's, followed by a [`ProducerStamp`] of
//! [`STAMP_LEN`] bytes (who, which sequences, and the leader's wall-clock
//! time). Followers find the stamps in the entries they append, so every
//! replica's table is a function of its own log, and a new leader holds
//! every stamp of every entry it has, committed or not.
//!
//! **Two layers.** [`Sessions`] is a [`SessionTable`] of the committed
//! prefix (`as_of` = the commit index it was folded to) plus the stamps of
//! the uncommitted suffix, in index order. A truncation removes stamps from
//! the suffix only (it never reaches the commit index), so undoing an epoch
//! bump or an eviction is never needed: those happen when a stamp is folded
//! into the table at commit, and are final.
//!
//! **Determinism.** Folding is a function of the stamps alone: expiry goes
//! by the largest stamp time folded so far (the leaders' clocks, written
//! into the log), never by a replica's own clock, and an over-full table
//! evicts its least recently stamped producers, by (time, id). Replicas
//! configured alike therefore hold equal tables at equal commit indexes
//! ([`SessionLimits`] must match across the cluster, like the election
//! timeouts; a replica configured otherwise only dedups differently).
//!
//! **Durability.** The table of the committed prefix is what the log start
//! carries: a `LogStart` message holds the leader's table (`as_of` at least
//! the start), and a host saves a table before it purges below its
//! `as_of`. On restart the host passes the saved table and the stamped
//! entries above its `as_of` ([`RestoredState`](crate::RestoredState)).
//! A stamp at or below a table's `as_of` is already in it and is ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use super::message::{Entry, EntryKind, LogIndex, Term};

/// A producer's appends the table keeps for answering duplicates (Kafka
/// keeps five).
pub const RETAINED_BATCHES: usize = 5;

/// Bytes of the [`ProducerStamp`] at the end of a session entry's payload.
pub const STAMP_LEN: usize = 32;

/// Most producers a decoded table may hold (a bound on what a peer or a
/// file can make a replica allocate).
pub const MAX_DECODED_PRODUCERS: usize = 1 << 20;

/// What a client's append claims: who it is and where its sequence stands.
/// `time_ms` is the leader's wall clock, filled in by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProducerSession {
    /// The producer (chosen by the client; random by default).
    pub producer_id: u64,
    /// The producer's instance: a higher epoch fences the lower ones.
    pub epoch: u32,
    /// The sequence of the append's first payload.
    pub seq: u64,
    /// The leader's wall-clock time, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// The record at the end of an append's last entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProducerStamp {
    /// The producer.
    pub producer_id: u64,
    /// Its epoch.
    pub epoch: u32,
    /// Payloads in the append (its entries end with this one).
    pub count: u32,
    /// Sequence of the append's first payload.
    pub first_seq: u64,
    /// The leader's wall clock when it accepted the append.
    pub time_ms: u64,
}

impl ProducerStamp {
    /// `payload` followed by this stamp: the payload of an append's last
    /// entry. One copy of one payload per append.
    pub fn seal(&self, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(payload.len() + STAMP_LEN);
        b.put_slice(payload);
        b.put_u64_le(self.producer_id);
        b.put_u32_le(self.epoch);
        b.put_u32_le(self.count);
        b.put_u64_le(self.first_seq);
        b.put_u64_le(self.time_ms);
        b.freeze()
    }

    /// The stamp at the end of a session entry's `payload`, if it has one
    /// that could have been written (`count ≥ 1`, sequences that fit).
    pub fn read(payload: &[u8]) -> Option<ProducerStamp> {
        let at = payload.len().checked_sub(STAMP_LEN)?;
        let t = &payload[at..];
        let u64_at = |k: usize| u64::from_le_bytes(t[k..k + 8].try_into().expect("8 bytes"));
        let u32_at = |k: usize| u32::from_le_bytes(t[k..k + 4].try_into().expect("4 bytes"));
        let stamp = ProducerStamp {
            producer_id: u64_at(0),
            epoch: u32_at(8),
            count: u32_at(12),
            first_seq: u64_at(16),
            time_ms: u64_at(24),
        };
        (stamp.count >= 1 && stamp.first_seq.checked_add(u64::from(stamp.count)).is_some()).then_some(stamp)
    }
}

impl Entry {
    /// The bytes a client appended, if this entry holds a client's payload
    /// (a command, with a session's stamp taken off).
    pub fn client_payload(&self) -> Option<Bytes> {
        match self.kind {
            EntryKind::Command => Some(self.payload.clone()),
            EntryKind::SessionCommand => Some(self.payload.slice(..self.payload.len().saturating_sub(STAMP_LEN))),
            EntryKind::Noop | EntryKind::Admin | EntryKind::Config => None,
        }
    }

    /// The producer stamp of a session entry, if it could have been
    /// written here (its append fits in the log before this entry; a
    /// hostile or damaged one is ignored, never trusted into arithmetic).
    pub fn stamp(&self) -> Option<ProducerStamp> {
        let stamp = (self.kind == EntryKind::SessionCommand).then(|| ProducerStamp::read(&self.payload)).flatten()?;
        (u64::from(stamp.count) <= self.index).then_some(stamp)
    }
}

/// How the table is bounded; see the module docs on why these must match
/// across a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// A producer with no append for this long (by the stamps' clock) is
    /// forgotten; its next append starts a new session.
    pub expiry_ms: u64,
    /// Most producers held; past it the least recently stamped go first.
    pub max_producers: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { expiry_ms: 60 * 60 * 1000, max_producers: 16_384 }
    }
}

/// One append of a producer, where the log holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionBatch {
    /// Sequence of its first payload.
    pub first_seq: u64,
    /// Its payloads.
    pub count: u32,
    /// Index of its first entry.
    pub first_index: LogIndex,
    /// Index of its last entry (the stamped one).
    pub last_index: LogIndex,
    /// Term of its entries.
    pub term: Term,
}

/// A producer the table holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerState {
    /// Its newest epoch.
    pub epoch: u32,
    /// Time of its newest stamp.
    pub last_time_ms: u64,
    /// Its last appends in this epoch, oldest first; never empty.
    pub batches: VecDeque<SessionBatch>,
}

impl ProducerState {
    fn next_seq(&self) -> u64 {
        self.batches.back().map_or(0, |b| b.first_seq + u64::from(b.count))
    }

    /// Takes in the stamp of an append whose last entry is `(index, term)`.
    fn record(&mut self, index: LogIndex, term: Term, stamp: &ProducerStamp) {
        if stamp.epoch > self.epoch {
            self.epoch = stamp.epoch;
            self.batches.clear();
        }
        self.last_time_ms = self.last_time_ms.max(stamp.time_ms);
        self.batches.push_back(SessionBatch {
            first_seq: stamp.first_seq,
            count: stamp.count,
            first_index: index + 1 - u64::from(stamp.count),
            last_index: index,
            term,
        });
        while self.batches.len() > RETAINED_BATCHES {
            self.batches.pop_front();
        }
    }

    fn new(index: LogIndex, term: Term, stamp: &ProducerStamp) -> ProducerState {
        let mut p = ProducerState { epoch: stamp.epoch, last_time_ms: stamp.time_ms, batches: VecDeque::new() };
        p.record(index, term, stamp);
        p
    }
}

/// The leader's verdict on an append with a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// Append it.
    Accept,
    /// It is in the log already, here.
    Duplicate(SessionBatch),
    /// Refuse it; nothing is appended.
    Refuse(SessionRefusal),
}

/// Why an append with a session was refused. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    /// A newer instance of this producer took over.
    #[error("producer fenced: epoch {epoch} is in force")]
    ProducerFenced {
        /// The producer's epoch in the log.
        epoch: u32,
    },
    /// The sequence does not follow the producer's last append.
    #[error("out-of-order sequence: the producer's next sequence is {expected}")]
    OutOfOrderSequence {
        /// The sequence the next append must start at.
        expected: u64,
    },
    /// A duplicate of an append older than the retained ones: it was
    /// appended once already (or was never in this epoch); not again.
    #[error("sequence older than the retained appends (oldest retained: {oldest})")]
    SequenceTooOld {
        /// The first sequence of the oldest append retained.
        oldest: u64,
    },
}

/// The producers of a committed log prefix: the state after folding every
/// stamp of the log up to `as_of`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    /// The last index folded.
    pub as_of: LogIndex,
    /// The largest stamp time folded (the table's clock).
    pub clock_ms: u64,
    /// The producers, by id.
    pub producers: BTreeMap<u64, ProducerState>,
}

impl SessionTable {
    /// An empty table of a log that starts after `as_of`.
    pub fn empty_at(as_of: LogIndex) -> SessionTable {
        SessionTable { as_of, ..SessionTable::default() }
    }

    /// Folds the stamp of the entry `(index, term)`; stamps at or below
    /// `as_of` are in the table already and are ignored.
    fn fold(&mut self, index: LogIndex, term: Term, stamp: &ProducerStamp, limits: &SessionLimits) {
        if index <= self.as_of {
            return;
        }
        self.as_of = index;
        let previous_clock = self.clock_ms;
        self.clock_ms = self.clock_ms.max(stamp.time_ms);
        match self.producers.get_mut(&stamp.producer_id) {
            Some(p) if stamp.epoch < p.epoch => {} // a fenced epoch (a leader configured otherwise let it in)
            Some(p) => p.record(index, term, stamp),
            None => {
                self.producers.insert(stamp.producer_id, ProducerState::new(index, term, stamp));
            }
        }
        // Expire once per second of the stamps' clock, not per stamp.
        if self.clock_ms / 1000 != previous_clock / 1000 {
            let horizon = self.clock_ms.saturating_sub(limits.expiry_ms);
            self.producers.retain(|_, p| p.last_time_ms >= horizon);
        }
        if self.producers.len() > limits.max_producers {
            // Evict down to 7/8 of the cap so that a full table pays the scan rarely.
            let keep = limits.max_producers - limits.max_producers / 8;
            let mut by_age: Vec<(u64, u64)> = self.producers.iter().map(|(&id, p)| (p.last_time_ms, id)).collect();
            by_age.sort_unstable();
            for &(_, id) in &by_age[..self.producers.len() - keep] {
                self.producers.remove(&id);
            }
        }
    }

    /// Bytes [`Self::encode_into`] writes.
    pub fn encoded_len(&self) -> usize {
        20 + self.producers.values().map(|p| 24 + p.batches.len() * 36).sum::<usize>()
    }

    /// The wire and file encoding (little-endian): `as_of`, clock, producer
    /// count, then per producer its id, epoch, last time, batch count and
    /// batches (first sequence, count, first index, last index, term).
    pub fn encode_into(&self, b: &mut impl BufMut) {
        b.put_u64_le(self.as_of);
        b.put_u64_le(self.clock_ms);
        b.put_u32_le(self.producers.len() as u32);
        for (&id, p) in &self.producers {
            b.put_u64_le(id);
            b.put_u32_le(p.epoch);
            b.put_u64_le(p.last_time_ms);
            b.put_u32_le(p.batches.len() as u32);
            for s in &p.batches {
                b.put_u64_le(s.first_seq);
                b.put_u32_le(s.count);
                b.put_u64_le(s.first_index);
                b.put_u64_le(s.last_index);
                b.put_u64_le(s.term);
            }
        }
    }

    /// Decodes [`Self::encode_into`]'s bytes from the front of `bytes`,
    /// with what it took; `None` unless they are a table that folding could
    /// have made (ids ascending, 1 to [`RETAINED_BATCHES`] batches each,
    /// their sequences and indexes ascending and consistent, at or below
    /// `as_of`).
    pub fn decode_prefix(bytes: &[u8]) -> Option<(SessionTable, usize)> {
        let mut r = Reader { bytes, at: 0 };
        let as_of = r.u64()?;
        let clock_ms = r.u64()?;
        let count = r.u32()? as usize;
        if count > MAX_DECODED_PRODUCERS {
            return None;
        }
        let mut producers = BTreeMap::new();
        let mut last_id = None;
        for _ in 0..count {
            let (id, epoch, last_time_ms, n) = (r.u64()?, r.u32()?, r.u64()?, r.u32()? as usize);
            if last_id.is_some_and(|l| id <= l) || n == 0 || n > RETAINED_BATCHES || last_time_ms > clock_ms {
                return None;
            }
            last_id = Some(id);
            let mut batches: VecDeque<SessionBatch> = VecDeque::with_capacity(n);
            for _ in 0..n {
                let batch = SessionBatch {
                    first_seq: r.u64()?,
                    count: r.u32()?,
                    first_index: r.u64()?,
                    last_index: r.u64()?,
                    term: r.u64()?,
                };
                let consistent = batch.count >= 1
                    && batch.first_seq.checked_add(u64::from(batch.count)).is_some()
                    && batch.first_index >= 1
                    && batch.last_index.checked_sub(batch.first_index) == Some(u64::from(batch.count) - 1)
                    && batch.last_index <= as_of;
                let follows = batches.back().is_none_or(|prev| {
                    prev.first_seq + u64::from(prev.count) <= batch.first_seq && prev.last_index < batch.first_index
                });
                if !consistent || !follows {
                    return None;
                }
                batches.push_back(batch);
            }
            producers.insert(id, ProducerState { epoch, last_time_ms, batches });
        }
        Some((SessionTable { as_of, clock_ms, producers }, r.at))
    }

    /// Decodes a whole buffer holding one table.
    pub fn decode(bytes: &[u8]) -> Option<SessionTable> {
        SessionTable::decode_prefix(bytes).filter(|(_, used)| *used == bytes.len()).map(|(t, _)| t)
    }
}

/// Little-endian fields from the front of a buffer.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.bytes.get(self.at..self.at.checked_add(N)?)?;
        self.at += N;
        s.try_into().ok()
    }

    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
}

/// A stamp of the uncommitted suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingStamp {
    index: LogIndex,
    term: Term,
    stamp: ProducerStamp,
}

/// The table of the committed prefix and the stamps after it; see the
/// module docs.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    table: SessionTable,
    /// Stamps above `table.as_of`, in index order.
    pending: VecDeque<PendingStamp>,
    /// How many of `pending` each producer has (so a check of a producer
    /// without any skips the scan).
    pending_of: HashMap<u64, u32>,
    limits: SessionLimits,
}

impl Sessions {
    /// The table `table` and the stamps of `entries` above it (in index
    /// order; entries without a stamp are skipped).
    pub fn restore(table: SessionTable, entries: &[Entry], limits: SessionLimits) -> Sessions {
        let mut s = Sessions { table, limits, ..Sessions::default() };
        s.note_entries(entries);
        s
    }

    /// The table of the committed prefix.
    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// Stamps held above the table.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes in the stamps of entries just appended to the log (after
    /// whatever truncation made room for them).
    pub fn note_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            if let Some(stamp) = e.stamp() {
                self.push(e.index, e.term, stamp);
            }
        }
    }

    fn push(&mut self, index: LogIndex, term: Term, stamp: ProducerStamp) {
        let last = self.pending.back().map_or(self.table.as_of, |p| p.index);
        if index <= last {
            return; // noted already (the leader notes at acceptance), or folded
        }
        self.pending.push_back(PendingStamp { index, term, stamp });
        *self.pending_of.entry(stamp.producer_id).or_default() += 1;
    }

    /// The log lost its entries from `from` on.
    pub fn truncate_from(&mut self, from: LogIndex) {
        assert!(from > self.table.as_of, "a truncation at {from} reaches the committed table at {}", self.table.as_of);
        while self.pending.back().is_some_and(|p| p.index >= from) {
            let p = self.pending.pop_back().expect("non-empty");
            self.forget_pending(p.stamp.producer_id);
        }
    }

    fn forget_pending(&mut self, producer_id: u64) {
        let n = self.pending_of.get_mut(&producer_id).expect("counted");
        *n -= 1;
        if *n == 0 {
            self.pending_of.remove(&producer_id);
        }
    }

    /// Entries up to `committed` are committed: fold their stamps.
    pub fn commit_to(&mut self, committed: LogIndex) {
        while self.pending.front().is_some_and(|p| p.index <= committed) {
            let p = self.pending.pop_front().expect("non-empty");
            self.forget_pending(p.stamp.producer_id);
            self.table.fold(p.index, p.term, &p.stamp, &self.limits);
        }
        self.table.as_of = self.table.as_of.max(committed);
    }

    /// The log now starts after a leader's log start, with that leader's
    /// table.
    pub fn reset(&mut self, table: SessionTable) {
        self.table = table;
        self.pending.clear();
        self.pending_of.clear();
    }

    /// The producer as the whole log (committed or not) leaves it.
    fn producer(&self, producer_id: u64, committed_only: bool) -> Option<ProducerState> {
        let mut state = self.table.producers.get(&producer_id).cloned();
        if !committed_only && self.pending_of.contains_key(&producer_id) {
            for p in self.pending.iter().filter(|p| p.stamp.producer_id == producer_id) {
                match &mut state {
                    Some(s) if p.stamp.epoch < s.epoch => {}
                    Some(s) => s.record(p.index, p.term, &p.stamp),
                    None => state = Some(ProducerState::new(p.index, p.term, &p.stamp)),
                }
            }
        }
        state
    }

    /// The leader's verdict on an append of `count` payloads (see the
    /// table in the module docs).
    pub fn check(&self, session: &ProducerSession, count: u32) -> SessionCheck {
        self.check_with(session, count, false)
    }

    /// [`Self::check`], optionally blind to the uncommitted stamps (the
    /// simulation's injected bug).
    pub(crate) fn check_with(&self, session: &ProducerSession, count: u32, committed_only: bool) -> SessionCheck {
        let Some(p) = self.producer(session.producer_id, committed_only) else { return SessionCheck::Accept };
        if session.epoch < p.epoch {
            return SessionCheck::Refuse(SessionRefusal::ProducerFenced { epoch: p.epoch });
        }
        if session.epoch > p.epoch {
            return match session.seq {
                0 => SessionCheck::Accept,
                _ => SessionCheck::Refuse(SessionRefusal::OutOfOrderSequence { expected: 0 }),
            };
        }
        let next = p.next_seq();
        if session.seq == next {
            return SessionCheck::Accept;
        }
        if session.seq > next {
            return SessionCheck::Refuse(SessionRefusal::OutOfOrderSequence { expected: next });
        }
        if let Some(b) = p.batches.iter().find(|b| b.first_seq == session.seq) {
            return match b.count == count {
                true => SessionCheck::Duplicate(*b),
                false => SessionCheck::Refuse(SessionRefusal::OutOfOrderSequence { expected: next }),
            };
        }
        let oldest = p.batches.front().expect("a held producer has a batch").first_seq;
        match session.seq < oldest {
            true => SessionCheck::Refuse(SessionRefusal::SequenceTooOld { oldest }),
            false => SessionCheck::Refuse(SessionRefusal::OutOfOrderSequence { expected: next }),
        }
    }

    /// The leader accepted an append whose last entry will be
    /// `(index, term)`: the stamp it writes there, noted at once so that
    /// the next append of the same step is checked against it.
    pub fn accept(&mut self, session: &ProducerSession, count: u32, index: LogIndex, term: Term) -> ProducerStamp {
        let stamp = ProducerStamp {
            producer_id: session.producer_id,
            epoch: session.epoch,
            count,
            first_seq: session.seq,
            time_ms: session.time_ms,
        };
        self.push(index, term, stamp);
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(producer_id: u64, epoch: u32, seq: u64) -> ProducerSession {
        ProducerSession { producer_id, epoch, seq, time_ms: 1_000 }
    }

    fn stamped(index: LogIndex, term: Term, stamp: ProducerStamp) -> Entry {
        Entry { index, term, kind: EntryKind::SessionCommand, payload: stamp.seal(b"payload") }
    }

    #[test]
    fn stamp_round_trips_and_strips() {
        let stamp = ProducerStamp { producer_id: 7, epoch: 2, count: 3, first_seq: 40, time_ms: 99 };
        let e = stamped(5, 1, stamp);
        assert_eq!(e.stamp(), Some(stamp));
        assert_eq!(e.client_payload().as_deref(), Some(&b"payload"[..]));
        assert_eq!(ProducerStamp::read(&[0; STAMP_LEN - 1]), None, "short");
        assert_eq!(ProducerStamp::read(&[0; STAMP_LEN]), None, "count 0");
        let plain = Entry { kind: EntryKind::Command, ..e.clone() };
        assert_eq!(plain.stamp(), None);
        let longer_than_the_log = Entry { index: 2, ..e.clone() };
        assert_eq!(longer_than_the_log.stamp(), None, "3 payloads cannot end at index 2");
    }

    /// Every row of the module docs' table.
    #[test]
    fn check_answers_each_case() {
        let mut s = Sessions::default();
        assert_eq!(s.check(&session(1, 0, 10), 2), SessionCheck::Accept, "an unknown producer starts anywhere");
        let stamp = s.accept(&session(1, 0, 10), 2, 4, 1);
        assert_eq!(stamp.first_seq, 10);
        let dup = SessionBatch { first_seq: 10, count: 2, first_index: 3, last_index: 4, term: 1 };
        assert_eq!(s.check(&session(1, 0, 10), 2), SessionCheck::Duplicate(dup), "uncommitted duplicate");
        assert_eq!(s.check(&session(1, 0, 12), 1), SessionCheck::Accept);
        let gap = SessionCheck::Refuse(SessionRefusal::OutOfOrderSequence { expected: 12 });
        assert_eq!(s.check(&session(1, 0, 13), 1), gap);
        assert_eq!(s.check(&session(1, 0, 11), 1), gap, "inside an append, not at its start");
        assert_eq!(s.check(&session(1, 0, 10), 3), gap, "same start, other count");
        s.commit_to(4);
        assert_eq!(s.pending_len(), 0);
        assert_eq!(s.check(&session(1, 0, 10), 2), SessionCheck::Duplicate(dup), "committed duplicate");
        assert_eq!(
            s.check(&session(1, 1, 5), 1),
            SessionCheck::Refuse(SessionRefusal::OutOfOrderSequence { expected: 0 }),
            "a new epoch starts at 0"
        );
        s.accept(&session(1, 1, 0), 1, 5, 1);
        assert_eq!(s.check(&session(1, 0, 12), 1), SessionCheck::Refuse(SessionRefusal::ProducerFenced { epoch: 1 }));
        for k in 1..=RETAINED_BATCHES as u64 {
            s.accept(&session(1, 1, k), 1, 5 + k, 1);
        }
        assert_eq!(s.check(&session(1, 1, 0), 1), SessionCheck::Refuse(SessionRefusal::SequenceTooOld { oldest: 1 }));
    }

    #[test]
    fn truncation_forgets_stamps_and_a_new_leader_sees_uncommitted_ones() {
        let mut follower = Sessions::default();
        let e = |index, seq| {
            stamped(index, 2, ProducerStamp { producer_id: 9, epoch: 0, count: 1, first_seq: seq, time_ms: 5 })
        };
        follower.note_entries(&[e(1, 0), e(2, 1), e(3, 2)]);
        follower.commit_to(1);
        assert_eq!(
            follower.check(&session(9, 0, 2), 1),
            SessionCheck::Duplicate(SessionBatch { first_seq: 2, count: 1, first_index: 3, last_index: 3, term: 2 })
        );
        follower.truncate_from(2);
        assert_eq!(follower.check(&session(9, 0, 1), 1), SessionCheck::Accept, "seq 1 is gone with its entry");
        // A second note of what is held is ignored (the leader notes at acceptance).
        follower.note_entries(&[e(1, 0)]);
        assert_eq!(follower.pending_len(), 0);
    }

    #[test]
    fn expiry_and_the_cap_go_by_the_stamps_clock() {
        let limits = SessionLimits { expiry_ms: 10_000, max_producers: 8 };
        let mut s = Sessions::restore(SessionTable::default(), &[], limits);
        let mut index = 0;
        let mut at = |s: &mut Sessions, producer_id: u64, time_ms: u64| {
            index += 1;
            s.accept(&ProducerSession { producer_id, epoch: 0, seq: 0, time_ms }, 1, index, 1);
            s.commit_to(index);
        };
        at(&mut s, 1, 1_000);
        at(&mut s, 2, 5_000);
        at(&mut s, 3, 11_000);
        assert!(s.table().producers.contains_key(&1), "just within the expiry");
        at(&mut s, 3, 11_500); // an older clock (another leader) does not move time back
        at(&mut s, 4, 13_000);
        assert!(!s.table().producers.contains_key(&1) && s.table().producers.contains_key(&2));
        for id in 10..20 {
            at(&mut s, id, 14_000 + id);
        }
        assert!(s.table().producers.len() <= 8);
        assert!(s.table().producers.contains_key(&19) && !s.table().producers.contains_key(&2), "oldest evicted");
    }

    #[test]
    fn table_encoding_round_trips_and_rejects_nonsense() {
        let mut s = Sessions::default();
        for k in 0..7 {
            s.accept(&session(3, 0, k), 1, k + 1, 1);
        }
        s.accept(&session(1, 2, 0), 1, 20, 1);
        s.commit_to(20);
        assert_eq!(s.table().producers[&3].batches.len(), RETAINED_BATCHES);
        let mut b = Vec::new();
        s.table().encode_into(&mut b);
        assert_eq!(b.len(), s.table().encoded_len());
        assert_eq!(SessionTable::decode(&b).as_ref(), Some(s.table()));
        assert_eq!(SessionTable::decode(&b[..b.len() - 1]), None);
        let mut bad = b.clone();
        bad[0] = 0; // as_of below the batches
        assert_eq!(SessionTable::decode(&bad), None);
        let mut huge = b.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(SessionTable::decode(&huge), None);
    }
}
