//! dledger-engine: the durable, checksummed, append-only log that each Raft
//! group of dledger-rs writes to one disk.
//!
//! - [`Log`] appends with group commit (one batch in flight; everything that
//!   arrives meanwhile forms the next), through io_uring with O_DIRECT into
//!   preallocated, pre-filled segments, or through the portable backend.
//! - Recovery cuts a torn tail and refuses on any other corruption
//!   ([`recovery`] holds the decision table).
//! - [`Meta`] is the small atomic record Raft keeps (term, vote, the log start, blob).
//! - [`probe()`] reports what a directory supports.
//!
//! The module docs of [`log`], [`frame`] and [`segment`] state the on-disk
//! format and the invariants the code asserts.
//!
//! ```
//! use dledger_engine::{Log, LogConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut config = LogConfig::new(dir.path().join("log"));
//! config.segment_size_bytes = 4 << 20;
//! let mut log = Log::open(config).unwrap();
//! // Appends are readable at once and durable later: one batch per flush.
//! let first = log.append(1, b"hello").unwrap();
//! log.append(1, b"world").unwrap();
//! log.flush().unwrap();
//! log.wait_durable(first + 1).unwrap();
//! assert!(log.durable_index() >= first + 1);
//! let mut entries = Vec::new();
//! log.read_range(first, first + 2, 1 << 20, &mut entries).unwrap();
//! assert_eq!(entries[1].payload, "world");
//! ```

mod aligned;
mod config;
mod error;
mod faults;
pub mod frame;
mod index;
mod io;
pub mod log;
mod meta;
mod probe;
pub mod recovery;
mod retention;
pub mod segment;
mod summary;

pub use aligned::{AlignedBuf, BLOCK_SIZE};
pub use config::{BackendChoice, LogConfig, SyncMode};
pub use error::{Error, Result};
pub use faults::{FailPoint, Faults};
pub use io::BackendKind;
pub use log::{Entry, Log, LogStats, RecoveryReport};
pub use meta::{Meta, MAX_BLOB_BYTES, META_FILE};
pub use probe::{probe, ProbeReport};
pub use retention::RetentionPolicy;
