//! The decoders against arbitrary input (proptest, a fixed number of cases
//! per run; a failing case is shrunk and saved under `proptest-regressions/`,
//! which is kept in the repository and replayed first on every run).
//!
//! Why not `cargo fuzz`: it needs a nightly toolchain and libFuzzer, and CI
//! runs stable; proptest runs inside `cargo test` on every CI run, and its
//! saved failures are the corpus. What holds, for any input: no decoder
//! panics; a frame whose header and checksum are valid decodes to a frame or
//! a named error, never a half answer; and whatever decodes encodes back to
//! bytes that decode to the same value.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use crate::frame::{decode_frame, encode_frame, write_frame, DEFAULT_MAX_FRAME_BYTES};
use crate::request::{Request, Response, ServerError};
use crate::Frame;

/// A frame with a valid header and checksum around `body`, of `kind`.
fn framed(kind: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, kind, |o| o.put_slice(body));
    out
}

fn round_trips(f: &Frame) {
    let mut again = BytesMut::new();
    encode_frame(f, &mut again);
    assert_eq!(decode_frame(&mut again, DEFAULT_MAX_FRAME_BYTES).unwrap().as_ref(), Some(f));
    assert!(again.is_empty());
}

/// Valid frames of every client kind, whose bodies the mutation tests start from.
fn seeds() -> Vec<BytesMut> {
    let frames = [
        Frame::Request {
            id: 1,
            group: 0,
            request: Request::Append { payloads: vec![Bytes::from_static(b"ab"), Bytes::new()] },
        },
        Frame::Request { id: 2, group: 3, request: Request::Read { lo: 1, hi: 9, max_bytes: 100 } },
        Frame::Request { id: 3, group: 0, request: Request::Get { index: 7 } },
        Frame::Request { id: 4, group: 0, request: Request::Query { query: Bytes::from_static(b"k") } },
        Frame::Request { id: 5, group: 0, request: Request::Purge { to: 99 } },
        Frame::Request { id: 6, group: 0, request: Request::TransferLeader { target: 2 } },
        Frame::Response { id: 1, response: Response::Appended { first_index: 1, last_index: 2, term: 3 } },
        Frame::Response { id: 2, response: Response::QueryResult(Bytes::from_static(b"v")) },
        Frame::Request {
            id: 7,
            group: 0,
            request: Request::AppendSession {
                producer_id: 9,
                epoch: 2,
                seq: 40,
                payloads: vec![Bytes::from_static(b"x"), Bytes::from_static(b"yz")],
            },
        },
        Frame::Response { id: 3, response: Response::Duplicate { first_index: 4, last_index: 5, term: 2 } },
        Frame::Response { id: 4, response: Response::Error(ServerError::OutOfOrderSequence { expected: 12 }) },
        Frame::Response { id: 5, response: Response::Error(ServerError::ProducerFenced { epoch: 3 }) },
        Frame::Response { id: 6, response: Response::Error(ServerError::SequenceTooOld { oldest: 8 }) },
    ];
    frames
        .iter()
        .map(|f| {
            let mut b = BytesMut::new();
            encode_frame(f, &mut b);
            b
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_never_panic_the_frame_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut b = BytesMut::from(&bytes[..]);
        let _ = decode_frame(&mut b, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn any_body_of_any_kind_decodes_whole_or_is_refused(kind in 0..12u8, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut b = framed(kind, &body);
        match decode_frame(&mut b, DEFAULT_MAX_FRAME_BYTES) {
            Ok(Some(f)) => round_trips(&f),
            Ok(None) => prop_assert!(false, "a whole frame is never 'need more bytes'"),
            Err(_) => {}
        }
    }

    #[test]
    fn mutated_client_frames_decode_whole_or_are_refused(
        seed in 0..8usize,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let valid = &seeds()[seed];
        let kind = valid[3];
        let mut body = valid[crate::HEADER_SIZE..].to_vec();
        for (at, x) in flips {
            if !body.is_empty() {
                let k = at % body.len();
                body[k] ^= x;
            }
        }
        if let Some(c) = cut {
            body.truncate(c % (body.len() + 1));
        }
        let mut b = framed(kind, &body);
        if let Ok(Some(f)) = decode_frame(&mut b, DEFAULT_MAX_FRAME_BYTES) {
            round_trips(&f);
        }
    }
}

#[cfg(feature = "peer")]
mod peer {
    use super::*;
    use crate::peer::{decode_peer_body, encode_peer_frame};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn any_peer_body_decodes_whole_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 0..24u8) {
            // The kind byte sits after from, to and term: steer it so every message kind is reached.
            let mut body = body;
            if body.len() > 24 {
                body[24] = kind;
            }
            if let Ok(m) = decode_peer_body(Bytes::from(body)) {
                let mut out = BytesMut::new();
                encode_peer_frame(7, &m, &mut out);
                let Some(Frame::Raft { group: 7, body }) = decode_frame(&mut out, DEFAULT_MAX_FRAME_BYTES).unwrap() else {
                    panic!("a peer frame")
                };
                prop_assert_eq!(decode_peer_body(body).unwrap(), m);
            }
        }
    }
}
