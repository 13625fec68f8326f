//! Simulated disk of one node, with a documented fault model.
//!
//! It mirrors the engine's contract: `append` is buffered and visible at
//! once; a later sync makes everything written so far durable and reports
//! "durable up to N"; truncation is synchronous; the metadata record is
//! replaced atomically and reported when durable.
//!
//! Fault model on [`SimDisk::crash`]:
//! * entries reported durable always survive;
//! * of the entries written but not reported durable, a random prefix
//!   survives (possibly none, possibly all): the write was partly on disk,
//!   and the torn entry at its end is cut by recovery;
//! * of the metadata saves not reported durable, a random prefix of them
//!   took effect (each save is atomic, so no record is ever half-written);
//! * truncation is durable when it returns (as in the engine);
//! * so are a purge of a prefix and a reset to a leader's log start (the
//!   engine writes its start record, synced, before deleting anything);
//! * a complete state-machine snapshot is durable once saved (written,
//!   synced, renamed); of a fetch's partial file, everything before the last
//!   chunk written survives, and of that chunk a random prefix, which may
//!   read back as zeroes (the file grew, its data never reached the disk):
//!   the host must find that out from the whole file's checksum.
//! * the configuration records (`configs`, the host's side file of
//!   `membership`) are written and synced when the core says
//!   (`SaveConfig`) and kept by the file's rules there: they survive every
//!   crash, and the core filters them on restart as a real host's are.
//!
//! Invariant: `durable_len ≤ entries.len()`, `entries[k].index ==
//! start.first_index() + k`, and the durable prefix is never changed except
//! by an explicit truncation, purge or reset.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use bytes::Bytes;

use super::machine::SNAPSHOTS_KEPT;
use crate::snapshot_pull::SnapshotId;
use crate::{ConfigHistory, Entry, HardState, LogIndex, LogStart, LogStorage, RaftLog, RestoredState, SessionTable};

/// One node's simulated disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    /// The last purged entry; `entries` follow it.
    start: LogStart,
    entries: Vec<Entry>,
    durable_len: usize,
    meta_durable: HardState,
    meta_pending: VecDeque<HardState>,
    /// Complete state-machine snapshots, oldest first.
    pub snapshots: Vec<(SnapshotId, Bytes)>,
    /// The partial file of a snapshot fetch: whose bytes, and those bytes.
    pub partial: Option<(SnapshotId, Vec<u8>)>,
    /// Bytes of `partial` before its last write.
    partial_before_last_write: usize,
    /// The host's configuration records, in the order written.
    pub configs: ConfigHistory,
    /// The host's saved producer-session table (durable when written).
    pub sessions: SessionTable,
}

impl SimDisk {
    /// Truncate (durably) from `truncate_from`, then buffer `entries`.
    pub fn persist(&mut self, truncate_from: Option<LogIndex>, entries: &[Entry]) {
        let first = self.start.first_index();
        if let Some(from) = truncate_from {
            assert!(from >= first && from <= self.next_index(), "truncate within the log");
            self.entries.truncate((from - first) as usize);
            self.durable_len = self.durable_len.min(self.entries.len());
        }
        for entry in entries {
            assert_eq!(entry.index, self.next_index(), "disk appends are contiguous");
            self.entries.push(entry.clone());
        }
    }

    fn next_index(&self) -> LogIndex {
        self.start.first_index() + self.entries.len() as LogIndex
    }

    /// Durably drops the entries below `first_index` (durable ones only).
    pub fn purge_to(&mut self, first_index: LogIndex) {
        let first = self.start.first_index();
        if first_index <= first {
            return;
        }
        let n = (first_index - first) as usize;
        assert!(n <= self.durable_len, "purge below {first_index} of entries not durable");
        let prev_term = self.entries[n - 1].term;
        self.entries.drain(..n);
        self.durable_len -= n;
        self.start = LogStart { prev_index: first_index - 1, prev_term };
    }

    /// Durably drops the whole log and starts it after `start`.
    pub fn reset(&mut self, start: LogStart) {
        self.entries.clear();
        self.durable_len = 0;
        self.start = start;
    }

    /// The last purged entry.
    pub fn start(&self) -> LogStart {
        self.start
    }

    /// The entry at `index`, if the disk holds it (durable or not).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let k = index.checked_sub(self.start.first_index())?;
        self.entries.get(usize::try_from(k).ok()?)
    }

    /// Term of the entry at `index` (the start's term at its index).
    pub fn term_at(&self, index: LogIndex) -> Option<u64> {
        if index == self.start.prev_index {
            return Some(self.start.prev_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// Whether some written entries are not yet durable.
    pub fn has_unsynced_entries(&self) -> bool {
        self.durable_len < self.entries.len()
    }

    /// Sync entries: returns the (index, term) now durable, if anything new.
    pub fn sync_entries(&mut self) -> Option<(LogIndex, u64)> {
        if !self.has_unsynced_entries() {
            return None;
        }
        self.durable_len = self.entries.len();
        let last = self.entries.last().expect("non-empty");
        Some((last.index, last.term))
    }

    /// Buffer a metadata save.
    pub fn save_meta(&mut self, hard_state: HardState) {
        self.meta_pending.push_back(hard_state);
    }

    /// Whether a metadata save is pending.
    pub fn has_pending_meta(&self) -> bool {
        !self.meta_pending.is_empty()
    }

    /// Sync metadata: returns the record now durable, if anything new.
    pub fn sync_meta(&mut self) -> Option<HardState> {
        let last = self.meta_pending.drain(..).next_back()?;
        self.meta_durable = last;
        Some(last)
    }

    /// Writes a fetched chunk at `offset` of the partial file (dropping what
    /// it held first when `restart`).
    pub fn write_partial(&mut self, id: SnapshotId, offset: u64, data: &[u8], restart: bool) {
        if restart || self.partial.as_ref().is_none_or(|(held, _)| *held != id) {
            self.partial = Some((id, Vec::new()));
        }
        let (_, bytes) = self.partial.as_mut().expect("set above");
        assert_eq!(bytes.len() as u64, offset, "a chunk is written at the byte reached");
        self.partial_before_last_write = bytes.len();
        bytes.extend_from_slice(data);
    }

    /// Saves a complete snapshot (atomically) and keeps the newest few.
    pub fn save_snapshot(&mut self, id: SnapshotId, body: Bytes) {
        if self.snapshots.last().is_some_and(|(newest, _)| newest.index >= id.index) {
            return;
        }
        self.snapshots.push((id, body));
        let excess = self.snapshots.len().saturating_sub(SNAPSHOTS_KEPT);
        self.snapshots.drain(..excess);
    }

    /// The index the newest complete snapshot covers (0: none).
    pub fn newest_snapshot_index(&self) -> LogIndex {
        self.snapshots.last().map_or(0, |(id, _)| id.index)
    }

    /// The node crashed: apply the fault model and return what survived.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) -> RestoredState {
        if let Some((_, bytes)) = &mut self.partial {
            let before = self.partial_before_last_write.min(bytes.len());
            let kept = rng.gen_range(before..=bytes.len());
            if rng.gen_bool(0.25) {
                bytes[before..kept].fill(0);
            }
            bytes.truncate(kept);
            self.partial_before_last_write = kept;
        }
        let unsynced = self.entries.len() - self.durable_len;
        let survivors = self.durable_len + rng.gen_range(0..=unsynced);
        self.entries.truncate(survivors);
        self.durable_len = survivors;
        let pending = self.meta_pending.len();
        let applied = rng.gen_range(0..=pending);
        if applied > 0 {
            self.meta_durable = self.meta_pending[applied - 1];
        }
        self.meta_pending.clear();
        // The host decides how much of the tail to hold in memory: anything.
        let in_memory = rng.gen_range(0..=self.entries.len());
        RestoredState {
            meta: self.meta_durable,
            start: self.start,
            terms: RaftLog::term_runs_of(&self.entries),
            last_index: self.next_index() - 1,
            tail: self.entries[self.entries.len() - in_memory..].to_vec(),
            configs: self.configs.records().to_vec(),
            sessions: self.sessions.clone(),
            stamped: self
                .entries
                .iter()
                .filter(|e| e.index > self.sessions.as_of && e.stamp().is_some())
                .cloned()
                .collect(),
        }
    }

    /// Entries currently written (durable or not).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// The disk is the core's storage for entries that left its memory.
impl LogStorage for SimDisk {
    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: u64) -> Option<Vec<Entry>> {
        // The core only lets durable entries leave memory, and never asks for
        // purged ones: either is its bug.
        let first = self.start.first_index();
        assert!(from >= first, "core asked storage for {from}..={to}, purged below {first}");
        assert!(
            to < first + self.durable_len as LogIndex,
            "core asked storage for {from}..={to}, durable up to {}",
            first + self.durable_len as LogIndex - 1
        );
        let written = self.entries.get((from - first) as usize..=(to - first) as usize)?;
        let mut bytes = 0;
        let mut out = Vec::new();
        for e in written {
            out.push(e.clone());
            bytes += e.size_bytes();
            if bytes >= max_bytes {
                break;
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;
    use rand::SeedableRng;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, kind: EntryKind::Noop, payload: Default::default() }
    }

    #[test]
    fn crash_keeps_durable_prefix_and_some_prefix_of_the_rest() {
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut disk = SimDisk::default();
            disk.persist(None, &[entry(1, 1), entry(2, 1)]);
            assert_eq!(disk.sync_entries(), Some((2, 1)));
            disk.persist(None, &[entry(3, 1), entry(4, 1)]);
            disk.save_meta(HardState { term: 1, voted_for: None });
            disk.save_meta(HardState { term: 2, voted_for: Some(1) });
            let restored = disk.crash(&mut rng);
            assert!((2..=4).contains(&restored.last_index), "seed {seed}");
            let tail_start = restored.last_index + 1 - restored.tail.len() as u64;
            assert!(restored.tail.iter().enumerate().all(|(k, e)| e.index == tail_start + k as u64), "seed {seed}");
            assert!(restored.meta.term <= 2);
        }
    }

    #[test]
    fn truncation_below_durable_shrinks_it() {
        let mut disk = SimDisk::default();
        disk.persist(None, &[entry(1, 1), entry(2, 1)]);
        disk.sync_entries();
        disk.persist(Some(2), &[entry(2, 2)]);
        assert!(disk.has_unsynced_entries());
        let restored = disk.crash(&mut ChaCha8Rng::seed_from_u64(1));
        assert!((1..=2).contains(&restored.last_index));
    }

    #[test]
    fn purge_and_reset_move_the_start_and_survive_a_crash() {
        let mut disk = SimDisk::default();
        disk.persist(None, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
        disk.sync_entries();
        disk.purge_to(3);
        assert_eq!(disk.start(), LogStart { prev_index: 2, prev_term: 1 });
        assert_eq!((disk.term_at(2), disk.term_at(3), disk.entry(1)), (Some(1), Some(2), None));
        disk.persist(None, &[entry(4, 2)]);
        let restored = disk.crash(&mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!((restored.start.prev_index, restored.terms.first()), (2, Some(&(3, 2))));
        disk.reset(LogStart { prev_index: 9, prev_term: 3 });
        disk.persist(None, &[entry(10, 3)]);
        let restored = disk.crash(&mut ChaCha8Rng::seed_from_u64(4));
        assert_eq!(restored.start, LogStart { prev_index: 9, prev_term: 3 });
        assert!((9..=10).contains(&restored.last_index));
    }
}
