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
//! * truncation is durable when it returns (as in the engine).
//!
//! Invariant: `durable_len ≤ entries.len()`, and the durable prefix is never
//! changed except by an explicit truncation.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::{Entry, HardState, LogIndex, LogStorage, RestoredState};

/// One node's simulated disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    entries: Vec<Entry>,
    durable_len: usize,
    meta_durable: HardState,
    meta_pending: VecDeque<HardState>,
}

impl SimDisk {
    /// Truncate (durably) from `truncate_from`, then buffer `entries`.
    pub fn persist(&mut self, truncate_from: Option<LogIndex>, entries: &[Entry]) {
        if let Some(from) = truncate_from {
            assert!(from >= 1 && from <= self.entries.len() as u64 + 1, "truncate within the log");
            self.entries.truncate(from as usize - 1);
            self.durable_len = self.durable_len.min(self.entries.len());
        }
        for entry in entries {
            assert_eq!(entry.index, self.entries.len() as u64 + 1, "disk appends are contiguous");
            self.entries.push(entry.clone());
        }
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

    /// The node crashed: apply the fault model and return what survived.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) -> RestoredState {
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
        let mut restored = RestoredState::whole(self.meta_durable, self.entries.clone());
        restored.tail.drain(..self.entries.len() - in_memory);
        restored
    }

    /// Entries currently written (durable or not).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// The disk is the core's storage for entries that left its memory.
impl LogStorage for SimDisk {
    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: u64) -> Option<Vec<Entry>> {
        // The core only lets durable entries leave memory: asking for more is its bug.
        assert!(to as usize <= self.durable_len, "core asked storage for {from}..={to}, durable {}", self.durable_len);
        let written = self.entries.get(from.checked_sub(1)? as usize..to as usize)?;
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
}
