//! The core's in-memory view of its log: the terms of every entry, the
//! payloads of a bounded tail, and the durable, committed and applied
//! positions.
//!
//! ```text
//!   start.prev_index ≤ applied_index ≤ committed_index ≤ last_index
//!   start.prev_index ≤ durable_index ≤ last_index
//!   first_index = start.prev_index + 1 ≤ first_in_memory ≤ last_index + 1
//!   entries[k].index == first_in_memory + k, terms never decrease along the log
//! ```
//!
//! * The log holds `first_index()..=last_index()`. Everything up to
//!   `start.prev_index` was purged; it is committed (a purge never passes
//!   the commit index, and a follower only takes a leader's log start), and
//!   only its last term is kept (`start.prev_term`), for the
//!   `prev_log_term` of the first append and for elections on an empty log.
//!   [`RaftLog::term_at`] answers `None` below the start: those entries are
//!   expired, not absent.
//!
//! * The host mirrors every change into durable storage through
//!   `Command::PersistEntries`, and on restart hands back the terms of the
//!   whole log and as much of its tail as it likes in `RestoredState`.
//! * Terms of the whole log are kept as runs `(first index, term)` (one per
//!   leader change, so tiny); every term lookup works for every index.
//! * Payloads are held for `first_in_memory..=last_index` only. Entries leave
//!   memory from the front ([`RaftLog::compact`]) once they are applied *and*
//!   durable here, so whatever is not in memory can be read back from the
//!   host's storage (`super::LogStorage`). Memory is thereby bounded by the
//!   budget plus what is not yet applied or durable.
//! * `durable_index` moves forward only on a storage completion naming an
//!   entry this log still holds (same index *and* term), and moves back only
//!   when a truncation removes durable entries.
//! * `committed_index` never decreases, and a truncation never reaches it: a
//!   committed entry is in every future leader's log (Leader Completeness), so
//!   no leader can ask us to overwrite it. Both are `assert!`ed.
//! * `committed_index` may exceed `durable_index` on a leader whose own disk
//!   is slower than a quorum of followers': commit is a quorum property.

use super::message::{Entry, LogIndex, LogStart, Term};

/// Terms and tail entries and positions; see the module docs for the invariants.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Entries `first_in_memory..=last_index()`.
    entries: Vec<Entry>,
    /// The last purged entry; the log holds what follows it.
    start: LogStart,
    first_in_memory: LogIndex,
    /// `(first index, term)` of each run of equal terms, over the whole log.
    terms: Vec<(LogIndex, Term)>,
    /// Sum of `Entry::size_bytes` over `entries`.
    memory_bytes: u64,
    durable_index: LogIndex,
    committed_index: LogIndex,
    applied_index: LogIndex,
}

impl Default for RaftLog {
    fn default() -> Self {
        RaftLog::restored(LogStart::default(), Vec::new(), 0, Vec::new())
    }
}

impl RaftLog {
    /// A log that starts after `start` and ends at `last_index`, whose terms
    /// are the runs `terms`, with `tail` (the last entries, possibly none) in
    /// memory; all durable, committed (and applied) up to the start. The
    /// caller has checked that they agree ([`RaftLog::check_restored`]).
    pub fn restored(start: LogStart, terms: Vec<(LogIndex, Term)>, last_index: LogIndex, tail: Vec<Entry>) -> Self {
        let first_in_memory = last_index + 1 - tail.len() as LogIndex;
        let memory_bytes = tail.iter().map(Entry::size_bytes).sum();
        let log = RaftLog {
            entries: tail,
            start,
            first_in_memory,
            terms,
            memory_bytes,
            durable_index: last_index,
            committed_index: start.prev_index,
            applied_index: start.prev_index,
        };
        log.debug_check();
        log
    }

    /// Why `start`, `terms`, `last_index` and `tail` do not describe one log, if they do not.
    pub fn check_restored(
        start: LogStart,
        terms: &[(LogIndex, Term)],
        last_index: LogIndex,
        tail: &[Entry],
    ) -> Result<(), (LogIndex, &'static str)> {
        let first = start.first_index();
        if (start.prev_index == 0) != (start.prev_term == 0) {
            return Err((start.prev_index, "a log start needs both an index and a term"));
        }
        if last_index < start.prev_index {
            return Err((last_index, "the log ends before its start"));
        }
        if terms.is_empty() != (last_index == start.prev_index) || terms.first().is_some_and(|r| r.0 != first) {
            return Err((first, "term runs do not start at the log's first index"));
        }
        if terms.first().is_some_and(|r| r.1 < start.prev_term) {
            return Err((first, "the first term is below the log start's term"));
        }
        if let Some(w) = terms.windows(2).find(|w| w[1].0 <= w[0].0 || w[1].1 <= w[0].1) {
            return Err((w[1].0, "term runs out of order or terms decrease"));
        }
        if terms.last().is_some_and(|r| r.0 > last_index) {
            return Err((last_index, "a term run starts past the last index"));
        }
        if tail.len() as LogIndex > last_index {
            return Err((last_index, "more entries than the log holds"));
        }
        if (tail.len() as LogIndex) > last_index - start.prev_index {
            return Err((last_index, "more entries than the log holds"));
        }
        let first = last_index + 1 - tail.len() as LogIndex;
        let probe = RaftLog { terms: terms.to_vec(), start, first_in_memory: last_index + 1, ..Default::default() };
        for (k, e) in tail.iter().enumerate() {
            if e.index != first + k as LogIndex {
                return Err((e.index, "entries not contiguous up to the last index"));
            }
            if probe.terms_lookup(e.index) != Some(e.term) {
                return Err((e.index, "entry term differs from the term runs"));
            }
        }
        Ok(())
    }

    /// The term runs of `entries` (contiguous from index 1).
    pub fn term_runs_of(entries: &[Entry]) -> Vec<(LogIndex, Term)> {
        let mut runs: Vec<(LogIndex, Term)> = Vec::new();
        for e in entries {
            if runs.last().is_none_or(|r| r.1 != e.term) {
                runs.push((e.index, e.term));
            }
        }
        runs
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        self.first_in_memory + self.entries.len() as LogIndex - 1
    }

    /// Term of the last entry (the log start's when empty, 0 for a log that never held one).
    pub fn last_term(&self) -> Term {
        self.terms.last().map_or(self.start.prev_term, |r| r.1)
    }

    /// The last purged entry (`(0, 0)` when nothing was purged).
    pub fn start(&self) -> LogStart {
        self.start
    }

    /// The first index the log holds (`last_index() + 1` when it holds none).
    pub fn first_index(&self) -> LogIndex {
        self.start.first_index()
    }

    /// The first index whose payload is in memory (`last_index() + 1` when none is).
    pub fn first_in_memory(&self) -> LogIndex {
        self.first_in_memory
    }

    /// Payload bytes (with per-entry overhead) held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
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

    fn terms_lookup(&self, index: LogIndex) -> Option<Term> {
        let i = self.terms.partition_point(|&(start, _)| start <= index);
        (i > 0).then(|| self.terms[i - 1].1)
    }

    /// Term of the entry at `index`; the log start's term at its index
    /// (`Some(0)` for index 0 of an unpurged log); `None` past the end and
    /// below the start (purged).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.start.prev_index {
            return Some(self.start.prev_term);
        }
        if index < self.start.prev_index || index > self.last_index() {
            return None;
        }
        match self.entry(index) {
            Some(e) => Some(e.term),
            None => self.terms_lookup(index),
        }
    }

    /// The entry at `index`, if present in memory.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index < self.first_in_memory {
            return None;
        }
        self.entries.get((index - self.first_in_memory) as usize)
    }

    /// The entries of `from..=to_inclusive` that are in memory (clamped to
    /// `first_in_memory()..=last_index()`).
    pub fn entries(&self, from: LogIndex, to_inclusive: LogIndex) -> &[Entry] {
        let from = from.max(self.first_in_memory);
        let to_inclusive = to_inclusive.min(self.last_index());
        if from > to_inclusive {
            return &[];
        }
        let base = self.first_in_memory;
        &self.entries[(from - base) as usize..=(to_inclusive - base) as usize]
    }

    /// Whether a log ending at (`last_term`, `last_index`) is at least as
    /// up-to-date as this one (Raft §5.4.1).
    pub fn is_up_to_date(&self, last_term: Term, last_index: LogIndex) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// First index of the run of entries with the same term as `index` (the
    /// log start's index for the log start itself).
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        if index <= self.start.prev_index {
            return index;
        }
        assert!(index <= self.last_index(), "index {index} within the log");
        let i = self.terms.partition_point(|&(start, _)| start <= index);
        self.terms[i - 1].0
    }

    /// Last index holding an entry of `term`, if any.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        let i = self.terms.iter().position(|r| r.1 == term)?;
        Some(self.terms.get(i + 1).map_or(self.last_index(), |next| next.0 - 1))
    }

    /// Appends entries that continue the log exactly.
    pub fn append(&mut self, entries: &[Entry]) {
        self.entries.reserve(entries.len());
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1, "append must be contiguous");
            assert!(entry.term >= self.last_term(), "terms never decrease along the log");
            if entry.term != self.last_term() || self.terms.is_empty() {
                self.terms.push((entry.index, entry.term));
            }
            self.memory_bytes += entry.size_bytes();
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
        if from_index <= self.first_in_memory {
            self.entries.clear();
            self.first_in_memory = from_index;
            self.memory_bytes = 0;
        } else if from_index <= self.last_index() {
            let keep = (from_index - self.first_in_memory) as usize;
            self.memory_bytes -= self.entries[keep..].iter().map(Entry::size_bytes).sum::<u64>();
            self.entries.truncate(keep);
        }
        let runs = self.terms.partition_point(|&(start, _)| start < from_index);
        self.terms.truncate(runs);
        self.durable_index = self.durable_index.min(from_index - 1);
        self.debug_check();
    }

    /// The host purged its storage below `first_index`: forget those entries
    /// (keeping the last one's index and term as the log start). Only
    /// committed, applied and durable entries may go (asserted, unless
    /// `allow_uncommitted`: a bug switch for the simulation, which then counts
    /// them committed and applied).
    pub fn purge_to(&mut self, first_index: LogIndex, allow_uncommitted: bool) {
        let prev_index = first_index - 1;
        if prev_index <= self.start.prev_index {
            return;
        }
        assert!(prev_index <= self.durable_index, "purge to {first_index} past durable {}", self.durable_index);
        if allow_uncommitted {
            self.committed_index = self.committed_index.max(prev_index);
            self.applied_index = self.applied_index.max(prev_index);
        }
        assert!(
            prev_index <= self.applied_index,
            "purge to {first_index} past applied {} (commit {})",
            self.applied_index,
            self.committed_index
        );
        let prev_term = self.term_at(prev_index).expect("a durable entry has a term");
        if self.first_in_memory < first_index {
            let n = ((first_index - self.first_in_memory) as usize).min(self.entries.len());
            self.memory_bytes -= self.entries[..n].iter().map(Entry::size_bytes).sum::<u64>();
            self.entries.drain(..n);
            self.first_in_memory = first_index;
        }
        // Runs wholly below the new first index go; the one it falls in starts there.
        let below = self.terms.partition_point(|&(start, _)| start <= first_index);
        if below > 0 {
            self.terms.drain(..below - 1);
        }
        if first_index > self.last_index() {
            self.terms.clear();
        } else if let Some(run) = self.terms.first_mut() {
            run.0 = run.0.max(first_index);
        }
        self.start = LogStart { prev_index, prev_term };
        self.debug_check();
    }

    /// A follower takes a leader's log start it does not hold the entry of:
    /// the whole log goes, and the log goes on after `start`, which is
    /// committed (and counts as applied: nothing before it is handed out).
    /// The host makes this durable before anything else happens.
    pub fn reset_to(&mut self, start: LogStart) {
        assert!(start.prev_index >= self.committed_index, "a log start below the commit index is already held");
        self.entries.clear();
        self.memory_bytes = 0;
        self.terms.clear();
        self.start = start;
        self.first_in_memory = start.first_index();
        self.durable_index = start.prev_index;
        self.committed_index = start.prev_index;
        self.applied_index = start.prev_index;
        self.debug_check();
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

    /// Entries committed but not yet handed out that are in memory (after a
    /// restart with a partial tail, the older ones are not); marks all of them
    /// applied.
    pub fn take_unapplied(&mut self) -> Vec<Entry> {
        let from = self.applied_index + 1;
        let out = self.entries(from, self.committed_index).to_vec();
        self.applied_index = self.committed_index;
        out
    }

    /// Drops entries from memory, oldest first, while more than `budget_bytes`
    /// are held; only entries that are applied and durable leave (storage can
    /// give them back). Drops down to three quarters of the budget at once, so
    /// that the cost of moving the rest is spread over many entries.
    pub fn compact(&mut self, budget_bytes: u64) {
        if self.memory_bytes <= budget_bytes {
            return;
        }
        let target = budget_bytes - budget_bytes / 4;
        let evictable_to = self.applied_index.min(self.durable_index);
        let mut n = 0;
        let mut freed = 0;
        for e in &self.entries {
            if self.memory_bytes - freed <= target || e.index > evictable_to {
                break;
            }
            freed += e.size_bytes();
            n += 1;
        }
        // Moving the rest costs as much as the whole tail: only for a real
        // cut (a quarter of the budget, or down to the target, or everything),
        // not for the few entries that became evictable since the last step.
        let worth_it = freed * 4 >= budget_bytes || self.memory_bytes - freed <= target || n == self.entries.len();
        if n > 0 && worth_it {
            self.entries.drain(..n);
            self.first_in_memory += n as LogIndex;
            self.memory_bytes -= freed;
        }
        self.debug_check();
    }

    fn debug_check(&self) {
        debug_assert!(self.entries.iter().enumerate().all(|(k, e)| e.index == self.first_in_memory + k as u64));
        debug_assert!(self.entries.iter().all(|e| self.terms_lookup(e.index) == Some(e.term)));
        debug_assert!(self.terms.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        debug_assert!(self.terms.last().is_none_or(|r| r.0 <= self.last_index()));
        debug_assert!(self.applied_index <= self.committed_index);
        debug_assert!(self.committed_index <= self.last_index());
        debug_assert!(self.durable_index <= self.last_index());
        debug_assert!(self.first_in_memory >= self.first_index());
        debug_assert!(self.terms.first().is_none_or(|r| r.0 >= self.first_index() && r.1 >= self.start.prev_term));
        debug_assert!(self.applied_index >= self.start.prev_index);
        debug_assert!(self.durable_index >= self.start.prev_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EntryKind;

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(k, &term)| Entry { index: k as u64 + 1, term, kind: EntryKind::Noop, payload: Default::default() })
            .collect();
        let runs = RaftLog::term_runs_of(&entries);
        RaftLog::restored(LogStart::default(), runs, entries.len() as u64, entries)
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

    #[test]
    fn compaction_drops_only_applied_and_durable_entries_and_keeps_their_terms() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 3, 3]);
        let size = log.memory_bytes() / 6;
        log.commit_to(5);
        log.take_unapplied();
        log.truncate_from(6);
        log.append(&[Entry { index: 6, term: 4, kind: EntryKind::Noop, payload: Default::default() }]);
        // Durable up to 5 (the truncation pulled it back), applied up to 5.
        log.compact(0);
        assert_eq!((log.first_in_memory(), log.memory_bytes()), (6, size), "entry 6 is not durable");
        assert_eq!(log.entries(1, 6).len(), 1);
        for (index, term) in [(1, 1), (2, 1), (3, 2), (5, 3), (6, 4)] {
            assert_eq!(log.term_at(index), Some(term), "term_at({index})");
        }
        assert_eq!((log.first_index_of_term_at(4), log.last_index_of_term(3)), (3, Some(5)));
        assert!(log.mark_durable(6, 4));
        log.compact(0);
        assert_eq!(log.first_in_memory(), 6, "durable, but not applied");
        log.commit_to(6);
        log.take_unapplied();
        log.compact(0);
        assert_eq!((log.first_in_memory(), log.last_index(), log.memory_bytes()), (7, 6, 0));
        assert!(log.entry(6).is_none() && log.term_at(6) == Some(4) && log.term_at(7).is_none());
    }

    #[test]
    fn compaction_keeps_the_budget_and_moves_in_chunks() {
        let mut log = log_with_terms(&[1; 100]);
        let size = log.memory_bytes() / 100;
        log.commit_to(100);
        log.take_unapplied();
        log.compact(size * 200);
        assert_eq!(log.first_in_memory(), 1, "under the budget nothing moves");
        log.compact(size * 40);
        assert_eq!(log.first_in_memory(), 71, "down to three quarters of the budget (30 entries)");
        log.compact(size * 40);
        assert_eq!(log.first_in_memory(), 71, "within the budget again");
    }

    #[test]
    fn truncation_below_memory_empties_it() {
        let mut log = RaftLog::restored(LogStart::default(), vec![(1, 1), (3, 2)], 4, vec![]);
        assert_eq!((log.first_in_memory(), log.last_index(), log.last_term()), (5, 4, 2));
        log.truncate_from(3);
        assert_eq!((log.first_in_memory(), log.last_index(), log.last_term(), log.durable_index()), (3, 2, 1, 2));
        log.append(&[Entry { index: 3, term: 5, kind: EntryKind::Noop, payload: Default::default() }]);
        assert_eq!((log.term_at(2), log.term_at(3), log.last_index_of_term(2)), (Some(1), Some(5), None));
    }

    #[test]
    fn purging_keeps_the_last_purged_term_and_the_runs_above() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        log.commit_to(6);
        log.take_unapplied();
        log.purge_to(4, false);
        assert_eq!(log.start(), LogStart { prev_index: 3, prev_term: 2 });
        assert_eq!((log.first_index(), log.first_in_memory(), log.last_index()), (4, 4, 6));
        // (index, term_at): below the start expired, the start itself known.
        for (index, term) in [(0, None), (2, None), (3, Some(2)), (4, Some(2)), (6, Some(4)), (7, None)] {
            assert_eq!(log.term_at(index), term, "term_at({index})");
        }
        assert_eq!(log.first_index_of_term_at(5), 4, "the run now starts at the first index");
        assert_eq!(log.last_index_of_term(1), None);
        log.purge_to(7, false);
        assert_eq!((log.first_index(), log.last_index(), log.last_term(), log.memory_bytes()), (7, 6, 4, 0));
        assert!(log.is_up_to_date(4, 6) && !log.is_up_to_date(3, 9));
        log.append(&[Entry { index: 7, term: 5, kind: EntryKind::Noop, payload: Default::default() }]);
        assert_eq!((log.term_at(6), log.term_at(7)), (Some(4), Some(5)));
    }

    #[test]
    #[should_panic(expected = "past applied")]
    fn purging_uncommitted_entries_panics() {
        let mut log = log_with_terms(&[1, 1, 1]);
        log.commit_to(1);
        log.take_unapplied();
        log.purge_to(3, false);
    }

    #[test]
    fn a_reset_starts_the_log_after_a_leaders_start_and_a_restart_keeps_it() {
        let mut log = log_with_terms(&[1, 1, 3]);
        log.commit_to(1);
        log.reset_to(LogStart { prev_index: 10, prev_term: 2 });
        assert_eq!((log.first_index(), log.last_index(), log.last_term()), (11, 10, 2));
        assert_eq!((log.committed_index(), log.applied_index(), log.durable_index()), (10, 10, 10));
        assert_eq!(log.term_at(3), None);
        let start = LogStart { prev_index: 10, prev_term: 2 };
        assert!(RaftLog::check_restored(start, &[(11, 2)], 12, &[]).is_ok());
        assert!(RaftLog::check_restored(start, &[(11, 1)], 12, &[]).is_err(), "terms below the start's");
        assert!(RaftLog::check_restored(start, &[(1, 2)], 12, &[]).is_err(), "runs from index 1");
        assert!(RaftLog::check_restored(start, &[], 9, &[]).is_err(), "ends before its start");
        let restored = RaftLog::restored(start, vec![(11, 2)], 12, vec![]);
        assert_eq!((restored.committed_index(), restored.applied_index(), restored.term_at(10)), (10, 10, Some(2)));
    }
}
