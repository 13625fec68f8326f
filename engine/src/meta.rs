//! The small durable metadata record Raft needs (current term, vote, an opaque blob),
//! replaced atomically.
//!
//! The file `meta` holds two 4 KiB slots. A save writes the slot *not* holding
//! the newest record, with a sequence number one higher, then `fdatasync`s.
//! Load takes the valid slot with the highest sequence. A crash during a save
//! can tear only the slot being written, so the previous record survives
//! whole: the replacement is atomic without a rename or a directory sync.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::frame::{read_u32, read_u64};
use crate::{Error, Result};

pub const META_FILE: &str = "meta";
const SLOT_SIZE: usize = 4096;
const MAGIC: u32 = u32::from_le_bytes(*b"DLM1");
const FIXED: usize = 40;
/// The largest blob a record can carry.
pub const MAX_BLOB_BYTES: usize = SLOT_SIZE - FIXED;

/// What Raft must not forget across a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub current_term: u64,
    pub voted_for: Option<u64>,
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
    b[FIXED..FIXED + m.blob.len()].copy_from_slice(&m.blob);
    let crc = crc32c::crc32c(&b[8..FIXED + m.blob.len()]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, Meta)> {
    if read_u32(b, 0) != MAGIC {
        return None;
    }
    let blob_len = read_u32(b, 36) as usize;
    if blob_len > MAX_BLOB_BYTES || crc32c::crc32c(&b[8..FIXED + blob_len]) != read_u32(b, 4) {
        return None;
    }
    let voted_for = (b[32] == 1).then(|| read_u64(b, 24));
    Some((read_u64(b, 8), Meta { current_term: read_u64(b, 16), voted_for, blob: b[FIXED..FIXED + blob_len].to_vec() }))
}

impl MetaStore {
    /// Opens (creating if absent) the metadata file in `dir`.
    pub fn open(dir: &Path) -> Result<MetaStore> {
        let path = dir.join(META_FILE);
        let existed = path.exists();
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
        let best = buf.chunks(SLOT_SIZE).filter_map(decode).max_by_key(|(seq, _)| *seq);
        let (seq, current) = best.unwrap_or_default();
        Ok(MetaStore { path, file, seq, current })
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
        let (seq, current) = buf.chunks(SLOT_SIZE).filter_map(decode).max_by_key(|(seq, _)| *seq).unwrap_or_default();
        Ok(MetaStore { path, file, seq, current })
    }

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
        let slot = (seq % 2) * SLOT_SIZE as u64;
        self.file.write_all_at(&encode(seq, m), slot).map_err(|e| Error::io("write metadata", &self.path, e))?;
        self.file.sync_data().map_err(|e| Error::Fatal {
            op: "fdatasync metadata",
            path: self.path.clone(),
            source: e,
        })?;
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
            s.save(&Meta { current_term: t, voted_for: Some(t * 10), blob: vec![t as u8; t as usize] }).unwrap();
        }
        let s = MetaStore::open(dir.path()).unwrap();
        assert_eq!(s.get(), &Meta { current_term: 5, voted_for: Some(50), blob: vec![5; 5] });
    }

    /// Crash test: a save torn at any byte leaves either the old or the new record, never garbage.
    #[test]
    fn torn_save_keeps_the_previous_record() {
        let old = Meta { current_term: 3, voted_for: Some(2), blob: b"old".to_vec() };
        let new = Meta { current_term: 4, voted_for: None, blob: b"newer".to_vec() };
        for cut in (0..=SLOT_SIZE).step_by(7).chain([SLOT_SIZE]) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = MetaStore::open(dir.path()).unwrap();
            s.save(&old).unwrap();
            // Simulate the next save reaching disk only up to `cut` bytes of its slot.
            let seq = 2u64;
            let image = encode(seq, &new);
            let slot = (seq % 2) * SLOT_SIZE as u64;
            s.file.write_all_at(&image[..cut], slot).unwrap();
            drop(s);
            let got = MetaStore::open(dir.path()).unwrap().get().clone();
            if cut == SLOT_SIZE {
                assert_eq!(got, new, "complete write at cut {cut}");
            } else {
                assert!(got == old || got == new, "cut {cut} produced {got:?}");
                if cut < FIXED {
                    assert_eq!(got, old, "cut {cut} inside the fixed header");
                }
            }
        }
    }

    #[test]
    fn oversized_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MetaStore::open(dir.path()).unwrap();
        let e = s.save(&Meta { current_term: 1, voted_for: None, blob: vec![0; MAX_BLOB_BYTES + 1] }).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
    }
}
