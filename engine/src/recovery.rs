//! Recovery: which bytes of a segment are log, which are a torn tail, and
//! which are corruption that must stop the open.
//!
//! Each batch position is classified by a few observations and the
//! observations are mapped to exactly one action by [`RECOVERY_TABLE`]
//! (STYLE 5):
//!
//! | header at position        | continues log | valid header later in segment | sealed | action  |
//! |---------------------------|---------------|-------------------------------|--------|---------|
//! | valid, body valid         | yes           | any                           | any    | Keep    |
//! | valid, body valid         | no            | any                           | any    | Refuse  |
//! | zero block                | —             | no                            | any    | End     |
//! | zero block                | —             | yes                           | any    | Refuse  |
//! | bad header or bad body    | —             | yes                           | any    | Refuse  |
//! | bad header or bad body    | —             | no                            | no     | CutTail |
//! | bad header or bad body    | —             | no                            | yes    | Refuse  |
//!
//! "Continues the log": the batch's first index is at most the next expected
//! index (a lower one is a recorded suffix truncation, see [`crate::log`]), not
//! below the log's first index, and equal to the segment's name for its first
//! batch. "Sealed": a later segment exists. The log has at most one batch in
//! flight, so a crash can tear only the last batch of the last segment: a bad
//! batch with nothing valid after it in the last segment is that torn batch
//! and is cut; anything else bad was durable once and is reported, with the
//! segment, offset and next entry index, and nothing is truncated.
//!
//! A seal batch ends a segment: the scan stops there, so bytes after it (a
//! torn batch cut earlier and never overwritten, or a recycled file's old
//! contents) are never read as log.
//!
//! A limit stated plainly: a durable last batch whose bytes later rot is
//! indistinguishable from a torn write and is cut; Raft repairs it from peers.

use std::path::Path;

use crate::aligned::{align_up, BLOCK_SIZE};
use crate::frame::{decode_body, BatchHeader, EntryView};
use crate::segment::FIRST_BATCH_OFFSET;
use crate::{Error, Result};

/// What the bytes at one batch position look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// The whole block is zero: never written since the segment was filled.
    Zeroed,
    /// Magic or header checksum wrong.
    Invalid,
    /// Header verifies, but an entry does not (checksum, index run, or length).
    BadBody,
    /// Header and every entry verify.
    Valid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub header: HeaderState,
    /// Only meaningful for `Valid`.
    pub continues_log: bool,
    pub later_valid: bool,
    pub sealed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    End,
    CutTail,
    Refuse(&'static str),
}

/// One row: `None` matches anything.
#[derive(Debug)]
pub struct Row {
    pub header: &'static [HeaderState],
    pub continues_log: Option<bool>,
    pub later_valid: Option<bool>,
    pub sealed: Option<bool>,
    pub action: Action,
}

use HeaderState::{BadBody, Invalid, Valid, Zeroed};

pub const RECOVERY_TABLE: &[Row] = &[
    Row { header: &[Valid], continues_log: Some(true), later_valid: None, sealed: None, action: Action::Keep },
    Row {
        header: &[Valid],
        continues_log: Some(false),
        later_valid: None,
        sealed: None,
        action: Action::Refuse("batch does not continue the log (index gap or below the log start)"),
    },
    Row { header: &[Zeroed], continues_log: None, later_valid: Some(false), sealed: None, action: Action::End },
    Row {
        header: &[Zeroed],
        continues_log: None,
        later_valid: Some(true),
        sealed: None,
        action: Action::Refuse("unwritten block followed by valid batches"),
    },
    Row {
        header: &[Invalid, BadBody],
        continues_log: None,
        later_valid: Some(true),
        sealed: None,
        action: Action::Refuse("bad checksum followed by valid batches"),
    },
    Row {
        header: &[Invalid, BadBody],
        continues_log: None,
        later_valid: Some(false),
        sealed: Some(false),
        action: Action::CutTail,
    },
    Row {
        header: &[Invalid, BadBody],
        continues_log: None,
        later_valid: Some(false),
        sealed: Some(true),
        action: Action::Refuse("bad checksum in a sealed segment"),
    },
];

fn matches(row: &Row, o: &Observation) -> bool {
    let m = |p: Option<bool>, v: bool| p.is_none_or(|p| p == v);
    row.header.contains(&o.header)
        && (o.header != Valid || m(row.continues_log, o.continues_log))
        && m(row.later_valid, o.later_valid)
        && m(row.sealed, o.sealed)
}

/// The action for an observation: the first (and, by test, only) matching row.
pub fn decide(o: &Observation) -> Action {
    RECOVERY_TABLE.iter().find(|r| matches(r, o)).map(|r| r.action).expect("recovery table covers every observation")
}

/// A batch kept by the scan: where it is, and its verified entries
/// (payload offsets relative to the batch start).
pub struct KeptBatch<'a> {
    pub offset: u64,
    pub header: BatchHeader,
    pub entries: &'a [EntryView],
}

/// How a segment scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// Where the next batch would go.
    pub end_offset: u64,
    /// True when a torn tail was cut at `end_offset`.
    pub cut: bool,
    /// True when the segment ended at its seal batch.
    pub sealed: bool,
}

/// One segment's bytes and what recovery knows about it.
pub struct SegmentImage<'a> {
    pub path: &'a Path,
    pub data: &'a [u8],
    pub salt: u64,
    /// The index in the segment's name.
    pub segment_first: u64,
    /// The lowest index any batch may start at.
    pub log_first: u64,
    /// A later segment exists.
    pub sealed: bool,
}

/// Scans one segment image, calling `keep` for every kept batch in order.
///
/// `expected_next` is the index the next entry must have (updated as batches
/// are kept); `log_first` the lowest index a batch may start at.
pub fn scan_segment(
    seg: &SegmentImage<'_>,
    expected_next: &mut u64,
    mut keep: impl FnMut(KeptBatch<'_>),
) -> Result<ScanEnd> {
    let &SegmentImage { path, data, salt, segment_first, log_first, sealed } = seg;
    let mut views = Vec::new();
    let mut pos = FIRST_BATCH_OFFSET as usize;
    while pos + BLOCK_SIZE <= data.len() {
        let block = &data[pos..pos + BLOCK_SIZE];
        let header = BatchHeader::decode(salt, block);
        let state = match header {
            _ if block.iter().all(|&b| b == 0) => Zeroed,
            None => Invalid,
            Some(h) if decode_body(salt, &h, &data[pos..], &mut views) => Valid,
            Some(_) => BadBody,
        };
        let continues_log = header.is_some_and(|h| {
            h.first_index <= *expected_next
                && h.first_index >= log_first
                && (pos as u64 != FIRST_BATCH_OFFSET || h.first_index == segment_first)
        });
        let later_valid = state != Valid
            && (pos + BLOCK_SIZE..data.len())
                .step_by(BLOCK_SIZE)
                .any(|p| BatchHeader::decode(salt, &data[p..p + BLOCK_SIZE]).is_some());
        let obs = Observation { header: state, continues_log, later_valid, sealed };
        match decide(&obs) {
            Action::Keep => {
                let h = header.expect("valid header");
                keep(KeptBatch { offset: pos as u64, header: h, entries: &views });
                *expected_next = h.first_index + h.entry_count as u64;
                pos += align_up(h.unpadded_len());
                if h.is_seal() {
                    // Whatever follows a seal (zero fill, or a recycled file's old bytes) is not log.
                    return Ok(ScanEnd { end_offset: pos as u64, cut: false, sealed: true });
                }
            }
            Action::End => return Ok(ScanEnd { end_offset: pos as u64, cut: false, sealed: false }),
            Action::CutTail => {
                tracing::warn!(segment = %path.display(), offset = pos, next_index = *expected_next, "cut torn tail");
                return Ok(ScanEnd { end_offset: pos as u64, cut: true, sealed: false });
            }
            Action::Refuse(reason) => {
                return Err(Error::Corrupt {
                    segment: path.to_path_buf(),
                    offset: pos as u64,
                    entry_index: *expected_next,
                    reason,
                })
            }
        }
    }
    Ok(ScanEnd { end_offset: pos as u64, cut: false, sealed: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_observation_hits_exactly_one_row() {
        for header in [Zeroed, Invalid, BadBody, Valid] {
            for continues_log in [false, true] {
                for later_valid in [false, true] {
                    for sealed in [false, true] {
                        let o = Observation { header, continues_log, later_valid, sealed };
                        let n = RECOVERY_TABLE.iter().filter(|r| matches(r, &o)).count();
                        assert_eq!(n, 1, "{o:?} matches {n} rows");
                    }
                }
            }
        }
    }

    #[test]
    fn every_row_is_reachable() {
        let mut hit = vec![false; RECOVERY_TABLE.len()];
        for header in [Zeroed, Invalid, BadBody, Valid] {
            for continues_log in [false, true] {
                for later_valid in [false, true] {
                    for sealed in [false, true] {
                        let o = Observation { header, continues_log, later_valid, sealed };
                        let i = RECOVERY_TABLE.iter().position(|r| matches(r, &o)).unwrap();
                        hit[i] = true;
                    }
                }
            }
        }
        assert!(hit.iter().all(|&h| h), "unreachable rows: {hit:?}");
    }

    #[test]
    fn decisions_read_like_the_table() {
        let o = |header, continues_log, later_valid, sealed| Observation { header, continues_log, later_valid, sealed };
        assert_eq!(decide(&o(Valid, true, false, true)), Action::Keep);
        assert!(matches!(decide(&o(Valid, false, false, false)), Action::Refuse(_)));
        assert_eq!(decide(&o(Zeroed, false, false, true)), Action::End);
        assert!(matches!(decide(&o(Zeroed, false, true, false)), Action::Refuse(_)));
        assert!(matches!(decide(&o(Invalid, false, true, false)), Action::Refuse(_)));
        assert_eq!(decide(&o(BadBody, false, false, false)), Action::CutTail);
        assert_eq!(decide(&o(Invalid, false, false, false)), Action::CutTail);
        assert!(matches!(decide(&o(BadBody, false, false, true)), Action::Refuse(_)));
    }
}
