//! The application's state machine: what an embedding registers per group.
//!
//! A group with a state machine hands it every committed entry once, in
//! index order, in batches, on a thread of its own (the apply thread), so
//! the group's pinned append path never waits for the application. The
//! state machine answers each entry with an output (given back to the
//! [`GroupHandle::append`](crate::GroupHandle::append) that proposed it) and
//! answers queries ([`GroupHandle::read`](crate::GroupHandle::read)) after
//! every entry up to a linearizable read index is applied.
//!
//! # Restart
//!
//! On start the server restores the newest complete snapshot of the group
//! (if any), then asks [`StateMachine::applied_index`]: entries up to the
//! larger of the two are not applied again. A state machine that keeps its
//! state in memory returns 0 and relies on snapshots (and replays the log
//! after the newest one); one that writes its own durable store (a file, an
//! embedded database) returns the last index it made durable, and is
//! replayed only what it did not.
//!
//! # Errors
//!
//! An error from [`apply`](StateMachine::apply), [`snapshot`](StateMachine::snapshot)
//! or [`restore`](StateMachine::restore), or a panic in any of them, is fatal
//! for the server that runs it: the server stops and [`Server::wait`](crate::Server::wait)
//! returns [`Fatal::StateMachine`](crate::Fatal::StateMachine) (the process
//! lives on, and other servers in it are untouched). An error from
//! [`query`](StateMachine::query) fails that read only.

use std::io::{Read, Write};

use bytes::Bytes;

/// A committed entry, as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    /// The entry's log index.
    pub index: u64,
    /// The term it was appended in.
    pub term: u64,
    /// What the application appended.
    pub payload: Bytes,
}

/// Why a state machine call failed.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// Reading or writing the state machine's own files or a snapshot.
    #[error("state machine i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An entry, query or snapshot the state machine cannot interpret (named).
    #[error("state machine: {0}")]
    Invalid(String),
    /// `apply` returned a different number of outputs than entries.
    #[error("state machine returned {outputs} outputs for {entries} entries")]
    OutputCount {
        /// Entries in the batch.
        entries: usize,
        /// Outputs returned.
        outputs: usize,
    },
    /// The state machine panicked; the panic's message.
    #[error("state machine panicked: {0}")]
    Panicked(String),
}

/// An application's replicated state, driven by one group's committed log.
///
/// Methods run on the group's apply thread, one at a time, never on the
/// group's core thread.
pub trait StateMachine: Send + 'static {
    /// Applies committed entries, in index order, each exactly once per
    /// process lifetime (a restart replays those after
    /// [`applied_index`](StateMachine::applied_index) and the newest
    /// snapshot). Pushes one output per entry to `outputs` (an empty
    /// `Bytes` when there is nothing to say). An error stops the server.
    fn apply(&mut self, entries: &[CommittedEntry], outputs: &mut Vec<Bytes>) -> Result<(), StateMachineError>;

    /// Answers a read against the state as of every entry applied so far. The
    /// server calls it only once the entries up to a linearizable read index
    /// are applied. An error fails this read only.
    fn query(&mut self, query: &[u8]) -> Result<Bytes, StateMachineError>;

    /// The last index whose effects this state machine has made durable in
    /// its own storage (0 when it keeps nothing on disk itself). Asked once
    /// at start-up, after any snapshot is restored.
    fn applied_index(&self) -> u64 {
        0
    }

    /// Writes the whole state to `out`, as of the last entry applied. The
    /// server makes the file durable and names it with that index.
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError>;

    /// Replaces the whole state with a snapshot written by
    /// [`snapshot`](StateMachine::snapshot).
    fn restore(&mut self, snapshot: &mut dyn Read) -> Result<(), StateMachineError>;
}
