//! dledger-server: a dledger node as a library, for `dledger server` and
//! for applications that embed a replicated log or a replicated state
//! machine in their own process.
//!
//! ```text
//!  acceptor (core 0) ──TcpStream──▶ core k: connection task ──GroupInput──▶ group task (its core)
//!  group task: RaftCore + engine Log; eventfd → completions; tick; outbox ──▶ per-core peer writer ──▶ TCP
//!  application: GroupHandle ──GroupInput──▶ group task ──committed batches──▶ apply thread: StateMachine
//! ```
//!
//! Cores share nothing but queues: a connection's reader hands each frame to
//! the owning group's inbox (a lock-free MPSC queue with async wake-up,
//! `tokio::sync::mpsc`), and each core has its own outbound connection to
//! every peer, so a group's messages never cross cores on the way out. A
//! group's state machine runs on its own thread, fed committed entries over a
//! lock-free channel, so the pinned append path never waits for it.
//!
//! # Embedding
//!
//! ```
//! use std::io::{Read, Write};
//! use bytes::Bytes;
//! use dledger_server::{CommittedEntry, Peer, Server, ServerConfig, StateMachine, StateMachineError};
//!
//! /// A replicated counter: each entry adds its first byte.
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     fn apply(&mut self, entries: &[CommittedEntry], out: &mut Vec<Bytes>) -> Result<(), StateMachineError> {
//!         for e in entries {
//!             self.0 += u64::from(e.payload.first().copied().unwrap_or(0));
//!             out.push(Bytes::from(self.0.to_le_bytes().to_vec()));
//!         }
//!         Ok(())
//!     }
//!     fn query(&mut self, _q: &[u8]) -> Result<Bytes, StateMachineError> {
//!         Ok(Bytes::from(self.0.to_le_bytes().to_vec()))
//!     }
//!     fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
//!         Ok(out.write_all(&self.0.to_le_bytes())?)
//!     }
//!     fn restore(&mut self, r: &mut dyn Read) -> Result<(), StateMachineError> {
//!         let mut b = [0u8; 8];
//!         r.read_exact(&mut b)?;
//!         self.0 = u64::from_le_bytes(b);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let data_dir = dir.path();
//! // A one-node cluster (port 0: any free port); list every voter in `peers` for more.
//! let peers = vec![Peer { id: 1, address: "127.0.0.1:0".into(), client_address: None }];
//! let config = ServerConfig::new(1, "127.0.0.1:0", data_dir, peers);
//! let server = Server::builder(config).bootstrap(true).state_machine(0, Counter::default()).start()?;
//! let group = server.group(0).expect("group 0");
//! group.leader().await?;
//! let applied = group.append(vec![Bytes::from_static(&[5])]).await?;
//! assert_eq!(applied.outputs[0].as_ref(), &5u64.to_le_bytes());
//! let now = group.read(Bytes::new()).await?; // linearizable: sees the append
//! assert_eq!(now.as_ref(), &5u64.to_le_bytes());
//! server.stop();
//! tokio::task::spawn_blocking(move || server.wait()).await??;
//! # Ok(()) }
//! ```
//!
//! `examples/kv` is a replicated key-value store built on this API.
//!
//! # The log alone
//!
//! [`start`] (or a builder without state machines) runs a replicated log:
//! what `dledger server` runs. Its groups still have handles; an append
//! returns once committed, with no outputs.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod apply;
mod auth;
pub mod config;
mod embed;
mod error;
mod group;
mod identity;
mod members;
mod runtime;
mod sessions;
mod snapshot;
mod state_machine;
mod transport;

pub use config::{ConfigError, Peer, Retention, ServerConfig};
pub use dledger_proto::{GroupStatus, ServerError};
pub use dledger_raft::Role;
pub use embed::{Applied, GroupEvent, GroupHandle, ServerBuilder};
pub use error::{Fatal, GroupError};
pub use group::{GroupFatal, MAX_READ_BYTES, MAX_READ_ENTRIES};
pub use identity::{init, Identity, IDENTITY_FILE};
pub use runtime::{run, start, RunError, Server, StartError, Stopper};
pub use snapshot::SnapshotMeta;
pub use state_machine::{CommittedEntry, StateMachine, StateMachineError};
pub use transport::{MAX_ANSWER_BYTES_PER_CONNECTION, MAX_IN_FLIGHT_PER_CONNECTION};
