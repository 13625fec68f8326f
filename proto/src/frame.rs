//! Frames: length-prefixed, checksummed, versioned.
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
//!
//! A Raft frame's payload is carried as bytes ([`Frame::Raft`]'s `body`):
//! only a node decodes it (`crate::peer`, behind the `peer` feature), so a
//! client never depends on the Raft core.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{get_str, get_u64, put_str};
use crate::request::{decode_request, decode_response, encode_request, encode_response, Hello, Request, Response};

/// The first two bytes of every frame.
pub const MAGIC: u16 = u16::from_le_bytes(*b"DL");
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes before a frame's payload.
pub const HEADER_SIZE: usize = 12;
/// Frames larger than this close the connection (configurable per server).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// Why a byte stream is not a valid frame sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first two bytes are not "DL".
    #[error("bad magic {0:#06x} (not a dledger peer or client)")]
    BadMagic(u16),
    /// Another protocol version.
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    /// Longer than the receiver allows.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The frame's payload length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The CRC32C does not match: corrupt in transit or not a frame.
    #[error("frame checksum mismatch")]
    BadChecksum,
    /// A frame kind this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The payload does not parse as its kind (named).
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first frame of a connection, from the side that opened it.
    Hello(Hello),
    /// A Raft message for `group`, still encoded (see `crate::peer`).
    Raft {
        /// The Raft group.
        group: u64,
        /// The encoded message.
        body: Bytes,
    },
    /// A client request to `group`; `id` comes back in the response.
    Request {
        /// Chosen by the client, echoed in the response.
        id: u64,
        /// The group asked ([`crate::ALL_GROUPS`] for a node-wide status).
        group: u64,
        /// What is asked.
        request: Request,
    },
    /// The answer to the request with this `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// From a node to a peer that said `Hello`: prove you hold the cluster's
    /// secret by answering [`Frame::Auth`] over this fresh nonce.
    Challenge {
        /// Random, never reused.
        nonce: [u8; 32],
    },
    /// A peer's answer to [`Frame::Challenge`]: a MAC of the nonce and both
    /// node ids under the cluster's secret (computed by the server crate).
    Auth {
        /// The MAC.
        mac: [u8; 32],
    },
    /// From a peer, before its Raft frames: the limits its log and transport
    /// enforce. Nodes whose limits differ would accept entries the others
    /// cannot store or carry, so the receiver refuses the connection.
    Limits {
        /// The largest entry its log takes.
        max_entry_bytes: u64,
        /// The largest frame it reads.
        max_frame_bytes: u64,
        /// Its producer sessions' expiry: replicas that differ would keep
        /// different tables and deduplicate differently.
        producer_expiry_ms: u64,
        /// The most producer sessions a group of it keeps.
        max_producers: u64,
    },
}

pub(crate) const KIND_HELLO: u8 = 1;
pub(crate) const KIND_RAFT: u8 = 2;
pub(crate) const KIND_REQUEST: u8 = 3;
pub(crate) const KIND_RESPONSE: u8 = 4;
pub(crate) const KIND_CHALLENGE: u8 = 5;
pub(crate) const KIND_AUTH: u8 = 6;
pub(crate) const KIND_LIMITS: u8 = 7;

/// Appends one frame of `kind` to `out`, its payload written by `body`.
pub(crate) fn write_frame(out: &mut BytesMut, kind: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_bytes(0, HEADER_SIZE);
    body(out);
    let len = (out.len() - start - HEADER_SIZE) as u32;
    let h = &mut out[start..start + HEADER_SIZE];
    h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = VERSION;
    h[3] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 8]), &out[start + HEADER_SIZE..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one encoded frame to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Hello(h) => write_frame(out, KIND_HELLO, |out| {
            out.put_u64_le(h.node_id);
            put_str(out, &h.cluster);
            out.put_u64_le(h.incarnation);
        }),
        Frame::Raft { group, body } => write_frame(out, KIND_RAFT, |out| {
            out.put_u64_le(*group);
            out.put_slice(body);
        }),
        Frame::Request { id, group, request } => write_frame(out, KIND_REQUEST, |out| {
            out.put_u64_le(*id);
            out.put_u64_le(*group);
            encode_request(request, out);
        }),
        Frame::Response { id, response } => write_frame(out, KIND_RESPONSE, |out| {
            out.put_u64_le(*id);
            encode_response(response, out);
        }),
        Frame::Challenge { nonce } => write_frame(out, KIND_CHALLENGE, |out| out.put_slice(nonce)),
        Frame::Auth { mac } => write_frame(out, KIND_AUTH, |out| out.put_slice(mac)),
        Frame::Limits { max_entry_bytes, max_frame_bytes, producer_expiry_ms, max_producers } => {
            write_frame(out, KIND_LIMITS, |out| {
                out.put_u64_le(*max_entry_bytes);
                out.put_u64_le(*max_frame_bytes);
                out.put_u64_le(*producer_expiry_ms);
                out.put_u64_le(*max_producers);
            })
        }
    }
}

fn get_32(p: &mut Bytes, what: &'static str) -> Result<[u8; 32], WireError> {
    if p.remaining() < 32 {
        return Err(WireError::Malformed(what));
    }
    let mut b = [0u8; 32];
    p.copy_to_slice(&mut b);
    Ok(b)
}

/// Frames smaller than this are copied out of the read buffer (see [`decode_frame`]).
const COPY_BELOW_BYTES: usize = 64 << 10;

/// Takes one frame off the front of `buf`: `Ok(None)` when more bytes are
/// needed, `Err` when the bytes are not a valid frame.
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
            let cluster = get_str(&mut p, "hello")?;
            // A hello from before incarnations ends here.
            let incarnation = if p.is_empty() { 0 } else { get_u64(&mut p, "hello")? };
            Frame::Hello(Hello { node_id, cluster, incarnation })
        }
        KIND_RAFT => {
            let group = get_u64(&mut p, "raft")?;
            // The body is checked by the node that decodes it.
            Frame::Raft { group, body: std::mem::take(&mut p) }
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
        KIND_CHALLENGE => Frame::Challenge { nonce: get_32(&mut p, "challenge")? },
        KIND_AUTH => Frame::Auth { mac: get_32(&mut p, "auth")? },
        KIND_LIMITS => Frame::Limits {
            max_entry_bytes: get_u64(&mut p, "limits")?,
            max_frame_bytes: get_u64(&mut p, "limits")?,
            producer_expiry_ms: get_u64(&mut p, "limits")?,
            max_producers: get_u64(&mut p, "limits")?,
        },
        k => return Err(WireError::UnknownKind(k)),
    };
    if p.has_remaining() {
        return Err(WireError::Malformed("trailing bytes in a"));
    }
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{ClientEntry, GroupStatus, ServerError, ALL_GROUPS};

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello { node_id: 3, cluster: "c1".into(), incarnation: 0xab }),
            Frame::Raft { group: 7, body: Bytes::from_static(b"opaque to the frame layer") },
            Frame::Raft { group: 8, body: Bytes::new() },
            Frame::Challenge { nonce: [7; 32] },
            Frame::Auth { mac: [9; 32] },
            Frame::Limits {
                max_entry_bytes: 4 << 20,
                max_frame_bytes: 64 << 20,
                producer_expiry_ms: 3_600_000,
                max_producers: 9,
            },
            Frame::Request { id: 1, group: 0, request: Request::Append { payloads: vec![Bytes::from_static(b"x")] } },
            Frame::Request { id: 2, group: 0, request: Request::Read { lo: 1, hi: 9, max_bytes: 100 } },
            Frame::Request { id: 3, group: ALL_GROUPS, request: Request::Status },
            Frame::Request { id: 7, group: 0, request: Request::Query { query: Bytes::from_static(b"k") } },
            Frame::Response { id: 7, response: Response::QueryResult(Bytes::from_static(b"v")) },
            Frame::Request { id: 8, group: 0, request: Request::Purge { to: 99 } },
            Frame::Request { id: 9, group: 1, request: Request::Members },
            Frame::Request {
                id: 10,
                group: 1,
                request: Request::ChangeMembership {
                    change: crate::MembershipChange::AddLearner { id: 4, address: "127.0.0.1:7004".into() },
                    expected_version: Some(3),
                    force: true,
                },
            },
            Frame::Request {
                id: 11,
                group: 1,
                request: Request::ChangeMembership {
                    change: crate::MembershipChange::Remove { id: 2 },
                    expected_version: None,
                    force: false,
                },
            },
            Frame::Response {
                id: 12,
                response: Response::Members(crate::MembersView {
                    version: 2,
                    committed: true,
                    leader: Some(1),
                    last_index: 40,
                    members: vec![crate::MemberView {
                        id: 4,
                        address: "a:4".into(),
                        role: "learner".into(),
                        match_index: Some(39),
                    }],
                }),
            },
            Frame::Response {
                id: 13,
                response: Response::Error(ServerError::MembershipRefused("node 4 is already a member".into())),
            },
            Frame::Request {
                id: 9,
                group: 0,
                request: Request::Subscribe { from: 5, max_bytes: 1 << 20, min_bytes: 1, max_wait_ms: 500 },
            },
            Frame::Response {
                id: 9,
                response: Response::Batch {
                    entries: vec![ClientEntry { index: 5, term: 2, payload: Bytes::from_static(b"e") }],
                    commit_index: 9,
                    log_start: 3,
                    leader: Some(2),
                },
            },
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
                    first_index: 4,
                    disk_bytes: 1 << 26,
                    followers: vec![(2, 9), (3, 7)],
                    config_version: 1,
                    voters: vec![1, 2],
                    learners: vec![3],
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
        // Too many (empty) entries in one append: refused, not allocated.
        let many = Frame::Request {
            id: 1,
            group: 0,
            request: Request::Append { payloads: vec![Bytes::new(); crate::MAX_APPEND_ENTRIES + 1] },
        };
        let mut b = BytesMut::new();
        encode_frame(&many, &mut b);
        assert!(matches!(decode_frame(&mut b, DEFAULT_MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        let ok = Frame::Request {
            id: 1,
            group: 0,
            request: Request::Append { payloads: vec![Bytes::new(); crate::MAX_APPEND_ENTRIES] },
        };
        let mut b = BytesMut::new();
        encode_frame(&ok, &mut b);
        assert_eq!(decode_frame(&mut b, DEFAULT_MAX_FRAME_BYTES).unwrap(), Some(ok));
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
