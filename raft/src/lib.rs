//! The Raft core: a deterministic state machine, `(state, event) → commands`.
//!
//! [`RaftCore`] has no I/O, no clock and no threads. Time is [`Event::Tick`];
//! randomness (election timeouts) comes only from the seeded
//! [`rand_chacha::ChaCha8Rng`] the host passes to [`RaftCore::new`]. Given the
//! same seed and the same events, it emits the same commands.
//!
//! # Driving the core
//!
//! The host owns one `RaftCore` per Raft group and feeds it [`Event`]s:
//! messages from peers, a tick at a fixed interval, client requests, and
//! storage completions. Each [`RaftCore::step`] returns [`Command`]s, which
//! the host executes in order:
//!
//! | Command | Host action (engine mapping) |
//! |---|---|
//! | `SaveMeta(hs)` | replace the engine's metadata record (term, vote); when durable, step `Event::MetaSaved(hs)` |
//! | `PersistEntries { truncate_from, entries }` | `truncate_suffix(from)` if set, then `append(entries)` (buffered); on the engine's "durable up to N" completion, step `Event::EntriesDurable { index: N, term: term_at(N) }` |
//! | `Send(msg)` | send to `msg.to`; loss, duplication and reordering are tolerated |
//! | `Apply(entries)` | apply to the state machine, in order, once (see `Command`) |
//! | `Reply(r)` | answer the client named by `r`'s `request_id` |
//! | `InstallLogStart(start)` | durably drop the whole log and start it after `start` (before the next command) |
//! | `SaveConfig(record)` | durably append a configuration record to the host's side file, before the next command (see [`Membership`]) |
//! | `SaveSessions(table)` | durably replace the host's saved producer-session table, before the next command (see [`Sessions`]) |
//!
//! **Log start.** A host purges a prefix of its storage up to at most
//! [`RaftCore::purge_limit`] (committed, applied and durable) and then steps
//! `Event::LogPurged { first_index }`; the core forgets the entries below and
//! keeps `(prev_index, prev_term)` of the last one ([`LogStart`]). A leader
//! sends a follower that needs purged entries its log start instead; the
//! follower that lacks the entry there drops its log (`InstallLogStart`) and
//! goes on from it. On restart the host passes the log start in
//! [`RestoredState::start`].
//!
//! **Storage mapping.** The core keeps its own copy of the log in memory
//! ([`RaftLog`]) and never reads storage: every change it makes is mirrored
//! to the engine by `PersistEntries`, and the engine's `append` makes entries
//! readable at once while durability arrives later, which is exactly the
//! `EntriesDurable` completion. The only read is at start-up: the host reads
//! the metadata record and the surviving log (`first_index()..=last_index()`)
//! from the engine and passes them in [`RestoredState`]; everything restored
//! is treated as durable. Truncation (`truncate_suffix`) is synchronous; a
//! completion issued before a truncation must not be delivered after it
//! (the core also ignores a completion whose (index, term) it no longer
//! holds).
//!
//! **Durability ordering.** Nothing that depends on a term or vote leaves
//! before it is saved: the core holds outgoing messages until `MetaSaved`
//! confirms the current (term, vote), and a candidate cannot win before that.
//! Followers acknowledge only entries reported durable, so a client's
//! `Committed` reply means the entry is durable on a quorum. The leader's own
//! write runs in parallel with replication.
//!
//! **Time.** Ticks must track real elapsed time: after a stall (a paused
//! process, a long GC) the host delivers the ticks it missed before any other
//! event. Leases depend on it (see `read_index`).
//!
//! **Reads.** `ReadReady { read_index }` means: serve the read once the state
//! machine has applied `read_index` (the core has already emitted the `Apply`
//! up to the commit index, so a host that applies synchronously can serve at
//! once).
//!
//! **Membership.** The configuration in force is the latest in the log
//! (see [`Membership`] for single-server changes, learners, and the side
//! file a host keeps so that a restart finds it without reading the log);
//! [`Event::ChangeMembership`] proposes a change, which the leader checks
//! first (one at a time, after its own term's first commit, a learner only
//! once caught up, a reachable quorum unless forced).
//!
//! **Not yet.** Repairing entries the engine reports corrupt in mid-log.
//!
//! # Example: a one-node host
//!
//! The smallest host: it "persists" instantly and applies in memory. A real
//! host (`dledger-server`'s group host) does the same with an engine log.
//!
//! ```
//! use std::collections::VecDeque;
//! use bytes::Bytes;
//! use dledger_raft::{ClientReply, Command, Config, Event, HardState, RaftCore, RestoredState, Role};
//! use rand::SeedableRng;
//!
//! let restored = RestoredState::whole(HardState::default(), Vec::new());
//! let rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let mut core = RaftCore::new(1, vec![1], Config::default(), restored, rng).unwrap();
//! let (mut applied, mut replies) = (Vec::new(), Vec::new());
//! // Executes commands in order; completions go back in as events.
//! let mut run = |core: &mut RaftCore, event: Event| {
//!     let mut events = VecDeque::from([event]);
//!     while let Some(e) = events.pop_front() {
//!         for c in core.step(e) {
//!             match c {
//!                 Command::SaveMeta(hs) => events.push_back(Event::MetaSaved(hs)),
//!                 Command::PersistEntries { entries, .. } => {
//!                     if let Some(last) = entries.last() {
//!                         events.push_back(Event::EntriesDurable { index: last.index, term: last.term });
//!                     }
//!                 }
//!                 Command::Apply(entries) => applied.extend(entries),
//!                 Command::Reply(r) => replies.push(r),
//!                 Command::Send(_) | Command::InstallLogStart(_) | Command::SaveConfig(_) | Command::SaveSessions(_) => {
//!                     unreachable!("a one-node group sends nothing and changes no configuration")
//!                 }
//!             }
//!         }
//!     }
//! };
//! while core.status().role != Role::Leader {
//!     run(&mut core, Event::Tick);
//! }
//! run(&mut core, Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"x")] });
//! assert!(matches!(replies[..], [ClientReply::Committed { request_id: 1, first_index: 2, last_index: 2, .. }]));
//! assert_eq!(applied.last().unwrap().payload, "x"); // after the leader's no-op at index 1
//! ```
//!
//! # Testing
//!
//! Handler tests (`handler_tests.rs`) assert the exact commands one event
//! yields from a given state; scenario tests (`scenario_tests.rs`) replay the
//! paper's Figures 7 and 8 and friends on a hand-driven cluster; the seeded
//! simulation (`crate::sim`, built for tests and with the `sim` feature)
//! drives 1-, 3- and 5-node clusters through network, disk and process
//! faults with a checker per safety property.
//!
//! # Modules
//!
//! * `message`: entries, messages, the metadata record.
//! * `event`, `command`: the core's inputs and outputs, client replies.
//! * `config`: tunables and bug-injection switches for the simulation.
//! * `raft_log`: the in-memory log and its durable/commit/apply positions.
//! * `progress`: a leader's per-follower state and replication window.
//! * `core`: the [`RaftCore`] state, dispatch, role changes, the send gate.
//! * `membership`: configurations, changes, the records a host keeps.
//! * `election`, `replication`, `read_index`, `transfer`, `reconfig`: the handlers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod command;
mod config;
mod core;
mod election;
mod event;
mod membership;
mod message;
mod progress;
mod raft_log;
mod read_index;
mod reconfig;
mod replication;
mod sessions;
mod snapshot_pull;
mod transfer;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(test)]
mod handler_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod scenario_tests;
#[cfg(test)]
mod test_support;

pub use self::command::{ClientError, ClientReply, Command, TransferFailure};
pub use self::config::{Config, ConfigError, InjectedBugs, LeaseConfig};
pub use self::core::{LogStorage, NoStorage, RaftCore, RestoredState, Role, Status};
pub use self::event::{Event, Proposal};
pub use self::membership::{
    ConfigHistory, ConfigRecord, Member, MemberRole, Membership, MembershipChange, MembershipRefusal,
    MAX_ADDRESS_BYTES, MAX_MEMBERS,
};
pub use self::message::{
    ConflictHint, Entry, EntryKind, HardState, LogIndex, LogStart, Message, MessageBody, NodeId, RequestId, Term,
    MAX_INDEX, MAX_TERM,
};
pub use self::progress::{Progress, ProgressState};
pub use self::raft_log::RaftLog;
pub use self::sessions::{
    ProducerSession, ProducerStamp, ProducerState, SessionBatch, SessionCheck, SessionLimits, SessionRefusal,
    SessionTable, Sessions, MAX_DECODED_PRODUCERS, RETAINED_BATCHES, STAMP_LEN,
};
pub use self::snapshot_pull::{chunk_crc, PullStep, SnapshotId, SnapshotMessage, SnapshotPull};
