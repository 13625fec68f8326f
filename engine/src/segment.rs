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

/// Keeps one spare segment ready on a background thread.
///
/// `take` hands over the ready spare (waiting for it only if the thread has not
/// finished, which means the disk cannot keep up with the append rate) and
/// immediately asks for the next one.
#[derive(Debug)]
pub struct SpareMaker {
    requests: Option<mpsc::Sender<u64>>,
    ready: mpsc::Receiver<Result<Spare>>,
    worker: Option<thread::JoinHandle<()>>,
    next_seq: u64,
    outstanding: bool,
    held: Option<Result<Spare>>,
}

impl SpareMaker {
    pub fn start(dir: PathBuf, size_bytes: u64, direct: bool, faults: Faults) -> SpareMaker {
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("dledger-prefill".into())
            .spawn(move || {
                for seq in req_rx {
                    if ready_tx.send(make_spare(&dir, seq, size_bytes, direct, &faults)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn prefill thread");
        let mut maker = SpareMaker {
            requests: Some(req_tx),
            ready: ready_rx,
            worker: Some(worker),
            next_seq: 0,
            outstanding: false,
            held: None,
        };
        maker.request();
        maker
    }

    fn request(&mut self) {
        if let Some(tx) = &self.requests {
            if tx.send(self.next_seq).is_ok() {
                self.next_seq += 1;
                self.outstanding = true;
            }
        }
    }

    /// Blocks until the next spare is prepared (or its preparation failed).
    pub fn wait_ready(&mut self) {
        if self.held.is_some() {
            return;
        }
        if !self.outstanding {
            self.request();
        }
        let r = self.ready.recv().unwrap_or_else(|_| Err(Error::InvalidArgument("prefill thread stopped".into())));
        self.outstanding = false;
        self.held = Some(r);
    }

    /// Returns the next spare and asks for another one.
    pub fn take(&mut self) -> Result<Spare> {
        self.wait_ready();
        let r = self.held.take().expect("wait_ready holds a result");
        // After a failure (say a full disk) the next spare is asked for only when
        // needed, so that it is made after whatever freed the space.
        if r.is_ok() {
            self.request();
        }
        r
    }
}

impl Drop for SpareMaker {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        // A spare left behind is removed at the next open.
        if let Some(Ok(spare)) = self.held.take() {
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
