//! The `dledger` command line: `server`, `quickstart`, `append`, `read`,
//! `status`, `transfer`, `member` and `bench` (see [`cli`]), as a library so that the
//! test harness runs the very same code as a binary it builds itself.
//!
//! The crates it puts together, each usable alone:
//! `dledger-server` (a node as a library, with the embedding API),
//! `dledger-client` (the client library), `dledger-proto` (the wire
//! protocol), `dledger-raft` (the pure Raft core) and `dledger-engine` (the
//! log storage).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
pub mod cli;
pub mod kv;
mod member;
pub mod ports;
