//! A sealed segment's summary: its in-memory index written beside it, so
//! that opening a log reads a few bytes per sealed segment instead of
//! scanning (and checksumming) every batch in it.
//!
//! ```text
//! <segment file>.idx
//! magic "DLX1" | salt u64 | size_bytes u64 | first_index u64 | end_offset u64
//!   | batches u32 | entries u32 | runs u32
//!   | (first_index u64, file_offset u32) * batches
//!   | (offset u32, payload_len u32) * entries
//!   | (first index u64, term u64) * runs          (the segment's term runs)
//!   | crc32c of all the above u32                  (little-endian throughout)
//! ```
//!
//! Invariants: a summary is written only once its segment's seal batch is
//! durable (the segment never changes again; a later truncation into it is
//! recorded by the next segment's first batch, which recovery applies as it
//! does for a scanned segment), by the spare thread, off the append path; it
//! holds the segment's *live* entries. Recovery trusts a summary only for a
//! segment that is not the last, whose header (salt, size) and name match it
//! and whose checksum holds; anything else (missing, torn, stale after the
//! name was reused) is ignored and the segment is scanned as before, then
//! summarized again. A summary is never needed for safety: entries read from
//! a summarized segment are still checked against their own checksums when
//! read.

use std::path::{Path, PathBuf};

use crate::index::{BatchLoc, EntryLoc, SegmentIndex, NOT_IN_RING};
use crate::segment::SegmentHeader;

const MAGIC: &[u8; 4] = b"DLX1";
const HEAD: usize = 4 + 8 * 4 + 4 * 3;

/// Where `segment`'s summary lives.
pub fn path_of(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(".idx");
    PathBuf::from(p)
}

/// What a summary restores of its segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub end_offset: u64,
    pub batches: Vec<BatchLoc>,
    pub entries: Vec<EntryLoc>,
    /// The segment's term runs: (first index, term).
    pub runs: Vec<(u64, u64)>,
}

/// What a summary is made of, copied out of a sealed segment's index (a
/// memcpy of its entry locations) so that the encoding runs elsewhere.
#[derive(Debug)]
pub struct Parts {
    pub header: SegmentHeader,
    pub first_index: u64,
    pub write_offset: u64,
    pub batches: Vec<BatchLoc>,
    pub entries: Vec<EntryLoc>,
    /// The segment's own term runs.
    pub runs: Vec<(u64, u64)>,
}

impl Parts {
    /// The parts of sealed segment `seg`, whose entries' terms are among `runs`
    /// (the log's runs; those of the segment's range are taken).
    pub fn of(seg: &SegmentIndex, runs: &[(u64, u64)]) -> Parts {
        let (first, end) = (seg.first_index, seg.end_index());
        let mut own: Vec<(u64, u64)> = Vec::new();
        if end > first {
            let covering = runs.partition_point(|&(start, _)| start <= first);
            if covering > 0 {
                own.push((first, runs[covering - 1].1));
            }
            own.extend(runs[covering..].iter().copied().filter(|&(start, _)| start < end));
        }
        Parts {
            header: seg.header,
            first_index: first,
            write_offset: seg.write_offset,
            batches: seg.batches.clone(),
            entries: seg.entries.clone(),
            runs: own,
        }
    }
}

/// The summary of sealed segment `seg`, whose entries' terms are `runs`
/// (the log's runs; those of the segment's range are taken).
pub fn encode(seg: &SegmentIndex, runs: &[(u64, u64)]) -> Vec<u8> {
    encode_parts(&Parts::of(seg, runs))
}

/// The summary bytes of `p`.
pub fn encode_parts(p: &Parts) -> Vec<u8> {
    let own = &p.runs;
    let (first, header) = (p.first_index, p.header);
    let mut b = Vec::with_capacity(HEAD + p.batches.len() * 12 + p.entries.len() * 8 + own.len() * 16 + 4);
    b.extend_from_slice(MAGIC);
    for v in [header.salt, header.size_bytes, first, p.write_offset] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for n in [p.batches.len(), p.entries.len(), own.len()] {
        b.extend_from_slice(&(n as u32).to_le_bytes());
    }
    for bl in &p.batches {
        b.extend_from_slice(&bl.first_index.to_le_bytes());
        b.extend_from_slice(&bl.file_offset.to_le_bytes());
    }
    for e in &p.entries {
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.payload_len.to_le_bytes());
    }
    for (start, term) in own {
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&term.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Writes a summary (through a temporary file and a rename, not synced: a
/// lost or torn one is ignored at the next open).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The summary at `path`, if it is whole and describes the segment named
/// `first_index` with `header`.
pub fn load(path: &Path, header: &SegmentHeader, first_index: u64) -> Option<Summary> {
    let b = std::fs::read(path).ok()?;
    decode(&b, header, first_index)
}

fn decode(b: &[u8], header: &SegmentHeader, first_index: u64) -> Option<Summary> {
    if b.len() < HEAD + 4 || &b[..4] != MAGIC {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
    let (salt, size, first, end_offset) = (u64_at(4), u64_at(12), u64_at(20), u64_at(28));
    if salt != header.salt || size != header.size_bytes || first != first_index || end_offset > size {
        return None;
    }
    let (nb, ne, nr) = (u32_at(36) as usize, u32_at(40) as usize, u32_at(44) as usize);
    if body.len() != HEAD + nb * 12 + ne * 8 + nr * 16 {
        return None;
    }
    let mut o = HEAD;
    let mut batches = Vec::with_capacity(nb);
    for _ in 0..nb {
        batches.push(BatchLoc { first_index: u64_at(o), file_offset: u32_at(o + 8), ring_lpos: NOT_IN_RING });
        o += 12;
    }
    let mut entries = Vec::with_capacity(ne);
    for _ in 0..ne {
        entries.push(EntryLoc { offset: u32_at(o), payload_len: u32_at(o + 4) });
        o += 8;
    }
    let mut runs = Vec::with_capacity(nr);
    for _ in 0..nr {
        runs.push((u64_at(o), u64_at(o + 8)));
        o += 16;
    }
    // What the index invariants need: batches from the segment's first index, in order,
    // runs inside its range, increasing.
    let end = first + ne as u64;
    let batches_ok = batches.first().is_none_or(|b| b.first_index == first)
        && batches.windows(2).all(|w| w[0].first_index < w[1].first_index && w[0].file_offset < w[1].file_offset)
        && batches.last().is_none_or(|b| b.first_index < end.max(first + 1));
    let runs_ok = runs.first().is_none_or(|r| r.0 == first)
        && runs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
        && runs.last().is_none_or(|r| r.0 < end);
    let entries_ok = entries.iter().all(|e| (e.offset as u64) < end_offset);
    (batches_ok && runs_ok && entries_ok && (ne == 0) == runs.is_empty()).then_some(Summary {
        end_offset,
        batches,
        entries,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path) -> SegmentIndex {
        let header = SegmentHeader { salt: 77, size_bytes: 1 << 20, created_unix_ms: 5 };
        SegmentIndex {
            id: 0,
            first_index: 10,
            path: dir.join("seg"),
            unnamed_spare: None,
            file: std::fs::File::create(dir.join("seg")).unwrap(),
            header,
            entries: (0..5).map(|k| EntryLoc { offset: 4096 + k * 64, payload_len: 40 }).collect(),
            batches: vec![
                BatchLoc { first_index: 10, file_offset: 4096, ring_lpos: 3 },
                BatchLoc { first_index: 12, file_offset: 4224, ring_lpos: 9 },
            ],
            write_offset: 8192,
            sealed: true,
        }
    }

    #[test]
    fn a_summary_round_trips_with_the_segments_own_term_runs() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        // The log's runs: term 2 from 1, 3 from 12, 4 from 15 (past this segment).
        let bytes = encode(&seg, &[(1, 2), (12, 3), (15, 4)]);
        let s = decode(&bytes, &seg.header, 10).unwrap();
        assert_eq!(s.runs, vec![(10, 2), (12, 3)]);
        assert_eq!(s.entries, seg.entries);
        assert_eq!(s.end_offset, 8192);
        assert_eq!(
            s.batches.iter().map(|b| (b.first_index, b.file_offset)).collect::<Vec<_>>(),
            [(10, 4096), (12, 4224)]
        );
        assert!(s.batches.iter().all(|b| b.ring_lpos == NOT_IN_RING), "nothing recovered is in the ring");
        let path = path_of(&seg.path);
        write(&path, &bytes).unwrap();
        assert_eq!(load(&path, &seg.header, 10), Some(s));
    }

    #[test]
    fn a_damaged_stale_or_foreign_summary_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        let bytes = encode(&seg, &[(1, 2)]);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, &seg.header, 10).is_none(), "flip at byte {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 1], &seg.header, 10).is_none(), "torn");
        let other = SegmentHeader { salt: 78, ..seg.header };
        assert!(decode(&bytes, &other, 10).is_none(), "a file reused under the same name");
        assert!(decode(&bytes, &seg.header, 11).is_none(), "another segment's name");
        assert!(load(&dir.path().join("missing.idx"), &seg.header, 10).is_none());
    }
}
