//! The embedding API: build a server in the application's process,
//! register a state machine per group, and talk to the groups through
//! handles.
//!
//! A [`GroupHandle`] sends its requests into the group's inbox, the same
//! queue network requests take, and awaits the answer on a oneshot channel;
//! it is cheap to clone and may be used from any thread or runtime.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use dledger_proto::GroupStatus;
use dledger_raft::Role;

use crate::config::ServerConfig;
use crate::error::GroupError;
use crate::group::{GroupInput, LocalRequest};
use crate::runtime::{run_until_signal, start_with, RunError, Server, StartError};
use crate::state_machine::StateMachine;

/// Builds a [`Server`]: a config, then a state machine for any of its groups.
/// Groups without one are plain replicated logs.
pub struct ServerBuilder {
    config: ServerConfig,
    machines: Vec<(u64, Box<dyn StateMachine>)>,
    creation: crate::identity::Creation,
}

impl Server {
    /// Starts building a server from `config` (from TOML with
    /// [`ServerConfig::from_file`] or built with [`ServerConfig::new`]).
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder { config, machines: Vec::new(), creation: crate::identity::Creation::Never }
    }
}

impl ServerBuilder {
    /// Registers `machine` as group `group`'s state machine (replacing an
    /// earlier registration for the same group).
    pub fn state_machine(mut self, group: u64, machine: impl StateMachine) -> Self {
        self.machines.retain(|(g, _)| *g != group);
        self.machines.push((group, Box::new(machine)));
        self
    }

    /// Allows the start to create the data directory when it is missing or
    /// empty: the bootstrap of a new node of a new cluster (see
    /// [`init`](crate::init)). Pass it for the very first start only; without
    /// it a node whose data was lost refuses to come back as the same voter.
    pub fn bootstrap(self, yes: bool) -> Self {
        self.allow_creation(crate::identity::Creation::Bootstrap, yes)
    }

    /// Allows the start to create a missing or empty data directory for a
    /// new node of a running cluster: its groups take no configuration from
    /// the config file's peers (which only tell it where the cluster is),
    /// and wait for a leader to send them the log once an operator adds the
    /// node (`dledger member add-learner`). A node whose data was lost
    /// joins this way under a new node id.
    pub fn join(self, yes: bool) -> Self {
        self.allow_creation(crate::identity::Creation::Join, yes)
    }

    /// Allows creation `how` (`yes`), or takes it back if it was allowed.
    fn allow_creation(mut self, how: crate::identity::Creation, yes: bool) -> Self {
        if yes {
            self.creation = how;
        } else if self.creation == how {
            self.creation = crate::identity::Creation::Never;
        }
        self
    }

    /// Validates the config, opens every log, restores every state machine
    /// (newest snapshot, then what it reports applied) and starts serving.
    /// Returns once the server listens; leaders are elected after that
    /// (watch [`GroupHandle::events`]).
    pub fn start(self) -> Result<Server, StartError> {
        self.config.validate()?;
        start_with(self.config, self.machines, self.creation)
    }

    /// Starts the server and runs it until SIGTERM or SIGINT (then stops it
    /// cleanly) or a fatal error (returned).
    pub fn run(self) -> Result<(), RunError> {
        run_until_signal(self.start()?)
    }
}

/// A local append, committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Index of the first entry.
    pub first_index: u64,
    /// Index of the last entry.
    pub last_index: u64,
    /// The term they were committed in.
    pub term: u64,
    /// The state machine's output for each entry, in order (empty for a
    /// group without a state machine).
    pub outputs: Vec<Bytes>,
}

/// A group's role, term and known leader, published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    /// The group.
    pub group: u64,
    /// This node's role in it.
    pub role: Role,
    /// This node's current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// The group's voters.
    pub voters: Vec<u64>,
}

/// One group of a running [`Server`], for the application in its process.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    group: u64,
    pub(crate) inbox: mpsc::UnboundedSender<GroupInput>,
    events: watch::Receiver<GroupEvent>,
    has_state_machine: bool,
}

impl GroupHandle {
    pub(crate) fn new(
        group: u64,
        inbox: mpsc::UnboundedSender<GroupInput>,
        events: watch::Receiver<GroupEvent>,
        has_state_machine: bool,
    ) -> Self {
        GroupHandle { group, inbox, events, has_state_machine }
    }

    /// The group's id.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// Whether the group has a state machine.
    pub fn has_state_machine(&self) -> bool {
        self.has_state_machine
    }

    /// Appends `payloads` as consecutive entries; returns once they are
    /// committed (on a quorum's disks) and, with a state machine, applied
    /// here, with its outputs. Only the leader takes appends: elsewhere it
    /// fails with `NotLeader` naming the leader. An append that fails with
    /// `LeadershipLost` may still commit.
    pub async fn append(&self, payloads: Vec<Bytes>) -> Result<Applied, GroupError> {
        let (reply, rx) = oneshot::channel();
        self.send(GroupInput::Local(LocalRequest::Append { payloads, reply }))?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    /// A linearizable read: the leader confirms it still leads (ReadIndex),
    /// waits until its state machine has applied up to the commit index of
    /// that moment, then runs `query` against it. Sees every append
    /// acknowledged before the call.
    pub async fn read(&self, query: Bytes) -> Result<Bytes, GroupError> {
        if !self.has_state_machine {
            return Err(GroupError::NoStateMachine(self.group));
        }
        let (reply, rx) = oneshot::channel();
        self.send(GroupInput::Local(LocalRequest::Read { query, reply }))?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    /// Takes a snapshot of the state machine now (on this node, off the
    /// append path, as the policy's snapshots are) and returns the index it
    /// covers: the newest snapshot's if nothing was applied since. Fails on
    /// a group without a state machine, or while this node installs a
    /// snapshot fetched from a peer.
    pub async fn snapshot(&self) -> Result<u64, GroupError> {
        if !self.has_state_machine {
            return Err(GroupError::NoStateMachine(self.group));
        }
        let (reply, rx) = oneshot::channel();
        self.send(GroupInput::Local(LocalRequest::Snapshot(reply)))?;
        rx.await.map_err(|_| GroupError::Stopped)?
    }

    /// This node's view of the group.
    pub async fn status(&self) -> Result<GroupStatus, GroupError> {
        let (reply, rx) = oneshot::channel();
        self.send(GroupInput::Local(LocalRequest::Status(reply)))?;
        rx.await.map_err(|_| GroupError::Stopped)
    }

    /// Leadership changes: the current role, term and leader, updated on
    /// every change (intermediate states may be skipped by a slow reader).
    pub fn events(&self) -> watch::Receiver<GroupEvent> {
        self.events.clone()
    }

    /// Waits until this node knows a leader of the group, and returns it.
    pub async fn leader(&self) -> Result<u64, GroupError> {
        let mut events = self.events.clone();
        let e = events.wait_for(|e| e.leader.is_some()).await.map_err(|_| GroupError::Stopped)?;
        Ok(e.leader.expect("waited for"))
    }

    fn send(&self, input: GroupInput) -> Result<(), GroupError> {
        self.inbox.send(input).map_err(|_| GroupError::Stopped)
    }
}
