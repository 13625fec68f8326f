//! dledger-node: the Raft core of dledger-rs (see [`raft`]) and its
//! deterministic simulation (see `sim`, built for tests and with the `sim`
//! feature).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod raft;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
