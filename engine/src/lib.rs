//! dledger-engine: the durable, checksummed, append-only log that each Raft
//! group of dledger-rs writes to one disk.
//!
//! - [`Log`] appends with group commit (one batch in flight; everything that
//!   arrives meanwhile forms the next), through io_uring with O_DIRECT into
//!   preallocated, pre-filled segments, or through the portable backend.
//! - Recovery cuts a torn tail and refuses on any other corruption
//!   ([`recovery`] holds the decision table).
//! - [`Meta`] is the small atomic record Raft keeps (term, vote, blob).
//! - [`probe()`] reports what a directory supports.
//!
//! The module docs of [`log`], [`frame`] and [`segment`] state the on-disk
//! format and the invariants the code asserts.

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

pub use aligned::{AlignedBuf, BLOCK_SIZE};
pub use config::{BackendChoice, LogConfig, SyncMode};
pub use error::{Error, Result};
pub use faults::{FailPoint, Faults};
pub use io::BackendKind;
pub use log::{Entry, Log, LogStats, RecoveryReport};
pub use meta::{Meta, MAX_BLOB_BYTES};
pub use probe::{probe, ProbeReport};
pub use retention::RetentionPolicy;
