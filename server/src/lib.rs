//! The dledger server: one event loop per core, each pinned to its core and
//! owning the Raft groups placed on it, all behind one listening port.
//!
//! ```text
//!  acceptor (core 0) ──TcpStream──▶ core k: connection task ──GroupInput──▶ group task (its core)
//!  group task: RaftCore + engine Log; eventfd → completions; tick; outbox ──▶ per-core peer writer ──▶ TCP
//! ```
//!
//! Cores share nothing but queues: a connection's reader hands each frame to
//! the owning group's inbox (a lock-free MPSC queue with async wake-up,
//! `tokio::sync::mpsc`), and each core has its own outbound connection to
//! every peer, so a group's messages never cross cores on the way out.

#![allow(missing_docs)]

pub mod config;
pub mod group;
pub mod runtime;
pub mod transport;

pub use config::{ConfigError, ServerConfig};
pub use runtime::{run, start, Node, StartError};
