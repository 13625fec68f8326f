//! What a caller can choose when opening a log.

use std::path::PathBuf;

use crate::aligned::{align_up, BLOCK_SIZE};
use crate::faults::Faults;
use crate::Error;

/// Which I/O backend writes the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring with O_DIRECT when both work in the directory, else the portable backend.
    #[default]
    Auto,
    /// io_uring with O_DIRECT or fail to open.
    Uring,
    /// pwrite + fdatasync on a worker thread, with O_DIRECT when the file system allows it.
    Portable,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" => Ok(BackendChoice::Uring),
            "portable" => Ok(BackendChoice::Portable),
            _ => Err(format!("unknown backend {s:?} (expected auto, uring or portable)")),
        }
    }
}

/// How a batch is made durable on the io_uring backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A write SQE linked to an `fdatasync` SQE.
    #[default]
    LinkedFdatasync,
    /// One write SQE with `RWF_DSYNC`.
    Dsync,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fdatasync" | "linked" => Ok(SyncMode::LinkedFdatasync),
            "dsync" => Ok(SyncMode::Dsync),
            _ => Err(format!("unknown sync mode {s:?} (expected fdatasync or dsync)")),
        }
    }
}

/// Options of [`crate::Log::open`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory holding the segments and the metadata record; created if missing.
    pub dir: PathBuf,
    /// Size of every segment file, a block multiple.
    pub segment_size_bytes: u64,
    /// Largest batch written in one I/O (header, entries and padding).
    pub max_batch_bytes: usize,
    /// The in-memory ring that batches are built in; it also serves recent reads.
    pub ring_size_bytes: usize,
    pub backend: BackendChoice,
    pub sync_mode: SyncMode,
    /// Open for reading only: nothing on disk is created, changed or synced (a
    /// read-only file system, a copy under inspection); every write fails with
    /// `Error::ReadOnly`. A torn tail is skipped in memory, not cut.
    pub read_only: bool,
    /// Test hooks that inject I/O errors; inert by default.
    #[doc(hidden)]
    pub faults: Faults,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            segment_size_bytes: 64 << 20,
            max_batch_bytes: 1 << 20,
            ring_size_bytes: 32 << 20,
            backend: BackendChoice::Auto,
            sync_mode: SyncMode::LinkedFdatasync,
            read_only: false,
            faults: Faults::default(),
        }
    }

    /// The largest payload one entry may carry.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_batch_bytes - crate::frame::BATCH_HEADER_SIZE - crate::frame::ENTRY_HEADER_SIZE
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.max_batch_bytes < 2 * BLOCK_SIZE || self.max_batch_bytes != align_up(self.max_batch_bytes) {
            return bad(format!(
                "max_batch_bytes {} must be a multiple of {BLOCK_SIZE} and at least {}",
                self.max_batch_bytes,
                2 * BLOCK_SIZE
            ));
        }
        if self.max_batch_bytes > u32::MAX as usize {
            return bad("max_batch_bytes must fit in 32 bits".into());
        }
        if !self.segment_size_bytes.is_multiple_of(BLOCK_SIZE as u64)
            || self.segment_size_bytes < (2 * BLOCK_SIZE + self.max_batch_bytes) as u64
            || self.segment_size_bytes > u32::MAX as u64
        {
            return bad(format!(
                "segment_size_bytes {} must be a multiple of {BLOCK_SIZE}, hold a header block, one \
                 batch and a seal block ({} bytes), and be below 4 GiB",
                self.segment_size_bytes, self.max_batch_bytes
            ));
        }
        if self.ring_size_bytes < 4 * self.max_batch_bytes || self.ring_size_bytes != align_up(self.ring_size_bytes) {
            return bad(format!(
                "ring_size_bytes {} must be a block multiple of at least 4 x max_batch_bytes",
                self.ring_size_bytes
            ));
        }
        Ok(())
    }
}
