//! Segment files: naming, the header block, and preparing spares off the append path.
//!
//! A segment is `<first_index:020>.seg`, exactly `segment_size_bytes` long,
//! its first block a header and the rest batches (see [`crate::frame`]).
//! A new segment is made by a background thread as `spare-<seq>.tmp`:
//! allocated, *filled* with zeros (so that later data syncs flush data only and
//! never an unwritten-extent conversion), given a fresh random salt in its
//! header, synced, and its directory synced. Activation renames it to its
//! final name and syncs the directory before any batch is written into it, so
//! a segment's name is durable before its data.
//!
//! Purged segments are recycled into spares (renamed, re-salted, no refill)
//! while fewer than two spares are ready or coming, so that at steady state,
//! with retention, every byte is written once.
//!
//! The header carries the salt; because every checksum is seeded with it,
//! bytes from a deleted file whose blocks were reused, or from the zero fill,
//! never parse as an entry.

use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::aligned::{AlignedBuf, BLOCK_SIZE};
use crate::faults::{FailPoint, Faults};
use crate::frame::{read_u32, read_u64};
use crate::{Error, Result};

pub const SEGMENT_MAGIC: &[u8; 8] = b"DLSEG001";
pub const SEGMENT_VERSION: u32 = 1;
/// Batches start after the header block.
pub const FIRST_BATCH_OFFSET: u64 = BLOCK_SIZE as u64;

/// The file name of the segment whose first entry is `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.seg")
}

/// Parses a segment file name back into its first index.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The decoded header block of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub salt: u64,
    pub size_bytes: u64,
    pub created_unix_ms: u64,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut [u8]) {
        out[..BLOCK_SIZE].fill(0);
        out[0..8].copy_from_slice(SEGMENT_MAGIC);
        out[12..16].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.salt.to_le_bytes());
        out[24..32].copy_from_slice(&self.size_bytes.to_le_bytes());
        out[32..40].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[12..40]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<SegmentHeader> {
        if b.len() < 40 || &b[0..8] != SEGMENT_MAGIC || crc32c::crc32c(&b[12..40]) != read_u32(b, 8) {
            return None;
        }
        if read_u32(b, 12) != SEGMENT_VERSION {
            return None;
        }
        Some(SegmentHeader { salt: read_u64(b, 16), size_bytes: read_u64(b, 24), created_unix_ms: read_u64(b, 32) })
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A salt that differs between files, processes and machines.
pub fn fresh_salt() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::hash::RandomState::new().hash_one((nanos, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// Opens a segment or spare for I/O, with O_DIRECT when `direct`.
pub fn open_file(path: &Path, create: bool, direct: bool) -> std::io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new().read(true).write(true).create_new(create).custom_flags(flags).open(path)
}

/// Syncs a directory so that names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    d.sync_all().map_err(|e| Error::io("fsync directory", dir, e))
}

/// A prepared, filled, not yet named segment.
#[derive(Debug)]
pub struct Spare {
    pub path: PathBuf,
    pub file: File,
    pub header: SegmentHeader,
}

/// Creates one spare: allocate, fill with zeros, write the header, sync file and directory.
pub fn make_spare(dir: &Path, seq: u64, size_bytes: u64, direct: bool, faults: &Faults) -> Result<Spare> {
    let path = dir.join(format!("spare-{seq}.tmp"));
    let _ = std::fs::remove_file(&path);
    let result = (|| {
        if let Some(e) = faults.take(FailPoint::Prefill) {
            return Err(Error::io("fill spare segment", &path, e));
        }
        let file = open_file(&path, true, direct).map_err(|e| Error::io("create spare segment", &path, e))?;
        // SAFETY: plain syscall on an fd we own; no memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size_bytes as libc::off_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(Error::io("fallocate spare segment", &path, e));
            }
        }
        let chunk = AlignedBuf::new(1 << 20);
        let mut off = 0u64;
        while off < size_bytes {
            let n = (size_bytes - off).min(chunk.len() as u64) as usize;
            file.write_all_at(&chunk.as_slice()[..n], off).map_err(|e| Error::io("fill spare segment", &path, e))?;
            off += n as u64;
        }
        let header = SegmentHeader { salt: fresh_salt(), size_bytes, created_unix_ms: now_unix_ms() };
        let mut block = AlignedBuf::new(BLOCK_SIZE);
        header.encode(block.as_mut_slice());
        file.write_all_at(block.as_slice(), 0).map_err(|e| Error::io("write segment header", &path, e))?;
        file.sync_all().map_err(|e| Error::io("fsync spare segment", &path, e))?;
        sync_dir(dir)?;
        Ok(Spare { path: path.clone(), file, header })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// Turns a purged segment into a spare: rename it, give it a fresh salt, sync.
///
/// Its blocks are already written, so (unlike a new file) it needs no zero fill:
/// the old batches never verify under the new salt, and the seal batch that
/// every sealed segment ends with keeps recovery from reading past the new
/// data. Falls back to a fresh spare if anything fails.
pub fn recycle_spare(dir: &Path, seq: u64, old: File, old_path: &Path, direct: bool, faults: &Faults) -> Result<Spare> {
    let path = dir.join(format!("spare-{seq}.tmp"));
    let size_bytes = old.metadata().map_err(|e| Error::io("stat recycled segment", old_path, e))?.len();
    let recycled = (|| -> Result<SegmentHeader> {
        std::fs::rename(old_path, &path).map_err(|e| Error::io("rename segment to spare", &path, e))?;
        sync_dir(dir)?;
        let header = SegmentHeader { salt: fresh_salt(), size_bytes, created_unix_ms: now_unix_ms() };
        let mut block = AlignedBuf::new(BLOCK_SIZE);
        header.encode(block.as_mut_slice());
        old.write_all_at(block.as_slice(), 0).map_err(|e| Error::io("write segment header", &path, e))?;
        old.sync_data().map_err(|e| Error::io("fsync recycled segment", &path, e))?;
        Ok(header)
    })();
    match recycled {
        Ok(header) => Ok(Spare { path, file: old, header }),
        Err(e) => {
            tracing::warn!(error = %e, "recycling a segment failed; preparing a new one");
            let _ = std::fs::remove_file(old_path);
            let _ = std::fs::remove_file(&path);
            drop(old);
            make_spare(dir, seq, size_bytes, direct, faults)
        }
    }
}

/// Work for the spare thread.
enum Job {
    Fill,
    Recycle(File, PathBuf),
    /// Encode and write a sealed segment's summary (no answer: see `summary`).
    Summary(PathBuf, Box<crate::summary::Parts>),
}

/// At most this many spares are kept or in the making; more purged segments are deleted.
const MAX_SPARES: usize = 2;

/// Keeps a spare segment ready on a background thread, recycled from purged
/// segments when there are any, else newly allocated and zero-filled.
///
/// `take` hands over the oldest ready spare (waiting only if none is ready,
/// which means the disk cannot keep up with the append rate) and asks for the
/// next one unless one is already coming.
#[derive(Debug)]
pub struct SpareMaker {
    requests: Option<mpsc::Sender<Job>>,
    ready: mpsc::Receiver<Result<Spare>>,
    worker: Option<thread::JoinHandle<()>>,
    /// Jobs sent whose results have not been received.
    pending: usize,
    held: std::collections::VecDeque<Result<Spare>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Fill => f.write_str("Fill"),
            Job::Recycle(_, p) => write!(f, "Recycle({})", p.display()),
            Job::Summary(p, parts) => write!(f, "Summary({}, {} entries)", p.display(), parts.entries.len()),
        }
    }
}

impl SpareMaker {
    pub fn start(dir: PathBuf, size_bytes: u64, direct: bool, faults: Faults) -> SpareMaker {
        let (req_tx, req_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("dledger-prefill".into())
            .spawn(move || {
                for (seq, job) in req_rx.into_iter().enumerate() {
                    let spare = match job {
                        Job::Fill => make_spare(&dir, seq as u64, size_bytes, direct, &faults),
                        Job::Recycle(file, path) => recycle_spare(&dir, seq as u64, file, &path, direct, &faults),
                        Job::Summary(path, parts) => {
                            let bytes = crate::summary::encode_parts(&parts);
                            if let Err(error) = crate::summary::write(&path, &bytes) {
                                // Only the next open's speed depends on it.
                                tracing::warn!(path = %path.display(), %error, "cannot write a segment summary");
                            }
                            continue;
                        }
                    };
                    if ready_tx.send(spare).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn prefill thread");
        let mut maker = SpareMaker {
            requests: Some(req_tx),
            ready: ready_rx,
            worker: Some(worker),
            pending: 0,
            held: Default::default(),
        };
        maker.send(Job::Fill);
        maker
    }

    fn send(&mut self, job: Job) -> bool {
        match &self.requests {
            Some(tx) if tx.send(job).is_ok() => {
                self.pending += 1;
                true
            }
            _ => false,
        }
    }

    fn drain(&mut self) {
        while let Ok(r) = self.ready.try_recv() {
            self.pending -= 1;
            self.held.push_back(r);
        }
    }

    /// Blocks until a spare is prepared (or its preparation failed).
    pub fn wait_ready(&mut self) {
        self.drain();
        if !self.held.is_empty() {
            return;
        }
        if self.pending == 0 {
            self.send(Job::Fill);
        }
        let r = self.ready.recv().unwrap_or_else(|_| Err(Error::InvalidArgument("prefill thread stopped".into())));
        self.pending -= 1;
        self.held.push_back(r);
    }

    /// Returns the next spare and makes sure another is coming.
    pub fn take(&mut self) -> Result<Spare> {
        self.wait_ready();
        let r = self.held.pop_front().expect("wait_ready holds a result");
        // After a failure (say a full disk) the next spare is asked for only when
        // needed, so that it is made after whatever freed the space.
        if r.is_ok() && self.held.is_empty() && self.pending == 0 {
            self.send(Job::Fill);
        }
        r
    }

    /// Has the spare thread write a sealed segment's summary (best effort).
    pub fn summarize(&mut self, path: PathBuf, parts: crate::summary::Parts) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(Job::Summary(path, Box::new(parts)));
        }
    }

    /// Offers a purged segment for reuse. Returns it back when enough spares are
    /// ready or coming; the caller then deletes it.
    pub fn recycle(&mut self, file: File, path: PathBuf) -> Option<(File, PathBuf)> {
        self.drain();
        if self.held.len() + self.pending >= MAX_SPARES {
            return Some((file, path));
        }
        let (tx_ok, back) = match &self.requests {
            Some(tx) => match tx.send(Job::Recycle(file, path)) {
                Ok(()) => (true, None),
                Err(mpsc::SendError(Job::Recycle(f, p))) => (false, Some((f, p))),
                Err(_) => (false, None),
            },
            None => return Some((file, path)),
        };
        if tx_ok {
            self.pending += 1;
        }
        back
    }
}

impl Drop for SpareMaker {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        // Spares left behind would be removed at the next open anyway.
        for spare in self.held.drain(..).flatten() {
            let _ = std::fs::remove_file(&spare.path);
        }
        while let Ok(Ok(spare)) = self.ready.try_recv() {
            let _ = std::fs::remove_file(&spare.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("spare-1.tmp"), None);
    }

    #[test]
    fn header_round_trip_and_corruption() {
        let h = SegmentHeader { salt: 7, size_bytes: 1 << 20, created_unix_ms: 99 };
        let mut b = vec![0u8; BLOCK_SIZE];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Some(h));
        b[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), None);
    }

    #[test]
    fn spare_is_filled_and_salted() {
        let dir = tempfile::tempdir().unwrap();
        let spare = make_spare(dir.path(), 0, 1 << 20, false, &Faults::default()).unwrap();
        let data = std::fs::read(&spare.path).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert_eq!(SegmentHeader::decode(&data), Some(spare.header));
        assert!(data[BLOCK_SIZE..].iter().all(|&b| b == 0));
        assert_ne!(fresh_salt(), fresh_salt());
    }
}
