//! The wire protocol: length-prefixed, checksummed, versioned frames, and the
//! encoding of Raft messages and client requests inside them.
//!
//! ```text
//! frame  = magic u16 "DL" | version u8 | kind u8 | len u32 | crc u32 | payload[len]
//! crc    = CRC32C over the first 8 header bytes and the payload
//! ```
//!
//! All integers are little-endian. A connection starts with a `Hello` from the
//! side that opened it. Decoding tells "incomplete" (`Ok(None)`: read more)
//! from "invalid" (`Err`: close the connection and log why); nothing here
//! panics on input, however malformed.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::raft::{ConflictHint, Entry, EntryKind, Message, MessageBody};

pub const MAGIC: u16 = u16::from_le_bytes(*b"DL");
pub const VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 12;
/// Frames larger than this close the connection (configurable per server).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// Why a byte stream is not a valid frame sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#06x} (not a dledger peer or client)")]
    BadMagic(u16),
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch")]
    BadChecksum,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Raft { group: u64, message: Message },
    Request { id: u64, group: u64, request: Request },
    Response { id: u64, response: Response },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id; 0 for a client.
    pub node_id: u64,
    pub cluster: String,
}

/// A client request to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Append {
        payloads: Vec<Bytes>,
    },
    Get {
        index: u64,
    },
    Read {
        lo: u64,
        hi: u64,
        max_bytes: u32,
    },
    ReadBarrier,
    /// Status of `group`, or of every group on the node when `group == ALL_GROUPS`.
    Status,
    TransferLeader {
        target: u64,
    },
}

pub const ALL_GROUPS: u64 = u64::MAX;

/// A committed entry as returned to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    pub index: u64,
    pub term: u64,
    pub payload: Bytes,
}

/// One node's view of one group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    pub group: u64,
    pub node: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_index: u64,
    pub commit_index: u64,
    pub durable_index: u64,
    /// On a leader: each follower's match index.
    pub followers: Vec<(u64, u64)>,
}

/// The error codes a server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("not the leader (leader: {leader:?} at {address:?})")]
    NotLeader { leader: Option<u64>, address: Option<String> },
    #[error("leadership lost with the request in flight; its outcome is unknown (it may still commit)")]
    LeadershipLost,
    #[error("leadership transfer failed: {0}")]
    TransferFailed(String),
    #[error("unknown group {0}")]
    UnknownGroup(u64),
    #[error("index {index} is not committed or not in the log [{first}, {commit}]")]
    OutOfRange { index: u64, first: u64, commit: u64 },
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("server error: {0}")]
    Internal(String),
    /// The leader's disk is full: appends are refused (nothing acknowledged
    /// is lost) until space returns. Not retried by the client library.
    #[error("disk full on the leader: {0}")]
    DiskFull(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Appended { first_index: u64, last_index: u64, term: u64 },
    Entries(Vec<ClientEntry>),
    ReadIndex(u64),
    Status(Vec<GroupStatus>),
    Transferred { new_term: u64 },
    Error(ServerError),
}

// ---- frames -----------------------------------------------------------------

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_RESPONSE: u8 = 4;

/// Appends one encoded frame to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_bytes(0, HEADER_SIZE);
    let kind = match frame {
        Frame::Hello(h) => {
            out.put_u64_le(h.node_id);
            put_str(out, &h.cluster);
            KIND_HELLO
        }
        Frame::Raft { group, message } => {
            out.put_u64_le(*group);
            encode_message(message, out);
            KIND_RAFT
        }
        Frame::Request { id, group, request } => {
            out.put_u64_le(*id);
            out.put_u64_le(*group);
            encode_request(request, out);
            KIND_REQUEST
        }
        Frame::Response { id, response } => {
            out.put_u64_le(*id);
            encode_response(response, out);
            KIND_RESPONSE
        }
    };
    let len = (out.len() - start - HEADER_SIZE) as u32;
    let h = &mut out[start..start + HEADER_SIZE];
    h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = VERSION;
    h[3] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 8]), &out[start + HEADER_SIZE..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Takes one frame off the front of `buf`: `Ok(None)` when more bytes are needed.
/// Frames smaller than this are copied out of the read buffer (see [`decode_frame`]).
const COPY_BELOW_BYTES: usize = 64 << 10;

pub fn decode_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < HEADER_SIZE {
        // Check what we can early, so garbage is refused without waiting for 12 bytes.
        if buf.len() >= 2 {
            let magic = u16::from_le_bytes([buf[0], buf[1]]);
            if magic != MAGIC {
                return Err(WireError::BadMagic(magic));
            }
        }
        return Ok(None);
    }
    let magic = u16::from_le_bytes([buf[0], buf[1]]);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if buf[2] != VERSION {
        return Err(WireError::BadVersion(buf[2]));
    }
    let kind = buf[3];
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len > max_frame_bytes {
        return Err(WireError::TooLarge { len, max: max_frame_bytes });
    }
    if buf.len() < HEADER_SIZE + len {
        buf.reserve(HEADER_SIZE + len - buf.len());
        return Ok(None);
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c_append(crc32c::crc32c(&buf[0..8]), &buf[HEADER_SIZE..HEADER_SIZE + len]) != crc {
        return Err(WireError::BadChecksum);
    }
    buf.advance(HEADER_SIZE);
    // Payloads decoded below are slices of `p` and may live long (the Raft
    // log holds entries in memory). A small frame is copied out so that it
    // pins only its own bytes, not the connection's whole read buffer (a
    // 300-byte append used to pin a fresh 64 KiB buffer: a page fault and a
    // zeroed page per request). A large frame fills most of its buffer
    // anyway and is taken without a copy.
    let mut p = if len < COPY_BELOW_BYTES {
        let body = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        body
    } else {
        buf.split_to(len).freeze()
    };
    let frame = match kind {
        KIND_HELLO => {
            let node_id = get_u64(&mut p, "hello")?;
            Frame::Hello(Hello { node_id, cluster: get_str(&mut p, "hello")? })
        }
        KIND_RAFT => {
            let group = get_u64(&mut p, "raft")?;
            Frame::Raft { group, message: decode_message(&mut p)? }
        }
        KIND_REQUEST => {
            let id = get_u64(&mut p, "request")?;
            let group = get_u64(&mut p, "request")?;
            Frame::Request { id, group, request: decode_request(&mut p)? }
        }
        KIND_RESPONSE => {
            let id = get_u64(&mut p, "response")?;
            Frame::Response { id, response: decode_response(&mut p)? }
        }
        k => return Err(WireError::UnknownKind(k)),
    };
    if p.has_remaining() {
        return Err(WireError::Malformed("trailing bytes in a"));
    }
    Ok(Some(frame))
}

// ---- primitives ---------------------------------------------------------------

fn need(p: &Bytes, n: usize, what: &'static str) -> Result<(), WireError> {
    if p.remaining() < n {
        Err(WireError::Malformed(what))
    } else {
        Ok(())
    }
}

fn get_u8(p: &mut Bytes, what: &'static str) -> Result<u8, WireError> {
    need(p, 1, what)?;
    Ok(p.get_u8())
}

fn get_u32(p: &mut Bytes, what: &'static str) -> Result<u32, WireError> {
    need(p, 4, what)?;
    Ok(p.get_u32_le())
}

fn get_u64(p: &mut Bytes, what: &'static str) -> Result<u64, WireError> {
    need(p, 8, what)?;
    Ok(p.get_u64_le())
}

fn get_bytes(p: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    let n = get_u32(p, what)? as usize;
    need(p, n, what)?;
    Ok(p.split_to(n))
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn get_str(p: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let b = get_bytes(p, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed(what))
}

fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    out.put_u8(v.is_some() as u8);
    out.put_u64_le(v.unwrap_or(0));
}

fn get_opt_u64(p: &mut Bytes, what: &'static str) -> Result<Option<u64>, WireError> {
    let some = get_u8(p, what)?;
    let v = get_u64(p, what)?;
    match some {
        0 => Ok(None),
        1 => Ok(Some(v)),
        _ => Err(WireError::Malformed(what)),
    }
}

/// A count read from the wire, bounded by what the remaining bytes could hold.
fn get_count(p: &mut Bytes, min_item_bytes: usize, what: &'static str) -> Result<usize, WireError> {
    let n = get_u32(p, what)? as usize;
    if n.saturating_mul(min_item_bytes) > p.remaining() {
        return Err(WireError::Malformed(what));
    }
    Ok(n)
}

// ---- Raft messages ------------------------------------------------------------

fn encode_entry(e: &Entry, out: &mut BytesMut) {
    out.put_u64_le(e.index);
    out.put_u64_le(e.term);
    out.put_u8(match e.kind {
        EntryKind::Noop => 0,
        EntryKind::Command => 1,
    });
    put_bytes(out, &e.payload);
}

fn decode_entry(p: &mut Bytes) -> Result<Entry, WireError> {
    let index = get_u64(p, "entry")?;
    let term = get_u64(p, "entry")?;
    let kind = match get_u8(p, "entry")? {
        0 => EntryKind::Noop,
        1 => EntryKind::Command,
        _ => return Err(WireError::Malformed("entry")),
    };
    Ok(Entry { index, term, kind, payload: get_bytes(p, "entry")? })
}

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
    }
}

fn get_bool(p: &mut Bytes, what: &'static str) -> Result<bool, WireError> {
    match get_u8(p, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Malformed(what)),
    }
}

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
        _ => return Err(WireError::Malformed(W)),
    };
    Ok(Message { from, to, term, body })
}

// ---- client requests and responses ------------------------------------------------

fn encode_request(r: &Request, out: &mut BytesMut) {
    match r {
        Request::Append { payloads } => {
            out.put_u8(1);
            out.put_u32_le(payloads.len() as u32);
            for p in payloads {
                put_bytes(out, p);
            }
        }
        Request::Get { index } => {
            out.put_u8(2);
            out.put_u64_le(*index);
        }
        Request::Read { lo, hi, max_bytes } => {
            out.put_u8(3);
            out.put_u64_le(*lo);
            out.put_u64_le(*hi);
            out.put_u32_le(*max_bytes);
        }
        Request::ReadBarrier => out.put_u8(4),
        Request::Status => out.put_u8(5),
        Request::TransferLeader { target } => {
            out.put_u8(6);
            out.put_u64_le(*target);
        }
    }
}

fn decode_request(p: &mut Bytes) -> Result<Request, WireError> {
    const W: &str = "request";
    Ok(match get_u8(p, W)? {
        1 => {
            let n = get_count(p, 4, W)?;
            let mut payloads = Vec::with_capacity(n);
            for _ in 0..n {
                payloads.push(get_bytes(p, W)?);
            }
            Request::Append { payloads }
        }
        2 => Request::Get { index: get_u64(p, W)? },
        3 => Request::Read { lo: get_u64(p, W)?, hi: get_u64(p, W)?, max_bytes: get_u32(p, W)? },
        4 => Request::ReadBarrier,
        5 => Request::Status,
        6 => Request::TransferLeader { target: get_u64(p, W)? },
        _ => return Err(WireError::Malformed(W)),
    })
}

fn encode_response(r: &Response, out: &mut BytesMut) {
    match r {
        Response::Appended { first_index, last_index, term } => {
            out.put_u8(1);
            out.put_u64_le(*first_index);
            out.put_u64_le(*last_index);
            out.put_u64_le(*term);
        }
        Response::Entries(entries) => {
            out.put_u8(2);
            out.put_u32_le(entries.len() as u32);
            for e in entries {
                out.put_u64_le(e.index);
                out.put_u64_le(e.term);
                put_bytes(out, &e.payload);
            }
        }
        Response::ReadIndex(i) => {
            out.put_u8(3);
            out.put_u64_le(*i);
        }
        Response::Status(groups) => {
            out.put_u8(4);
            out.put_u32_le(groups.len() as u32);
            for g in groups {
                out.put_u64_le(g.group);
                out.put_u64_le(g.node);
                put_str(out, &g.role);
                out.put_u64_le(g.term);
                put_opt_u64(out, g.leader);
                out.put_u64_le(g.last_index);
                out.put_u64_le(g.commit_index);
                out.put_u64_le(g.durable_index);
                out.put_u32_le(g.followers.len() as u32);
                for (node, m) in &g.followers {
                    out.put_u64_le(*node);
                    out.put_u64_le(*m);
                }
            }
        }
        Response::Transferred { new_term } => {
            out.put_u8(5);
            out.put_u64_le(*new_term);
        }
        Response::Error(e) => {
            out.put_u8(6);
            match e {
                ServerError::NotLeader { leader, address } => {
                    out.put_u8(1);
                    put_opt_u64(out, *leader);
                    put_str(out, address.as_deref().unwrap_or(""));
                }
                ServerError::LeadershipLost => out.put_u8(2),
                ServerError::TransferFailed(m) => {
                    out.put_u8(3);
                    put_str(out, m);
                }
                ServerError::UnknownGroup(g) => {
                    out.put_u8(4);
                    out.put_u64_le(*g);
                }
                ServerError::OutOfRange { index, first, commit } => {
                    out.put_u8(5);
                    out.put_u64_le(*index);
                    out.put_u64_le(*first);
                    out.put_u64_le(*commit);
                }
                ServerError::ShuttingDown => out.put_u8(6),
                ServerError::BadRequest(m) => {
                    out.put_u8(7);
                    put_str(out, m);
                }
                ServerError::Internal(m) => {
                    out.put_u8(8);
                    put_str(out, m);
                }
                ServerError::DiskFull(m) => {
                    out.put_u8(9);
                    put_str(out, m);
                }
            }
        }
    }
}

fn decode_response(p: &mut Bytes) -> Result<Response, WireError> {
    const W: &str = "response";
    Ok(match get_u8(p, W)? {
        1 => Response::Appended { first_index: get_u64(p, W)?, last_index: get_u64(p, W)?, term: get_u64(p, W)? },
        2 => {
            let n = get_count(p, 20, W)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(ClientEntry { index: get_u64(p, W)?, term: get_u64(p, W)?, payload: get_bytes(p, W)? });
            }
            Response::Entries(entries)
        }
        3 => Response::ReadIndex(get_u64(p, W)?),
        4 => {
            let n = get_count(p, 50, W)?;
            let mut groups = Vec::with_capacity(n);
            for _ in 0..n {
                let group = get_u64(p, W)?;
                let node = get_u64(p, W)?;
                let role = get_str(p, W)?;
                let term = get_u64(p, W)?;
                let leader = get_opt_u64(p, W)?;
                let last_index = get_u64(p, W)?;
                let commit_index = get_u64(p, W)?;
                let durable_index = get_u64(p, W)?;
                let k = get_count(p, 16, W)?;
                let mut followers = Vec::with_capacity(k);
                for _ in 0..k {
                    followers.push((get_u64(p, W)?, get_u64(p, W)?));
                }
                groups.push(GroupStatus {
                    group,
                    node,
                    role,
                    term,
                    leader,
                    last_index,
                    commit_index,
                    durable_index,
                    followers,
                });
            }
            Response::Status(groups)
        }
        5 => Response::Transferred { new_term: get_u64(p, W)? },
        6 => Response::Error(match get_u8(p, W)? {
            1 => {
                let leader = get_opt_u64(p, W)?;
                let address = get_str(p, W)?;
                ServerError::NotLeader { leader, address: (!address.is_empty()).then_some(address) }
            }
            2 => ServerError::LeadershipLost,
            3 => ServerError::TransferFailed(get_str(p, W)?),
            4 => ServerError::UnknownGroup(get_u64(p, W)?),
            5 => ServerError::OutOfRange { index: get_u64(p, W)?, first: get_u64(p, W)?, commit: get_u64(p, W)? },
            6 => ServerError::ShuttingDown,
            7 => ServerError::BadRequest(get_str(p, W)?),
            8 => ServerError::Internal(get_str(p, W)?),
            9 => ServerError::DiskFull(get_str(p, W)?),
            _ => return Err(WireError::Malformed(W)),
        }),
        _ => return Err(WireError::Malformed(W)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        let e = |i| Entry { index: i, term: 2, kind: EntryKind::Command, payload: Bytes::from(vec![i as u8; 5]) };
        let msg = |body| Frame::Raft { group: 7, message: Message { from: 1, to: 2, term: 3, body } };
        vec![
            Frame::Hello(Hello { node_id: 3, cluster: "c1".into() }),
            msg(MessageBody::PreVoteRequest { last_log_index: 4, last_log_term: 2 }),
            msg(MessageBody::PreVoteResponse { granted: true }),
            msg(MessageBody::VoteRequest { last_log_index: 4, last_log_term: 2, leadership_transfer: true }),
            msg(MessageBody::VoteResponse { granted: false }),
            msg(MessageBody::AppendRequest {
                prev_log_index: 3,
                prev_log_term: 1,
                entries: vec![e(4), e(5)],
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
            msg(MessageBody::Heartbeat { leader_commit_index: 5, round: 11 }),
            msg(MessageBody::HeartbeatResponse { round: 11, match_index: 5 }),
            msg(MessageBody::TimeoutNow),
            Frame::Request { id: 1, group: 0, request: Request::Append { payloads: vec![Bytes::from_static(b"x")] } },
            Frame::Request { id: 2, group: 0, request: Request::Read { lo: 1, hi: 9, max_bytes: 100 } },
            Frame::Request { id: 3, group: ALL_GROUPS, request: Request::Status },
            Frame::Response {
                id: 3,
                response: Response::Status(vec![GroupStatus {
                    group: 0,
                    node: 1,
                    role: "leader".into(),
                    term: 3,
                    leader: Some(1),
                    last_index: 9,
                    commit_index: 8,
                    durable_index: 9,
                    followers: vec![(2, 9), (3, 7)],
                }]),
            },
            Frame::Response {
                id: 4,
                response: Response::Entries(vec![ClientEntry {
                    index: 1,
                    term: 1,
                    payload: Bytes::from_static(b"ab"),
                }]),
            },
            Frame::Response {
                id: 5,
                response: Response::Error(ServerError::NotLeader { leader: Some(2), address: Some("a:1".into()) }),
            },
            Frame::Response {
                id: 6,
                response: Response::Error(ServerError::OutOfRange { index: 9, first: 1, commit: 3 }),
            },
            Frame::Response { id: 7, response: Response::Error(ServerError::DiskFull("no space".into())) },
        ]
    }

    #[test]
    fn every_frame_round_trips_whole_and_byte_by_byte() {
        for f in frames() {
            let mut buf = BytesMut::new();
            encode_frame(&f, &mut buf);
            let bytes = buf.clone();
            assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap(), Some(f.clone()));
            assert!(buf.is_empty());
            // Fed one byte at a time, it is incomplete until the last byte.
            let mut partial = BytesMut::new();
            for (i, b) in bytes.iter().enumerate() {
                partial.put_u8(*b);
                let r = decode_frame(&mut partial, DEFAULT_MAX_FRAME_BYTES).unwrap();
                assert_eq!(r.is_some(), i + 1 == bytes.len(), "{f:?} at byte {i}");
            }
        }
    }

    #[test]
    fn corruption_is_invalid_not_a_panic() {
        for f in frames() {
            let mut buf = BytesMut::new();
            encode_frame(&f, &mut buf);
            for i in 0..buf.len() {
                let mut c = buf.clone();
                c[i] ^= 0x41;
                // Either an error, or (a length field grew) still incomplete: never a frame.
                assert!(!matches!(decode_frame(&mut c, DEFAULT_MAX_FRAME_BYTES), Ok(Some(_))), "{f:?} byte {i}");
            }
        }
    }

    #[test]
    fn limits_and_garbage() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(decode_frame(&mut buf, 1024), Err(WireError::BadMagic(_))));
        let mut big = BytesMut::new();
        encode_frame(
            &Frame::Request {
                id: 1,
                group: 0,
                request: Request::Append { payloads: vec![Bytes::from(vec![0u8; 2000])] },
            },
            &mut big,
        );
        assert!(matches!(decode_frame(&mut big, 1024), Err(WireError::TooLarge { .. })));
        // A valid checksum over a payload that lies about its counts.
        let mut lying = BytesMut::new();
        lying.put_u64_le(1);
        lying.put_u64_le(0);
        lying.put_u8(1);
        lying.put_u32_le(u32::MAX);
        let mut f = BytesMut::new();
        f.put_u16_le(MAGIC);
        f.put_u8(VERSION);
        f.put_u8(KIND_REQUEST);
        f.put_u32_le(lying.len() as u32);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&f[..8]), &lying);
        f.put_u32_le(crc);
        f.extend_from_slice(&lying);
        assert!(matches!(decode_frame(&mut f, 1024), Err(WireError::Malformed(_))));
    }

    #[test]
    fn a_small_frame_does_not_pin_the_read_buffer_and_a_large_one_is_not_copied() {
        let append = |size: usize| Frame::Request {
            id: 1,
            group: 0,
            request: Request::Append { payloads: vec![Bytes::from(vec![7u8; size])] },
        };
        for (size, copied) in [(256, true), (COPY_BELOW_BYTES, false)] {
            let mut buf = BytesMut::with_capacity(256 << 10);
            encode_frame(&append(size), &mut buf);
            let start = buf.as_ptr() as usize;
            let Some(Frame::Request { request: Request::Append { payloads }, .. }) =
                decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap()
            else {
                panic!("an append")
            };
            let inside = (start..start + (256 << 10)).contains(&(payloads[0].as_ptr() as usize));
            assert_eq!(inside, !copied, "{size}-byte payload: inside the read buffer");
            // While the payload lives, the buffer can be reused only if nothing points into it.
            assert_eq!(buf.try_reclaim(250 << 10), copied, "{size}-byte payload: buffer reusable");
        }
    }
}
