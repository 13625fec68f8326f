//! A group's local snapshots of its state machine: one file per snapshot,
//! named by the last index it covers, written beside the log.
//!
//! ```text
//! <data_dir>/snapshots/group-<g>/snap-<index, 20 digits>
//! file   = body | footer
//! footer = index u64 | term u64 | body_len u64 | crc32c(body) u32 | magic "DLSN"   (little-endian, 32 bytes)
//! ```
//!
//! Invariants: a file with this name is complete (written as `.tmp`,
//! fsynced, renamed, directory fsynced); a file whose footer or checksum
//! does not match is never restored (the next older one is tried, and the
//! log replays the rest); the newest `keep` files are kept, older ones
//! removed once a newer one is durable.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::state_machine::StateMachineError;

const MAGIC: &[u8; 4] = b"DLSN";
const FOOTER: u64 = 32;
const PREFIX: &str = "snap-";

/// A complete snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes of state (without the footer).
    pub len: u64,
}

/// The snapshot files of one group.
#[derive(Debug)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
}

struct CrcWriter<W> {
    inner: W,
    crc: u32,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl SnapshotStore {
    /// Opens (creating) the directory and removes unfinished `.tmp` files.
    pub(crate) fn open(dir: PathBuf, keep: usize) -> std::io::Result<SnapshotStore> {
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(SnapshotStore { dir, keep: keep.max(1) })
    }

    fn indexes(&self) -> std::io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(i) = name.strip_prefix(PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                out.push(i);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn path_of(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{index:020}"))
    }

    /// Reads and checks one file's footer and checksum.
    fn verify(&self, index: u64) -> Result<SnapshotMeta, String> {
        let path = self.path_of(index);
        let mut f = File::open(&path).map_err(|e| e.to_string())?;
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        if size < FOOTER {
            return Err(format!("{size} bytes: shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER as usize];
        f.seek(SeekFrom::Start(size - FOOTER)).and_then(|_| f.read_exact(&mut footer)).map_err(|e| e.to_string())?;
        let u64_at = |o: usize| u64::from_le_bytes(footer[o..o + 8].try_into().expect("8 bytes"));
        let (fi, term, len) = (u64_at(0), u64_at(8), u64_at(16));
        let crc = u32::from_le_bytes(footer[24..28].try_into().expect("4 bytes"));
        if &footer[28..32] != MAGIC || fi != index || len != size - FOOTER {
            return Err("footer does not match the file".into());
        }
        f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let mut r = BufReader::with_capacity(1 << 20, f.take(len));
        let mut got = 0u32;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got = crc32c::crc32c_append(got, &buf[..n]);
        }
        if got != crc {
            return Err("checksum mismatch".into());
        }
        Ok(SnapshotMeta { index, term, path, len })
    }

    /// The newest snapshot that is whole; damaged newer ones are reported and skipped.
    pub(crate) fn newest(&self) -> std::io::Result<Option<SnapshotMeta>> {
        for index in self.indexes()?.into_iter().rev() {
            match self.verify(index) {
                Ok(m) => return Ok(Some(m)),
                Err(why) => tracing::warn!(dir = %self.dir.display(), index, %why, "skipping a damaged snapshot"),
            }
        }
        Ok(None)
    }

    /// The state bytes of a verified snapshot.
    pub(crate) fn reader(meta: &SnapshotMeta) -> std::io::Result<impl Read> {
        Ok(BufReader::with_capacity(1 << 20, File::open(&meta.path)?.take(meta.len)))
    }

    /// Writes a snapshot of `index` (term `term`) with `body`, makes it
    /// durable, then removes all but the newest `keep`.
    pub(crate) fn write(
        &self,
        index: u64,
        term: u64,
        body: impl FnOnce(&mut dyn Write) -> Result<(), StateMachineError>,
    ) -> Result<SnapshotMeta, StateMachineError> {
        let path = self.path_of(index);
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp)?;
        let mut w = CrcWriter { inner: BufWriter::with_capacity(1 << 20, file), crc: 0, len: 0 };
        let result = body(&mut w);
        if let Err(e) = result {
            drop(w);
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let (crc, len) = (w.crc, w.len);
        let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
        let mut footer = Vec::with_capacity(FOOTER as usize);
        footer.extend_from_slice(&index.to_le_bytes());
        footer.extend_from_slice(&term.to_le_bytes());
        footer.extend_from_slice(&len.to_le_bytes());
        footer.extend_from_slice(&crc.to_le_bytes());
        footer.extend_from_slice(MAGIC);
        file.write_all(&footer)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        let all = self.indexes()?;
        for old in all.iter().take(all.len().saturating_sub(self.keep)) {
            std::fs::remove_file(self.path_of(*old))?;
        }
        Ok(SnapshotMeta { index, term, path, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(store: &SnapshotStore, index: u64, body: &[u8]) -> SnapshotMeta {
        store
            .write(index, 2, |w| {
                w.write_all(body)?;
                Ok(())
            })
            .unwrap()
    }

    #[test]
    fn the_newest_whole_snapshot_is_found_and_older_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("s"), 2).unwrap();
        assert_eq!(store.newest().unwrap(), None);
        for i in [10, 20, 30] {
            write(&store, i, format!("state at {i}").as_bytes());
        }
        assert_eq!(store.indexes().unwrap(), vec![20, 30], "only the newest two kept");
        let m = store.newest().unwrap().unwrap();
        assert_eq!((m.index, m.term), (30, 2));
        let mut s = String::new();
        SnapshotStore::reader(&m).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "state at 30");
    }

    #[test]
    fn a_damaged_or_unfinished_snapshot_is_never_restored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("s"), 3).unwrap();
        write(&store, 10, b"ten");
        let m = write(&store, 20, b"twenty");
        // A bit flip in the newest one's body: the older one is restored.
        let mut img = std::fs::read(&m.path).unwrap();
        img[2] ^= 1;
        std::fs::write(&m.path, &img).unwrap();
        assert_eq!(store.newest().unwrap().unwrap().index, 10);
        // A torn one (cut short) too.
        std::fs::write(&m.path, &img[..img.len() - 5]).unwrap();
        assert_eq!(store.newest().unwrap().unwrap().index, 10);
        // A failed write leaves nothing behind, and a leftover .tmp is removed on open.
        let r = store.write(30, 2, |_| Err(StateMachineError::Invalid("no".into())));
        assert!(r.is_err());
        std::fs::write(dir.path().join("s/snap-00000000000000000040.tmp"), b"half").unwrap();
        let store = SnapshotStore::open(dir.path().join("s"), 3).unwrap();
        assert_eq!(store.indexes().unwrap(), vec![10, 20]);
        assert!(!dir.path().join("s/snap-00000000000000000040.tmp").exists());
    }
}
