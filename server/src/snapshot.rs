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
//!
//! A snapshot fetched from a peer (see `dledger_raft::SnapshotPull`) is
//! written chunk by chunk, each fsynced, to a partial file named for the
//! snapshot it holds, `fetch-<index>-<term>-<len>-<crc>.part`, which
//! survives a restart so that the fetch resumes from the byte it reached
//! (its length). Only when the whole body matches the snapshot's length and
//! checksum does it get its footer and its `snap-` name, by the same rename
//! as a local snapshot; a mismatch removes it. Until then nothing the
//! state machine restores from has changed, so a failure at any point (a
//! full disk, a crash, a damaged chunk) leaves the old state intact.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dledger_raft::SnapshotId;

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
    /// CRC32C of those bytes.
    pub crc: u32,
}

impl SnapshotMeta {
    /// How peers name it.
    pub fn id(&self) -> SnapshotId {
        SnapshotId { index: self.index, term: self.term, len: self.len, crc: self.crc }
    }
}

/// Why a fetched file was not installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Reading or writing it.
    #[error("snapshot fetch i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Its bytes do not match the snapshot it was fetched as.
    #[error("the fetched snapshot at index {index} does not match its checksum or length: {why}")]
    Mismatch { index: u64, why: String },
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

fn footer(index: u64, term: u64, len: u64, crc: u32) -> Vec<u8> {
    let mut footer = Vec::with_capacity(FOOTER as usize);
    footer.extend_from_slice(&index.to_le_bytes());
    footer.extend_from_slice(&term.to_le_bytes());
    footer.extend_from_slice(&len.to_le_bytes());
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(MAGIC);
    footer
}

/// CRC32C of the first `len` bytes of `f`.
fn crc_of(f: &mut File, len: u64) -> std::io::Result<u32> {
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, f.take(len));
    let mut got = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        got = crc32c::crc32c_append(got, &buf[..n]);
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

    fn partial_path(&self, id: &SnapshotId) -> PathBuf {
        self.dir.join(format!("fetch-{}-{}-{}-{}.part", id.index, id.term, id.len, id.crc))
    }

    fn partials(&self) -> std::io::Result<Vec<(SnapshotId, PathBuf)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(fields) = name.strip_prefix("fetch-").and_then(|n| n.strip_suffix(".part")) else { continue };
            let f: Vec<&str> = fields.split('-').collect();
            let parsed = (f.len() == 4).then(|| {
                Some(SnapshotId {
                    index: f[0].parse().ok()?,
                    term: f[1].parse().ok()?,
                    len: f[2].parse().ok()?,
                    crc: f[3].parse().ok()?,
                })
            });
            match parsed.flatten() {
                Some(id) => out.push((id, path)),
                None => std::fs::remove_file(&path)?,
            }
        }
        Ok(out)
    }

    /// The fetch a restart interrupted: the snapshot it was fetching and the
    /// bytes of it on disk (at most its length).
    pub(crate) fn partial(&self) -> std::io::Result<Option<(SnapshotId, u64)>> {
        let Some((id, path)) = self.partials()?.into_iter().max_by_key(|(id, _)| id.index) else { return Ok(None) };
        let len = std::fs::metadata(&path)?.len();
        Ok(Some((id, len.min(id.len))))
    }

    /// Writes a fetched chunk of `id` at `offset` of its partial file and
    /// makes it durable. `restart` (offset 0) drops any partial file first.
    pub(crate) fn write_partial(
        &self,
        id: &SnapshotId,
        offset: u64,
        data: &[u8],
        restart: bool,
    ) -> std::io::Result<()> {
        let path = self.partial_path(id);
        if restart {
            for (_, p) in self.partials()? {
                std::fs::remove_file(p)?;
            }
        }
        let created = !path.exists();
        let f = OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        // Whatever lies past the byte reached (an unsynced tail before a crash) goes.
        f.set_len(offset)?;
        f.write_all_at(data, offset)?;
        f.sync_data()?;
        if created {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The partial file of `id` is whole: check it against `id`, then give
    /// it its footer and its name (durably); older snapshots beyond `keep` go.
    pub(crate) fn finish_partial(&self, id: &SnapshotId) -> Result<SnapshotMeta, FetchError> {
        let path = self.partial_path(id);
        let mismatch = |why: String| {
            let _ = std::fs::remove_file(&path);
            FetchError::Mismatch { index: id.index, why }
        };
        let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = f.metadata()?.len();
        if size != id.len {
            return Err(mismatch(format!("{size} bytes, not {}", id.len)));
        }
        let crc = crc_of(&mut f, size)?;
        if crc != id.crc {
            return Err(mismatch(format!("checksum {crc:#x}, not {:#x}", id.crc)));
        }
        f.seek(SeekFrom::End(0))?;
        f.write_all(&footer(id.index, id.term, id.len, id.crc))?;
        f.sync_all()?;
        drop(f);
        let final_path = self.path_of(id.index);
        std::fs::rename(&path, &final_path)?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(SnapshotMeta { index: id.index, term: id.term, path: final_path, len: id.len, crc: id.crc })
    }

    /// A complete snapshot named `id`, if this store still holds it (its
    /// footer is checked; the fetching side checks the bytes).
    pub(crate) fn find(&self, id: &SnapshotId) -> Option<SnapshotMeta> {
        let path = self.path_of(id.index);
        let mut f = File::open(&path).ok()?;
        let size = f.metadata().ok()?.len();
        let mut b = [0u8; FOOTER as usize];
        f.seek(SeekFrom::Start(size.checked_sub(FOOTER)?)).ok()?;
        f.read_exact(&mut b).ok()?;
        (b[..] == footer(id.index, id.term, id.len, id.crc)[..] && size == id.len + FOOTER).then_some(SnapshotMeta {
            index: id.index,
            term: id.term,
            path,
            len: id.len,
            crc: id.crc,
        })
    }

    /// At most `max` bytes of `meta`'s state from `offset`.
    pub(crate) fn read_chunk(meta: &SnapshotMeta, offset: u64, max: usize) -> std::io::Result<Bytes> {
        let n = meta.len.saturating_sub(offset).min(max as u64) as usize;
        let mut buf = vec![0u8; n];
        File::open(&meta.path)?.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    fn prune(&self) -> std::io::Result<()> {
        let all = self.indexes()?;
        for old in all.iter().take(all.len().saturating_sub(self.keep)) {
            std::fs::remove_file(self.path_of(*old))?;
        }
        Ok(())
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
        let got = crc_of(&mut f, len).map_err(|e| e.to_string())?;
        if got != crc {
            return Err("checksum mismatch".into());
        }
        Ok(SnapshotMeta { index, term, path, len, crc })
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
        file.write_all(&footer(index, term, len, crc))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(SnapshotMeta { index, term, path, len, crc })
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

    #[test]
    fn a_fetched_snapshot_resumes_after_a_restart_and_is_installed_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let source = SnapshotStore::open(dir.path().join("src"), 2).unwrap();
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let meta = write(&source, 40, &body);
        let id = meta.id();
        assert_eq!(source.find(&id), Some(meta.clone()));
        let store = SnapshotStore::open(dir.path().join("dst"), 2).unwrap();
        write(&store, 10, b"old state");
        // Two chunks, then a restart (the store opened again).
        let c0 = SnapshotStore::read_chunk(&meta, 0, 4096).unwrap();
        store.write_partial(&id, 0, &c0, true).unwrap();
        let c1 = SnapshotStore::read_chunk(&meta, 4096, 4096).unwrap();
        store.write_partial(&id, 4096, &c1, false).unwrap();
        let store = SnapshotStore::open(dir.path().join("dst"), 2).unwrap();
        assert_eq!(store.partial().unwrap(), Some((id, 8192)));
        assert_eq!(store.newest().unwrap().unwrap().index, 10, "nothing installed yet");
        let rest = SnapshotStore::read_chunk(&meta, 8192, 4096).unwrap();
        assert_eq!(rest.len(), 10_000 - 8192);
        store.write_partial(&id, 8192, &rest, false).unwrap();
        let installed = store.finish_partial(&id).unwrap();
        assert_eq!(store.newest().unwrap().unwrap(), installed);
        assert_eq!(store.partial().unwrap(), None);
        let mut back = Vec::new();
        SnapshotStore::reader(&installed).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn a_fetched_file_with_a_bad_byte_is_removed_and_the_old_state_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("dst"), 2).unwrap();
        write(&store, 10, b"old state");
        let id = SnapshotId { index: 40, term: 2, len: 5, crc: crc32c::crc32c(b"hello") };
        store.write_partial(&id, 0, b"hellp", true).unwrap();
        assert!(matches!(store.finish_partial(&id), Err(FetchError::Mismatch { index: 40, .. })));
        assert_eq!(store.partial().unwrap(), None, "the damaged file is gone: the fetch starts over");
        assert_eq!(store.newest().unwrap().unwrap().index, 10);
        // A short one fails too.
        store.write_partial(&id, 0, b"hell", true).unwrap();
        assert!(store.finish_partial(&id).is_err());
    }
}
