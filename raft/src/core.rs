//! [`RaftCore`]: the state of one Raft node and the dispatch of events to the
//! handlers in `election`, `replication`, `read_index` and `transfer`.
//!
//! Invariants (asserted where they change):
//! * `term` never decreases; `voted_for` changes only from `None` within a term.
//! * `saved_meta.term ≤ term`. While `saved_meta != (term, voted_for)`, every
//!   outgoing message waits in `held_messages` and a candidate may not win:
//!   nothing that depends on a term or vote leaves before it is durable
//!   (Raft Figure 2, "respond to RPCs only after updating stable storage").
//! * At most one leader role per term on this node, and a leader's log only
//!   grows (it never truncates).
//! * Every proposal, read and transfer accepted while leader is answered
//!   exactly once: when it completes, or with an error when leadership ends.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::command::{ClientError, ClientReply, Command};
use super::config::{Config, ConfigError};
use super::event::{Event, Proposal};
use super::membership::{ConfigHistory, ConfigRecord, Membership};
use super::message::{Entry, EntryKind, HardState, LogIndex, LogStart, Message, MessageBody, NodeId, RequestId, Term};
use super::progress::Progress;
use super::raft_log::RaftLog;
use super::read_index::ReadIndexState;
use super::sessions::{SessionBatch, SessionCheck, SessionTable, Sessions};
use super::transfer::Transfer;

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows the leader of its term (if one is known).
    Follower,
    /// Asking for pre-votes; its term has not changed.
    PreCandidate,
    /// Asking for votes in its (new) term.
    Candidate,
    /// Leader of its term.
    Leader,
}

/// What survived on disk, handed to [`RaftCore::new`] on (re)start. The
/// whole log is treated as durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    /// The metadata record.
    pub meta: HardState,
    /// The last purged entry (`(0, 0)`: the log starts at index 1).
    pub start: LogStart,
    /// `(first index, term)` of each run of equal terms, from the first index on.
    pub terms: Vec<(LogIndex, Term)>,
    /// The last index of the log (0 when empty).
    pub last_index: LogIndex,
    /// The last entries of the log, as many as the host wants in memory
    /// (older ones are read from storage when a follower needs them).
    pub tail: Vec<Entry>,
    /// The host's configuration records, as written (see `membership`);
    /// empty for a log created before there were any: the bootstrap voters
    /// given to [`RaftCore::new`] are its configuration.
    pub configs: Vec<ConfigRecord>,
    /// The host's saved producer-session table (see `sessions`): of a
    /// prefix that was committed, reaching at least `start` (an empty table
    /// at `start` for a log that never had one).
    pub sessions: SessionTable,
    /// The entries above `sessions.as_of` that carry a stamp
    /// ([`Entry::stamp`]), in index order; others may be included.
    pub stamped: Vec<Entry>,
}

impl RestoredState {
    /// A restart with the whole log `entries` (from index 1) in memory.
    pub fn whole(meta: HardState, entries: Vec<Entry>) -> RestoredState {
        let terms = RaftLog::term_runs_of(&entries);
        let configs = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Config)
            .filter_map(|e| {
                Some(ConfigRecord { index: e.index, term: e.term, membership: Membership::decode(&e.payload)? })
            })
            .collect();
        let stamped = entries.iter().filter(|e| e.stamp().is_some()).cloned().collect();
        RestoredState {
            meta,
            start: LogStart::default(),
            terms,
            last_index: entries.len() as LogIndex,
            tail: entries,
            configs,
            sessions: SessionTable::default(),
            stamped,
        }
    }
}

/// Where a core reads entries it no longer holds in memory: the host's log.
/// Only entries the core reported durable and applied are asked for.
pub trait LogStorage {
    /// Entries `from..=to`, stopping after the entry that reaches `max_bytes`
    /// of [`Entry::size_bytes`] (so at least one), or `None` if storage cannot
    /// read them now (the core tries again on a later heartbeat).
    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: u64) -> Option<Vec<Entry>>;
}

/// Storage that has nothing: for hosts that keep the whole log in memory
/// (an unbounded `max_log_memory_bytes`) and for tests.
pub struct NoStorage;

impl LogStorage for NoStorage {
    fn entries(&self, _from: LogIndex, _to: LogIndex, _max_bytes: u64) -> Option<Vec<Entry>> {
        None
    }
}

/// A read-only summary, for hosts and checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// The leader this node believes in.
    pub leader_id: Option<NodeId>,
    /// Highest committed index.
    pub committed_index: LogIndex,
    /// Highest durable index.
    pub durable_index: LogIndex,
    /// Last index.
    pub last_index: LogIndex,
    /// Version of the configuration in force.
    pub config_version: u64,
    /// Whether this node is a voter of the configuration in force.
    pub voter: bool,
}

/// A proposal accepted by this leader, waiting for commit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingProposal {
    pub request_id: RequestId,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
}

/// One Raft node as a deterministic state machine: see the crate docs of
/// [`raft`](super) for how a host drives it.
#[derive(Debug)]
pub struct RaftCore {
    pub(super) id: NodeId,
    /// The configurations in the log: the latest committed one and later.
    pub(super) configs: ConfigHistory,
    /// The latest configuration's voters, sorted (`id` among them or not).
    pub(super) voters: Vec<NodeId>,
    /// Every member of a configuration in `configs` but `id`, sorted: whom
    /// a leader replicates to.
    pub(super) targets: Vec<NodeId>,
    /// Leader: removed members still sent the log until they hold their
    /// removal (its index) or the deadline tick passes.
    pub(super) leaving: BTreeMap<NodeId, (LogIndex, u64)>,
    pub(super) config: Config,
    pub(super) rng: ChaCha8Rng,

    pub(super) term: Term,
    pub(super) voted_for: Option<NodeId>,
    pub(super) saved_meta: HardState,
    /// The last (term, vote) a `SaveMeta` was emitted for.
    pub(super) requested_meta: HardState,
    pub(super) log: RaftLog,

    pub(super) role: Role,
    pub(super) leader_id: Option<NodeId>,
    /// Ticks counted since this core was created (the core's only notion of time).
    pub(super) now_ticks: u64,
    pub(super) election_elapsed_ticks: u64,
    pub(super) election_timeout_ticks: u64,
    pub(super) heartbeat_elapsed_ticks: u64,
    pub(super) check_quorum_elapsed_ticks: u64,

    /// Pre-candidate or candidate: answers received (`true` = granted).
    pub(super) votes: BTreeMap<NodeId, bool>,
    /// Follower: highest index known to match the leader of this term.
    pub(super) verified_index: LogIndex,
    /// Follower: highest match index acknowledged to the leader of this term.
    pub(super) acked_index: LogIndex,

    /// Leader: one record per other voter.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) proposals: VecDeque<PendingProposal>,
    /// The producer sessions of this log (committed table, uncommitted stamps).
    pub(super) sessions: Sessions,
    /// Leader: retried session appends whose original is not committed yet.
    pub(super) duplicates: Vec<(RequestId, SessionBatch)>,
    pub(super) reads: ReadIndexState,
    pub(super) transfer: Option<Transfer>,
    /// Leader: ticks until we may try handing over to the preferred leader again.
    pub(super) preferred_cooldown_ticks: u64,

    pub(super) out: Vec<Command>,
    pub(super) held_messages: Vec<Message>,
    /// Leader: peers whose next entries are no longer in memory; served from
    /// storage at the end of the step.
    pub(super) needs_storage: Vec<NodeId>,
    /// Entries sent to followers after reading them back from storage.
    pub(super) entries_from_storage: u64,
    /// Log starts sent to followers that needed purged entries.
    pub(super) log_starts_sent: u64,
    /// The host is installing a state-machine snapshot: do not campaign.
    pub(super) campaigns_suspended: bool,
}

impl RaftCore {
    /// A core for node `id`, restarting from `restored`. `voters` is the
    /// bootstrap configuration, used when `restored` holds no record of
    /// the configuration at its log start (a new cluster, or a log from
    /// before records); a node joining a cluster passes none, and waits
    /// for a leader to send it the log.
    ///
    /// If the restored log holds entries of a term newer than the saved
    /// metadata (entries were persisted, the metadata save was lost), the
    /// term is raised to the log's last term with no vote, and saved again
    /// before any message leaves: this node never voted in that term, since
    /// a vote is only sent after it is saved.
    pub fn new(
        id: NodeId,
        mut voters: Vec<NodeId>,
        config: Config,
        restored: RestoredState,
        rng: ChaCha8Rng,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        voters.sort_unstable();
        let unique = voters.windows(2).all(|w| w[0] != w[1]);
        if !unique || (!voters.is_empty() && !voters.contains(&id)) {
            return Err(ConfigError::Voters { id, voters });
        }
        let start = restored.start;
        if let Err((index, reason)) =
            RaftLog::check_restored(start, &restored.terms, restored.last_index, &restored.tail)
        {
            return Err(ConfigError::RestoredLog { index, reason });
        }
        let log = RaftLog::restored(start, restored.terms, restored.last_index, restored.tail);
        let mut table = restored.sessions;
        table.as_of = table.as_of.max(start.prev_index); // stamps below the start are gone with their entries
        let stamped: Vec<Entry> = restored.stamped.into_iter().filter(|e| e.index <= log.last_index()).collect();
        let sessions = Sessions::restore(table, &stamped, config.sessions);
        if restored.meta.term > crate::MAX_TERM || log.last_term() > crate::MAX_TERM {
            return Err(ConfigError::RestoredTerm(restored.meta.term.max(log.last_term())));
        }
        let mut configs = ConfigHistory::restore(&restored.configs, start, |i| log.term_at(i));
        if configs.records().first().is_none_or(|r| r.index > start.prev_index) && !voters.is_empty() {
            let bootstrap = Membership::bootstrap(voters.iter().map(|&v| (v, String::new())));
            let mut records =
                vec![ConfigRecord { index: start.prev_index, term: start.prev_term, membership: bootstrap }];
            records.extend(configs.records().iter().cloned());
            configs = ConfigHistory::from_records(records);
        }
        let (term, voted_for) = if log.last_term() > restored.meta.term {
            (log.last_term(), None)
        } else {
            (restored.meta.term, restored.meta.voted_for)
        };
        let mut core = RaftCore {
            id,
            configs,
            voters: Vec::new(),
            targets: Vec::new(),
            leaving: BTreeMap::new(),
            config,
            rng,
            term,
            voted_for,
            saved_meta: restored.meta,
            requested_meta: restored.meta,
            log,
            role: Role::Follower,
            leader_id: None,
            now_ticks: 0,
            election_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            check_quorum_elapsed_ticks: 0,
            votes: BTreeMap::new(),
            verified_index: 0,
            acked_index: 0,
            progress: BTreeMap::new(),
            proposals: VecDeque::new(),
            sessions,
            duplicates: Vec::new(),
            reads: ReadIndexState::default(),
            transfer: None,
            preferred_cooldown_ticks: 0,
            out: Vec::new(),
            held_messages: Vec::new(),
            needs_storage: Vec::new(),
            entries_from_storage: 0,
            log_starts_sent: 0,
            campaigns_suspended: false,
        };
        core.refresh_config();
        core.reset_election_timer();
        Ok(core)
    }

    /// Handles one event and returns the commands it produced, in order.
    /// For a core whose entries all stay in memory (`max_log_memory_bytes`
    /// unbounded): with a bounded one, followers behind the memory window
    /// are not served until a step gives storage ([`Self::step_with`]).
    pub fn step(&mut self, event: Event) -> Vec<Command> {
        self.step_with(event, &NoStorage)
    }

    /// Handles one event, reading from `storage` the entries a follower
    /// needs that are no longer in memory; returns the commands, in order.
    pub fn step_with(&mut self, event: Event, storage: &dyn LogStorage) -> Vec<Command> {
        match event {
            Event::Message(message) => self.on_message(message),
            Event::Tick => self.on_tick(),
            Event::Propose { request_id, payloads } => self.on_propose(vec![Proposal::plain(request_id, payloads)]),
            Event::ProposeBatch(proposals) => self.on_propose(proposals),
            Event::ProposeAdmin { request_id, payload } => {
                self.on_propose_kind(vec![Proposal::plain(request_id, vec![payload])], EntryKind::Admin)
            }
            Event::ReadIndex { request_id } => self.on_read_index(request_id),
            Event::ChangeMembership { request_id, change, expected_version, force } => {
                self.on_change_membership(request_id, change, expected_version, force)
            }
            Event::TransferLeadership { request_id, target } => self.on_transfer_request(Some(request_id), target),
            Event::EntriesDurable { index, term } => self.on_entries_durable(index, term),
            Event::MetaSaved(hard_state) => self.on_meta_saved(hard_state),
            Event::LogPurged { first_index } => {
                let allow_uncommitted = self.config.bugs().purge_above_commit;
                assert!(
                    first_index <= self.purge_limit() + 1,
                    "the host purged below {first_index}, past the purge limit {}",
                    self.purge_limit()
                );
                self.log.purge_to(first_index, allow_uncommitted);
            }
        }
        self.send_from_storage(storage);
        self.log.compact(self.config.max_log_memory_bytes);
        // One save per step, first: everything this step decided about the
        // term and vote (possibly several changes) goes out as one record.
        if self.hard_state() != self.requested_meta {
            self.requested_meta = self.hard_state();
            self.out.insert(0, Command::SaveMeta(self.requested_meta));
        }
        self.debug_check();
        std::mem::take(&mut self.out)
    }

    /// While `suspended`, this node neither campaigns nor answers a
    /// `TimeoutNow`, so it cannot become leader; it still votes (its log and
    /// term are whole). A host sets it while it installs a state-machine
    /// snapshot: a leader must be able to serve its state machine.
    pub fn suspend_campaigns(&mut self, suspended: bool) {
        self.campaigns_suspended = suspended;
    }

    /// Whether campaigns are suspended (see [`Self::suspend_campaigns`]).
    pub fn campaigns_suspended(&self) -> bool {
        self.campaigns_suspended
    }

    /// Summary of the current state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader_id: self.leader_id,
            committed_index: self.log.committed_index(),
            durable_index: self.log.durable_index(),
            last_index: self.log.last_index(),
            config_version: self.membership().version,
            voter: self.is_voter(self.id),
        }
    }

    /// The highest index the host may purge its storage up to: committed,
    /// handed out in `Apply`, and durable here. (A host that holds entries
    /// back for lagging followers or an unsnapshotted state machine purges
    /// less.)
    pub fn purge_limit(&self) -> LogIndex {
        if self.config.bugs().purge_above_commit {
            return self.log.durable_index();
        }
        self.log.committed_index().min(self.log.applied_index()).min(self.log.durable_index())
    }

    /// How many log starts were sent to followers behind the purged prefix.
    pub fn log_starts_sent(&self) -> u64 {
        self.log_starts_sent
    }

    /// How many entries were sent to followers from storage (not memory).
    pub fn entries_from_storage(&self) -> u64 {
        self.entries_from_storage
    }

    /// The producer sessions of this node's log (see `sessions`): a host
    /// saves `sessions().table()` before it purges below its `as_of`.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The in-memory log (read-only).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// A leader's replication state for `peer` (for lag metrics and tests).
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }

    /// The current (term, vote), saved or not.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, voted_for: self.voted_for }
    }

    /// Votes needed to win, entries needed to commit.
    pub(super) fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whom a leader replicates to: every member but itself (see `targets`).
    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.targets.clone()
    }

    /// The other voters: whom a candidate asks.
    pub(super) fn voter_peers(&self) -> Vec<NodeId> {
        self.voters.iter().copied().filter(|&p| p != self.id).collect()
    }

    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks =
            self.rng.gen_range(self.config.election_timeout_min_ticks..self.config.election_timeout_max_ticks);
    }

    /// Queues a message, or holds it until the current (term, vote) is saved.
    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        let message = Message { from: self.id, to, term: self.term, body };
        self.send_with_term(message);
    }

    pub(super) fn send_with_term(&mut self, message: Message) {
        debug_assert_ne!(message.to, self.id);
        if self.saved_meta == self.hard_state() {
            self.out.push(Command::Send(message));
        } else {
            self.held_messages.push(message);
        }
    }

    /// Moves to `term` (if higher); the step emits the `SaveMeta`.
    pub(super) fn set_term(&mut self, term: Term) {
        assert!(term >= self.term, "term never decreases ({} -> {term})", self.term);
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.verified_index = 0;
            self.acked_index = 0;
        }
    }

    pub(super) fn set_vote(&mut self, candidate: NodeId) {
        assert!(
            self.voted_for.is_none() || self.voted_for == Some(candidate),
            "one vote per term: already voted for {:?} in term {}",
            self.voted_for,
            self.term
        );
        self.voted_for = Some(candidate);
    }

    /// Becomes a follower of `term` (at least the current one), ending any
    /// leadership and answering everything that was waiting on it.
    pub(super) fn become_follower(&mut self, term: Term, leader_id: Option<NodeId>) {
        let was_leader = self.role == Role::Leader;
        let old_term = self.term;
        self.set_term(term);
        if self.role != Role::Follower {
            self.verified_index = 0;
            self.acked_index = 0;
        }
        self.role = Role::Follower;
        self.leader_id = leader_id;
        self.votes.clear();
        self.reset_election_timer();
        if was_leader {
            self.abandon_leadership(old_term);
        }
    }

    /// Answers every request this leader held, now that it is no longer leader.
    fn abandon_leadership(&mut self, old_term: Term) {
        let leader_hint = self.leader_id;
        let waiting = std::mem::take(&mut self.proposals).into_iter().map(|p| p.request_id);
        let duplicates = std::mem::take(&mut self.duplicates).into_iter().map(|(request_id, _)| request_id);
        for request_id in waiting.chain(duplicates).collect::<Vec<_>>() {
            self.reply(ClientReply::Failed {
                request_id,
                error: ClientError::LeadershipLost { term: old_term, leader_hint },
            });
        }
        for request_id in self.reads.drain_all() {
            self.reply(ClientReply::Failed {
                request_id,
                error: ClientError::LeadershipLost { term: old_term, leader_hint },
            });
        }
        self.end_transfer_on_step_down(old_term);
        self.progress.clear();
        self.leaving.clear();
        self.refresh_config();
    }

    pub(super) fn reply(&mut self, reply: ClientReply) {
        self.out.push(Command::Reply(reply));
    }

    fn on_tick(&mut self) {
        self.now_ticks += 1;
        if self.role == Role::Leader {
            self.leader_tick();
        } else {
            self.election_elapsed_ticks += 1;
            // A learner (or a node outside its configuration) never campaigns,
            // and its timer keeps running: restarting it would keep the node
            // "in lease" of a leader long gone, refusing every pre-vote
            // (simulation seed 1878).
            if self.election_elapsed_ticks >= self.election_timeout_ticks && self.may_campaign() {
                self.start_election_timeout();
            }
        }
    }

    fn leader_tick(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.check_quorum_elapsed_ticks += 1;
        if self.check_quorum_elapsed_ticks >= self.config.election_timeout_min_ticks {
            self.check_quorum_elapsed_ticks = 0;
            if !self.check_quorum_round() {
                return;
            }
        }
        self.transfer_tick();
        self.leave_if_not_voter();
        self.leaving_tick();
        self.replication_tick();
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
        self.preferred_leader_tick();
    }

    /// Check-quorum: step down if a quorum has not been heard from since the
    /// last round. Returns whether we are still leader.
    fn check_quorum_round(&mut self) -> bool {
        let active = self
            .voters
            .iter()
            .filter(|&&v| v == self.id || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        if self.config.check_quorum && active < self.quorum() {
            let term = self.term;
            self.become_follower(term, None);
            return false;
        }
        true
    }

    fn on_propose(&mut self, proposals: Vec<Proposal>) {
        self.on_propose_kind(proposals, EntryKind::Command)
    }

    fn on_propose_kind(&mut self, proposals: Vec<Proposal>, kind: EntryKind) {
        let mut entries: Vec<Entry> = Vec::new();
        for Proposal { request_id, mut payloads, session } in proposals {
            if self.role != Role::Leader {
                let leader_hint = self.leader_id;
                self.reply(ClientReply::Failed { request_id, error: ClientError::NotLeader { leader_hint } });
                continue;
            }
            if let Some(transfer) = &self.transfer {
                let target = transfer.target;
                self.reply(ClientReply::Failed { request_id, error: ClientError::TransferInProgress { target } });
                continue;
            }
            if payloads.is_empty() {
                self.reply(ClientReply::Failed { request_id, error: ClientError::EmptyProposal });
                continue;
            }
            let first_index = self.log.last_index() + 1 + entries.len() as u64;
            let mut last_kind = kind;
            if let Some(session) = session {
                let Ok(count) = u32::try_from(payloads.len()) else {
                    let error =
                        ClientError::Session(crate::SessionRefusal::OutOfOrderSequence { expected: session.seq });
                    self.reply(ClientReply::Failed { request_id, error });
                    continue;
                };
                let committed_only = self.config.bugs().sessions_ignore_uncommitted;
                match self.sessions.check_with(&session, count, committed_only) {
                    SessionCheck::Accept => {}
                    SessionCheck::Duplicate(batch) => {
                        self.answer_duplicate(request_id, batch);
                        continue;
                    }
                    SessionCheck::Refuse(refusal) => {
                        self.reply(ClientReply::Failed { request_id, error: ClientError::Session(refusal) });
                        continue;
                    }
                }
                let last_index = first_index + u64::from(count) - 1;
                let stamp = self.sessions.accept(&session, count, last_index, self.term);
                let last = payloads.last_mut().expect("non-empty");
                *last = stamp.seal(last);
                last_kind = EntryKind::SessionCommand;
            }
            let n = payloads.len();
            entries.reserve(n);
            for (k, payload) in payloads.into_iter().enumerate() {
                let index = first_index + k as u64;
                let kind = if k + 1 == n { last_kind } else { kind };
                entries.push(Entry { index, term: self.term, kind, payload });
            }
            let last_index = self.log.last_index() + entries.len() as u64;
            self.proposals.push_back(PendingProposal { request_id, first_index, last_index });
        }
        if !entries.is_empty() {
            self.append_as_leader(entries);
        }
    }

    fn on_meta_saved(&mut self, hard_state: HardState) {
        assert!(
            (hard_state.term, hard_state.voted_for.is_some())
                >= (self.saved_meta.term, self.saved_meta.voted_for.is_some()),
            "metadata saves complete in order: {:?} after {:?}",
            hard_state,
            self.saved_meta
        );
        self.saved_meta = hard_state;
        if self.saved_meta == self.hard_state() {
            let held = std::mem::take(&mut self.held_messages);
            self.out.extend(held.into_iter().map(Command::Send));
            if self.role == Role::Candidate {
                self.maybe_win_election();
            }
        }
    }

    /// A retried session append: answered with its original once that is
    /// committed (a leader's log holds it until then: it never truncates).
    fn answer_duplicate(&mut self, request_id: RequestId, batch: SessionBatch) {
        if batch.last_index <= self.log.committed_index() {
            let SessionBatch { first_index, last_index, term, .. } = batch;
            self.reply(ClientReply::Duplicate { request_id, first_index, last_index, term });
        } else {
            self.duplicates.push((request_id, batch));
        }
    }

    /// Hands newly committed entries to the host and answers the proposals
    /// and reads they complete.
    pub(super) fn apply_committed(&mut self) {
        let entries = self.log.take_unapplied();
        if !entries.is_empty() {
            self.out.push(Command::Apply(entries));
        }
        self.compact_configs();
        let committed_index = self.log.committed_index();
        self.sessions.commit_to(committed_index);
        if !self.duplicates.is_empty() {
            let (done, waiting) =
                std::mem::take(&mut self.duplicates).into_iter().partition(|(_, b)| b.last_index <= committed_index);
            self.duplicates = waiting;
            for (request_id, b) in done as Vec<(RequestId, SessionBatch)> {
                let (first_index, last_index, term) = (b.first_index, b.last_index, b.term);
                self.reply(ClientReply::Duplicate { request_id, first_index, last_index, term });
            }
        }
        while let Some(proposal) = self.proposals.front().copied() {
            if proposal.last_index > committed_index {
                break;
            }
            self.proposals.pop_front();
            let term = self.log.term_at(proposal.last_index).expect("committed entry present");
            assert_eq!(term, self.term, "a pending proposal is from this leader's term");
            self.reply(ClientReply::Committed {
                request_id: proposal.request_id,
                first_index: proposal.first_index,
                last_index: proposal.last_index,
                term,
            });
        }
        if self.role == Role::Leader {
            self.on_commit_for_reads();
        }
    }

    fn on_message(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id {
            return;
        }
        if !self.accepts_from(message.from, &message.body) || !message.is_well_formed() {
            // Malformed input from the network is dropped, never a panic.
            return;
        }
        if message.term > self.term {
            match message.body {
                // A pre-vote never changes anyone's term.
                MessageBody::PreVoteRequest { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::VoteRequest { leadership_transfer: false, .. } if self.in_leader_lease() => {
                    // We heard from a live leader within the minimum election
                    // timeout: ignore the disruptive candidate (thesis §4.2.3).
                    return;
                }
                MessageBody::AppendRequest { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::TimeoutNow
                | MessageBody::LogStart { .. } => {
                    self.become_follower(message.term, Some(message.from));
                }
                MessageBody::VoteRequest { .. } if self.role == Role::Follower => {
                    // Raft Figure 2: the election timer restarts on a leader's
                    // append or a granted vote, not on a candidate's higher
                    // term. Restarting it here let a candidate whose log can
                    // never win hold back, round after round, the only node
                    // that could (simulation seed 671 with a wiped third node).
                    let timer = (self.election_elapsed_ticks, self.election_timeout_ticks);
                    self.become_follower(message.term, None);
                    (self.election_elapsed_ticks, self.election_timeout_ticks) = timer;
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            self.on_stale_message(message);
            return;
        }
        match message.body {
            MessageBody::PreVoteRequest { last_log_index, last_log_term } => {
                self.on_pre_vote_request(message.from, message.term, last_log_term, last_log_index)
            }
            MessageBody::PreVoteResponse { granted } => self.on_pre_vote_response(message.from, message.term, granted),
            MessageBody::VoteRequest { last_log_index, last_log_term, .. } => {
                self.on_vote_request(message.from, last_log_term, last_log_index)
            }
            MessageBody::VoteResponse { granted } => self.on_vote_response(message.from, granted),
            MessageBody::AppendRequest { prev_log_index, prev_log_term, entries, leader_commit_index } => {
                self.on_append_request(message.from, prev_log_index, prev_log_term, entries, leader_commit_index)
            }
            MessageBody::AppendResponse { result } => self.on_append_response(message.from, result),
            MessageBody::Heartbeat { leader_commit_index, round } => {
                self.on_heartbeat(message.from, leader_commit_index, round)
            }
            MessageBody::HeartbeatResponse { round, match_index } => {
                self.on_heartbeat_response(message.from, round, match_index)
            }
            MessageBody::TimeoutNow => self.on_timeout_now(message.from),
            MessageBody::LogStart { start, leader_commit_index, membership, sessions } => {
                self.on_log_start(message.from, start, leader_commit_index, membership, sessions)
            }
        }
    }

    /// A message from an older term: tell leaders and candidates about our
    /// term so they step down; drop everything else.
    fn on_stale_message(&mut self, message: Message) {
        let body = match message.body {
            MessageBody::AppendRequest { .. } | MessageBody::Heartbeat { .. } | MessageBody::LogStart { .. } => {
                MessageBody::HeartbeatResponse { round: 0, match_index: 0 }
            }
            MessageBody::PreVoteRequest { .. } => MessageBody::PreVoteResponse { granted: false },
            MessageBody::VoteRequest { .. } => MessageBody::VoteResponse { granted: false },
            _ => return,
        };
        self.send(message.from, body);
    }

    /// Followers: a leader was heard from within the minimum election timeout.
    /// Leaders: always (they are their own leader). Only with check-quorum.
    ///
    /// With lease reads, a node that has just (re)started also counts as in
    /// lease for its first `election_timeout_min_ticks`: it may have
    /// acknowledged a lease round just before it crashed, and forgot it.
    pub(super) fn in_leader_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        let just_started = self.config.lease.is_some() && self.now_ticks < self.config.election_timeout_min_ticks;
        let heard_from_leader = self.leader_id.is_some()
            && (self.role == Role::Leader || self.election_elapsed_ticks < self.config.election_timeout_min_ticks);
        just_started || heard_from_leader
    }

    fn debug_check(&self) {
        assert!(self.saved_meta.term <= self.term);
        debug_assert!(self.role != Role::Leader || self.leader_id == Some(self.id));
        debug_assert!(self.role == Role::Leader || (self.proposals.is_empty() && self.transfer.is_none()));
        debug_assert!(self.log.committed_index() <= self.log.last_index());
        debug_assert!(self.log.applied_index() == self.log.committed_index());
        debug_assert!(self.role != Role::Leader || self.progress.keys().copied().eq(self.targets.iter().copied()));
        debug_assert!(self
            .configs
            .records()
            .first()
            .is_none_or(|r| r.index <= self.log.committed_index().max(self.log.start().prev_index)));
        for pr in self.progress.values() {
            debug_assert!(pr.match_index < pr.next_index, "{pr:?}");
            debug_assert!(pr.next_index <= self.log.last_index() + 1, "{pr:?}");
        }
    }
}
