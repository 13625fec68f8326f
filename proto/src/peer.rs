//! Peer messages: the encoding of Raft messages, and of the hosts'
//! snapshot-fetch messages, inside [`Frame::Raft`] frames. Built with the
//! `peer` feature (it needs the Raft core's types); a client does without it.
//!
//! ```text
//! body    = from u64 | to u64 | term u64 | kind u8 | fields
//! kind    1..=10  Raft messages (`MessageBody`)
//!         20      snapshot Request   min_index u64 | want (flag u8, SnapshotId) | offset u64 | max_bytes u32
//!         21      snapshot Chunk     SnapshotId | offset u64 | data (len u32, bytes) | crc u32
//!         22      snapshot Unavailable  min_index u64 | newest u64
//! SnapshotId = index u64 | term u64 | len u64 | crc u32
//! ```
//! A snapshot message carries term 0: it is data named by its snapshot id,
//! not a Raft message (see `dledger_raft::SnapshotPull`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dledger_raft::{
    ConflictHint, Entry, EntryKind, LogStart, Membership, Message, MessageBody, NodeId, SessionTable, SnapshotId,
    SnapshotMessage,
};

use crate::codec::{get_bool, get_bytes, get_count, get_opt_u64, get_u32, get_u64, get_u8, put_bytes, put_opt_u64};
#[cfg(doc)]
use crate::frame::Frame;
use crate::frame::{write_frame, WireError, KIND_RAFT};

/// Appends a [`Frame::Raft`] carrying `message` for `group` to `out`,
/// encoding the message in place (no intermediate buffer).
pub fn encode_raft_frame(group: u64, message: &Message, out: &mut BytesMut) {
    write_frame(out, KIND_RAFT, |out| {
        out.put_u64_le(group);
        encode_message(message, out);
    });
}

/// Decodes the body of a [`Frame::Raft`]: exactly one message, nothing after it.
pub fn decode_raft_body(body: Bytes) -> Result<Message, WireError> {
    match decode_peer_body(body)? {
        PeerMessage::Raft(m) => Ok(m),
        PeerMessage::Snapshot { .. } => Err(WireError::Malformed("a snapshot message where a raft one was due")),
    }
}

/// What one peer frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// A Raft message, for the group's core.
    Raft(Message),
    /// A snapshot-fetch message, for the group's host.
    Snapshot {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// What it says.
        message: SnapshotMessage,
    },
}

impl PeerMessage {
    /// Sender and receiver.
    pub fn ends(&self) -> (NodeId, NodeId) {
        match self {
            PeerMessage::Raft(m) => (m.from, m.to),
            PeerMessage::Snapshot { from, to, .. } => (*from, *to),
        }
    }
}

/// Appends a [`Frame::Raft`] carrying `message` for `group` to `out`.
pub fn encode_peer_frame(group: u64, message: &PeerMessage, out: &mut BytesMut) {
    match message {
        PeerMessage::Raft(m) => encode_raft_frame(group, m, out),
        PeerMessage::Snapshot { from, to, message } => write_frame(out, KIND_RAFT, |out| {
            out.put_u64_le(group);
            out.put_u64_le(*from);
            out.put_u64_le(*to);
            out.put_u64_le(0);
            encode_snapshot(message, out);
        }),
    }
}

fn put_snapshot_id(out: &mut BytesMut, id: &SnapshotId) {
    out.put_u64_le(id.index);
    out.put_u64_le(id.term);
    out.put_u64_le(id.len);
    out.put_u32_le(id.crc);
}

fn get_snapshot_id(p: &mut Bytes) -> Result<SnapshotId, WireError> {
    const W: &str = "snapshot id";
    Ok(SnapshotId { index: get_u64(p, W)?, term: get_u64(p, W)?, len: get_u64(p, W)?, crc: get_u32(p, W)? })
}

fn encode_snapshot(m: &SnapshotMessage, out: &mut BytesMut) {
    match m {
        SnapshotMessage::Request { min_index, want, offset, max_bytes } => {
            out.put_u8(20);
            out.put_u64_le(*min_index);
            out.put_u8(want.is_some() as u8);
            put_snapshot_id(out, &want.unwrap_or(SnapshotId { index: 0, term: 0, len: 0, crc: 0 }));
            out.put_u64_le(*offset);
            out.put_u32_le(*max_bytes);
        }
        SnapshotMessage::Chunk { id, offset, data, crc } => {
            out.put_u8(21);
            put_snapshot_id(out, id);
            out.put_u64_le(*offset);
            put_bytes(out, data);
            out.put_u32_le(*crc);
        }
        SnapshotMessage::Unavailable { min_index, newest } => {
            out.put_u8(22);
            out.put_u64_le(*min_index);
            out.put_u64_le(*newest);
        }
    }
}

/// Decodes the body of a [`Frame::Raft`] of either kind: exactly one
/// message, nothing after it.
pub fn decode_peer_body(mut body: Bytes) -> Result<PeerMessage, WireError> {
    let m = decode_peer(&mut body)?;
    if body.has_remaining() {
        return Err(WireError::Malformed("trailing bytes in a raft"));
    }
    Ok(m)
}

fn decode_peer(p: &mut Bytes) -> Result<PeerMessage, WireError> {
    const W: &str = "snapshot";
    if p.len() < 25 || p[24] < 20 {
        return decode_message(p).map(PeerMessage::Raft);
    }
    let from = get_u64(p, W)?;
    let to = get_u64(p, W)?;
    if get_u64(p, W)? != 0 {
        return Err(WireError::Malformed("a snapshot message with a term"));
    }
    let message = match get_u8(p, W)? {
        20 => {
            let min_index = get_u64(p, W)?;
            let has = get_bool(p, W)?;
            let id = get_snapshot_id(p)?;
            SnapshotMessage::Request {
                min_index,
                want: has.then_some(id),
                offset: get_u64(p, W)?,
                max_bytes: get_u32(p, W)?,
            }
        }
        21 => SnapshotMessage::Chunk {
            id: get_snapshot_id(p)?,
            offset: get_u64(p, W)?,
            data: get_bytes(p, W)?,
            crc: get_u32(p, W)?,
        },
        22 => SnapshotMessage::Unavailable { min_index: get_u64(p, W)?, newest: get_u64(p, W)? },
        _ => return Err(WireError::Malformed(W)),
    };
    Ok(PeerMessage::Snapshot { from, to, message })
}

fn encode_entry(e: &Entry, out: &mut BytesMut) {
    out.put_u64_le(e.index);
    out.put_u64_le(e.term);
    out.put_u8(match e.kind {
        EntryKind::Noop => 0,
        EntryKind::Command => 1,
        EntryKind::Admin => 2,
        EntryKind::Config => 3,
        EntryKind::SessionCommand => 4,
    });
    put_bytes(out, &e.payload);
}

fn decode_entry(p: &mut Bytes) -> Result<Entry, WireError> {
    let index = get_u64(p, "entry")?;
    let term = get_u64(p, "entry")?;
    let kind = match get_u8(p, "entry")? {
        0 => EntryKind::Noop,
        1 => EntryKind::Command,
        2 => EntryKind::Admin,
        3 => EntryKind::Config,
        4 => EntryKind::SessionCommand,
        _ => return Err(WireError::Malformed("entry")),
    };
    Ok(Entry { index, term, kind, payload: get_bytes(p, "entry")? })
}

/// Appends the encoding of `m` to `out`.
pub fn encode_message(m: &Message, out: &mut BytesMut) {
    out.put_u64_le(m.from);
    out.put_u64_le(m.to);
    out.put_u64_le(m.term);
    match &m.body {
        MessageBody::PreVoteRequest { last_log_index, last_log_term } => {
            out.put_u8(1);
            out.put_u64_le(*last_log_index);
            out.put_u64_le(*last_log_term);
        }
        MessageBody::PreVoteResponse { granted } => {
            out.put_u8(2);
            out.put_u8(*granted as u8);
        }
        MessageBody::VoteRequest { last_log_index, last_log_term, leadership_transfer } => {
            out.put_u8(3);
            out.put_u64_le(*last_log_index);
            out.put_u64_le(*last_log_term);
            out.put_u8(*leadership_transfer as u8);
        }
        MessageBody::VoteResponse { granted } => {
            out.put_u8(4);
            out.put_u8(*granted as u8);
        }
        MessageBody::AppendRequest { prev_log_index, prev_log_term, entries, leader_commit_index } => {
            out.put_u8(5);
            out.put_u64_le(*prev_log_index);
            out.put_u64_le(*prev_log_term);
            out.put_u64_le(*leader_commit_index);
            out.put_u32_le(entries.len() as u32);
            for e in entries {
                encode_entry(e, out);
            }
        }
        MessageBody::AppendResponse { result } => {
            out.put_u8(6);
            match result {
                Ok(match_index) => {
                    out.put_u8(0);
                    out.put_u64_le(*match_index);
                }
                Err(h) => {
                    out.put_u8(1);
                    out.put_u64_le(h.rejected_prev_log_index);
                    put_opt_u64(out, h.conflict_term);
                    out.put_u64_le(h.conflict_first_index);
                }
            }
        }
        MessageBody::Heartbeat { leader_commit_index, round } => {
            out.put_u8(7);
            out.put_u64_le(*leader_commit_index);
            out.put_u64_le(*round);
        }
        MessageBody::HeartbeatResponse { round, match_index } => {
            out.put_u8(8);
            out.put_u64_le(*round);
            out.put_u64_le(*match_index);
        }
        MessageBody::TimeoutNow => out.put_u8(9),
        MessageBody::LogStart { start, leader_commit_index, membership, sessions } => {
            out.put_u8(10);
            out.put_u64_le(start.prev_index);
            out.put_u64_le(start.prev_term);
            out.put_u64_le(*leader_commit_index);
            put_bytes(out, &membership.encode());
            out.put_u32_le(sessions.encoded_len() as u32);
            sessions.encode_into(out);
        }
    }
}

/// Takes one message off the front of `p`.
pub fn decode_message(p: &mut Bytes) -> Result<Message, WireError> {
    const W: &str = "raft";
    let from = get_u64(p, W)?;
    let to = get_u64(p, W)?;
    let term = get_u64(p, W)?;
    let body = match get_u8(p, W)? {
        1 => MessageBody::PreVoteRequest { last_log_index: get_u64(p, W)?, last_log_term: get_u64(p, W)? },
        2 => MessageBody::PreVoteResponse { granted: get_bool(p, W)? },
        3 => MessageBody::VoteRequest {
            last_log_index: get_u64(p, W)?,
            last_log_term: get_u64(p, W)?,
            leadership_transfer: get_bool(p, W)?,
        },
        4 => MessageBody::VoteResponse { granted: get_bool(p, W)? },
        5 => {
            let prev_log_index = get_u64(p, W)?;
            let prev_log_term = get_u64(p, W)?;
            let leader_commit_index = get_u64(p, W)?;
            let n = get_count(p, 21, W)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(decode_entry(p)?);
            }
            MessageBody::AppendRequest { prev_log_index, prev_log_term, entries, leader_commit_index }
        }
        6 => {
            let result = match get_u8(p, W)? {
                0 => Ok(get_u64(p, W)?),
                1 => Err(ConflictHint {
                    rejected_prev_log_index: get_u64(p, W)?,
                    conflict_term: get_opt_u64(p, W)?,
                    conflict_first_index: get_u64(p, W)?,
                }),
                _ => return Err(WireError::Malformed(W)),
            };
            MessageBody::AppendResponse { result }
        }
        7 => MessageBody::Heartbeat { leader_commit_index: get_u64(p, W)?, round: get_u64(p, W)? },
        8 => MessageBody::HeartbeatResponse { round: get_u64(p, W)?, match_index: get_u64(p, W)? },
        9 => MessageBody::TimeoutNow,
        10 => MessageBody::LogStart {
            start: LogStart { prev_index: get_u64(p, W)?, prev_term: get_u64(p, W)? },
            leader_commit_index: get_u64(p, W)?,
            membership: Membership::decode(&get_bytes(p, W)?).ok_or(WireError::Malformed("membership"))?,
            sessions: SessionTable::decode(&get_bytes(p, W)?).ok_or(WireError::Malformed("producer sessions"))?,
        },
        _ => return Err(WireError::Malformed(W)),
    };
    Ok(Message { from, to, term, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, Frame, DEFAULT_MAX_FRAME_BYTES};

    fn messages() -> Vec<Message> {
        let e = |i| Entry { index: i, term: 2, kind: EntryKind::Command, payload: Bytes::from(vec![i as u8; 5]) };
        let msg = |body| Message { from: 1, to: 2, term: 3, body };
        vec![
            msg(MessageBody::PreVoteRequest { last_log_index: 4, last_log_term: 2 }),
            msg(MessageBody::PreVoteResponse { granted: true }),
            msg(MessageBody::VoteRequest { last_log_index: 4, last_log_term: 2, leadership_transfer: true }),
            msg(MessageBody::VoteResponse { granted: false }),
            msg(MessageBody::AppendRequest {
                prev_log_index: 3,
                prev_log_term: 1,
                entries: vec![e(4), e(5), Entry { index: 6, term: 2, kind: EntryKind::Noop, payload: Bytes::new() }],
                leader_commit_index: 3,
            }),
            msg(MessageBody::AppendResponse { result: Ok(5) }),
            msg(MessageBody::AppendResponse {
                result: Err(ConflictHint {
                    rejected_prev_log_index: 9,
                    conflict_term: Some(2),
                    conflict_first_index: 4,
                }),
            }),
            msg(MessageBody::AppendResponse {
                result: Err(ConflictHint { rejected_prev_log_index: 9, conflict_term: None, conflict_first_index: 4 }),
            }),
            msg(MessageBody::Heartbeat { leader_commit_index: 5, round: 11 }),
            msg(MessageBody::HeartbeatResponse { round: 11, match_index: 5 }),
            msg(MessageBody::TimeoutNow),
            msg(MessageBody::LogStart {
                start: LogStart { prev_index: 7, prev_term: 2 },
                leader_commit_index: 9,
                membership: Membership::bootstrap([(1, "a:1".to_string()), (2, String::new())]),
                sessions: {
                    let mut s = dledger_raft::Sessions::default();
                    let session = dledger_raft::ProducerSession { producer_id: 5, epoch: 1, seq: 3, time_ms: 77 };
                    s.accept(&session, 2, 8, 2);
                    s.commit_to(9);
                    s.table().clone()
                },
            }),
        ]
    }

    fn decode_one(buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match decode_frame(buf, DEFAULT_MAX_FRAME_BYTES)? {
            None => Ok(None),
            Some(Frame::Raft { group, body }) => {
                assert_eq!(group, 7);
                decode_raft_body(body).map(Some)
            }
            Some(other) => panic!("not a raft frame: {other:?}"),
        }
    }

    #[test]
    fn every_message_round_trips_whole_and_byte_by_byte() {
        for m in messages() {
            let mut buf = BytesMut::new();
            encode_raft_frame(7, &m, &mut buf);
            let bytes = buf.clone();
            assert_eq!(decode_one(&mut buf).unwrap(), Some(m.clone()));
            assert!(buf.is_empty());
            let mut partial = BytesMut::new();
            for (i, b) in bytes.iter().enumerate() {
                partial.put_u8(*b);
                let r = decode_one(&mut partial).unwrap();
                assert_eq!(r.is_some(), i + 1 == bytes.len(), "{m:?} at byte {i}");
            }
        }
    }

    fn snapshot_messages() -> Vec<PeerMessage> {
        let id = SnapshotId { index: 9, term: 2, len: 100, crc: 0xdead_beef };
        let snap = |message| PeerMessage::Snapshot { from: 2, to: 1, message };
        vec![
            snap(SnapshotMessage::Request { min_index: 5, want: None, offset: 0, max_bytes: 1 << 20 }),
            snap(SnapshotMessage::Request { min_index: 5, want: Some(id), offset: 40, max_bytes: 1 << 20 }),
            snap(SnapshotMessage::Chunk { id, offset: 40, data: Bytes::from_static(b"state"), crc: 7 }),
            snap(SnapshotMessage::Unavailable { min_index: 5, newest: 3 }),
        ]
    }

    #[test]
    fn snapshot_messages_round_trip_and_are_told_from_raft_ones() {
        let all = messages().into_iter().map(PeerMessage::Raft).chain(snapshot_messages());
        for m in all {
            let mut buf = BytesMut::new();
            encode_peer_frame(7, &m, &mut buf);
            let Some(Frame::Raft { group: 7, body }) = decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap() else {
                panic!("a peer frame")
            };
            assert_eq!(decode_peer_body(body.clone()).unwrap(), m);
            for cut in 0..body.len() {
                assert!(decode_peer_body(body.slice(..cut)).is_err(), "{m:?} cut at {cut}");
            }
            if let PeerMessage::Snapshot { .. } = m {
                assert!(decode_raft_body(body).is_err(), "not a raft message");
            }
        }
    }

    #[test]
    fn corruption_is_invalid_not_a_panic() {
        for m in messages() {
            let mut buf = BytesMut::new();
            encode_raft_frame(7, &m, &mut buf);
            for i in 0..buf.len() {
                let mut c = buf.clone();
                c[i] ^= 0x41;
                assert!(!matches!(decode_frame(&mut c, DEFAULT_MAX_FRAME_BYTES), Ok(Some(_))), "{m:?} byte {i}");
            }
        }
    }

    #[test]
    fn a_body_with_trailing_or_missing_bytes_is_malformed() {
        let m = &messages()[4];
        let mut body = BytesMut::new();
        encode_message(m, &mut body);
        let whole = body.clone().freeze();
        assert_eq!(decode_raft_body(whole.clone()).unwrap(), *m);
        for cut in 0..whole.len() {
            assert!(matches!(decode_raft_body(whole.slice(..cut)), Err(WireError::Malformed(_))), "cut at {cut}");
        }
        body.put_u8(0);
        assert!(matches!(decode_raft_body(body.freeze()), Err(WireError::Malformed(_))));
        // An entry count that claims more entries than the bytes could hold.
        let mut lying = BytesMut::new();
        lying.put_u64_le(1);
        lying.put_u64_le(2);
        lying.put_u64_le(3);
        lying.put_u8(5);
        lying.put_u64_le(0);
        lying.put_u64_le(0);
        lying.put_u64_le(0);
        lying.put_u32_le(u32::MAX);
        assert!(matches!(decode_raft_body(lying.freeze()), Err(WireError::Malformed(_))));
    }
}
