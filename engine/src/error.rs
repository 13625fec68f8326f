//! Errors at the engine's boundary.
//!
//! Two kinds are kept apart (STYLE 7): an [`Error`] that fails one request and
//! leaves the log usable (`NoSpace`, `EntryTooLarge`, `Backpressure`, a bad
//! argument), and [`Error::Fatal`], after which the log refuses every write
//! until it is reopened, because a write or data sync failed and the kernel may
//! have dropped dirty data: retrying the sync could report durable what is not.
//! Reads of entries already durable keep working in both cases.

use std::io;
use std::path::PathBuf;

/// Everything the engine can report to its caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `op` names it and `path` the file it touched.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file system is full. Nothing was written; free space and retry.
    #[error("no space left on device while {op} in {path} (free space or lower retention)")]
    NoSpace { op: &'static str, path: PathBuf },
    /// The file system is mounted read-only (or went read-only after an error).
    #[error("read-only file system while {op} in {path} (check `mount` and the kernel log)")]
    ReadOnly { op: &'static str, path: PathBuf },
    /// A write or data sync failed; the log accepts no more writes until reopened.
    #[error("log is fatal after a failed {op} on {path}: {source}; reopen to recover")]
    Fatal {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Corruption that is not a torn tail: open refuses and truncates nothing.
    #[error("corrupt log: {reason} in segment {segment} at offset {offset} (next entry index {entry_index})")]
    Corrupt { segment: PathBuf, offset: u64, entry_index: u64, reason: &'static str },
    /// An entry larger than a batch can carry.
    #[error("entry of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    EntryTooLarge { size_bytes: usize, max_bytes: usize },
    /// The in-memory batch ring is full of data not yet durable; reap completions and retry.
    #[error("append buffer full: {pending_bytes} bytes waiting for the disk; poll completions and retry")]
    Backpressure { pending_bytes: u64 },
    /// An index outside `[first_index, last_index]`.
    #[error("entry index {index} is outside the log [{first_index}, {last_index}]")]
    OutOfRange { index: u64, first_index: u64, last_index: u64 },
    /// The caller asked for something the log's invariants forbid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another process (or another `Log` in this one) has the directory open.
    #[error("log directory {dir} is in use by another process (its LOCK file is held)")]
    Locked { dir: PathBuf },
    /// The metadata record (term and vote) is gone or unreadable in a log that
    /// has been used: open refuses, because a node that forgot its vote could
    /// vote twice in one term. The node must not come back as the same voter.
    #[error("metadata {path} is lost: {reason}; the node's term and vote are unknown, so it must not rejoin as the same voter (restore the file, or replace the node)")]
    MetaLost { path: PathBuf, reason: &'static str },
    /// A forced backend cannot be used here.
    #[error("backend {backend} unavailable in {path}: {reason}")]
    BackendUnavailable { backend: &'static str, path: PathBuf, reason: String },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies an `io::Error` from a non-fatal operation into the operator-facing kinds.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace { op, path },
            Some(libc::EROFS) => Error::ReadOnly { op, path },
            _ => Error::Io { op, path, source },
        }
    }

    /// True when the log must be reopened before it accepts writes again.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Fatal { .. })
    }
}
