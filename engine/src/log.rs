//! [`Log`]: the append-only, segmented, durable log of one Raft group.
//!
//! ```text
//!   purged < first_index ≤ durable_index + 1 ≤ next_index
//!   [first_index, durable_index]   on disk, synced, reported durable
//!   (durable_index, next_index)    in the ring: in flight, queued or filling
//! ```
//!
//! **Write path (group commit).** `append` copies the entry once, framed, into
//! the *filling* batch in a block-aligned ring buffer (the io_uring registered
//! buffer). At most one batch is in flight (write + data sync). When it
//! completes, everything that arrived meanwhile is closed into the next batch
//! and submitted, so the batch size adapts to load. No lock, no allocation per
//! entry: the index grows amortised, the ring is preallocated.
//!
//! **One batch in flight** is what keeps recovery a decision table: a crash can
//! tear only the last batch of the last segment, so any other bad checksum is
//! corruption, not a torn tail.
//!
//! **The tail block: padding, not rewriting.** Every batch starts on a block
//! boundary and its last block is zero-padded. Rewriting a partly filled last
//! block would put entries already reported durable under a write that can
//! tear; padding never writes over durable bytes. The cost is up to one block
//! of disk per batch, which under load (large batches) is small, and at low
//! load (one entry per batch) is the 4 KiB the device writes anyway.
//!
//! **Truncation** of a suffix is recorded by the next batch: its first index is
//! below the previous batch's end, and recovery drops what it overlaps. Whole
//! segments past the cut are deleted first. A segment once sealed is never
//! written again: a truncation into a sealed segment makes the next batch open
//! a new segment named for the cut, leaving dead bytes in the sealed one.
//!
//! **Segment roll.** A roll queues a seal batch into the old segment and takes a
//! prepared spare; the spare is renamed to its segment name (and the directory
//! synced) only when its first batch is submitted, after everything before it
//! is durable. That rename is the one synchronous metadata operation left on
//! the append path: one directory sync per segment (64 MiB by default).
//!
//! **Known limit: truncations are not remembered across deletions.** If a
//! truncation into a sealed segment A created segment C, and a later
//! truncation deletes C before its own marker batch is durable, a crash in
//! between brings back A's entries past the first cut. They are entries the
//! log durably held before (uncommitted ones, as Raft only truncates those),
//! never invented ones; the leader truncates them again.
//!
//! **The log start.** The metadata record holds the last purged entry
//! (`start_prev_index`, `start_prev_term`). A purge saves it (synced) *before*
//! deleting any segment, so a crash in between leaves whole segments at or
//! below the start, which recovery deletes, and a segment that straddles the
//! start, whose entries at or below it recovery ignores. A follower that
//! takes a leader's log start ([`Log::reset_to`]) saves it, then deletes every
//! segment; recovery of a log with no segment left starts after the record.
//! Only whole segments are purged: sealed, durable, and with no batch (a seal
//! batch included) queued or in flight.
//!
//! **Failures.** A failed write or data sync makes the log fatal: entries not
//! yet durable are forgotten, appends fail, reads of durable entries work,
//! and reopening recovers. `NoSpace` while preparing a segment fails the
//! append and leaves the log usable.

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::aligned::{align_down, align_up, AlignedBuf, BLOCK_SIZE};
use crate::config::{BackendChoice, LogConfig};
use crate::frame::{decode_entry, encode_entry, BatchHeader, BATCH_HEADER_SIZE, ENTRY_HEADER_SIZE, FLAG_SEAL};
use crate::index::{BatchLoc, EntryLoc, SegmentIndex, TermRuns, NOT_IN_RING};
use crate::io::portable::PortableBackend;
use crate::io::uring::UringBackend;
use crate::io::{Backend, BackendKind, WriteReq};
use crate::meta::{Meta, MetaStore};
use crate::recovery::{scan_segment, SegmentImage};
use crate::segment::{self, open_file, parse_segment_file_name, SegmentHeader, SpareMaker};
use crate::summary;
use crate::{Error, Result};

/// One entry read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub payload: Bytes,
}

/// A batch not yet durable.
#[derive(Debug, Clone, Copy)]
struct PendingBatch {
    token: u64,
    segment_id: u64,
    file_offset: u64,
    ring_lpos: u64,
    first_index: u64,
    entry_count: u32,
    /// Bytes of entries after the batch header.
    body_len: u32,
    /// Largest `BATCH_HEADER_SIZE + body_len` this batch may reach.
    capacity: usize,
    /// The seal batch that ends its segment.
    seal: bool,
}

impl PendingBatch {
    /// A batch with no entries yet, starting at the segment's write offset.
    fn empty(token: u64, seg: &SegmentIndex, ring_lpos: u64, first_index: u64, capacity: usize, seal: bool) -> Self {
        PendingBatch {
            token,
            segment_id: seg.id,
            file_offset: seg.write_offset,
            ring_lpos,
            first_index,
            entry_count: 0,
            body_len: 0,
            capacity,
            seal,
        }
    }

    fn unpadded(&self) -> usize {
        BATCH_HEADER_SIZE + self.body_len as usize
    }
    fn padded(&self) -> usize {
        align_up(self.unpadded())
    }
    fn end_index(&self) -> u64 {
        self.first_index + self.entry_count as u64
    }
}

/// Counters of the write path, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches written and synced.
    pub batches_written: u64,
    /// Bytes those batches took on disk (headers and padding included).
    pub bytes_written: u64,
    /// Submit-to-completion time of the last batch (write plus data sync), in microseconds.
    pub last_write_sync_us: u64,
}

/// What a successful open found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub entries: u64,
    /// A torn tail was cut from the last segment.
    pub cut_torn_tail: bool,
    /// Sealed segments restored from their summaries, without a scan.
    pub summarized: usize,
}

/// The durable log. See the module docs for its invariants.
pub struct Log {
    // Field order matters: the backend (which may hold the ring registered with
    // the kernel and waits for in-flight I/O on drop) drops before the ring.
    backend: Box<dyn Backend>,
    ring: AlignedBuf,
    cfg: LogConfig,
    direct: bool,
    segments: VecDeque<SegmentIndex>,
    /// `None` when opened read-only.
    spares: Option<SpareMaker>,
    meta: MetaStore,
    terms: TermRuns,
    first_index: u64,
    next_index: u64,
    durable_index: u64,
    in_flight: Option<PendingBatch>,
    queued: VecDeque<PendingBatch>,
    filling: Option<PendingBatch>,
    /// A truncation not yet recorded by a batch.
    truncation_pending: bool,
    /// Logical ring position where the next batch may start.
    ring_head: u64,
    /// Ring bytes below this logical position may have been overwritten.
    ring_low: u64,
    next_token: u64,
    next_segment_id: u64,
    fatal: Option<(&'static str, PathBuf, i32)>,
    recovery: RecoveryReport,
    stats: LogStats,
    in_flight_since: Option<std::time::Instant>,
    /// Held for the life of the log: one writer per directory (readers share it).
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.cfg.dir)
            .field("backend", &self.backend.kind())
            .field("first_index", &self.first_index)
            .field("durable_index", &self.durable_index)
            .field("next_index", &self.next_index)
            .finish()
    }
}

/// Whether O_DIRECT works in `dir`: `Ok(Err(reason))` when the file system refuses
/// it (EINVAL), `Err` when the directory cannot be written at all.
pub(crate) fn probe_direct(dir: &Path) -> std::io::Result<std::result::Result<(), String>> {
    let path = dir.join(".direct-probe");
    let _ = std::fs::remove_file(&path);
    let r = match open_file(&path, true, true) {
        Ok(_) => Ok(Ok(())),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Err(format!("O_DIRECT refused: {e}"))),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&path);
    r
}

impl Log {
    /// Opens (or creates) the log in `cfg.dir`, recovering it.
    pub fn open(cfg: LogConfig) -> Result<Log> {
        cfg.validate()?;
        let dir = cfg.dir.clone();
        let direct_probe = if cfg.read_only {
            if !dir.is_dir() {
                return Err(Error::io("open log directory", &dir, std::io::ErrorKind::NotFound.into()));
            }
            Err("opened read-only".to_string())
        } else {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create log directory", &dir, e))?;
            probe_direct(&dir).map_err(|e| Error::io("create file in log directory", &dir, e))?
        };
        let mut ring = AlignedBuf::new(cfg.ring_size_bytes);
        // A read-only log never writes: it needs no io_uring whatever the choice.
        let choice = if cfg.read_only { BackendChoice::Portable } else { cfg.backend };
        let (backend, direct): (Box<dyn Backend>, bool) = match choice {
            BackendChoice::Portable => (
                Box::new(PortableBackend::new(cfg.faults.clone()).map_err(|e| Error::io("start I/O thread", &dir, e))?),
                direct_probe.is_ok(),
            ),
            choice => {
                let uring = match &direct_probe {
                    Err(r) => Err(r.clone()),
                    // SAFETY: `ring` moves into the Log with the backend and is declared after it,
                    // so it outlives the backend; moving an AlignedBuf does not move its heap block.
                    Ok(()) => {
                        unsafe { UringBackend::new(ring.as_mut_ptr(), ring.len(), cfg.sync_mode, cfg.faults.clone()) }
                            .map_err(|e| format!("io_uring setup failed: {e}"))
                    }
                };
                match (uring, choice) {
                    (Ok(b), _) => (Box::new(b) as Box<dyn Backend>, true),
                    (Err(reason), BackendChoice::Uring) => {
                        return Err(Error::BackendUnavailable { backend: "io_uring", path: dir, reason });
                    }
                    (Err(reason), _) => {
                        tracing::warn!(dir = %dir.display(), %reason, "using the portable backend (pwrite + fdatasync)");
                        let b = PortableBackend::new(cfg.faults.clone())
                            .map_err(|e| Error::io("start I/O thread", &dir, e))?;
                        (Box::new(b) as Box<dyn Backend>, direct_probe.is_ok())
                    }
                }
            }
        };
        tracing::info!(dir = %dir.display(), backend = %backend.kind(), direct, "opening log");
        let lock = lock_dir(&dir, cfg.read_only)?;
        let (meta, spares) = if cfg.read_only {
            (MetaStore::open_read_only(&dir)?, None)
        } else {
            let meta = MetaStore::open(&dir)?;
            remove_leftover_spares(&dir)?;
            (meta, Some(SpareMaker::start(dir.clone(), cfg.segment_size_bytes, direct, cfg.faults.clone())))
        };
        let mut log = Log {
            backend,
            ring,
            cfg,
            direct,
            segments: VecDeque::new(),
            spares,
            meta,
            terms: TermRuns::default(),
            first_index: 1,
            next_index: 1,
            durable_index: 0,
            in_flight: None,
            queued: VecDeque::new(),
            filling: None,
            truncation_pending: false,
            ring_head: 0,
            ring_low: 0,
            next_token: 1,
            next_segment_id: 0,
            fatal: None,
            recovery: RecoveryReport::default(),
            stats: LogStats::default(),
            in_flight_since: None,
            _lock: lock,
        };
        log.recover()?;
        Ok(log)
    }

    fn recover(&mut self) -> Result<()> {
        let dir = self.cfg.dir.clone();
        let mut names = Vec::new();
        let mut summaries = Vec::new();
        for de in std::fs::read_dir(&dir).map_err(|e| Error::io("list log directory", &dir, e))? {
            let de = de.map_err(|e| Error::io("list log directory", &dir, e))?;
            let name = de.file_name().to_string_lossy().into_owned();
            if let Some(first) = parse_segment_file_name(&name) {
                names.push(first);
            } else if name.ends_with(".idx") || name.ends_with(".idx.tmp") {
                summaries.push(de.path());
            }
        }
        names.sort_unstable();
        if !self.cfg.read_only {
            // A summary whose segment is gone (purged while the spare thread wrote it), or half written.
            for p in summaries {
                let segment = p.to_string_lossy().trim_end_matches(".tmp").trim_end_matches(".idx").to_string();
                let keep = !p.to_string_lossy().ends_with(".tmp") && std::path::Path::new(&segment).exists();
                if !keep {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let start_prev = self.meta.get().start_prev_index;
        let mut image: Option<AlignedBuf> = None;
        let mut expected_next = names.first().copied().unwrap_or(start_prev + 1);
        if expected_next > start_prev + 1 {
            let path = dir.join(segment::segment_file_name(expected_next));
            return Err(Error::Corrupt {
                segment: path,
                offset: 0,
                entry_index: start_prev + 1,
                reason: "the log's first segment begins after its start record: entries are missing",
            });
        }
        let log_first = expected_next;
        self.first_index = log_first;
        let count = names.len();
        for (i, &first) in names.iter().enumerate() {
            let path = dir.join(segment::segment_file_name(first));
            let file =
                if self.cfg.read_only { std::fs::File::open(&path) } else { open_file(&path, false, self.direct) }
                    .map_err(|e| Error::io("open segment", &path, e))?;
            let len = file.metadata().map_err(|e| Error::io("stat segment", &path, e))?.len();
            let corrupt = |reason| Error::Corrupt { segment: path.clone(), offset: 0, entry_index: first, reason };
            let sealed = i + 1 < count;
            if len < BLOCK_SIZE as u64 || len > u32::MAX as u64 {
                return Err(corrupt("segment shorter than its header block or over 4 GiB"));
            }
            // Recovery reads through the page cache: a cut file may end off a block boundary,
            // where O_DIRECT reads fail.
            let reader = std::fs::File::open(&path).map_err(|e| Error::io("open segment", &path, e))?;
            let mut head = AlignedBuf::new(BLOCK_SIZE);
            read_up_to(&reader, head.as_mut_slice(), 0).map_err(|e| Error::io("read segment", &path, e))?;
            let header = SegmentHeader::decode(head.as_slice()).ok_or_else(|| corrupt("bad segment header"))?;
            let size = header.size_bytes as usize;
            if len > header.size_bytes || !size.is_multiple_of(BLOCK_SIZE) || size < 2 * BLOCK_SIZE {
                return Err(corrupt("segment size does not match its header"));
            }
            if len < header.size_bytes {
                // A file cut short (never by a power loss, since segments are pre-filled, but
                // by a copy or a tool): missing bytes read as zeros. Only the last segment may be.
                if sealed {
                    return Err(corrupt("sealed segment is shorter than its header says"));
                }
                tracing::warn!(segment = %path.display(), len, size, "segment shorter than its size; extending");
                if !self.cfg.read_only {
                    file.set_len(header.size_bytes).map_err(|e| Error::io("extend segment", &path, e))?;
                    file.sync_all().map_err(|e| Error::io("fsync segment", &path, e))?;
                }
            }
            // A sealed segment with a whole summary is not read: its index is in the summary.
            if let Some(s) = sealed.then(|| summary::load(&summary::path_of(&path), &header, first)).flatten() {
                if first > expected_next || first < log_first {
                    return Err(corrupt("segment does not continue the log"));
                }
                // Its first batch may record a truncation into the segments before it.
                for earlier in self.segments.iter_mut() {
                    earlier.truncate(first);
                }
                self.terms.truncate(first);
                for &(start, term) in &s.runs {
                    self.terms.push(start, term);
                }
                expected_next = first + s.entries.len() as u64;
                let id = self.next_segment_id;
                self.next_segment_id += 1;
                let mut seg = SegmentIndex::on_disk(id, first, path.clone(), file, header);
                (seg.entries, seg.batches, seg.write_offset, seg.sealed) = (s.entries, s.batches, s.end_offset, true);
                self.segments.push_back(seg);
                self.recovery.summarized += 1;
                continue;
            }
            if image.as_ref().is_none_or(|b| b.len() < size) {
                image = Some(AlignedBuf::new(size));
            }
            let buf = image.as_mut().expect("allocated");
            let got = read_up_to(&reader, &mut buf.as_mut_slice()[..size], 0)
                .map_err(|e| Error::io("read segment", &path, e))?;
            buf.as_mut_slice()[got..size].fill(0);
            let data = &buf.as_slice()[..size];
            if first > expected_next || first < log_first {
                return Err(corrupt("segment does not continue the log"));
            }
            let id = self.next_segment_id;
            self.next_segment_id += 1;
            let mut seg = SegmentIndex::on_disk(id, first, path.clone(), file, header);
            let segments = &mut self.segments;
            let terms = &mut self.terms;
            let image = SegmentImage { path: &path, data, salt: header.salt, segment_first: first, log_first, sealed };
            let end = scan_segment(&image, &mut expected_next, |kept| {
                // A batch starting below the expected index records a truncation.
                let from = kept.header.first_index;
                for s in segments.iter_mut() {
                    s.truncate(from);
                }
                seg.truncate(from);
                terms.truncate(from);
                if kept.header.is_seal() {
                    return;
                }
                seg.batches.push(BatchLoc {
                    first_index: from,
                    file_offset: kept.offset as u32,
                    ring_lpos: NOT_IN_RING,
                });
                for v in kept.entries {
                    let offset = kept.offset as u32 + (v.payload_offset - ENTRY_HEADER_SIZE) as u32;
                    seg.entries.push(EntryLoc { offset, payload_len: v.payload_len as u32 });
                    terms.push(v.index, v.term);
                }
            })?;
            seg.write_offset = end.end_offset;
            seg.sealed = end.sealed;
            self.recovery.cut_torn_tail |= end.cut;
            if sealed && !self.cfg.read_only {
                // Scanned for want of a summary: write one, so the next open need not.
                if let Err(error) = summary::write(&summary::path_of(&path), &summary::encode(&seg, self.terms.runs()))
                {
                    tracing::warn!(segment = %path.display(), %error, "cannot write a segment summary");
                }
            }
            self.segments.push_back(seg);
        }
        // A trailing segment without a single batch holds nothing durable: it was named
        // and then its first batch was torn (or, after a truncation, never written).
        while self.segments.back().is_some_and(|s| s.batches.is_empty() && !s.sealed) {
            let s = self.segments.pop_back().expect("checked");
            if !self.cfg.read_only {
                tracing::warn!(segment = %s.path.display(), "removing empty trailing segment");
                remove_summary(&s.path);
                std::fs::remove_file(&s.path).map_err(|e| Error::io("remove empty segment", &s.path, e))?;
            }
        }
        // Segments wholly at or below the log start were being purged at a crash.
        while self.segments.front().is_some_and(|s| s.end_index() <= start_prev + 1) {
            let s = self.segments.pop_front().expect("checked");
            if !self.cfg.read_only {
                tracing::info!(segment = %s.path.display(), start_prev, "removing a segment below the log start");
                remove_summary(&s.path);
                std::fs::remove_file(&s.path).map_err(|e| Error::io("remove purged segment", &s.path, e))?;
            }
        }
        if start_prev > 0 {
            expected_next = expected_next.max(start_prev + 1);
            self.terms.purge(start_prev + 1);
            if self.segments.is_empty() {
                self.terms = TermRuns::default();
            }
        }
        // Segments before the last are sealed whether or not they end with a seal batch.
        let n = self.segments.len();
        for s in self.segments.iter_mut().take(n.saturating_sub(1)) {
            s.sealed = true;
        }
        // What recovery found must be on disk before it is reported durable: a batch
        // written but not synced before a crash (or a failed sync) may sit in a cache.
        if !self.cfg.read_only {
            if let Some(last) = self.segments.back() {
                last.file.sync_data().map_err(|e| Error::io("fsync last segment", &last.path, e))?;
            }
            segment::sync_dir(&dir)?;
        }
        if self.segments.is_empty() {
            self.first_index = expected_next;
        }
        self.first_index = self.first_index.max(start_prev + 1);
        self.next_index = expected_next;
        self.durable_index = expected_next - 1;
        self.recovery.segments = count;
        self.recovery.entries = self.next_index - self.first_index;
        Ok(())
    }

    // ---- state -------------------------------------------------------------

    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// True when writes go through O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// The lowest index still in the log (equal to `last_index() + 1` when empty).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The highest index appended (durable or not); `first_index() - 1` when empty.
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// Every entry up to this index is on disk and synced.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    /// Term of the entry at `index`; the log start's term at the start's
    /// index (the last purged entry); `None` elsewhere outside the log.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        let m = self.meta.get();
        if index > 0 && index == m.start_prev_index && index < self.first_index {
            return Some(m.start_prev_term);
        }
        if index < self.first_index || index >= self.next_index {
            return None;
        }
        self.terms.term_at(index)
    }

    /// The last purged entry, `(index, term)`; `(0, 0)` when nothing was purged.
    pub fn start(&self) -> (u64, u64) {
        let m = self.meta.get();
        (m.start_prev_index, m.start_prev_term)
    }

    /// Bytes the log's segment files take (their preallocated size).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.header.size_bytes).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Terms of the log as runs `(first index of the run, term)`, oldest
    /// first: one per change of term, so a restart learns every term without
    /// reading the entries.
    pub fn term_runs(&self) -> &[(u64, u64)] {
        self.terms.runs()
    }

    pub fn last_term(&self) -> Option<u64> {
        if self.next_index == self.first_index {
            None
        } else {
            self.terms.last_term()
        }
    }

    /// An fd that becomes readable when [`Log::poll_completions`] may have news.
    pub fn eventfd(&self) -> RawFd {
        self.backend.eventfd()
    }

    /// The metadata record last saved.
    pub fn meta(&self) -> &Meta {
        self.meta.get()
    }

    /// Durably replaces the metadata record (atomic: old or new survives a crash).
    /// Durably replaces the term, vote and blob; the log start is the log's
    /// own (moved only by purges and resets) and is kept whatever `m` says.
    pub fn save_meta(&mut self, m: &Meta) -> Result<()> {
        self.check_writable()?;
        let (start_prev_index, start_prev_term) = self.start();
        self.write_meta(&Meta { start_prev_index, start_prev_term, ..m.clone() })
    }

    /// Durably records a new log start, keeping the term, vote and blob.
    fn save_start(&mut self, start_prev_index: u64, start_prev_term: u64) -> Result<()> {
        let m = Meta { start_prev_index, start_prev_term, ..self.meta.get().clone() };
        self.write_meta(&m)
    }

    /// Writes the record; a failed sync makes the log fatal (see the module docs).
    fn write_meta(&mut self, m: &Meta) -> Result<()> {
        match self.meta.save(m) {
            Err(Error::Fatal { op, path, source }) => Err(self.make_fatal(op, path, source)),
            r => r,
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.cfg.read_only {
            return Err(Error::ReadOnly { op: "writing (the log was opened read-only)", path: self.cfg.dir.clone() });
        }
        match &self.fatal {
            None => Ok(()),
            Some((op, path, errno)) => {
                Err(Error::Fatal { op, path: path.clone(), source: std::io::Error::from_raw_os_error(*errno) })
            }
        }
    }

    // ---- append path -------------------------------------------------------

    /// Appends one entry; returns its index. The entry is readable at once and
    /// durable once a completion reports an index at or above it.
    pub fn append(&mut self, term: u64, payload: &[u8]) -> Result<u64> {
        self.append_parts(term, &[payload])
    }

    /// Appends one entry whose payload is the concatenation of `parts` (a host's
    /// own header and the client's bytes, say), copied once into the batch.
    pub fn append_parts(&mut self, term: u64, parts: &[&[u8]]) -> Result<u64> {
        self.check_writable()?;
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        let max = self.cfg.max_entry_bytes();
        if payload_len > max {
            return Err(Error::EntryTooLarge { size_bytes: payload_len, max_bytes: max });
        }
        if let Some(last) = self.last_term() {
            if term < last {
                return Err(Error::InvalidArgument(format!("term {term} is below the last term {last}")));
            }
        }
        let need = ENTRY_HEADER_SIZE + payload_len;
        if self.filling.is_some_and(|b| b.unpadded() + need > b.capacity) {
            // A full batch goes to the disk at once if the disk is idle.
            self.close_filling();
            if self.in_flight.is_none() {
                self.flush()?;
            }
        }
        if self.filling.is_none() {
            self.start_batch(need)?;
        }
        let index = self.next_index;
        let b = self.filling.as_mut().expect("started");
        let seg = self.segments.back_mut().expect("a filling batch has a segment");
        debug_assert_eq!(seg.id, b.segment_id);
        let at = (b.ring_lpos % self.cfg.ring_size_bytes as u64) as usize + b.unpadded();
        encode_entry(seg.header.salt, index, term, parts, self.ring.range_mut(at, need));
        seg.entries
            .push(EntryLoc { offset: (b.file_offset as usize + b.unpadded()) as u32, payload_len: payload_len as u32 });
        b.entry_count += 1;
        b.body_len += need as u32;
        self.terms.push(index, term);
        self.next_index += 1;
        Ok(index)
    }

    fn take_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token - 1
    }

    /// Reserves `len` contiguous ring bytes for a new batch without moving `ring_head`;
    /// fails with `Backpressure` when that would reach a batch not yet durable.
    fn reserve_ring(&self, len: u64) -> Result<u64> {
        let ring_size = self.cfg.ring_size_bytes as u64;
        let mut lpos = self.ring_head;
        let phys = lpos % ring_size;
        if ring_size - phys < len {
            lpos += ring_size - phys;
        }
        let oldest = self.in_flight.iter().chain(self.queued.iter()).map(|b| b.ring_lpos).min().unwrap_or(lpos);
        if lpos + len - oldest > ring_size {
            return Err(Error::Backpressure { pending_bytes: self.ring_head - oldest });
        }
        Ok(lpos)
    }

    /// Marks ring bytes below a new reservation's reach as overwritten for reads.
    fn claim_ring(&mut self, lpos: u64, len: u64) {
        self.ring_low = self.ring_low.max((lpos + len).saturating_sub(self.cfg.ring_size_bytes as u64));
    }

    /// Starts the filling batch at `next_index`, with room for at least `need` bytes of entries.
    fn start_batch(&mut self, need: usize) -> Result<()> {
        debug_assert!(self.filling.is_none());
        let max_batch = self.cfg.max_batch_bytes as u64;
        let needed_bytes = align_up(BATCH_HEADER_SIZE + need) as u64;
        // Every segment keeps its last block for the seal batch.
        let has_room = self
            .segments
            .back()
            .is_some_and(|s| !s.sealed && s.write_offset + needed_bytes + BLOCK_SIZE as u64 <= s.header.size_bytes);
        if !has_room {
            self.roll()?;
        }
        let lpos = self.reserve_ring(max_batch)?;
        self.claim_ring(lpos, max_batch);
        let token = self.take_token();
        let seg = self.segments.back_mut().expect("rolled");
        let capacity = (seg.header.size_bytes - BLOCK_SIZE as u64 - seg.write_offset).min(max_batch) as usize;
        let batch = PendingBatch::empty(token, seg, lpos, self.next_index, capacity, false);
        seg.batches.push(BatchLoc {
            first_index: self.next_index,
            file_offset: seg.write_offset as u32,
            ring_lpos: lpos,
        });
        self.ring_head = lpos;
        self.filling = Some(batch);
        self.truncation_pending = false;
        Ok(())
    }

    /// Seals the active segment with a seal batch and opens a spare for `next_index`.
    ///
    /// The spare is renamed to its segment name only when its first batch is
    /// submitted ([`Log::flush`]), that is after every batch of the segment before
    /// it, seal included, is durable: so a crash never leaves a named segment
    /// after one whose tail was not yet written.
    fn roll(&mut self) -> Result<()> {
        let seal_at = match self.segments.back() {
            Some(s) if !s.sealed => Some(self.reserve_ring(BLOCK_SIZE as u64)?),
            _ => None,
        };
        let spare = self.spares.as_mut().expect("a writable log has a spare maker").take()?;
        let token = self.take_token();
        if let (Some(lpos), Some(seg)) = (seal_at, self.segments.back_mut()) {
            assert!(seg.write_offset + BLOCK_SIZE as u64 <= seg.header.size_bytes, "seal block reserved");
            let seal = PendingBatch::empty(token, seg, lpos, self.next_index, BLOCK_SIZE, true);
            self.claim_ring(lpos, BLOCK_SIZE as u64);
            self.ring_head = lpos;
            self.filling = Some(seal);
            self.close_filling();
        }
        if let Some(s) = self.segments.back_mut() {
            s.sealed = true;
        }
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        self.segments.push_back(SegmentIndex {
            id,
            first_index: self.next_index,
            path: self.cfg.dir.join(segment::segment_file_name(self.next_index)),
            unnamed_spare: Some(spare.path),
            file: spare.file,
            header: spare.header,
            entries: Vec::new(),
            batches: Vec::new(),
            write_offset: segment::FIRST_BATCH_OFFSET,
            sealed: false,
        });
        Ok(())
    }

    /// Finishes the filling batch: header, zero padding, queue it.
    fn close_filling(&mut self) {
        let Some(b) = self.filling.take() else { return };
        let at = (b.ring_lpos % self.cfg.ring_size_bytes as u64) as usize;
        let seg = self.segments.iter_mut().rev().find(|s| s.id == b.segment_id).expect("segment of a pending batch");
        let batch = self.ring.range_mut(at, b.padded());
        batch[b.unpadded()..].fill(0);
        let flags = if b.seal { FLAG_SEAL } else { 0 };
        let header =
            BatchHeader { first_index: b.first_index, entry_count: b.entry_count, body_len: b.body_len, flags };
        header.encode(seg.header.salt, &mut batch[..BATCH_HEADER_SIZE]);
        seg.write_offset = b.file_offset + b.padded() as u64;
        assert!(seg.write_offset <= seg.header.size_bytes, "batch overruns its segment");
        self.ring_head = b.ring_lpos + b.padded() as u64;
        self.queued.push_back(b);
    }

    /// Submits the next batch if none is in flight: the group-commit step.
    /// Appends between two calls form one batch.
    pub fn flush(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.in_flight.is_some() {
            return Ok(());
        }
        if self.queued.is_empty() {
            if self.filling.is_none() && self.truncation_pending {
                match self.start_batch(0) {
                    // No segment for the batch that records the truncation (a full disk):
                    // it stays pending, and the next batch that gets one records it. Nothing
                    // waits on it: the entries it removed were never acknowledged.
                    Err(Error::NoSpace { .. }) => return Ok(()),
                    r => r?,
                }
            }
            self.close_filling();
        }
        let Some(b) = self.queued.pop_front() else { return Ok(()) };
        let seg = self.segments.iter_mut().rev().find(|s| s.id == b.segment_id).expect("segment of a queued batch");
        if let Some(spare_path) = seg.unnamed_spare.take() {
            // Everything before this batch is durable (one batch in flight, FIFO): name the segment now.
            let path = seg.path.clone();
            let named =
                std::fs::rename(&spare_path, &path).map_err(|e| ("rename spare to segment", e)).and_then(|()| {
                    segment::sync_dir(&self.cfg.dir).map_err(|e| ("fsync log directory", std::io::Error::other(e)))
                });
            if let Err((op, e)) = named {
                self.queued.push_front(b);
                return Err(self.make_fatal(op, path, e));
            }
        }
        let fd = seg.file.as_raw_fd();
        let path = seg.path.clone();
        let phys = (b.ring_lpos % self.cfg.ring_size_bytes as u64) as usize;
        assert!(phys + b.padded() <= self.ring.len(), "a batch never wraps the ring");
        let req = WriteReq {
            token: b.token,
            fd,
            // The pointer is derived from the ring's base without forming a reference.
            buf: self.ring.as_ptr().wrapping_add(phys),
            len: b.padded(),
            offset: b.file_offset,
        };
        // SAFETY: the ring region of an in-flight batch is never written (reserve_ring keeps
        // new batches at least ring_size away from the oldest unwritten one), the ring and the
        // segment file outlive the request (truncate and purge wait for or skip in-flight
        // batches, and the backend drops first), and only one request is in flight.
        let r = unsafe { self.backend.submit(req) };
        if let Err(e) = r {
            self.queued.push_front(b);
            return Err(self.make_fatal("submit write", path, e));
        }
        self.in_flight = Some(b);
        self.in_flight_since = Some(std::time::Instant::now());
        Ok(())
    }

    fn make_fatal(&mut self, op: &'static str, path: PathBuf, e: std::io::Error) -> Error {
        tracing::error!(op, path = %path.display(), error = %e, "log is fatal; reopen to recover");
        self.fatal = Some((op, path.clone(), e.raw_os_error().unwrap_or(libc::EIO)));
        // Forget everything that is not durable, so nothing undurable is ever read back.
        self.filling = None;
        self.queued.clear();
        self.forget_from(self.durable_index + 1);
        Error::Fatal { op, path, source: e }
    }

    fn forget_from(&mut self, from: u64) {
        for s in self.segments.iter_mut() {
            s.truncate(from);
        }
        self.terms.truncate(from);
        self.next_index = from;
    }

    fn complete(&mut self, c: crate::io::Completion) -> Result<u64> {
        let b = self.in_flight.take().expect("a completion has a batch in flight");
        assert_eq!(c.token, b.token, "completion for the batch in flight");
        if let Err((op, e)) = c.result {
            let path = self.segments.iter().find(|s| s.id == b.segment_id).map(|s| s.path.clone()).unwrap_or_default();
            return Err(self.make_fatal(op, path, e));
        }
        if let Some(t) = self.in_flight_since.take() {
            self.stats.last_write_sync_us = t.elapsed().as_micros() as u64;
        }
        self.stats.batches_written += 1;
        self.stats.bytes_written += b.padded() as u64;
        if b.seal {
            // The segment is final: summarize it for the next open, off this thread.
            if let Some(seg) = self.segments.iter().find(|s| s.id == b.segment_id) {
                // A memcpy of the entry locations here; the encoding runs on the spare thread.
                let parts = summary::Parts::of(seg, self.terms.runs());
                let path = summary::path_of(&seg.path);
                if let Some(spares) = self.spares.as_mut() {
                    spares.summarize(path, parts);
                }
            }
        }
        let end = b.end_index();
        assert!(end > self.durable_index || b.entry_count == 0, "durable index never moves back");
        self.durable_index = end - 1;
        debug_assert!(self.durable_index < self.next_index);
        Ok(self.durable_index)
    }

    /// Reaps a finished write without blocking and starts the next batch.
    /// Returns the new durable index when it advanced.
    pub fn poll_completions(&mut self) -> Result<Option<u64>> {
        let Some(c) = self.backend.poll() else { return Ok(None) };
        let durable = self.complete(c)?;
        self.flush()?;
        Ok(Some(durable))
    }

    /// Blocks until `index` is durable (flushing as needed).
    pub fn wait_durable(&mut self, index: u64) -> Result<()> {
        if index >= self.next_index {
            return Err(Error::OutOfRange { index, first_index: self.first_index, last_index: self.last_index() });
        }
        loop {
            self.check_writable()?;
            if self.durable_index >= index {
                return Ok(());
            }
            self.flush()?;
            if self.in_flight.is_none() {
                continue;
            }
            let c = self.backend.wait();
            self.complete(c)?;
        }
    }

    /// Blocks until everything appended (and any pending truncation) is durable.
    /// With a full disk, a pending truncation that cannot get a segment fails
    /// it with `NoSpace` (not fatal: the truncation stays pending).
    pub fn sync_all(&mut self) -> Result<()> {
        loop {
            self.check_writable()?;
            let idle = self.in_flight.is_none() && self.queued.is_empty() && self.filling.is_none();
            if idle && !self.truncation_pending {
                return Ok(());
            }
            if idle {
                // Only the truncation is left: its batch needs a segment, or this is the error.
                self.start_batch(0)?;
            }
            self.flush()?;
            if self.in_flight.is_some() {
                let c = self.backend.wait();
                self.complete(c)?;
            }
        }
    }

    /// Blocks until no batch is queued, filling or in flight (a pending
    /// truncation may stay pending): what a truncation or a reset needs
    /// before it deletes files.
    fn wait_idle(&mut self) -> Result<()> {
        loop {
            self.check_writable()?;
            if self.in_flight.is_none() && self.queued.is_empty() && self.filling.is_none() {
                return Ok(());
            }
            self.flush()?;
            if self.in_flight.is_some() {
                let c = self.backend.wait();
                self.complete(c)?;
            }
        }
    }

    // ---- reads -------------------------------------------------------------

    fn segment_of(&self, index: u64) -> Result<&SegmentIndex> {
        if index < self.first_index || index >= self.next_index {
            return Err(Error::OutOfRange { index, first_index: self.first_index, last_index: self.last_index() });
        }
        let i = self.segments.partition_point(|s| s.first_index <= index);
        Ok(&self.segments[i - 1])
    }

    /// Reads one entry (from memory when recent, else from disk).
    pub fn read(&self, index: u64) -> Result<Entry> {
        let mut out = Vec::with_capacity(1);
        self.read_range(index, index + 1, 0, &mut out)?;
        Ok(out.pop().expect("one entry"))
    }

    /// Reads `[lo, hi)` into `out`, stopping early once `max_bytes` of payload
    /// have been read (at least one entry is always returned).
    pub fn read_range(&self, lo: u64, hi: u64, max_bytes: usize, out: &mut Vec<Entry>) -> Result<()> {
        if lo >= hi {
            return Ok(());
        }
        if hi > self.next_index || lo < self.first_index {
            let index = if lo < self.first_index { lo } else { hi - 1 };
            return Err(Error::OutOfRange { index, first_index: self.first_index, last_index: self.last_index() });
        }
        let mut index = lo;
        let mut bytes = 0usize;
        while index < hi {
            let seg = self.segment_of(index)?;
            let seg_hi = hi.min(seg.end_index());
            let batch = seg.batch_of(index);
            if batch.ring_lpos != NOT_IN_RING && batch.ring_lpos >= self.ring_low {
                let loc = seg.entries[(index - seg.first_index) as usize];
                let phys = (batch.ring_lpos % self.cfg.ring_size_bytes as u64) as usize
                    + (loc.offset - batch.file_offset) as usize;
                let raw = &self.ring.as_slice()[phys..phys + ENTRY_HEADER_SIZE + loc.payload_len as usize];
                debug_assert!(decode_entry(seg.header.salt, raw).is_some_and(|v| v.index == index));
                let term = self.terms.term_at(index).expect("live index has a term");
                out.push(Entry { index, term, payload: Bytes::copy_from_slice(&raw[ENTRY_HEADER_SIZE..]) });
                bytes += loc.payload_len as usize;
                index += 1;
            } else {
                // One aligned read covering as many entries of this segment as fit in max_bytes.
                let first = seg.entries[(index - seg.first_index) as usize];
                let mut last = index;
                let mut span = first.payload_len as usize;
                // One read covers entries up to max_bytes (or a batch's worth when unlimited).
                let budget = if max_bytes == 0 { self.cfg.max_batch_bytes } else { max_bytes.saturating_sub(bytes) };
                while last + 1 < seg_hi && span < budget {
                    let next = seg.entries[(last + 1 - seg.first_index) as usize];
                    span += next.payload_len as usize;
                    last += 1;
                }
                let end_loc = seg.entries[(last - seg.first_index) as usize];
                let start = align_down(first.offset as usize);
                let end = align_up(end_loc.offset as usize + ENTRY_HEADER_SIZE + end_loc.payload_len as usize);
                let mut buf = AlignedBuf::new(end - start);
                read_exact_at(&seg.file, &mut buf.as_mut_slice()[..end - start], start as u64)
                    .map_err(|e| Error::io("read entries", &seg.path, e))?;
                let buf = Bytes::from_owner(buf);
                for i in index..=last {
                    let loc = seg.entries[(i - seg.first_index) as usize];
                    let at = loc.offset as usize - start;
                    let v = decode_entry(seg.header.salt, &buf[at..]).filter(|v| v.index == i).ok_or_else(|| {
                        Error::Corrupt {
                            segment: seg.path.clone(),
                            offset: loc.offset as u64,
                            entry_index: i,
                            reason: "entry failed its checksum on read",
                        }
                    })?;
                    let p = at + v.payload_offset;
                    out.push(Entry { index: i, term: v.term, payload: buf.slice(p..p + v.payload_len) });
                    bytes += v.payload_len;
                }
                index = last + 1;
            }
            if max_bytes > 0 && bytes >= max_bytes {
                break;
            }
        }
        Ok(())
    }

    // ---- what Raft needs ---------------------------------------------------

    /// Removes entries at and above `from_index`. Waits for writes in flight first.
    /// The cut becomes durable with the next batch (or the next `flush`).
    pub fn truncate_suffix(&mut self, from_index: u64) -> Result<()> {
        self.check_writable()?;
        if from_index < self.first_index || from_index > self.next_index {
            return Err(Error::InvalidArgument(format!(
                "truncate_suffix({from_index}) outside [{}, {}]",
                self.first_index, self.next_index
            )));
        }
        if from_index == self.next_index {
            return Ok(());
        }
        self.wait_idle()?;
        // Delete whole segments past the cut, newest first.
        let mut deleted = false;
        while let Some(s) = self.segments.back().filter(|s| s.first_index >= from_index) {
            let (fd, path, first) = (s.file.as_raw_fd(), s.path.clone(), s.first_index);
            // Delete, then forget: after a failure the memory still matches the disk.
            self.delete_segment(fd, &path)?;
            self.segments.pop_back();
            self.forget_from(first);
            self.durable_index = self.durable_index.min(first - 1);
            deleted = true;
        }
        if deleted {
            segment::sync_dir(&self.cfg.dir)?;
        }
        self.forget_from(from_index);
        self.durable_index = self.durable_index.min(from_index - 1);
        self.truncation_pending = true;
        if self.segments.is_empty() {
            self.first_index = from_index;
        }
        Ok(())
    }

    /// Removes a segment's file; the caller syncs the directory.
    fn delete_segment(&mut self, fd: RawFd, path: &Path) -> Result<()> {
        self.backend.forget_file(fd).map_err(|e| Error::io("unregister segment", path, e))?;
        remove_summary(path);
        std::fs::remove_file(path).map_err(|e| Error::io("delete segment", path, e))
    }

    /// Drops whole sealed, durable segments whose entries are all at or below `up_to_index`.
    /// Returns the new first index.
    pub fn purge_prefix(&mut self, up_to_index: u64) -> Result<u64> {
        self.purge_while(|s, _| s.end_index() - 1 <= up_to_index)
    }

    fn purge_while(&mut self, mut pred: impl FnMut(&SegmentIndex, u64) -> bool) -> Result<u64> {
        self.check_writable()?;
        // Which segments go: a prefix of whole ones, sealed, durable, never the
        // last, and with no batch (the seal batch included) queued or in flight,
        // whose buffers and completions name the segment.
        let pending: Vec<u64> = self.in_flight.iter().chain(self.queued.iter()).map(|b| b.segment_id).collect();
        let mut total: u64 = self.segments.iter().map(|s| s.header.size_bytes).sum();
        let mut count = 0;
        for s in self.segments.iter().take(self.segments.len().saturating_sub(1)) {
            let purgeable = s.sealed && s.end_index() <= self.durable_index + 1 && !pending.contains(&s.id);
            if !purgeable || !pred(s, total) {
                break;
            }
            total -= s.header.size_bytes;
            count += 1;
        }
        if count == 0 {
            return Ok(self.first_index);
        }
        // The start record first: a crash from here on recovers to the new start.
        let new_first = self.segments[count].first_index;
        let prev_index = new_first - 1;
        let prev_term = self.term_at(prev_index).expect("a durable entry has a term");
        self.save_start(prev_index, prev_term)?;
        for _ in 0..count {
            let s = self.segments.front().expect("counted");
            let (fd, path, size) = (s.file.as_raw_fd(), s.path.clone(), s.header.size_bytes);
            self.backend.forget_file(fd).map_err(|e| Error::io("unregister segment", &path, e))?;
            let s = self.segments.pop_front().expect("counted");
            remove_summary(&path);
            if size == self.cfg.segment_size_bytes {
                let spares = self.spares.as_mut().expect("a writable log has a spare maker");
                if let Some((_, path)) = spares.recycle(s.file, s.path) {
                    std::fs::remove_file(&path).map_err(|e| Error::io("delete segment", &path, e))?;
                }
            } else {
                std::fs::remove_file(&path).map_err(|e| Error::io("delete segment", &path, e))?;
            }
        }
        self.first_index = new_first;
        self.terms.purge(new_first);
        segment::sync_dir(&self.cfg.dir)?;
        Ok(self.first_index)
    }

    /// Drops the whole log and starts it after `(prev_index, prev_term)`: a
    /// leader's log start that this follower does not hold the entry of.
    /// Waits for writes in flight, saves the start (synced), deletes every
    /// segment; the next append opens a segment named `prev_index + 1`.
    pub fn reset_to(&mut self, prev_index: u64, prev_term: u64) -> Result<()> {
        self.check_writable()?;
        if prev_index < self.start().0 || prev_index == 0 || prev_term == 0 {
            return Err(Error::InvalidArgument(format!(
                "reset_to({prev_index}, {prev_term}) below the log start {:?}",
                self.start()
            )));
        }
        self.wait_idle()?;
        self.save_start(prev_index, prev_term)?;
        while let Some(s) = self.segments.back() {
            let (fd, path) = (s.file.as_raw_fd(), s.path.clone());
            self.delete_segment(fd, &path)?;
            self.segments.pop_back();
        }
        segment::sync_dir(&self.cfg.dir)?;
        self.terms = TermRuns::default();
        self.first_index = prev_index + 1;
        self.next_index = prev_index + 1;
        self.durable_index = prev_index;
        self.truncation_pending = false;
        Ok(())
    }

    /// Deletes the oldest sealed segments that are older than `policy.max_age` or
    /// beyond `policy.max_total_bytes`, never one holding an index at or above `floor_index`.
    pub fn apply_retention(&mut self, policy: &crate::RetentionPolicy, floor_index: u64) -> Result<u64> {
        let now = segment::now_unix_ms();
        self.purge_while(|s, total| {
            if s.end_index() > floor_index {
                return false;
            }
            let too_big = policy.max_total_bytes.is_some_and(|m| total > m);
            if too_big {
                return true;
            }
            policy.max_age.is_some_and(|age| {
                let modified_ms = s
                    .file
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(s.header.created_unix_ms, |d| d.as_millis() as u64);
                now.saturating_sub(modified_ms) > age.as_millis() as u64
            })
        })
    }

    /// Blocks until the next segment is prepared, so that the next roll does not wait
    /// and no fill is in progress. For start-up and benchmarks; appends never need it.
    pub fn wait_spare_ready(&mut self) {
        if let Some(s) = self.spares.as_mut() {
            s.wait_ready();
        }
    }

    /// Paths of the segment files, oldest first (for tools and tests).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Finish (but do not start) the write in flight so the ring outlives it.
        if self.in_flight.is_some() {
            let c = self.backend.wait();
            let _ = self.complete(c);
        }
    }
}

/// Takes the directory's lock (`LOCK`): exclusive for a writer, shared for a
/// reader, failing at once if a writer holds it. A reader on a directory without
/// a LOCK file (a read-only copy) goes without.
/// Removes a segment's summary, if it has one (a missing one is fine).
fn remove_summary(segment: &Path) {
    let _ = std::fs::remove_file(summary::path_of(segment));
}

fn lock_dir(dir: &Path, read_only: bool) -> Result<Option<std::fs::File>> {
    let path = dir.join("LOCK");
    let opened = if read_only {
        std::fs::File::open(&path)
    } else {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)
    };
    let f = match opened {
        Ok(f) => f,
        Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open lock file", &path, e)),
    };
    let mode = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), mode | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Locked { dir: dir.to_path_buf() });
        }
        return Err(Error::io("lock log directory", &path, e));
    }
    Ok(Some(f))
}

/// Removes spares of an earlier run (possibly half-filled) before the maker starts new ones.
fn remove_leftover_spares(dir: &Path) -> Result<()> {
    for de in std::fs::read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))? {
        let de = de.map_err(|e| Error::io("list log directory", dir, e))?;
        let name = de.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("spare-") && name.ends_with(".tmp") {
            std::fs::remove_file(de.path()).map_err(|e| Error::io("remove leftover spare", de.path(), e))?;
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shorter than expected")),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
