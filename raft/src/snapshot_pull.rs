//! Pulling a state-machine snapshot from a peer, in checksummed chunks,
//! without I/O: the messages and the puller's decisions, shared by the
//! server and the simulation.
//!
//! A follower of a group with a state machine that is sent a log start past
//! what its state machine has applied cannot replay the missing entries: it
//! needs a snapshot covering at least the start's `prev_index`. It pulls one
//! (the Raft thesis, §5.3, has the leader push it; pulling lets the follower
//! pace itself and resume from the byte it reached):
//!
//! ```text
//! follower                                         any peer (the leader first)
//! Request{min_index, want: None,     offset 0} ──▶ its newest snapshot ≥ min_index
//!            ◀── Chunk{id, offset 0, data, crc}    (or Unavailable{newest})
//! write data at 0, fsync
//! Request{min_index, want: Some(id), offset n} ──▶ the same file, from byte n
//!            ◀── Chunk{id, offset n, ...}          ... until offset == id.len
//! check the whole file against id.crc; rename it into place; restore
//! ```
//!
//! Invariants (checked by the tests below and by the simulation):
//! * a chunk is written only if its checksum (over its offset and bytes)
//!   holds, it belongs to the snapshot being fetched, and it starts exactly
//!   at the byte the puller has reached; anything else is ignored or asked
//!   for again, never written;
//! * the snapshot being fetched changes only at offset 0 (a source that no
//!   longer holds the wanted file answers with its newest from the start);
//! * the puller reports a file complete only when its offset equals the
//!   snapshot's length; the host then checks the whole file against the
//!   snapshot's checksum before installing anything.
//!
//! Any node's snapshot will do: a snapshot covers only applied, hence
//! committed, entries, and those are the same on every node.

use bytes::Bytes;

use crate::{LogIndex, NodeId, Term};

/// One snapshot file: what it covers and how to check it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    /// The last log index the snapshot covers.
    pub index: LogIndex,
    /// That entry's term.
    pub term: Term,
    /// Bytes of state.
    pub len: u64,
    /// CRC32C of those bytes.
    pub crc: u32,
}

/// What peers say to each other about snapshots (peer frame `Snapshot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotMessage {
    /// "Send me up to `max_bytes` of a snapshot covering at least
    /// `min_index`": of `want` from `offset` when it is set (a resume), of
    /// your newest from byte 0 otherwise.
    Request {
        /// The lowest index the snapshot must cover.
        min_index: LogIndex,
        /// The file being fetched, if any.
        want: Option<SnapshotId>,
        /// The byte reached in it.
        offset: u64,
        /// The most bytes one chunk may carry.
        max_bytes: u32,
    },
    /// Bytes of snapshot `id` at `offset`.
    Chunk {
        /// The file.
        id: SnapshotId,
        /// Where `data` starts in it.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// [`chunk_crc`] of `offset` and `data`.
        crc: u32,
    },
    /// The source holds no snapshot covering `min_index`; its newest covers `newest`.
    Unavailable {
        /// The index asked for.
        min_index: LogIndex,
        /// The index its newest snapshot covers (0: none).
        newest: LogIndex,
    },
}

/// The checksum of a chunk: CRC32C over its offset (little-endian) and its
/// bytes, so that a chunk delivered to the wrong place fails it too.
pub fn chunk_crc(offset: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&offset.to_le_bytes()), data)
}

/// What the host does with a message the puller has judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullStep {
    /// Nothing (a stale, duplicate, foreign or damaged chunk; a refusal).
    Ignore,
    /// Write `data` at `offset` of the file for `id`, durably, then call
    /// [`SnapshotPull::written`]. `restart`: first drop whatever was fetched
    /// before (another snapshot, or this one from scratch).
    Write {
        /// The snapshot the bytes belong to.
        id: SnapshotId,
        /// Where they go.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// Drop the partial file first.
        restart: bool,
    },
    /// Send this request (to [`SnapshotPull::source`]).
    Send(SnapshotMessage),
}

/// A follower's fetch of one snapshot covering at least `min_index`.
#[derive(Clone, Debug)]
pub struct SnapshotPull {
    min_index: LogIndex,
    source: NodeId,
    id: Option<SnapshotId>,
    offset: u64,
    max_bytes: u32,
    retry_ticks: u32,
    ticks_waiting: u32,
    /// The last peer that had no snapshot covering `min_index`.
    refused_by: Option<NodeId>,
    /// Chunks whose checksum failed (each asked for again).
    pub corrupt_chunks: u64,
}

impl SnapshotPull {
    /// Starts a fetch from `source`; chunks of at most `max_bytes`; a request
    /// left unanswered for `retry_ticks` ticks is sent again.
    pub fn new(min_index: LogIndex, source: NodeId, max_bytes: u32, retry_ticks: u32) -> Self {
        assert!(max_bytes > 0 && retry_ticks > 0, "a pull moves bytes and retries");
        SnapshotPull {
            min_index,
            source,
            id: None,
            offset: 0,
            max_bytes,
            retry_ticks,
            ticks_waiting: 0,
            refused_by: None,
            corrupt_chunks: 0,
        }
    }

    /// Goes on with a fetch a restart interrupted: `offset` bytes of `id`
    /// are durable in the partial file.
    pub fn resume(mut self, id: SnapshotId, offset: u64) -> Self {
        if id.index >= self.min_index && offset <= id.len {
            self.id = Some(id);
            self.offset = offset;
        }
        self
    }

    /// The lowest index the snapshot must cover.
    pub fn min_index(&self) -> LogIndex {
        self.min_index
    }

    /// The peer asked.
    pub fn source(&self) -> NodeId {
        self.source
    }

    /// The file being fetched and the byte reached.
    pub fn progress(&self) -> (Option<SnapshotId>, u64) {
        (self.id, self.offset)
    }

    /// The request for the next chunk (the clock for a retry starts again).
    pub fn request(&mut self) -> SnapshotMessage {
        self.ticks_waiting = 0;
        SnapshotMessage::Request {
            min_index: self.min_index,
            want: self.id,
            offset: self.offset,
            max_bytes: self.max_bytes,
        }
    }

    /// A tick: asks again when the last request went unanswered too long,
    /// from `leader` if one is known and did not just refuse (else from the
    /// next of `peers`).
    pub fn tick(&mut self, leader: Option<NodeId>, peers: &[NodeId]) -> Option<SnapshotMessage> {
        self.ticks_waiting += 1;
        if self.ticks_waiting < self.retry_ticks {
            return None;
        }
        self.source = match leader {
            Some(l) if self.refused_by != Some(l) => l,
            _ => next_peer(peers, self.source),
        };
        self.refused_by = None;
        Some(self.request())
    }

    /// Judges a message from `from`.
    pub fn on_message(&mut self, from: NodeId, message: SnapshotMessage) -> PullStep {
        match message {
            SnapshotMessage::Request { .. } => PullStep::Ignore,
            SnapshotMessage::Unavailable { min_index, .. } => {
                // Asked again on the retry clock, from another peer.
                if min_index == self.min_index {
                    self.refused_by = Some(from);
                }
                PullStep::Ignore
            }
            SnapshotMessage::Chunk { id, offset, data, crc } => {
                let fits = offset.checked_add(data.len() as u64).is_some_and(|end| end <= id.len);
                if id.index < self.min_index || !fits || (data.is_empty() && offset < id.len) {
                    return PullStep::Ignore;
                }
                if chunk_crc(offset, &data) != crc {
                    self.corrupt_chunks += 1;
                    return PullStep::Send(self.request());
                }
                if self.id != Some(id) && offset != 0 {
                    // Another file, not from its start: ask for it from there.
                    self.id = Some(id);
                    self.offset = 0;
                    return PullStep::Send(self.request());
                }
                if self.id == Some(id) && offset != self.offset {
                    return PullStep::Ignore;
                }
                if self.id != Some(id) {
                    self.id = Some(id);
                    self.offset = 0;
                }
                self.source = from;
                // Byte 0 begins the file: whatever the partial file held goes.
                PullStep::Write { id, offset, data, restart: offset == 0 }
            }
        }
    }

    /// `n` bytes were made durable at the byte reached: the whole file when
    /// it returns its id (check it against `id.crc`), else the next request.
    pub fn written(&mut self, n: u64) -> Result<SnapshotId, SnapshotMessage> {
        let id = self.id.expect("a write follows a chunk of a known snapshot");
        self.offset += n;
        assert!(self.offset <= id.len, "wrote past the snapshot's end");
        if self.offset == id.len {
            Ok(id)
        } else {
            Err(self.request())
        }
    }

    /// The whole file failed its checksum (a source's disk returned bad
    /// bytes): start again from nothing.
    pub fn restart(&mut self) -> SnapshotMessage {
        self.id = None;
        self.offset = 0;
        self.request()
    }
}

fn next_peer(peers: &[NodeId], after: NodeId) -> NodeId {
    peers.iter().copied().find(|&p| p > after).or_else(|| peers.first().copied()).unwrap_or(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64, len: u64) -> SnapshotId {
        SnapshotId { index, term: 2, len, crc: 7 }
    }

    fn chunk(id: SnapshotId, offset: u64, data: &'static [u8]) -> SnapshotMessage {
        SnapshotMessage::Chunk { id, offset, data: Bytes::from_static(data), crc: chunk_crc(offset, data) }
    }

    #[test]
    fn the_chunk_checksum_covers_the_offset() {
        assert_eq!(chunk_crc(0, b"abc"), crc32c::crc32c(&[0, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c']));
        assert_ne!(chunk_crc(0, b"abc"), chunk_crc(1, b"abc"));
    }

    #[test]
    fn a_fetch_writes_chunks_in_order_and_completes_at_the_length() {
        let mut p = SnapshotPull::new(10, 1, 4, 5);
        assert_eq!(p.request(), SnapshotMessage::Request { min_index: 10, want: None, offset: 0, max_bytes: 4 });
        let s = id(12, 6);
        let step = p.on_message(1, chunk(s, 0, b"abcd"));
        assert_eq!(step, PullStep::Write { id: s, offset: 0, data: Bytes::from_static(b"abcd"), restart: true });
        assert_eq!(
            p.written(4),
            Err(SnapshotMessage::Request { min_index: 10, want: Some(s), offset: 4, max_bytes: 4 })
        );
        // A duplicate of the first chunk is not written again.
        assert_eq!(p.on_message(1, chunk(s, 0, b"abcd")), PullStep::Ignore);
        assert!(matches!(p.on_message(1, chunk(s, 4, b"ef")), PullStep::Write { offset: 4, restart: false, .. }));
        assert_eq!(p.written(2), Ok(s));
    }

    #[test]
    fn a_damaged_chunk_is_asked_for_again_and_never_written() {
        let mut p = SnapshotPull::new(10, 1, 4, 5);
        let s = id(12, 6);
        let mut bad = chunk(s, 0, b"abcd");
        if let SnapshotMessage::Chunk { data, .. } = &mut bad {
            *data = Bytes::from_static(b"abce");
        }
        assert_eq!(
            p.on_message(1, bad),
            PullStep::Send(SnapshotMessage::Request { min_index: 10, want: None, offset: 0, max_bytes: 4 })
        );
        assert_eq!(p.corrupt_chunks, 1);
        // A chunk moved to another offset fails too: the offset is in the checksum.
        let mut moved = chunk(s, 0, b"abcd");
        if let SnapshotMessage::Chunk { offset, .. } = &mut moved {
            *offset = 2;
        }
        assert!(matches!(p.on_message(1, moved), PullStep::Send(_)));
    }

    #[test]
    fn too_old_too_long_or_another_files_middle_is_not_written() {
        let mut p = SnapshotPull::new(10, 1, 4, 5);
        assert_eq!(p.on_message(1, chunk(id(9, 4), 0, b"abcd")), PullStep::Ignore, "covers too little");
        assert_eq!(p.on_message(1, chunk(id(12, 3), 0, b"abcd")), PullStep::Ignore, "past the end");
        let s = id(12, 8);
        assert!(matches!(p.on_message(1, chunk(s, 0, b"abcd")), PullStep::Write { .. }));
        p.written(4).unwrap_err();
        // The source moved on to a newer snapshot and sends its middle: ask for its start.
        let t = id(20, 8);
        assert_eq!(
            p.on_message(1, chunk(t, 4, b"wxyz")),
            PullStep::Send(SnapshotMessage::Request { min_index: 10, want: Some(t), offset: 0, max_bytes: 4 })
        );
        assert!(matches!(p.on_message(1, chunk(t, 0, b"stuv")), PullStep::Write { restart: true, .. }));
    }

    #[test]
    fn a_resumed_fetch_asks_from_the_byte_it_reached_and_retries_on_the_clock() {
        let s = id(12, 8);
        let mut p = SnapshotPull::new(10, 1, 4, 3).resume(s, 4);
        assert_eq!(p.request(), SnapshotMessage::Request { min_index: 10, want: Some(s), offset: 4, max_bytes: 4 });
        assert_eq!(p.tick(None, &[1, 2, 3]), None);
        assert_eq!(p.tick(None, &[1, 2, 3]), None);
        assert!(p.tick(None, &[1, 2, 3]).is_some(), "asked again after 3 ticks");
        assert_eq!(p.source(), 2, "from the next peer while no leader is known");
        for _ in 0..3 {
            p.tick(Some(3), &[1, 2, 3]);
        }
        assert_eq!(p.source(), 3, "from the leader once known");
        // A leader without a snapshot that covers enough is passed over once.
        p.on_message(3, SnapshotMessage::Unavailable { min_index: 10, newest: 5 });
        for _ in 0..3 {
            p.tick(Some(3), &[1, 2, 3]);
        }
        assert_eq!(p.source(), 1);
        // A resume that does not fit what is asked for starts from nothing.
        let p = SnapshotPull::new(10, 1, 4, 3).resume(id(9, 8), 4);
        assert_eq!(p.progress(), (None, 0));
        let mut p = SnapshotPull::new(10, 1, 4, 3).resume(s, 4);
        assert_eq!(p.restart(), SnapshotMessage::Request { min_index: 10, want: None, offset: 0, max_bytes: 4 });
    }
}
