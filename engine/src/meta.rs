//! The small durable metadata record Raft needs (current term, vote, the log
//! start, an opaque blob), replaced atomically.
//!
//! The log start (`start_prev_index`, `start_prev_term`: the last purged entry)
//! is what lets the log begin above index 1: it is saved before any segment
//! below it is deleted, and recovery ignores what lies at or below it (see
//! `Log::purge_prefix`).
//!
//! The file `meta` holds two 4 KiB slots, each a whole copy of the record. A
//! save writes the new record (sequence number one higher) to slot 0 and
//! `fdatasync`s, then to slot 1 and `fdatasync`s again. Load takes the valid
//! slot with the highest sequence:
//!
//! - a crash while slot 0 is written leaves slot 1 with the previous record,
//!   which is the last one made durable (nobody acted on the torn one: a vote
//!   is sent only after its save returns);
//! - a crash while slot 1 is written leaves slot 0 with the new, durable record;
//! - one copy damaged later (rot, a misdirected write) leaves the other with
//!   the same newest record, and open rewrites both.
//!
//! So falling back never loses a record that was made durable, and the
//! cases where it would are refused, not defaulted ([`Error::MetaLost`]):
//! both slots damaged, or the file missing from a directory that already
//! holds segments (a log that has been used). Defaults (term 0, no vote) are
//! taken only for a file that was never written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::frame::{read_u32, read_u64};
use crate::{Error, Result};

pub const META_FILE: &str = "meta";
const SLOT_SIZE: usize = 4096;
/// Records written before the log start existed: no start fields, blob at 40.
const MAGIC_V1: u32 = u32::from_le_bytes(*b"DLM1");
const FIXED_V1: usize = 40;
const MAGIC: u32 = u32::from_le_bytes(*b"DLM2");
const FIXED: usize = 56;
/// The largest blob a record can carry.
pub const MAX_BLOB_BYTES: usize = SLOT_SIZE - FIXED;

/// What Raft must not forget across a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub current_term: u64,
    pub voted_for: Option<u64>,
    /// Index of the last purged entry (0: the log starts at index 1).
    pub start_prev_index: u64,
    /// That entry's term (0 when nothing was purged).
    pub start_prev_term: u64,
    pub blob: Vec<u8>,
}

/// The open metadata file and the sequence number of its newest record.
#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    file: File,
    seq: u64,
    current: Meta,
}

fn encode(seq: u64, m: &Meta) -> [u8; SLOT_SIZE] {
    let mut b = [0u8; SLOT_SIZE];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&m.current_term.to_le_bytes());
    b[24..32].copy_from_slice(&m.voted_for.unwrap_or(0).to_le_bytes());
    b[32] = m.voted_for.is_some() as u8;
    b[36..40].copy_from_slice(&(m.blob.len() as u32).to_le_bytes());
    b[40..48].copy_from_slice(&m.start_prev_index.to_le_bytes());
    b[48..56].copy_from_slice(&m.start_prev_term.to_le_bytes());
    b[FIXED..FIXED + m.blob.len()].copy_from_slice(&m.blob);
    let crc = crc32c::crc32c(&b[8..FIXED + m.blob.len()]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, Meta)> {
    let fixed = match read_u32(b, 0) {
        MAGIC => FIXED,
        MAGIC_V1 => FIXED_V1,
        _ => return None,
    };
    let blob_len = read_u32(b, 36) as usize;
    if blob_len > SLOT_SIZE - fixed || crc32c::crc32c(&b[8..fixed + blob_len]) != read_u32(b, 4) {
        return None;
    }
    let voted_for = (b[32] == 1).then(|| read_u64(b, 24));
    let (start_prev_index, start_prev_term) = if fixed == FIXED { (read_u64(b, 40), read_u64(b, 48)) } else { (0, 0) };
    let meta = Meta {
        current_term: read_u64(b, 16),
        voted_for,
        start_prev_index,
        start_prev_term,
        blob: b[fixed..fixed + blob_len].to_vec(),
    };
    Some((read_u64(b, 8), meta))
}

/// Whether `dir` holds log segments (it has been used by a log).
fn dir_has_segments(dir: &Path) -> Result<bool> {
    for de in std::fs::read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))? {
        let de = de.map_err(|e| Error::io("list log directory", dir, e))?;
        if crate::segment::parse_segment_file_name(&de.file_name().to_string_lossy()).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The newest record of the two slots, and whether both slots hold it;
/// `(0, default)` for a file never written; `MetaLost` when no slot is valid
/// and some slot holds something (a damaged record).
fn best_record(buf: &[u8], path: &Path) -> Result<(u64, Meta, bool)> {
    let slots: Vec<Option<(u64, Meta)>> = buf.chunks(SLOT_SIZE).map(decode).collect();
    let best = slots.iter().flatten().max_by_key(|(seq, _)| *seq).cloned();
    match best {
        Some((seq, m)) => {
            let both = slots.iter().all(|s| s.as_ref().is_some_and(|(q, _)| *q == seq));
            Ok((seq, m, both))
        }
        None if buf.iter().all(|&b| b == 0) => Ok((0, Meta::default(), true)),
        None => Err(Error::MetaLost { path: path.into(), reason: "both copies of the record are damaged" }),
    }
}

impl MetaStore {
    /// Opens (creating if absent) the metadata file in `dir`; refuses a lost one
    /// (see the module docs).
    pub fn open(dir: &Path) -> Result<MetaStore> {
        let path = dir.join(META_FILE);
        let existed = path.exists();
        if !existed && dir_has_segments(dir)? {
            return Err(Error::MetaLost { path, reason: "the file is missing beside the log's segments" });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open metadata", &path, e))?;
        if !existed {
            file.set_len(2 * SLOT_SIZE as u64).map_err(|e| Error::io("size metadata", &path, e))?;
            file.sync_all().map_err(|e| Error::io("fsync metadata", &path, e))?;
            crate::segment::sync_dir(dir)?;
        }
        let mut buf = vec![0u8; 2 * SLOT_SIZE];
        let n = file.read_at(&mut buf, 0).map_err(|e| Error::io("read metadata", &path, e))?;
        buf.truncate(n);
        buf.resize(2 * SLOT_SIZE, 0);
        // A record written but not synced before a crash must not be trusted unless it is on disk.
        file.sync_data().map_err(|e| Error::io("fsync metadata", &path, e))?;
        let (seq, current, both) = best_record(&buf, &path)?;
        let mut store = MetaStore { path, file, seq, current };
        if seq > 0 && !both {
            // One copy is stale or damaged: write both again, so that one more fault is survivable.
            tracing::warn!(path = %store.path.display(), seq, "metadata: one copy differs or is damaged; rewriting both");
            let m = store.current.clone();
            store.save(&m)?;
        }
        Ok(store)
    }

    /// Reads the record without creating, syncing or locking anything.
    pub fn open_read_only(dir: &Path) -> Result<MetaStore> {
        let path = dir.join(META_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(MetaStore {
                    path: path.clone(),
                    file: File::open(dir).map_err(|e| Error::io("open log directory", dir, e))?,
                    seq: 0,
                    current: Meta::default(),
                })
            }
            Err(e) => return Err(Error::io("open metadata", &path, e)),
        };
        let mut buf = vec![0u8; 2 * SLOT_SIZE];
        let n = file.read_at(&mut buf, 0).map_err(|e| Error::io("read metadata", &path, e))?;
        buf.truncate(n);
        buf.resize(2 * SLOT_SIZE, 0);
        let (seq, current, _) = best_record(&buf, &path)?;
        Ok(MetaStore { path, file, seq, current })
    }

    /// The record in force.
    pub fn get(&self) -> &Meta {
        &self.current
    }

    /// Durably replaces the record; returns once it is on disk.
    pub fn save(&mut self, m: &Meta) -> Result<()> {
        if m.blob.len() > MAX_BLOB_BYTES {
            return Err(Error::InvalidArgument(format!(
                "metadata blob of {} bytes exceeds {MAX_BLOB_BYTES}",
                m.blob.len()
            )));
        }
        let seq = self.seq + 1;
        let image = encode(seq, m);
        // Copy 0, durable, then copy 1: at every instant one slot holds the newest durable record.
        for slot in [0, SLOT_SIZE as u64] {
            self.file.write_all_at(&image, slot).map_err(|e| Error::io("write metadata", &self.path, e))?;
            self.file.sync_data().map_err(|e| Error::Fatal {
                op: "fdatasync metadata",
                path: self.path.clone(),
                source: e,
            })?;
        }
        self.seq = seq;
        self.current = m.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MetaStore::open(dir.path()).unwrap();
        assert_eq!(s.get(), &Meta::default());
        for t in 1..=5 {
            s.save(&Meta {
                current_term: t,
                voted_for: Some(t * 10),
                start_prev_index: t * 100,
                start_prev_term: t,
                blob: vec![t as u8; t as usize],
            })
            .unwrap();
        }
        let s = MetaStore::open(dir.path()).unwrap();
        assert_eq!(
            s.get(),
            &Meta { current_term: 5, voted_for: Some(50), start_prev_index: 500, start_prev_term: 5, blob: vec![5; 5] }
        );
    }

    /// Crash test: a save torn at any byte of either copy leaves the old or the
    /// new record, never garbage, and the new one once its first copy was whole.
    #[test]
    fn torn_save_keeps_the_previous_record() {
        let old = Meta { current_term: 3, voted_for: Some(2), blob: b"old".to_vec(), ..Meta::default() };
        let new =
            Meta { current_term: 4, voted_for: None, start_prev_index: 9, start_prev_term: 2, blob: b"newer".to_vec() };
        for copy in [0u64, 1] {
            for cut in (0..=SLOT_SIZE).step_by(7).chain([SLOT_SIZE]) {
                let dir = tempfile::tempdir().unwrap();
                let mut s = MetaStore::open(dir.path()).unwrap();
                s.save(&old).unwrap();
                // The next save: copy 0 whole if copy 1 is the torn one, then `cut` bytes of the torn copy.
                let image = encode(2, &new);
                if copy == 1 {
                    s.file.write_all_at(&image, 0).unwrap();
                }
                s.file.write_all_at(&image[..cut], copy * SLOT_SIZE as u64).unwrap();
                drop(s);
                let got = MetaStore::open(dir.path()).unwrap().get().clone();
                if copy == 1 || cut == SLOT_SIZE {
                    assert_eq!(got, new, "copy {copy} cut {cut}: the first copy was whole");
                } else {
                    assert!(got == old || got == new, "copy {copy} cut {cut} produced {got:?}");
                    if cut < FIXED {
                        assert_eq!(got, old, "cut {cut} inside the fixed header");
                    }
                }
                // Whatever open chose, both copies hold it now.
                let again = MetaStore::open(dir.path()).unwrap();
                assert_eq!(again.get(), &got);
            }
        }
    }

    /// The newest record survives the loss of either copy; the loss of both,
    /// or of the file beside segments, is refused rather than read as "term 0,
    /// no vote" (which would let the node vote twice in a term).
    #[test]
    fn a_damaged_copy_is_survived_and_a_lost_record_refused() {
        let rec = Meta { current_term: 7, voted_for: Some(3), ..Meta::default() };
        for slot in [0u64, 1] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = MetaStore::open(dir.path()).unwrap();
            s.save(&Meta { current_term: 6, voted_for: Some(1), ..Meta::default() }).unwrap();
            s.save(&rec).unwrap();
            s.file.write_all_at(&[0xAB; 64], slot * SLOT_SIZE as u64 + 10).unwrap();
            drop(s);
            assert_eq!(MetaStore::open(dir.path()).unwrap().get(), &rec, "slot {slot} damaged");
            // Both damaged (the repair above rewrote the first; damage both now).
            let f = OpenOptions::new().write(true).open(dir.path().join(META_FILE)).unwrap();
            f.write_all_at(&[0xAB; 64], 10).unwrap();
            f.write_all_at(&[0xAB; 64], SLOT_SIZE as u64 + 10).unwrap();
            let e = MetaStore::open(dir.path()).unwrap_err();
            assert!(matches!(e, Error::MetaLost { .. }), "{e}");
            assert!(matches!(MetaStore::open_read_only(dir.path()).unwrap_err(), Error::MetaLost { .. }));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::segment::segment_file_name(1)), b"").unwrap();
        let e = MetaStore::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("missing beside the log's segments"), "{e}");
    }

    #[test]
    fn oversized_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MetaStore::open(dir.path()).unwrap();
        let e = s.save(&Meta { current_term: 1, blob: vec![0; MAX_BLOB_BYTES + 1], ..Meta::default() }).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
    }

    #[test]
    fn a_record_of_the_first_format_reads_as_a_log_from_index_1() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = [0u8; SLOT_SIZE];
        b[0..4].copy_from_slice(&MAGIC_V1.to_le_bytes());
        b[8..16].copy_from_slice(&3u64.to_le_bytes());
        b[16..24].copy_from_slice(&4u64.to_le_bytes());
        b[36..40].copy_from_slice(&2u32.to_le_bytes());
        b[40..42].copy_from_slice(b"ab");
        let crc = crc32c::crc32c(&b[8..42]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        let mut file = b.to_vec();
        file.extend_from_slice(&b);
        std::fs::write(dir.path().join(META_FILE), file).unwrap();
        let s = MetaStore::open(dir.path()).unwrap();
        assert_eq!(s.get(), &Meta { current_term: 4, blob: b"ab".to_vec(), ..Meta::default() });
    }
}
