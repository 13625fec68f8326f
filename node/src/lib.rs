//! dledger-node: the Raft core of dledger-rs (see [`raft`]), its
//! deterministic simulation (see `sim`, built for tests and with the `sim`
//! feature), and the host around it: the per-core server ([`server`]), the
//! client library ([`client`]) and the `dledger` command line ([`cli`]).
//!
//! `unsafe` is denied crate-wide and forbidden in [`raft`]; the two host
//! modules that call libc (thread pinning, eventfd registration, signals)
//! allow it locally, each use with a `SAFETY` comment.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod loadgen;
pub mod raft;
pub mod server;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
