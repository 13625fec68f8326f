//! The wire protocol of dledger-rs, shared by its nodes and its clients.
//!
//! Everything on a dledger connection is a [`Frame`]: a 12-byte header
//! (magic, version, kind, length, CRC32C) and a payload. The modules split
//! the payloads by who reads them:
//!
//! - [`frame`]: the header, and [`encode_frame`] / [`decode_frame`];
//! - [`request`]: what a client asks ([`Request`]) and what a node answers
//!   ([`Response`], [`ServerError`]);
//! - `peer` (feature `peer`): the Raft messages nodes exchange, which need the
//!   Raft core's types. A client builds without it, so `dledger-client`
//!   depends on neither the Raft core nor the server.
//!
//! Decoding never panics on input: a truncated stream is "incomplete"
//! (`Ok(None)`), anything else that is not a valid frame is a typed
//! [`WireError`] and the connection should be closed.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use dledger_proto::{decode_frame, encode_frame, Frame, Request, DEFAULT_MAX_FRAME_BYTES};
//!
//! let append = Frame::Request {
//!     id: 1,
//!     group: 0,
//!     request: Request::Append { payloads: vec![Bytes::from_static(b"hello")] },
//! };
//! let mut buf = BytesMut::new();
//! encode_frame(&append, &mut buf);
//!
//! // A partial frame asks for more bytes; the whole one decodes to the same value.
//! let mut half = BytesMut::from(&buf[..buf.len() / 2]);
//! assert_eq!(decode_frame(&mut half, DEFAULT_MAX_FRAME_BYTES), Ok(None));
//! assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_FRAME_BYTES), Ok(Some(append)));
//!
//! // Garbage is refused with a reason, not a panic.
//! let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
//! assert!(decode_frame(&mut http, DEFAULT_MAX_FRAME_BYTES).is_err());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
pub mod frame;
#[cfg(feature = "peer")]
pub mod peer;
pub mod request;

#[cfg(test)]
mod fuzz_tests;

pub use frame::{decode_frame, encode_frame, Frame, WireError, DEFAULT_MAX_FRAME_BYTES, HEADER_SIZE, MAGIC, VERSION};
pub use request::{
    ClientEntry, GroupStatus, Hello, MemberView, MembersView, MembershipChange, Request, Response, ServerError,
    ALL_GROUPS, MAX_APPEND_ENTRIES,
};
