//! The in-memory index: entry index → (segment, offset, length) and term, without scanning.
//!
//! Per segment, `entries[i]` locates index `first_index + i` (8 bytes an
//! entry: a u32 file offset and a u32 length, segments being below 4 GiB),
//! and `batches` records where each batch starts on disk and in the batch
//! ring. Terms are kept as runs (`TermRuns`), since a Raft log holds few
//! distinct terms. Lookups are two binary searches (segment, batch) and one
//! vector access.
//!
//! Invariants: segments are ordered by `first_index` and each holds the
//! indexes `[first_index, first_index + entries.len())`, contiguous with the
//! next segment's; run starts strictly increase and run terms never decrease.

use std::fs::File;
use std::path::PathBuf;

use crate::segment::SegmentHeader;

/// A batch not held in the ring (recovered from disk).
pub const NOT_IN_RING: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLoc {
    /// File offset of the entry header.
    pub offset: u32,
    pub payload_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLoc {
    pub first_index: u64,
    pub file_offset: u32,
    /// Logical position of the batch in the ring, or [`NOT_IN_RING`].
    pub ring_lpos: u64,
}

/// One segment file and the live entries in it.
#[derive(Debug)]
pub struct SegmentIndex {
    /// Unique for the life of the open log (names can repeat after truncation).
    pub id: u64,
    pub first_index: u64,
    /// The segment's name (it may not exist yet: see `unnamed_spare`).
    pub path: PathBuf,
    /// Where the file still lies as a spare, until its first batch is submitted.
    pub unnamed_spare: Option<PathBuf>,
    pub file: File,
    pub header: SegmentHeader,
    pub entries: Vec<EntryLoc>,
    pub batches: Vec<BatchLoc>,
    /// Where the next batch goes; meaningful only while not sealed.
    pub write_offset: u64,
    pub sealed: bool,
}

impl SegmentIndex {
    /// A segment found on disk at open, before its batches are known.
    pub fn on_disk(id: u64, first_index: u64, path: PathBuf, file: File, header: SegmentHeader) -> Self {
        SegmentIndex {
            id,
            first_index,
            path,
            unnamed_spare: None,
            file,
            header,
            entries: Vec::new(),
            batches: Vec::new(),
            write_offset: 0,
            sealed: false,
        }
    }

    /// One past the last live index.
    pub fn end_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    /// Drops live entries at and above `from`, and batches that start there.
    pub fn truncate(&mut self, from: u64) {
        let keep = from.saturating_sub(self.first_index) as usize;
        self.entries.truncate(keep);
        let b = self.batches.partition_point(|b| b.first_index < from);
        self.batches.truncate(b);
    }

    /// The batch holding `index` (which must be live in this segment).
    pub fn batch_of(&self, index: u64) -> &BatchLoc {
        let i = self.batches.partition_point(|b| b.first_index <= index);
        &self.batches[i - 1]
    }
}

/// Terms of the log as runs `(first index of the run, term)`.
#[derive(Debug, Default, Clone)]
pub struct TermRuns {
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    /// Records that `index` (the new last index) has `term`.
    pub fn push(&mut self, index: u64, term: u64) {
        match self.runs.last() {
            Some(&(_, t)) if t == term => {}
            Some(&(start, t)) => {
                assert!(term > t && index > start, "terms never decrease: {term} after {t}");
                self.runs.push((index, term));
            }
            None => self.runs.push((index, term)),
        }
    }

    pub fn term_at(&self, index: u64) -> Option<u64> {
        let i = self.runs.partition_point(|&(start, _)| start <= index);
        (i > 0).then(|| self.runs[i - 1].1)
    }

    pub fn last_term(&self) -> Option<u64> {
        self.runs.last().map(|r| r.1)
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// Forgets indexes at and above `from`.
    pub fn truncate(&mut self, from: u64) {
        let i = self.runs.partition_point(|&(start, _)| start < from);
        self.runs.truncate(i);
    }

    /// Forgets indexes below `first`.
    pub fn purge(&mut self, first: u64) {
        let i = self.runs.partition_point(|&(start, _)| start <= first);
        if i > 1 {
            self.runs.drain(..i - 1);
        }
        if let Some(r) = self.runs.first_mut() {
            r.0 = r.0.max(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_runs() {
        let mut t = TermRuns::default();
        for (i, term) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 5)] {
            t.push(i, term);
        }
        let cases = [(0, None), (1, Some(1)), (2, Some(1)), (3, Some(2)), (4, Some(2)), (5, Some(5)), (9, Some(5))];
        for (i, want) in cases {
            assert_eq!(t.term_at(i), want, "term_at({i})");
        }
        t.truncate(4);
        assert_eq!(t.term_at(9), Some(2));
        t.push(4, 7);
        assert_eq!(t.term_at(4), Some(7));
        t.purge(3);
        assert_eq!(t.term_at(3), Some(2));
        assert_eq!(t.term_at(2), None);
    }

    #[test]
    #[should_panic(expected = "terms never decrease")]
    fn decreasing_term_panics() {
        let mut t = TermRuns::default();
        t.push(1, 3);
        t.push(2, 2);
    }
}
