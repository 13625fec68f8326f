//! The simulation driver: a cluster of [`RaftCore`]s over a simulated
//! network, disks, clock and clients, all derived from one seed.
//!
//! Time is in simulated milliseconds; each node ticks every `TICK_MS` ± 10 %
//! (clock drift). The run has two phases:
//! 1. *Faults*: `events` events with clients proposing (single, batch and
//!    admin entries), reading and transferring leadership throughout, while faults strike
//!    at random: partitions (symmetric, one-way, isolating the leader),
//!    heals, crashes with restarts (see `storage` for what survives),
//!    process pauses (the host catches up on missed ticks when it resumes),
//!    and changing drop/duplicate rates. Per seed, links are fast or slow
//!    (delays up to 12 ticks) and disks fast or slow (up to 8 ticks).
//!    Most seeds also purge: on a tick a node may purge its log up to a
//!    random point at most the core's purge limit, a leader holding back
//!    for its followers on some seeds and not on others, so that followers
//!    fall behind leaders' log starts and are sent them.
//!    Half the seeds (chosen apart from the rest, so the other half replay
//!    as before) run a state machine on every node (`machine`): nodes take
//!    snapshots at random ticks, purge only up to their newest, and a
//!    follower sent a log start past what its state machine applied pulls
//!    a snapshot from a peer in checksummed chunks (some corrupted on the
//!    way), through crashes that cut its partial file, resuming from the
//!    byte it reached; it does not campaign until installed.
//! 2. *Heal*: every node restarted, every link healed, no drops, no more
//!    crashes or clients. Within `LEADER_BOUND_ELECTION_TIMEOUTS` maximum
//!    election timeouts one leader must be followed by all nodes; from then on the logs must keep moving (never
//!    stand still for `STALL_BOUND_TICKS`) until they are identical, fully
//!    committed and durable, and every request to a live node is answered.
//!
//! Every checker in `checkers` runs on what each event changed. Setting
//! `SIM_DEBUG` prints each node's state and replication progress when a
//! liveness check fails.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkers::{names, Checkers, Violation};
use super::machine::{serve, SimMachine, CHUNK_BYTES};
use super::network::SimNetwork;
use super::storage::SimDisk;
use crate::snapshot_pull::{PullStep, SnapshotMessage, SnapshotPull};
use crate::{
    ClientReply, Command, Config, Event, InjectedBugs, LeaseConfig, LogIndex, LogStart, MembershipChange, Message,
    NodeId, RaftCore, RequestId, RestoredState, Role,
};

/// Simulated milliseconds per tick.
pub const TICK_MS: u64 = 10;
/// Ticks allowed, after the heal, for one leader to be followed by all
/// nodes, in maximum election timeouts.
pub const LEADER_BOUND_ELECTION_TIMEOUTS: u64 = 15;
/// Once a leader is followed by all, the logs must keep making progress
/// (some node's commit, durable or last index moves) at least this often
/// until they converge. A backlog shipped through a tiny window over a slow
/// link may take long, but it never stands still.
pub const STALL_BOUND_TICKS: u64 = 300;
/// Absolute bound on the heal phase.
pub const CONVERGENCE_BOUND_TICKS: u64 = 50_000;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// The seed everything derives from.
    pub seed: u64,
    /// Events in the fault phase.
    pub events: u64,
    /// Known bugs to re-introduce.
    pub bugs: InjectedBugs,
    /// Host bug: after a pause, resume ticking without first delivering the
    /// ticks that were missed (the host contract in `raft::read_index`).
    pub host_skips_tick_catch_up: bool,
    /// Host bug: a follower sent a log start past its state machine jumps
    /// its state machine to the start instead of installing a snapshot.
    pub host_skips_snapshot_install: bool,
    /// Host bug: a node whose disk was wiped restarts as its old voter,
    /// with no vote and no log (what a server did before bootstraps were
    /// explicit), instead of staying out until the operator replaces it.
    pub host_rejoins_wiped_node: bool,
}

impl SimOptions {
    /// A correct run of `seed` with `events` fault-phase events.
    pub fn new(seed: u64, events: u64) -> Self {
        SimOptions {
            seed,
            events,
            bugs: InjectedBugs::default(),
            host_skips_tick_catch_up: false,
            host_skips_snapshot_install: false,
            host_rejoins_wiped_node: false,
        }
    }
}

/// What a passing run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Cluster size.
    pub node_count: usize,
    /// Events processed, both phases.
    pub events_run: u64,
    /// Leaders elected (distinct terms with a leader).
    pub leaders_elected: u64,
    /// Entries acknowledged to clients.
    pub acked_entries: usize,
    /// Reads answered.
    pub reads_served: u64,
    /// Transfers that handed over.
    pub transfers_done: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Purges of a log prefix.
    pub purges: u64,
    /// Leaders' log starts installed by followers.
    pub log_starts_installed: u64,
    /// Seeds with a state machine: snapshots taken.
    pub snapshots_taken: u64,
    /// Snapshots fetched from a peer and installed.
    pub snapshots_installed: u64,
    /// Fetches that went on from a partial file after a crash.
    pub installs_resumed: u64,
    /// Chunks that failed their checksum and were fetched again.
    pub corrupt_chunks: u64,
    /// Fetched files that failed the whole-file checksum and began again.
    pub whole_file_mismatches: u64,
    /// Membership changes committed.
    pub membership_changes: u64,
    /// Membership changes the leader refused.
    pub membership_refusals: u64,
    /// Producer-session appends answered as committed (or as duplicates).
    pub session_appends: u64,
    /// Session appends refused (fenced, out of order, too old: stale retries).
    pub session_refusals: u64,
    /// Disks wiped (all durable state lost).
    pub wipes: u64,
    /// Ticks from the heal until one leader was followed by all.
    pub ticks_to_leader: u64,
    /// Ticks from the heal until the cluster converged.
    pub ticks_to_converge: u64,
}

#[derive(Clone, Debug)]
enum Action {
    /// (node, incarnation, tick chain generation)
    Tick(NodeId, u32, u32),
    Deliver(Message),
    /// (from, to, message) between hosts about snapshots.
    DeliverSnapshot(NodeId, NodeId, SnapshotMessage),
    DiskSync(NodeId, u32),
    MetaSync(NodeId, u32),
    Client,
    Fault,
    Restart(NodeId),
    /// A paused node wakes up: deliver the ticks it missed, then tick on.
    Resume(NodeId, u32, u64),
    /// An event for a node that was paused when it arrived.
    Deferred(NodeId, u32, Event),
    /// Crash this node if it is still leader of this term: short-lived
    /// leaders leave the divergent, uncommitted tails of Figure 8 behind.
    CrashLeader(NodeId, u64),
    /// An operator's membership change at this node (a script that goes
    /// on with its change at the new leader right after a failover).
    Operator(NodeId),
}

impl Action {
    /// The node whose process handles this action, if any.
    fn node(&self) -> Option<NodeId> {
        match self {
            Action::Tick(id, ..) | Action::DiskSync(id, _) | Action::MetaSync(id, _) | Action::Deferred(id, ..) => {
                Some(*id)
            }
            Action::Deliver(message) => Some(message.to),
            Action::DeliverSnapshot(_, to, _) => Some(*to),
            Action::Client
            | Action::Fault
            | Action::Restart(_)
            | Action::Resume(..)
            | Action::CrashLeader(..)
            | Action::Operator(_) => None,
        }
    }
}

struct Scheduled {
    at_ms: u64,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (time, sequence).
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

struct SimNode {
    core: Option<RaftCore>,
    disk: SimDisk,
    incarnation: u32,
    disk_sync_scheduled: bool,
    meta_sync_scheduled: bool,
    was_leader_of_term: Option<u64>,
    restored: Option<RestoredState>,
    /// The process is stopped (SIGSTOP) until then; events wait for it.
    paused_until_ms: u64,
    tick_generation: u32,
    /// Seeds with a state machine: its state (lost on a crash).
    machine: SimMachine,
    /// A snapshot fetch under way.
    pull: Option<SnapshotPull>,
    /// Decommissioned for good (removed, or its disk was wiped): never
    /// restarted, and not expected to converge.
    gone: bool,
}

impl SimNode {
    /// A node with an empty disk, not started.
    fn empty() -> SimNode {
        SimNode {
            core: None,
            disk: SimDisk::default(),
            incarnation: 0,
            disk_sync_scheduled: false,
            meta_sync_scheduled: false,
            was_leader_of_term: None,
            restored: Some(RestoredState::default()),
            paused_until_ms: 0,
            tick_generation: 0,
            machine: SimMachine::default(),
            pull: None,
            gone: false,
        }
    }
}

#[derive(Clone, Debug)]
enum ClientOp {
    Propose(Vec<Bytes>),
    /// An append of producer `producer`'s session.
    Session {
        producer: usize,
        epoch: u32,
        seq: u64,
        payloads: Vec<Bytes>,
    },
    Read {
        acked_before: LogIndex,
    },
    Transfer,
    Member(MembershipChange),
}

/// A client with a producer session: one append at a time, retried with
/// the same sequence until it is answered as committed.
#[derive(Debug)]
struct SimProducer {
    id: u64,
    epoch: u32,
    next_seq: u64,
    /// The append not yet answered as committed: (seq, payloads, last sent).
    current: Option<(u64, Vec<Bytes>, u64)>,
}

struct Outstanding {
    node: NodeId,
    op: ClientOp,
}

/// One simulation run.
pub struct Simulation {
    options: SimOptions,
    rng: ChaCha8Rng,
    config: Config,
    /// The cluster's bootstrap voters.
    bootstrap: Vec<NodeId>,
    /// Every node that is not gone, in id order.
    ids: Vec<NodeId>,
    /// The next node id an operator adds (ids are never reused).
    next_id: NodeId,
    /// This seed changes the membership and wipes disks.
    reconfig: bool,
    /// Decisions about membership, drawn apart from `rng` so that seeds
    /// without changes run as they did before there were any.
    member_rng: ChaCha8Rng,
    /// Each node's tick period: `TICK_MS` ± 10 %, the clock drift the lease's
    /// margin (2 of 10 ticks) must absorb.
    tick_period_ms: BTreeMap<NodeId, u64>,
    nodes: BTreeMap<NodeId, SimNode>,
    network: SimNetwork,
    queue: BinaryHeap<Scheduled>,
    now_ms: u64,
    seq: u64,
    disk_latency_max_ms: u64,
    client_interval_max_ms: u64,
    fault_interval_max_ms: u64,
    /// Chance that a newly elected leader crashes within a few ticks.
    leader_crash_percent: u32,
    /// Chance per tick that a node purges its log (0: never).
    purge_per_mille: u32,
    /// Leaders hold their purges back for their followers.
    purge_holds_for_followers: bool,
    /// Every node runs a state machine.
    machines: bool,
    /// Chance per tick that a node snapshots its state machine.
    snapshot_per_mille: u32,
    /// Chance that a snapshot chunk is damaged on the way.
    corrupt_chunk_per_mille: u32,
    healing: bool,
    checkers: Checkers,
    next_request_id: RequestId,
    next_payload: u64,
    outstanding: BTreeMap<RequestId, Outstanding>,
    leader_guess: Option<NodeId>,
    /// Clients with producer sessions, and their decisions' own randomness.
    producers: Vec<SimProducer>,
    session_rng: ChaCha8Rng,
    report: SimReport,
}

impl Simulation {
    /// Builds a cluster; every choice comes from `options.seed`.
    pub fn new(options: SimOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let node_count = [1, 3, 3, 5, 5][rng.gen_range(0..5)];
        let voters: Vec<NodeId> = (1..=node_count as u64).collect();
        // Mostly fast links and disks; some seeds have slow ones.
        let max_delay_ms =
            if rng.gen_bool(0.2) { rng.gen_range(1..=12 * TICK_MS) } else { rng.gen_range(1..=3 * TICK_MS) };
        let disk_latency_max_ms =
            if rng.gen_bool(0.2) { rng.gen_range(1..=8 * TICK_MS) } else { rng.gen_range(1..=2 * TICK_MS) };
        // Raft's timing requirement (§5.6): broadcast time ≪ election timeout.
        // A vote round trip is two message delays plus two metadata saves;
        // the minimum election timeout is at least twice that.
        let round_trip_ticks = (2 * max_delay_ms + 2 * disk_latency_max_ms).div_ceil(TICK_MS);
        let election_timeout_min_ticks = (2 * round_trip_ticks).max(10);
        // A host that forgets missed ticks only hurts lease reads: test it
        // where they are on.
        let check_quorum = rng.gen_bool(0.8) || options.host_skips_tick_catch_up;
        let config = Config {
            election_timeout_min_ticks,
            election_timeout_max_ticks: 2 * election_timeout_min_ticks,
            heartbeat_ticks: rng.gen_range(1..=3),
            max_inflight_entries: rng.gen_range(2..=32),
            max_inflight_bytes: rng.gen_range(256..=4096),
            max_entries_per_append: rng.gen_range(1..=16),
            // Mostly tiny, so that followers are often served from storage.
            max_log_memory_bytes: if rng.gen_bool(0.7) { rng.gen_range(0..=512) } else { u64::MAX },
            pre_vote: rng.gen_bool(0.8),
            check_quorum,
            lease: (check_quorum && (rng.gen_bool(0.5) || options.host_skips_tick_catch_up))
                .then_some(LeaseConfig { drift_margin_ticks: 2 }),
            preferred_leader: rng.gen_bool(0.2).then(|| rng.gen_range(1..=node_count as u64)),
            promote_max_lag_entries: 64,
            promote_max_lag_bytes: u64::MAX,
            sessions: crate::SessionLimits::default(),
            injected_bugs: options.bugs,
        };
        // Drawn apart from `rng`, so that seeds without a state machine run
        // exactly as they did before there was one.
        let mut side = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed_0f5a_a5f0_de11);
        let machines = side.gen_bool(0.5) || options.host_skips_snapshot_install;
        let snapshot_per_mille = [10, 50, 200][side.gen_range(0..3)];
        let corrupt_chunk_per_mille = [0, 20, 100][side.gen_range(0..3)];
        let mut member_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x3e3b_e125_c4a9_6e01);
        let session_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x1de3_9073_17ab_5e55);
        let bugs = options.bugs;
        let reconfig = member_rng.gen_bool(0.5)
            || options.host_rejoins_wiped_node
            || bugs.change_before_own_term_commit
            || bugs.concurrent_membership_changes;
        let mut network = SimNetwork::default();
        network.drop_per_mille = rng.gen_range(0..100);
        network.duplicate_per_mille = rng.gen_range(0..50);
        network.max_delay_ms = max_delay_ms;
        let mut sim = Simulation {
            options,
            config,
            bootstrap: voters.clone(),
            ids: voters.clone(),
            next_id: node_count as u64 + 1,
            reconfig,
            member_rng,
            tick_period_ms: voters.iter().map(|&id| (id, rng.gen_range(TICK_MS - 1..=TICK_MS + 1))).collect(),
            nodes: BTreeMap::new(),
            network,
            queue: BinaryHeap::new(),
            now_ms: 0,
            seq: 0,
            disk_latency_max_ms,
            client_interval_max_ms: rng.gen_range(2..=4 * TICK_MS),
            fault_interval_max_ms: rng.gen_range(5..=100) * TICK_MS,
            leader_crash_percent: [0, 10, 30][rng.gen_range(0..3)],
            purge_per_mille: [0, 5, 20, 100][rng.gen_range(0..4)],
            purge_holds_for_followers: rng.gen_bool(0.5),
            machines,
            snapshot_per_mille,
            corrupt_chunk_per_mille,
            healing: false,
            checkers: Checkers::default(),
            next_request_id: 1,
            next_payload: 1,
            outstanding: BTreeMap::new(),
            leader_guess: None,
            producers: (1..=3).map(|k| SimProducer { id: k * 7919, epoch: 0, next_seq: 0, current: None }).collect(),
            session_rng,
            report: SimReport { node_count, ..SimReport::default() },
            rng,
        };
        for &id in &voters {
            let node = SimNode::empty();
            sim.nodes.insert(id, node);
            sim.start_node(id).expect("an empty node starts");
        }
        sim.schedule(1, Action::Client);
        let fault_at = sim.rng.gen_range(1..=sim.fault_interval_max_ms);
        sim.schedule(fault_at, Action::Fault);
        sim
    }

    /// The Raft configuration this seed chose.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs both phases; the first violation ends the run.
    pub fn run(mut self) -> Result<SimReport, Violation> {
        for _ in 0..self.options.events {
            self.run_one()?;
        }
        self.heal_everything();
        let heal_ms = self.now_ms;
        let mut leader_found = false;
        let mut last_progress = (Vec::new(), heal_ms);
        loop {
            self.run_one()?;
            if !leader_found && self.leader_followed_by_all().is_some() {
                leader_found = true;
                self.report.ticks_to_leader = (self.now_ms - heal_ms) / TICK_MS;
            }
            if self.converged() {
                break;
            }
            let positions: Vec<_> = self
                .nodes
                .values()
                .filter_map(|n| n.core.as_ref().map(|c| c.status()))
                .map(|s| (s.term, s.committed_index, s.durable_index, s.last_index))
                .collect();
            if positions != last_progress.0 {
                last_progress = (positions, self.now_ms);
            }
            let elapsed_ticks = (self.now_ms - heal_ms) / TICK_MS;
            let stalled_ticks = (self.now_ms - last_progress.1) / TICK_MS;
            let late = if leader_found {
                stalled_ticks > STALL_BOUND_TICKS || elapsed_ticks > CONVERGENCE_BOUND_TICKS
            } else {
                elapsed_ticks > LEADER_BOUND_ELECTION_TIMEOUTS * self.config.election_timeout_max_ticks
            };
            if late && self.logs_converged() {
                if std::env::var("SIM_DEBUG").is_ok() {
                    for (id, node) in &self.nodes {
                        if let Some(core) = &node.core {
                            eprintln!("node {id}: {:?} voters {:?} reads {:?}", core.status(), core.voters, core.reads);
                        }
                    }
                }
                return Err(Violation {
                    checker: names::REQUESTS_ANSWERED,
                    detail: format!(
                        "logs converged but requests are still unanswered {elapsed_ticks} ticks after the heal: {:?}",
                        self.outstanding.iter().map(|(id, o)| (id, o.node, &o.op)).collect::<Vec<_>>()
                    ),
                });
            }
            if late {
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!(
                        "config {:?}; network max delay {} ms; disk latency max {} ms",
                        self.config, self.network.max_delay_ms, self.disk_latency_max_ms
                    );
                    for (id, node) in &self.nodes {
                        if let Some(core) = &node.core {
                            eprintln!(
                                "node {id}: {:?} disk_sync_scheduled {} unsynced {} voters {:?} learners {:?} gone {} pulling {:?} suspended {}",
                                core.status(),
                                node.disk_sync_scheduled,
                                node.disk.has_unsynced_entries(),
                                core.membership().voters().collect::<Vec<_>>(),
                                core.membership().learners().collect::<Vec<_>>(),
                                node.gone,
                                node.pull.as_ref().map(|p| (p.source(), p.min_index())),
                                core.campaigns_suspended()
                            );
                            for peer in self.nodes.keys() {
                                if let Some(p) = core.progress(*peer) {
                                    eprintln!("  progress {peer}: {p:?}");
                                }
                            }
                        }
                    }
                }
                return Err(Violation {
                    checker: names::LIVENESS,
                    detail: format!(
                        "{} {elapsed_ticks} ticks after the heal: {:?}",
                        if leader_found { "logs not converged" } else { "no leader followed by all" },
                        self.nodes.values().filter_map(|n| n.core.as_ref().map(|c| c.status())).collect::<Vec<_>>()
                    ),
                });
            }
        }
        self.report.ticks_to_converge = (self.now_ms - heal_ms) / TICK_MS;
        self.check_after_convergence()?;
        self.report.acked_entries = self.checkers.acked_count();
        Ok(self.report)
    }

    fn schedule(&mut self, delay_ms: u64, action: Action) {
        self.seq += 1;
        self.queue.push(Scheduled { at_ms: self.now_ms + delay_ms, seq: self.seq, action });
    }

    fn run_one(&mut self) -> Result<(), Violation> {
        let next = self.queue.pop().expect("ticks keep the queue non-empty");
        self.now_ms = next.at_ms;
        self.report.events_run += 1;
        if let Some(id) = next.action.node() {
            let paused_until_ms = self.nodes[&id].paused_until_ms;
            if self.now_ms < paused_until_ms {
                // A stopped process handles nothing; what arrives waits (in
                // socket buffers, completion queues) until it resumes. Its
                // tick chain ends here; `Resume` starts a new one.
                if !matches!(next.action, Action::Tick(..)) {
                    self.seq += 1;
                    self.queue.push(Scheduled { at_ms: paused_until_ms, seq: self.seq, action: next.action });
                }
                return Ok(());
            }
        }
        match next.action {
            Action::Tick(id, incarnation, generation) => {
                let node = &self.nodes[&id];
                if node.incarnation == incarnation && node.tick_generation == generation && node.core.is_some() {
                    self.schedule(self.tick_period_ms[&id], Action::Tick(id, incarnation, generation));
                    self.step(id, Event::Tick)?;
                    if self.machines {
                        self.machine_tick(id);
                    }
                    if self.purge_per_mille > 0 && self.rng.gen_range(0..1000) < self.purge_per_mille {
                        self.purge(id)?;
                    }
                    if self.session_rng.gen_range(0..100) < 3 {
                        // The host's periodic save of the committed table.
                        let node = self.nodes.get_mut(&id).expect("node");
                        node.disk.sessions = node.core.as_ref().expect("live").sessions().table().clone();
                    }
                }
            }
            Action::Resume(id, incarnation, missed_ticks) => {
                let node = self.nodes.get_mut(&id).expect("node");
                if node.incarnation == incarnation && node.core.is_some() {
                    // The host catches up on the ticks it missed before
                    // anything else: its clock kept running while stopped.
                    node.tick_generation += 1;
                    let generation = node.tick_generation;
                    let missed_ticks = if self.options.host_skips_tick_catch_up { 0 } else { missed_ticks };
                    for _ in 0..missed_ticks {
                        self.step(id, Event::Tick)?;
                    }
                    self.schedule(self.tick_period_ms[&id], Action::Tick(id, incarnation, generation));
                }
            }
            Action::CrashLeader(id, term) => {
                let status = self.nodes[&id].core.as_ref().map(|c| c.status());
                if !self.healing && status.is_some_and(|s| s.role == Role::Leader && s.term == term) {
                    self.crash_node(id);
                }
            }
            Action::Deferred(id, incarnation, event) => {
                if self.nodes[&id].incarnation == incarnation && self.nodes[&id].core.is_some() {
                    self.step(id, event)?;
                }
            }
            Action::Deliver(message) => {
                let up = self.network.link_up(message.from, message.to);
                if up && self.nodes[&message.to].core.is_some() {
                    let to = message.to;
                    self.step(to, Event::Message(message))?;
                }
            }
            Action::DeliverSnapshot(from, to, message) => {
                if self.network.link_up(from, to) && self.nodes[&to].core.is_some() {
                    self.on_snapshot_message(from, to, message)?;
                }
            }
            Action::DiskSync(id, incarnation) => {
                let node = self.nodes.get_mut(&id).expect("node");
                if node.incarnation == incarnation {
                    node.disk_sync_scheduled = false;
                    if let Some((index, term)) = node.disk.sync_entries() {
                        self.step(id, Event::EntriesDurable { index, term })?;
                    }
                }
            }
            Action::MetaSync(id, incarnation) => {
                let node = self.nodes.get_mut(&id).expect("node");
                if node.incarnation == incarnation {
                    node.meta_sync_scheduled = false;
                    if let Some(hard_state) = node.disk.sync_meta() {
                        self.step(id, Event::MetaSaved(hard_state))?;
                    }
                }
            }
            Action::Client => {
                if !self.healing {
                    let delay = self.rng.gen_range(1..=self.client_interval_max_ms);
                    self.schedule(delay, Action::Client);
                    self.client_request()?;
                }
            }
            Action::Fault => {
                if !self.healing {
                    let delay = self.rng.gen_range(1..=self.fault_interval_max_ms);
                    self.schedule(delay, Action::Fault);
                    self.inject_fault();
                }
            }
            Action::Operator(id) => {
                if !self.healing && self.nodes[&id].core.is_some() {
                    self.operator_request(id)?;
                }
            }
            Action::Restart(id) => {
                if self.nodes[&id].core.is_none() && !self.nodes[&id].gone {
                    self.start_node(id)?;
                }
            }
        }
        Ok(())
    }

    fn start_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let core_seed = self.rng.gen();
        let node = self.nodes.get_mut(&id).expect("node");
        let restored = node.restored.take().expect("a stopped node has what survived");
        // Bootstrap members know the bootstrap; a node added later joins.
        let voters = if self.bootstrap.contains(&id) { self.bootstrap.clone() } else { Vec::new() };
        let core = RaftCore::new(id, voters, self.config.clone(), restored, ChaCha8Rng::seed_from_u64(core_seed))
            .expect("valid simulation config");
        // The host rewrites its configuration file to what the core kept.
        node.disk.configs = core.config_history().clone();
        node.core = Some(core);
        node.incarnation += 1;
        node.disk_sync_scheduled = false;
        node.meta_sync_scheduled = false;
        node.was_leader_of_term = None;
        node.paused_until_ms = 0;
        node.tick_generation += 1;
        let (incarnation, generation) = (node.incarnation, node.tick_generation);
        let phase = self.rng.gen_range(1..=TICK_MS);
        self.schedule(phase, Action::Tick(id, incarnation, generation));
        if self.machines {
            self.restore_machine(id)?;
        }
        Ok(())
    }

    fn crash_node(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.core.take().is_none() {
            return;
        }
        node.incarnation += 1;
        node.restored = Some(node.disk.crash(&mut self.rng));
        self.report.crashes += 1;
        // Requests held by the dead process are failed by its host.
        self.outstanding.retain(|_, o| o.node != id);
        let down_ms = self.rng.gen_range(TICK_MS..=50 * TICK_MS);
        self.schedule(down_ms, Action::Restart(id));
    }

    /// The host purges `id`'s log up to a random point at most the core's
    /// purge limit (held back for followers on some seeds), then tells it.
    fn purge(&mut self, id: NodeId) -> Result<(), Violation> {
        let core = self.nodes[&id].core.as_ref().expect("live node");
        let mut limit = core.purge_limit();
        if self.purge_holds_for_followers && core.status().role == Role::Leader {
            for &peer in core.membership().members.keys().filter(|&&p| p != id) {
                limit = limit.min(core.progress(peer).map_or(0, |p| p.match_index));
            }
        }
        if self.machines {
            // Never past what a snapshot holds.
            limit = limit.min(self.nodes[&id].disk.newest_snapshot_index());
        }
        let first = core.log().first_index();
        if limit < first {
            return Ok(());
        }
        let target = self.rng.gen_range(first..=limit) + 1;
        let prev_term = core.log().term_at(target - 1).expect("a durable entry has a term");
        self.checkers.log_start(id, LogStart { prev_index: target - 1, prev_term }, "purged")?;
        // The producer sessions of the purged entries are saved first.
        let table = core.sessions().table().clone();
        assert!(table.as_of >= target - 1, "the committed table reaches the purge");
        let disk = &mut self.nodes.get_mut(&id).expect("node").disk;
        disk.sessions = table;
        disk.purge_to(target);
        self.report.purges += 1;
        self.step(id, Event::LogPurged { first_index: target })
    }

    /// Steps one node and runs every checker on what the step changed.
    fn step(&mut self, id: NodeId, event: Event) -> Result<(), Violation> {
        let commands = {
            let node = self.nodes.get_mut(&id).expect("node");
            let core = node.core.as_mut().expect("live node");
            core.step_with(event, &node.disk)
        };
        for command in commands {
            self.execute(id, command)?;
        }
        let node = &self.nodes[&id];
        let core = node.core.as_ref().expect("live node");
        let status = core.status();
        self.checkers.election_safety(&status)?;
        self.checkers.commit_monotonic(id, node.incarnation, status.committed_index)?;
        self.checkers.committed_agrees(id, core.log())?;
        self.checkers.installer_never_leads(&status, node.pull.is_some())?;
        if status.role == Role::Leader && node.was_leader_of_term != Some(status.term) {
            self.checkers.leader_completeness(id, status.term, core.log())?;
            self.report.leaders_elected += 1;
            self.leader_guess = Some(id);
            if !self.healing && self.rng.gen_range(0..100) < self.leader_crash_percent {
                let delay_ms = self.rng.gen_range(1..=3 * TICK_MS);
                self.schedule(delay_ms, Action::CrashLeader(id, status.term));
            }
            if self.reconfig && !self.healing && self.member_rng.gen_range(0..100) < 30 {
                let delay_ms = self.member_rng.gen_range(0..=2 * TICK_MS);
                self.schedule(delay_ms, Action::Operator(id));
            }
            self.nodes.get_mut(&id).expect("node").was_leader_of_term = Some(status.term);
        }
        Ok(())
    }

    fn execute(&mut self, id: NodeId, command: Command) -> Result<(), Violation> {
        match command {
            Command::SaveMeta(hard_state) => {
                let node = self.nodes.get_mut(&id).expect("node");
                node.disk.save_meta(hard_state);
                if !node.meta_sync_scheduled {
                    node.meta_sync_scheduled = true;
                    let incarnation = node.incarnation;
                    let delay = self.rng.gen_range(1..=self.disk_latency_max_ms);
                    self.schedule(delay, Action::MetaSync(id, incarnation));
                }
            }
            Command::PersistEntries { truncate_from, entries } => {
                let status = self.nodes[&id].core.as_ref().expect("live").status();
                self.checkers.leader_append_only(&status, truncate_from)?;
                let node = self.nodes.get_mut(&id).expect("node");
                node.disk.persist(truncate_from, &entries);
                // The host's configuration file, by its rules (see `membership`).
                let core = node.core.as_ref().expect("live");
                if let Some(from) = truncate_from {
                    node.disk.configs.drop_truncated(from, core.config_history());
                }
                let durable_commit = core.log().committed_index().min(core.log().durable_index());
                node.disk.configs.compact(durable_commit);
                self.checkers.log_matching(id, &entries, &node.disk)?;
                if !node.disk_sync_scheduled {
                    node.disk_sync_scheduled = true;
                    let incarnation = node.incarnation;
                    let delay = self.rng.gen_range(1..=self.disk_latency_max_ms);
                    self.schedule(delay, Action::DiskSync(id, incarnation));
                }
            }
            Command::Send(message) => {
                for delay in self.network.route(message.from, message.to, &mut self.rng) {
                    self.schedule(delay, Action::Deliver(message.clone()));
                }
            }
            Command::Apply(entries) => {
                let term = self.nodes[&id].core.as_ref().expect("live").status().term;
                let leaders: Vec<_> = self
                    .nodes
                    .iter()
                    .filter_map(|(&n, node)| node.core.as_ref().map(|c| (n, c)))
                    .filter(|(_, c)| c.status().role == Role::Leader)
                    .map(|(n, c)| (n, c.status().term, c.log()))
                    .collect();
                self.checkers.state_machine_safety(id, term, &entries, &leaders)?;
                self.checkers.session_applied(id, &entries)?;
                if self.machines {
                    self.feed_machine(id, &entries)?;
                }
            }
            Command::Reply(reply) => self.on_reply(id, reply)?,
            Command::SaveConfig(record) => self.nodes.get_mut(&id).expect("node").disk.configs.append_written(record),
            Command::SaveSessions(table) => self.nodes.get_mut(&id).expect("node").disk.sessions = table,
            Command::InstallLogStart(start) => {
                self.checkers.log_start(id, start, "installed a leader's log start")?;
                let node = self.nodes.get_mut(&id).expect("node");
                node.disk.reset(start);
                let record = node.disk.configs.latest_record().cloned().expect("recorded before the install");
                node.disk.configs.reset(record);
                self.report.log_starts_installed += 1;
                if self.machines {
                    self.machine_behind_start(id, start)?;
                }
            }
        }
        Ok(())
    }

    /// Seeds with a state machine, on every tick: maybe snapshot it; ask
    /// again for a chunk whose answer is late.
    fn machine_tick(&mut self, id: NodeId) {
        let peers: Vec<NodeId> = self.ids.iter().copied().filter(|&p| p != id).collect();
        let roll = self.rng.gen_range(0..1000);
        let node = self.nodes.get_mut(&id).expect("node");
        let leader = node.core.as_ref().expect("live").status().leader_id;
        if let Some(pull) = &mut node.pull {
            if let Some(request) = pull.tick(leader, &peers) {
                let to = pull.source();
                self.send_snapshot(id, to, request);
            }
            return;
        }
        if roll < self.snapshot_per_mille && node.machine.applied > node.disk.newest_snapshot_index() {
            let (snapshot, body) = node.machine.snapshot();
            node.disk.save_snapshot(snapshot, body);
            self.report.snapshots_taken += 1;
        }
    }

    /// A (re)started node's state machine: its newest snapshot, then the
    /// log replays the rest; if the log starts past that, it fetches one.
    fn restore_machine(&mut self, id: NodeId) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("node");
        node.machine =
            node.disk.snapshots.last().map_or_else(SimMachine::default, |(_, body)| SimMachine::restore(body));
        node.pull = None;
        let start = node.disk.start();
        if start.prev_index > node.machine.applied {
            return self.begin_pull(id, start.prev_index);
        }
        node.disk.partial = None;
        Ok(())
    }

    /// Hands committed entries to `id`'s state machine (none while it
    /// installs). The core hands over only what it holds in memory; the
    /// host reads what it skipped back from its log (as the server does).
    fn feed_machine(&mut self, id: NodeId, entries: &[crate::Entry]) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.pull.is_some() {
            return Ok(());
        }
        for entry in entries {
            while entry.index > node.machine.applied + 1 {
                let next = node.machine.applied + 1;
                let Some(missed) = node.disk.entry(next) else {
                    return Err(Violation {
                        checker: names::MACHINES_AGREE,
                        detail: format!(
                            "node {id} was handed index {} with its state machine at {}, and its log starts at {}",
                            entry.index,
                            node.machine.applied,
                            node.disk.start().first_index()
                        ),
                    });
                };
                node.machine.apply(missed);
                self.checkers.machine_state(id, next, node.machine.digest, "applied")?;
            }
            if entry.index == node.machine.applied + 1 {
                node.machine.apply(entry);
                self.checkers.machine_state(id, entry.index, node.machine.digest, "applied")?;
            }
        }
        Ok(())
    }

    /// `id` took a leader's log start: if its state machine is behind it, it
    /// needs a snapshot covering the start.
    fn machine_behind_start(&mut self, id: NodeId, start: LogStart) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("node");
        if start.prev_index <= node.machine.applied {
            return Ok(());
        }
        if self.options.host_skips_snapshot_install {
            // The bug: carry on as if the state covered the start.
            node.machine.applied = start.prev_index;
            node.machine.applied_term = start.prev_term;
            return Ok(());
        }
        if node.pull.as_ref().is_some_and(|p| p.min_index() >= start.prev_index) {
            return Ok(());
        }
        self.begin_pull(id, start.prev_index)
    }

    /// Starts (or goes on with, from the partial file) a fetch of a
    /// snapshot covering `min_index`; the node stops campaigning.
    fn begin_pull(&mut self, id: NodeId, min_index: LogIndex) -> Result<(), Violation> {
        let peers: Vec<NodeId> = self.ids.iter().copied().filter(|&p| p != id).collect();
        let retry_ticks = self.config.election_timeout_min_ticks as u32;
        let node = self.nodes.get_mut(&id).expect("node");
        let core = node.core.as_mut().expect("live");
        let Some(&first_peer) = peers.first() else {
            return Err(Violation {
                checker: names::MACHINES_AGREE,
                detail: format!("single node {id} lost the snapshot its log start needs (start {min_index})"),
            });
        };
        let source = core.status().leader_id.filter(|&l| l != id).unwrap_or(first_peer);
        let mut pull = SnapshotPull::new(min_index, source, CHUNK_BYTES, retry_ticks);
        if let Some((held, bytes)) = &node.disk.partial {
            pull = pull.resume(*held, bytes.len() as u64);
            if pull.progress().0.is_some() && !bytes.is_empty() {
                self.report.installs_resumed += 1;
            }
        }
        core.suspend_campaigns(true);
        let request = pull.request();
        node.pull = Some(pull);
        self.send_snapshot(id, source, request);
        Ok(())
    }

    fn send_snapshot(&mut self, from: NodeId, to: NodeId, message: SnapshotMessage) {
        for delay in self.network.route(from, to, &mut self.rng) {
            self.schedule(delay, Action::DeliverSnapshot(from, to, message.clone()));
        }
    }

    /// A host's snapshot message: a request is served from its files; a
    /// chunk or refusal goes to its fetch, if it has one.
    fn on_snapshot_message(&mut self, from: NodeId, to: NodeId, mut message: SnapshotMessage) -> Result<(), Violation> {
        if let SnapshotMessage::Request { .. } = message {
            if let Some(answer) = serve(&self.nodes[&to].disk.snapshots, &message) {
                self.send_snapshot(to, from, answer);
            }
            return Ok(());
        }
        if let SnapshotMessage::Chunk { data, .. } = &mut message {
            if !data.is_empty() && self.rng.gen_range(0..1000) < self.corrupt_chunk_per_mille {
                let mut damaged = data.to_vec();
                let k = self.rng.gen_range(0..damaged.len());
                damaged[k] ^= 1 << self.rng.gen_range(0..8);
                *data = Bytes::from(damaged);
            }
        }
        let node = self.nodes.get_mut(&to).expect("node");
        let Some(pull) = &mut node.pull else { return Ok(()) };
        let corrupt_before = pull.corrupt_chunks;
        let step = pull.on_message(from, message);
        self.report.corrupt_chunks += pull.corrupt_chunks - corrupt_before;
        match step {
            PullStep::Ignore => Ok(()),
            PullStep::Send(request) => {
                let source = pull.source();
                self.send_snapshot(to, source, request);
                Ok(())
            }
            PullStep::Write { id, offset, data, restart } => {
                node.disk.write_partial(id, offset, &data, restart);
                match pull.written(data.len() as u64) {
                    Err(request) => {
                        let source = pull.source();
                        self.send_snapshot(to, source, request);
                        Ok(())
                    }
                    Ok(done) => self.install_fetched(to, done),
                }
            }
        }
    }

    /// The whole file of `snapshot` is fetched: check it, save it, restore
    /// the state machine from it, and replay the log after it.
    fn install_fetched(&mut self, id: NodeId, snapshot: crate::SnapshotId) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("node");
        let (held, bytes) = node.disk.partial.take().expect("a fetched file");
        let whole = held == snapshot && crc32c::crc32c(&bytes) == snapshot.crc;
        if !whole || snapshot.index < node.disk.start().prev_index {
            self.report.whole_file_mismatches += u64::from(!whole);
            let pull = node.pull.as_mut().expect("fetching");
            let request = pull.restart();
            let source = pull.source();
            self.send_snapshot(id, source, request);
            return Ok(());
        }
        let body = Bytes::from(bytes);
        node.machine = SimMachine::restore(&body);
        node.disk.save_snapshot(snapshot, body);
        node.pull = None;
        let core = node.core.as_mut().expect("live");
        core.suspend_campaigns(false);
        self.report.snapshots_installed += 1;
        let applied = node.machine.applied;
        self.checkers.machine_state(id, applied, node.machine.digest, "installed a snapshot of")?;
        let node = &self.nodes[&id];
        let upto = node.core.as_ref().expect("live").log().applied_index();
        let entries: Vec<crate::Entry> = (applied + 1..=upto)
            .map(|i| node.disk.entry(i).cloned().expect("applied entries above a snapshot are in the log"))
            .collect();
        self.feed_machine(id, &entries)
    }

    fn on_reply(&mut self, id: NodeId, reply: ClientReply) -> Result<(), Violation> {
        let request_id = match &reply {
            ClientReply::Committed { request_id, .. }
            | ClientReply::Duplicate { request_id, .. }
            | ClientReply::ReadReady { request_id, .. }
            | ClientReply::TransferDone { request_id, .. }
            | ClientReply::Failed { request_id, .. } => *request_id,
        };
        let Some(outstanding) = self.outstanding.remove(&request_id) else {
            return Err(Violation {
                checker: names::REQUESTS_ANSWERED,
                detail: format!("node {id} answered unknown or already answered request {request_id}: {reply:?}"),
            });
        };
        match (reply, outstanding.op) {
            (ClientReply::Committed { first_index, last_index, term, .. }, ClientOp::Propose(payloads)) => {
                assert_eq!(last_index + 1 - first_index, payloads.len() as u64);
                let core = self.nodes[&id].core.as_ref().expect("live");
                let disk = &self.nodes[&id].disk;
                self.checkers.proposal_acked(id, (first_index, term), &payloads, core.log(), disk, true)?;
            }
            (
                reply @ (ClientReply::Committed { .. } | ClientReply::Duplicate { .. }),
                ClientOp::Session { producer, epoch, seq, payloads },
            ) => {
                let (ClientReply::Committed { first_index, last_index, term, .. }
                | ClientReply::Duplicate { first_index, last_index, term, .. }) = reply
                else {
                    unreachable!("matched above")
                };
                let fresh = matches!(reply, ClientReply::Committed { .. });
                assert_eq!(last_index + 1 - first_index, payloads.len() as u64);
                let core = self.nodes[&id].core.as_ref().expect("live");
                let disk = &self.nodes[&id].disk;
                self.checkers.proposal_acked(id, (first_index, term), &payloads, core.log(), disk, fresh)?;
                let producer_id = self.producers[producer].id;
                self.checkers.session_acked(id, (producer_id, epoch, seq), last_index, core.log(), disk)?;
                self.session_resolved(producer, epoch, seq);
                self.report.session_appends += 1;
            }
            (
                ClientReply::Failed { error: crate::ClientError::Session(refusal), .. },
                ClientOp::Session { producer, epoch, seq, .. },
            ) => {
                let p = &self.producers[producer];
                let current = p.epoch == epoch && p.current.as_ref().is_some_and(|c| c.0 == seq);
                // Every earlier append of this epoch committed, and this one
                // is the newest: a leader may lack the one before (a stale
                // leader of an older term does), but none may know of a later
                // append, a newer epoch or fail to find this one.
                let lagging =
                    matches!(refusal, crate::SessionRefusal::OutOfOrderSequence { expected } if expected < seq);
                if current && !lagging {
                    return Err(Violation {
                        checker: names::SESSION_ONCE,
                        detail: format!(
                            "node {id} refused producer {}'s current append (epoch {epoch}, seq {seq}): {refusal}",
                            p.id
                        ),
                    });
                }
                self.report.session_refusals += 1;
            }
            (ClientReply::ReadReady { read_index, .. }, ClientOp::Read { acked_before }) => {
                self.checkers.read_barrier(id, read_index, acked_before)?;
                self.report.reads_served += 1;
            }
            (ClientReply::TransferDone { .. }, ClientOp::Transfer) => self.report.transfers_done += 1,
            (ClientReply::Committed { .. }, ClientOp::Member(change)) => {
                self.report.membership_changes += 1;
                if let MembershipChange::Remove { id: removed } = change {
                    // Committed: the operator decommissions the node.
                    self.decommission(removed);
                }
            }
            (ClientReply::Failed { error, .. }, op) => {
                let definitely_not_applied = matches!(
                    error,
                    crate::ClientError::MembershipRefused(_)
                        | crate::ClientError::NotLeader { .. }
                        | crate::ClientError::TransferInProgress { .. }
                );
                if matches!(error, crate::ClientError::MembershipRefused(_)) {
                    self.report.membership_refusals += 1;
                }
                if let crate::ClientError::NotLeader { leader_hint } = error {
                    self.leader_guess = leader_hint;
                }
                if let ClientOp::Member(MembershipChange::AddLearner { id: added, .. }) = op {
                    if definitely_not_applied {
                        self.decommission(added);
                    }
                }
            }
            (reply, op) => {
                return Err(Violation {
                    checker: names::REQUESTS_ANSWERED,
                    detail: format!("node {id} answered {op:?} with {reply:?}"),
                })
            }
        }
        Ok(())
    }

    fn client_request(&mut self) -> Result<(), Violation> {
        let target = match self.leader_guess {
            Some(leader) if self.rng.gen_bool(0.8) => leader,
            _ => self.ids[self.rng.gen_range(0..self.ids.len())],
        };
        if self.nodes[&target].core.is_none() {
            self.leader_guess = None;
            return Ok(());
        }
        if self.reconfig && self.member_rng.gen_range(0..100) < 4 {
            return self.operator_request(target);
        }
        if self.session_rng.gen_range(0..100) < 25 {
            return self.session_request(target);
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let roll = self.rng.gen_range(0..100);
        let (op, event) = if roll < 15 {
            // Several requests that reach the leader together (the host batches them).
            let mut batch = Vec::new();
            for k in 0..self.rng.gen_range(2..=4) {
                let payloads = self.next_payloads();
                let id = request_id + k;
                if k > 0 {
                    self.next_request_id += 1;
                    self.outstanding.insert(id, Outstanding { node: target, op: ClientOp::Propose(payloads.clone()) });
                }
                batch.push(crate::Proposal::plain(id, payloads));
            }
            (ClientOp::Propose(batch[0].payloads.clone()), Event::ProposeBatch(batch))
        } else if roll < 75 {
            let payloads = self.next_payloads();
            (ClientOp::Propose(payloads.clone()), Event::Propose { request_id, payloads })
        } else if roll < 93 {
            (ClientOp::Read { acked_before: self.checkers.max_acked_index }, Event::ReadIndex { request_id })
        } else if roll < 95 {
            // An operator's command: one admin entry, acknowledged like a proposal.
            let payload = self.next_payloads().swap_remove(0);
            (ClientOp::Propose(vec![payload.clone()]), Event::ProposeAdmin { request_id, payload })
        } else {
            let target = self.ids[self.rng.gen_range(0..self.ids.len())];
            (ClientOp::Transfer, Event::TransferLeadership { request_id, target })
        };
        self.outstanding.insert(request_id, Outstanding { node: target, op });
        self.deliver_request(target, event)
    }

    /// A producer's append: its unanswered one again (a retry after a
    /// timeout, perhaps while the first attempt is still on its way), or
    /// its next one; now and then a new epoch, abandoning the unanswered.
    fn session_request(&mut self, target: NodeId) -> Result<(), Violation> {
        let k = self.session_rng.gen_range(0..self.producers.len());
        let retry_after_ms = self.session_rng.gen_range(1..=6) * TICK_MS;
        let bump = self.session_rng.gen_range(0..100) < 2;
        let fresh = self.next_payloads();
        let now_ms = self.now_ms;
        let p = &mut self.producers[k];
        if bump {
            (p.epoch, p.next_seq, p.current) = (p.epoch + 1, 0, None);
        }
        let (seq, payloads) = match &mut p.current {
            Some((_, _, sent_ms)) if now_ms < *sent_ms + retry_after_ms => return Ok(()),
            Some((seq, payloads, sent_ms)) => {
                *sent_ms = now_ms;
                (*seq, payloads.clone())
            }
            None => {
                let seq = p.next_seq;
                p.next_seq += fresh.len() as u64;
                p.current = Some((seq, fresh.clone(), now_ms));
                (seq, fresh)
            }
        };
        let (producer_id, epoch) = (p.id, p.epoch);
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let session = crate::ProducerSession { producer_id, epoch, seq, time_ms: now_ms };
        let op = ClientOp::Session { producer: k, epoch, seq, payloads: payloads.clone() };
        self.outstanding.insert(request_id, Outstanding { node: target, op });
        self.deliver_request(
            target,
            Event::ProposeBatch(vec![crate::Proposal { request_id, payloads, session: Some(session) }]),
        )
    }

    /// A producer's append `(epoch, seq)` was answered as committed.
    fn session_resolved(&mut self, producer: usize, epoch: u32, seq: u64) {
        let p = &mut self.producers[producer];
        if p.epoch == epoch && p.current.as_ref().is_some_and(|c| c.0 == seq) {
            p.current = None;
        }
    }

    /// A client's request reaches `target`: at once, or when its process
    /// resumes if it is paused.
    fn deliver_request(&mut self, target: NodeId, event: Event) -> Result<(), Violation> {
        let node = &self.nodes[&target];
        if self.now_ms < node.paused_until_ms {
            let action = Action::Deferred(target, node.incarnation, event);
            self.seq += 1;
            self.queue.push(Scheduled { at_ms: node.paused_until_ms, seq: self.seq, action });
            return Ok(());
        }
        self.step(target, event)
    }

    /// One to three fresh, unique payloads.
    fn next_payloads(&mut self) -> Vec<Bytes> {
        let count = self.rng.gen_range(1..=3);
        (0..count)
            .map(|_| {
                self.next_payload += 1;
                Bytes::copy_from_slice(&self.next_payload.to_le_bytes())
            })
            .collect()
    }

    /// Stops a node's process for a while (SIGSTOP, a long GC pause).
    fn pause_node(&mut self, id: NodeId) {
        let pause_ms = self.rng.gen_range(1..=60) * TICK_MS;
        let period_ms = self.tick_period_ms[&id];
        let node = self.nodes.get_mut(&id).expect("node");
        if node.core.is_none() || self.now_ms < node.paused_until_ms {
            return;
        }
        node.paused_until_ms = self.now_ms + pause_ms;
        let incarnation = node.incarnation;
        self.schedule(pause_ms, Action::Resume(id, incarnation, pause_ms / period_ms));
    }

    fn inject_fault(&mut self) {
        if self.reconfig && self.member_rng.gen_range(0..100) < 3 {
            self.wipe_a_node();
            return;
        }
        let ids = self.ids.clone();
        let n = ids.len() as u64;
        let pick = |rng: &mut ChaCha8Rng| ids[rng.gen_range(0..ids.len())];
        match self.rng.gen_range(0..100) {
            0..=19 => self.network.heal(),
            20..=31 => {
                let side_len = self.rng.gen_range(1..=n.max(2) / 2) as usize;
                let mut side = ids.clone();
                while side.len() > side_len {
                    let k = self.rng.gen_range(0..side.len());
                    side.remove(k);
                }
                self.network.partition(&ids, &side);
            }
            32..=43 => {
                // Isolate the leader: it keeps appending to a log no one
                // else sees (the raw material of Figure 8).
                if let Some(leader) = self.current_leader() {
                    self.network.partition(&ids, &[leader]);
                }
            }
            44..=53 if n > 1 => {
                let from = pick(&mut self.rng);
                let to = pick(&mut self.rng);
                if from != to {
                    self.network.cut_one_way(from, to);
                }
            }
            54..=63 => {
                let id = pick(&mut self.rng);
                self.crash_node(id);
            }
            64..=73 => {
                let id = match self.current_leader() {
                    Some(leader) if self.rng.gen_bool(0.5) => leader,
                    _ => pick(&mut self.rng),
                };
                self.pause_node(id);
            }
            74..=89 => {
                // Crash the leader, the node whose loss hurts most.
                if let Some(leader) = self.current_leader() {
                    self.crash_node(leader);
                }
            }
            _ => {
                self.network.drop_per_mille = self.rng.gen_range(0..150);
                self.network.duplicate_per_mille = self.rng.gen_range(0..50);
            }
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.core.as_ref().map(|c| (id, c.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    fn heal_everything(&mut self) {
        self.healing = true;
        self.network.heal();
        self.network.drop_per_mille = 0;
        self.network.duplicate_per_mille = 0;
        let down: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.core.is_none() && !n.gone).map(|(&id, _)| id).collect();
        for id in down {
            // An empty node or one restored from its own snapshot: nothing to check yet.
            self.start_node(id).expect("a restart checks nothing");
        }
    }

    /// The highest-term leader, if every member of its configuration that
    /// is not gone is live and follows it in its term.
    fn leader_followed_by_all(&self) -> Option<crate::Status> {
        let (leader, core) = self
            .nodes
            .values()
            .filter_map(|n| n.core.as_ref())
            .map(|c| (c.status(), c))
            .filter(|(s, _)| s.role == Role::Leader)
            .max_by_key(|(s, _)| s.term)?;
        let all = self.converging_members(core).into_iter().all(|id| {
            let s = self.nodes[&id].core.as_ref().map(|c| c.status());
            s.is_some_and(|s| s.term == leader.term && s.leader_id == Some(leader.id))
        });
        all.then_some(leader)
    }

    /// The members of `leader`'s configuration that must converge: all but
    /// the gone (wiped, or removed by an operator who saw it commit).
    fn converging_members(&self, leader: &RaftCore) -> Vec<NodeId> {
        leader.membership().members.keys().copied().filter(|id| !self.nodes.get(id).is_none_or(|n| n.gone)).collect()
    }

    /// Logs converged and no request to a member left unanswered (a
    /// request held by a node that left is its client's to time out).
    fn converged(&self) -> bool {
        if !self.logs_converged() {
            return false;
        }
        let leader = self.leader_followed_by_all().expect("converged");
        let members = self.converging_members(self.nodes[&leader.id].core.as_ref().expect("live"));
        self.outstanding.values().all(|o| !members.contains(&o.node))
    }

    /// One leader followed by all its members, identical fully committed
    /// durable logs on them.
    fn logs_converged(&self) -> bool {
        let Some(leader) = self.leader_followed_by_all() else { return false };
        let leader_core = self.nodes[&leader.id].core.as_ref().expect("live");
        let last_term = leader_core.log().last_term();
        self.converging_members(leader_core).into_iter().all(|id| {
            let node = &self.nodes[&id];
            let core = node.core.as_ref().expect("live");
            let s = core.status();
            let machine_done =
                !self.machines || (node.pull.is_none() && node.machine.applied == core.log().applied_index());
            machine_done
                && s.term == leader.term
                && s.leader_id == Some(leader.id)
                && s.last_index == leader.last_index
                && core.log().last_term() == last_term
                && s.committed_index == s.last_index
                && s.durable_index == s.last_index
        })
    }

    /// An operator's membership change at `target`: add a learner (a new
    /// node, started empty, joining), promote a learner, demote a voter, or
    /// remove a member (a wiped one first: that is how it is replaced).
    fn operator_request(&mut self, target: NodeId) -> Result<(), Violation> {
        let core = self.nodes[&target].core.as_ref().expect("live");
        let membership = core.membership().clone();
        let learners: Vec<NodeId> = membership.learners().collect();
        let voters: Vec<NodeId> = membership.voters().collect();
        let wiped_members: Vec<NodeId> =
            membership.members.keys().copied().filter(|id| self.nodes.get(id).is_some_and(|n| n.gone)).collect();
        let r = &mut self.member_rng;
        let change = match r.gen_range(0..100) {
            _ if !wiped_members.is_empty() && r.gen_bool(0.5) => {
                MembershipChange::Remove { id: wiped_members[r.gen_range(0..wiped_members.len())] }
            }
            0..=34 if self.ids.len() < 7 && self.next_id <= 16 => {
                let id = self.next_id;
                self.next_id += 1;
                self.add_node(id)?;
                MembershipChange::AddLearner { id, address: String::new() }
            }
            0..=64 if !learners.is_empty() => {
                MembershipChange::Promote { id: learners[r.gen_range(0..learners.len())] }
            }
            0..=79 if voters.len() > 1 => MembershipChange::Demote { id: voters[r.gen_range(0..voters.len())] },
            _ => {
                let members: Vec<NodeId> = membership.members.keys().copied().collect();
                if members.is_empty() {
                    return Ok(());
                }
                MembershipChange::Remove { id: members[r.gen_range(0..members.len())] }
            }
        };
        // An operator who knows which disks are gone never asks for a
        // configuration whose live voters are not a quorum: nothing could
        // bring such a cluster back (the reachability check only sees who
        // answered lately, and a node wiped a moment ago did).
        if let Ok(next) = membership.changed(&change) {
            let live_voters = next.voters().filter(|v| self.nodes.get(v).is_some_and(|n| !n.gone)).count();
            if live_voters < next.quorum() {
                if let MembershipChange::AddLearner { id, .. } = change {
                    self.decommission(id);
                }
                return Ok(());
            }
        }
        let expected_version = self.member_rng.gen_bool(0.5).then_some(membership.version);
        let force = self.member_rng.gen_range(0..100) < 5;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.outstanding.insert(request_id, Outstanding { node: target, op: ClientOp::Member(change.clone()) });
        let event = Event::ChangeMembership { request_id, change, expected_version, force };
        self.deliver_request(target, event)
    }

    /// A new, empty node `id` starts and waits to be sent the log.
    fn add_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let node = SimNode::empty();
        self.nodes.insert(id, node);
        let period = self.member_rng.gen_range(TICK_MS - 1..=TICK_MS + 1);
        self.tick_period_ms.insert(id, period);
        self.ids.push(id);
        self.start_node(id)
    }

    /// Stops `id` for good: it left the cluster, or its disk is gone.
    fn decommission(&mut self, id: NodeId) {
        self.crash_node(id);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.gone = true;
        }
        self.ids.retain(|&n| n != id);
    }

    /// Wipes a node's disk: every durable thing it had is lost. A correct
    /// host never brings it back as itself (the operator removes it and
    /// adds a new node); the buggy one restarts it empty, as its old voter.
    fn wipe_a_node(&mut self) {
        let live: Vec<NodeId> = self.ids.iter().copied().filter(|id| self.nodes[id].core.is_some()).collect();
        if live.len() < 3 {
            return;
        }
        let id = live[self.member_rng.gen_range(0..live.len())];
        // One wiped voter at a time, and never one the remaining voters
        // could not do without, in any node's view of the configuration
        // (a crashed node's too, from the records on its disk), nor while a
        // change waits at a paused node: seed 2430 demoted node 1 at paused
        // node 2, wiped node 3, and then the resumed 2 proposed {2, 3}.
        let deferred_change =
            self.queue.iter().any(|s| matches!(&s.action, Action::Deferred(_, _, Event::ChangeMembership { .. })));
        if deferred_change {
            return;
        }
        let views = self.nodes.values().filter(|n| !n.gone).filter_map(|n| match &n.core {
            Some(c) => Some(c.membership()),
            None => n.disk.configs.latest_record().map(|r| &r.membership),
        });
        let unsafe_somewhere = views.into_iter().any(|m| {
            let gone_voters = m.voters().filter(|v| self.nodes.get(v).is_none_or(|n| n.gone)).count();
            gone_voters > 0 || (m.is_voter(id) && m.voters().count() < 3)
        });
        if unsafe_somewhere {
            return;
        }
        let membership = self.nodes[&id].core.as_ref().expect("live").membership().clone();
        self.report.wipes += 1;
        if self.options.host_rejoins_wiped_node {
            if !membership.is_voter(id) || !self.bootstrap.contains(&id) {
                return;
            }
            self.crash_node(id);
            let node = self.nodes.get_mut(&id).expect("node");
            node.disk = SimDisk::default();
            node.restored = Some(RestoredState::default());
            return;
        }
        self.decommission(id);
        self.nodes.get_mut(&id).expect("node").disk = SimDisk::default();
    }

    fn check_after_convergence(&self) -> Result<(), Violation> {
        let leader = self.leader_followed_by_all().expect("converged");
        for id in self.converging_members(self.nodes[&leader.id].core.as_ref().expect("live")) {
            let core = self.nodes[&id].core.as_ref().expect("converged means all live");
            self.checkers.acked_present(id, core.log(), &self.nodes[&id].disk)?;
        }
        Ok(())
    }
}
