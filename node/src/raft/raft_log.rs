//! The core's in-memory view of its log: entries plus the durable, committed
//! and applied positions.
//!
//! ```text
//!   0 ≤ applied_index ≤ committed_index ≤ last_index
//!   0 ≤ durable_index ≤ last_index
//!   entries[k].index == k + 1, entries[k].term ≤ entries[k + 1].term
//! ```
//!
//! * The core owns the whole log in memory (there is no snapshot or prefix
//!   purge yet, so the first index is always 1). The host mirrors every
//!   change into durable storage through `Command::PersistEntries`, and on
//!   restart hands the surviving entries back in `RestoredState`.
//! * `durable_index` moves forward only on a storage completion naming an
//!   entry this log still holds (same index *and* term), and moves back only
//!   when a truncation removes durable entries.
//! * `committed_index` never decreases, and a truncation never reaches it: a
//!   committed entry is in every future leader's log (Leader Completeness), so
//!   no leader can ask us to overwrite it. Both are `assert!`ed.
//! * `committed_index` may exceed `durable_index` on a leader whose own disk
//!   is slower than a quorum of followers': commit is a quorum property.

use super::message::{Entry, LogIndex, Term};

/// Entries and positions; see the module docs for the invariants.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    entries: Vec<Entry>,
    durable_index: LogIndex,
    committed_index: LogIndex,
    applied_index: LogIndex,
}

impl RaftLog {
    /// A log holding `entries` (index 1 onwards), all durable, none committed.
    pub fn restored(entries: Vec<Entry>) -> Self {
        let durable_index = entries.len() as LogIndex;
        let log = RaftLog { entries, durable_index, committed_index: 0, applied_index: 0 };
        log.debug_check();
        log
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        self.entries.len() as LogIndex
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Highest index the host reported durable.
    pub fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    /// Highest index known committed.
    pub fn committed_index(&self) -> LogIndex {
        self.committed_index
    }

    /// Highest index handed to the host in `Command::Apply`.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Term of the entry at `index`; `Some(0)` for index 0, `None` past the end.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.entries.get(index as usize - 1).map(|e| e.term)
    }

    /// The entry at `index`, if present.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1)
    }

    /// Entries `from..=to_inclusive` (clamped to the log).
    pub fn entries(&self, from: LogIndex, to_inclusive: LogIndex) -> &[Entry] {
        let from = from.max(1);
        let to_inclusive = to_inclusive.min(self.last_index());
        if from > to_inclusive {
            return &[];
        }
        &self.entries[from as usize - 1..to_inclusive as usize]
    }

    /// Whether a log ending at (`last_term`, `last_index`) is at least as
    /// up-to-date as this one (Raft §5.4.1).
    pub fn is_up_to_date(&self, last_term: Term, last_index: LogIndex) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// First index of the run of entries with the same term as `index`.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let term = self.term_at(index).expect("index within the log");
        let mut first = index;
        while first > 1 && self.term_at(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// Last index holding an entry of `term`, if any.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries.iter().rev().find(|e| e.term == term).map(|e| e.index)
    }

    /// Appends entries that continue the log exactly.
    pub fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1, "append must be contiguous");
            assert!(entry.term >= self.last_term(), "terms never decrease along the log");
            self.entries.push(entry.clone());
        }
    }

    /// Removes entries `from_index..`; the committed prefix is untouchable.
    pub fn truncate_from(&mut self, from_index: LogIndex) {
        assert!(
            from_index > self.committed_index,
            "truncation at {from_index} would remove committed entries (commit {})",
            self.committed_index
        );
        self.entries.truncate(from_index as usize - 1);
        self.durable_index = self.durable_index.min(from_index - 1);
    }

    /// Storage reports entries up to `index` durable; `index` must still hold
    /// `term` for the report to count (see the module docs). Returns whether
    /// the durable index moved.
    pub fn mark_durable(&mut self, index: LogIndex, term: Term) -> bool {
        if index <= self.durable_index || self.term_at(index) != Some(term) {
            return false;
        }
        self.durable_index = index;
        true
    }

    /// Raises the commit index. Never lowers it.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed_index {
            return false;
        }
        assert!(index <= self.last_index(), "commit {index} past the last index {}", self.last_index());
        self.committed_index = index;
        true
    }

    /// Entries committed but not yet handed out; marks them applied.
    pub fn take_unapplied(&mut self) -> Vec<Entry> {
        let from = self.applied_index + 1;
        let out = self.entries(from, self.committed_index).to_vec();
        self.applied_index = self.committed_index;
        out
    }

    fn debug_check(&self) {
        debug_assert!(self.entries.iter().enumerate().all(|(k, e)| e.index == k as u64 + 1));
        debug_assert!(self.entries.windows(2).all(|w| w[0].term <= w[1].term));
        debug_assert!(self.applied_index <= self.committed_index);
        debug_assert!(self.committed_index <= self.last_index());
        debug_assert!(self.durable_index <= self.last_index());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::EntryKind;

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &term)| Entry { index: k as u64 + 1, term, kind: EntryKind::Noop, payload: Default::default() })
            .collect();
        RaftLog::restored(entries)
    }

    #[test]
    fn term_lookups_by_table() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        // (index, term_at, first_index_of_term_at)
        let cases = [(1, 1, 1), (2, 1, 1), (3, 2, 3), (5, 2, 3), (6, 4, 6)];
        for (index, term, first) in cases {
            assert_eq!(log.term_at(index), Some(term), "term_at({index})");
            assert_eq!(log.first_index_of_term_at(index), first, "first_index_of_term_at({index})");
        }
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(7), None);
        assert_eq!(log.last_index_of_term(2), Some(5));
        assert_eq!(log.last_index_of_term(3), None);
    }

    #[test]
    fn up_to_date_compares_last_term_then_last_index() {
        let log = log_with_terms(&[1, 2, 2]);
        // (candidate last term, candidate last index, expected)
        let cases = [(2, 3, true), (2, 2, false), (3, 1, true), (1, 9, false), (2, 4, true)];
        for (term, index, expected) in cases {
            assert_eq!(log.is_up_to_date(term, index), expected, "candidate ({term}, {index})");
        }
    }

    #[test]
    fn truncation_pulls_durable_back_and_stale_durable_reports_are_ignored() {
        let mut log = log_with_terms(&[1, 1, 1]);
        log.truncate_from(2);
        assert_eq!(log.durable_index(), 1);
        log.append(&[Entry { index: 2, term: 2, kind: EntryKind::Noop, payload: Default::default() }]);
        assert!(!log.mark_durable(2, 1), "report for the overwritten term-1 entry must not count");
        assert!(log.mark_durable(2, 2));
    }

    #[test]
    #[should_panic(expected = "would remove committed entries")]
    fn truncating_committed_entries_panics() {
        let mut log = log_with_terms(&[1, 1]);
        log.commit_to(2);
        log.truncate_from(2);
    }
}
