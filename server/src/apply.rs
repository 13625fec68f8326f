//! The apply thread of a group with a state machine.
//!
//! ```text
//!  group task (pinned core)                         apply thread (unpinned)
//!  Command::Apply ──Batch{entries, last}──▶ crossbeam channel ──▶ StateMachine::apply
//!  Reply(Committed) of a local append ──Waiter──▶                ──▶ oneshot: index, term, outputs
//!  ReadReady, once fed ≥ read_index ──Query──▶                   ──▶ StateMachine::query
//!                      ◀── applied index, applied bytes (atomics) ──
//! ```
//!
//! The group task never waits for the apply thread: sending on an unbounded
//! crossbeam channel takes no lock, and the task reads how far the thread
//! got from two atomics, so it can stop feeding when the thread falls
//! behind (the entries stay in the log; see `group.rs`, `MAX_APPLY_LAG_*`).
//!
//! The thread also owns the group's snapshot files: it takes snapshots, it
//! serves chunks of them to peers that fetch one (`Serve`), and for a
//! follower that fetches one it writes each chunk durably (`WriteChunk`)
//! and installs the whole file (`Install`): checked against its checksum,
//! renamed into place, restored into the state machine. Each answer goes
//! back to the group task as an [`InstallEvent`] on its inbox, so neither a
//! read, an fsync nor a restore runs on the group's core thread.
//!
//! Invariants, checked here: batches arrive in index order without gaps
//! (`first index == applied + 1`); a query is answered only after every
//! batch sent before it; a waiter is answered only once its last index is
//! applied; every state machine call runs under `catch_unwind`, and its
//! error or panic stops the whole server through `on_fatal`.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use dledger_raft::{chunk_crc, NodeId, SnapshotId, SnapshotMessage};

use crate::error::{Fatal, GroupError};
use crate::group::GroupInput;
use crate::snapshot::{FetchError, SnapshotMeta, SnapshotStore};
use crate::state_machine::{CommittedEntry, StateMachine, StateMachineError};

/// Where a local append's outcome goes.
pub(crate) type AppendReply = oneshot::Sender<Result<crate::Applied, GroupError>>;
/// Where a local read's answer goes.
pub(crate) type ReadReply = oneshot::Sender<Result<Bytes, GroupError>>;

/// What the group task sends its apply thread.
pub(crate) enum ApplyMsg {
    /// Committed entries (commands only) up to `last` (which may be a no-op).
    Batch { entries: Vec<CommittedEntry>, last: u64, last_term: u64, bytes: u64, keep_outputs: bool },
    /// A local append committed at `first..=last`: answer with the outputs once applied.
    Waiter { first: u64, last: u64, term: u64, reply: AppendReply },
    /// A linearizable read whose read index has been sent.
    Query { query: Bytes, reply: ReadReply },
    /// A peer asks for a chunk of a snapshot (a `Request`).
    Serve { from: NodeId, request: SnapshotMessage },
    /// Write a fetched chunk of `id` at `offset`, durably.
    WriteChunk { id: SnapshotId, offset: u64, data: Bytes, restart: bool },
    /// The fetched file of `id` is whole: check it, install it, restore from it.
    Install { id: SnapshotId },
    /// Snapshot now (on demand); answer with the index covered.
    SnapshotNow { reply: oneshot::Sender<Result<u64, GroupError>> },
}

/// What the apply thread tells its group task about snapshot transfers.
#[derive(Debug)]
pub(crate) enum InstallEvent {
    /// Send this to a peer (an answer to its `Request`).
    Send { to: NodeId, message: SnapshotMessage },
    /// A chunk of `n` bytes is durable.
    Written { n: u64 },
    /// Writing a chunk failed (a full disk): the fetch waits and asks again.
    WriteFailed { error: String },
    /// The state machine now holds snapshot `id`.
    Installed { id: SnapshotId },
    /// The fetched file did not match its checksum: the fetch starts over.
    Mismatch { reason: String },
}

/// The most bytes one served chunk carries, whatever a peer asks for.
pub(crate) const MAX_CHUNK_BYTES: u32 = 1 << 20;

/// How far the apply thread got, for the group task and metrics.
#[derive(Debug, Default)]
pub(crate) struct ApplyProgress {
    /// Last index applied.
    pub(crate) applied: AtomicU64,
    /// Payload bytes applied since start (the group task compares with what it sent).
    pub(crate) applied_bytes: AtomicU64,
    /// Index of the newest snapshot.
    pub(crate) snapshot_index: AtomicU64,
    /// Snapshot chunks served to peers.
    pub(crate) chunks_served: AtomicU64,
}

/// Runs a state machine call, turning a panic into an error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, StateMachineError>) -> Result<T, StateMachineError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(StateMachineError::Panicked(panic_message(&*p))),
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// What the thread needs besides its channel.
pub(crate) struct ApplyWorker {
    pub(crate) group: u64,
    pub(crate) machine: Box<dyn StateMachine>,
    pub(crate) store: SnapshotStore,
    /// Take a snapshot after this many entries since the last (0: never).
    pub(crate) snapshot_every: u64,
    /// Or after this many payload bytes applied since the last (0: never).
    pub(crate) snapshot_every_bytes: u64,
    pub(crate) progress: Arc<ApplyProgress>,
    pub(crate) on_fatal: Arc<dyn Fn(Fatal) + Send + Sync>,
    /// The newest complete snapshot (the one served to peers).
    pub(crate) newest: Option<SnapshotMeta>,
    /// The group task's inbox, for [`InstallEvent`]s.
    pub(crate) to_group: Option<tokio::sync::mpsc::UnboundedSender<GroupInput>>,
}

impl ApplyWorker {
    /// Serves the channel until the group task drops its end or the state machine fails.
    pub(crate) fn run(mut self, rx: crossbeam_channel::Receiver<ApplyMsg>) {
        let mut applied = self.progress.applied.load(Ordering::Relaxed);
        let mut applied_term = 0;
        let mut last_snapshot = self.progress.snapshot_index.load(Ordering::Relaxed);
        let mut applied_bytes = 0u64;
        let mut bytes_at_snapshot = 0u64;
        // Outputs of entries a local append may still wait for, in index order.
        let mut retained: VecDeque<(u64, Bytes)> = VecDeque::new();
        let mut waiters: VecDeque<(u64, u64, u64, AppendReply)> = VecDeque::new();
        let mut outputs = Vec::new();
        while let Ok(msg) = rx.recv() {
            let result = match msg {
                ApplyMsg::Batch { entries, last, last_term, bytes, keep_outputs } => {
                    assert!(last > applied, "group {}: batch up to {last} after {applied}", self.group);
                    assert!(
                        entries.first().is_none_or(|e| e.index > applied)
                            && entries.last().is_none_or(|e| e.index <= last),
                        "group {}: a batch's entries lie in ({applied}, {last}]",
                        self.group
                    );
                    outputs.clear();
                    let machine = &mut self.machine;
                    let r = if entries.is_empty() { Ok(()) } else { guarded(|| machine.apply(&entries, &mut outputs)) };
                    let r = match r {
                        Ok(()) if outputs.len() != entries.len() => {
                            Err(StateMachineError::OutputCount { entries: entries.len(), outputs: outputs.len() })
                        }
                        r => r,
                    };
                    if r.is_ok() {
                        if keep_outputs {
                            retained.extend(entries.iter().map(|e| e.index).zip(outputs.drain(..)));
                        } else {
                            retained.clear();
                        }
                        applied = last;
                        applied_term = last_term;
                        applied_bytes += bytes;
                        self.progress.applied.store(applied, Ordering::Release);
                        self.progress.applied_bytes.store(applied_bytes, Ordering::Release);
                        answer_waiters(&mut waiters, &mut retained, applied);
                    }
                    r.and_then(|()| {
                        let by_entries = self.snapshot_every > 0 && applied - last_snapshot >= self.snapshot_every;
                        let by_bytes = self.snapshot_every_bytes > 0
                            && applied_bytes - bytes_at_snapshot >= self.snapshot_every_bytes;
                        if by_entries || by_bytes {
                            self.take_snapshot(applied, applied_term)?;
                            last_snapshot = applied;
                            bytes_at_snapshot = applied_bytes;
                        }
                        Ok(())
                    })
                }
                ApplyMsg::Waiter { first, last, term, reply } => {
                    waiters.push_back((first, last, term, reply));
                    answer_waiters(&mut waiters, &mut retained, applied);
                    Ok(())
                }
                ApplyMsg::Query { query, reply } => {
                    let machine = &mut self.machine;
                    match guarded(|| machine.query(&query)) {
                        Ok(b) => {
                            let _ = reply.send(Ok(b));
                            Ok(())
                        }
                        // A panic is a bug in the state machine: fatal. An error fails this read.
                        Err(e @ StateMachineError::Panicked(_)) => {
                            let _ = reply.send(Err(GroupError::Stopped));
                            Err(e)
                        }
                        Err(e) => {
                            let _ = reply.send(Err(GroupError::Query(e)));
                            Ok(())
                        }
                    }
                }
                ApplyMsg::SnapshotNow { reply } => {
                    if applied > last_snapshot {
                        match self.take_snapshot(applied, applied_term) {
                            Ok(()) => {
                                last_snapshot = applied;
                                bytes_at_snapshot = applied_bytes;
                                let _ = reply.send(Ok(applied));
                                Ok(())
                            }
                            Err(e) => {
                                let _ = reply.send(Err(GroupError::Stopped));
                                Err(e)
                            }
                        }
                    } else {
                        let _ = reply.send(Ok(last_snapshot));
                        Ok(())
                    }
                }
                ApplyMsg::Serve { from, request } => {
                    let message = self.serve(&request);
                    self.tell(InstallEvent::Send { to: from, message });
                    Ok(())
                }
                ApplyMsg::WriteChunk { id, offset, data, restart } => {
                    match self.store.write_partial(&id, offset, &data, restart) {
                        Ok(()) => self.tell(InstallEvent::Written { n: data.len() as u64 }),
                        Err(e) => self.tell(InstallEvent::WriteFailed { error: e.to_string() }),
                    }
                    Ok(())
                }
                ApplyMsg::Install { id } => match self.store.finish_partial(&id) {
                    Ok(meta) => {
                        let restored =
                            SnapshotStore::reader(&meta).map_err(StateMachineError::from).and_then(|mut r| {
                                let machine = &mut self.machine;
                                guarded(|| machine.restore(&mut r))
                            });
                        // A restore that failed half-way leaves no state to go on from: fatal.
                        restored.map(|()| {
                            applied = id.index;
                            applied_term = id.term;
                            last_snapshot = id.index;
                            retained.clear();
                            self.newest = Some(meta);
                            self.progress.applied.store(applied, Ordering::Release);
                            self.progress.snapshot_index.store(applied, Ordering::Release);
                            self.tell(InstallEvent::Installed { id });
                        })
                    }
                    Err(FetchError::Mismatch { index, why }) => {
                        self.tell(InstallEvent::Mismatch { reason: format!("snapshot at {index}: {why}") });
                        Ok(())
                    }
                    Err(FetchError::Io(e)) => {
                        self.tell(InstallEvent::WriteFailed { error: e.to_string() });
                        Ok(())
                    }
                },
            };
            if let Err(error) = result {
                tracing::error!(group = self.group, %error, "state machine failed; the server stops");
                (self.on_fatal)(Fatal::StateMachine { group: self.group, error });
                // Whoever still waits learns that the server stopped.
                for (_, _, _, reply) in waiters.drain(..) {
                    let _ = reply.send(Err(GroupError::Stopped));
                }
                for msg in rx.try_iter() {
                    match msg {
                        ApplyMsg::Waiter { reply, .. } => drop(reply.send(Err(GroupError::Stopped))),
                        ApplyMsg::Query { reply, .. } => drop(reply.send(Err(GroupError::Stopped))),
                        ApplyMsg::SnapshotNow { reply } => drop(reply.send(Err(GroupError::Stopped))),
                        ApplyMsg::Batch { .. }
                        | ApplyMsg::Serve { .. }
                        | ApplyMsg::WriteChunk { .. }
                        | ApplyMsg::Install { .. } => {}
                    }
                }
                return;
            }
        }
        for (_, _, _, reply) in waiters.drain(..) {
            let _ = reply.send(Err(GroupError::Stopped));
        }
    }
}

impl ApplyWorker {
    /// Writes a snapshot of the state as of `applied` (term `term`), durably.
    fn take_snapshot(&mut self, applied: u64, term: u64) -> Result<(), StateMachineError> {
        let machine = &mut self.machine;
        let meta = self.store.write(applied, term, |w| guarded(|| machine.snapshot(w)))?;
        tracing::debug!(group = self.group, index = meta.index, bytes = meta.len, "snapshot taken");
        self.newest = Some(meta);
        self.progress.snapshot_index.store(applied, Ordering::Release);
        Ok(())
    }

    fn tell(&self, event: InstallEvent) {
        if let Some(tx) = &self.to_group {
            let _ = tx.send(GroupInput::Installer(event));
        }
    }

    /// A source's answer to `request`: the wanted file from its offset while
    /// this store holds it, else the newest from byte 0 if it covers
    /// `min_index`, else `Unavailable`.
    fn serve(&self, request: &SnapshotMessage) -> SnapshotMessage {
        let SnapshotMessage::Request { min_index, want, offset, max_bytes } = *request else {
            unreachable!("only requests are served")
        };
        let wanted = want.filter(|w| offset <= w.len).and_then(|w| {
            if self.newest.as_ref().is_some_and(|n| n.id() == w) {
                self.newest.clone()
            } else {
                self.store.find(&w)
            }
        });
        let (meta, offset) = match wanted {
            Some(meta) => (meta, offset),
            None => match &self.newest {
                Some(n) if n.index >= min_index => (n.clone(), 0),
                newest => {
                    return SnapshotMessage::Unavailable { min_index, newest: newest.as_ref().map_or(0, |n| n.index) }
                }
            },
        };
        let max = max_bytes.clamp(1, MAX_CHUNK_BYTES) as usize;
        match SnapshotStore::read_chunk(&meta, offset, max) {
            Ok(data) => {
                self.progress.chunks_served.fetch_add(1, Ordering::Relaxed);
                let crc = chunk_crc(offset, &data);
                SnapshotMessage::Chunk { id: meta.id(), offset, data, crc }
            }
            Err(error) => {
                tracing::warn!(group = self.group, index = meta.index, %error, "cannot read a snapshot to serve it");
                SnapshotMessage::Unavailable { min_index, newest: 0 }
            }
        }
    }
}

/// Answers, in order, every waiter whose entries are applied.
fn answer_waiters(
    waiters: &mut VecDeque<(u64, u64, u64, AppendReply)>,
    retained: &mut VecDeque<(u64, Bytes)>,
    applied: u64,
) {
    while waiters.front().is_some_and(|w| w.1 <= applied) {
        let (first, last, term, reply) = waiters.pop_front().expect("checked");
        while retained.front().is_some_and(|(i, _)| *i < first) {
            retained.pop_front();
        }
        let mut outputs = Vec::with_capacity((last - first + 1) as usize);
        while retained.front().is_some_and(|(i, _)| *i <= last) {
            outputs.push(retained.pop_front().expect("checked").1);
        }
        debug_assert_eq!(outputs.len() as u64, last - first + 1, "outputs of {first}..={last} were retained");
        let _ = reply.send(Ok(crate::Applied { first_index: first, last_index: last, term, outputs }));
    }
}
