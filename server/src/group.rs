//! One Raft group on one core: the Raft core, its engine log, and the client
//! requests waiting on it.
//!
//! Everything here runs on the group's core thread and is owned by one task,
//! so the append path — request in, `Propose`, `PersistEntries` into the
//! engine's batch, the write and sync, `EntriesDurable`, commit, reply —
//! takes no lock. Commands of one step are executed in order (the core's
//! contract, see `raft::Command`); storage completions come back through the
//! engine's eventfd and are fed to the core as `EntriesDurable`.
//!
//! Persistence mapping: a Raft entry is one engine entry whose payload is a
//! one-byte kind (0 no-op, 1 command) followed by the client's bytes, written
//! with `append_parts` so the client bytes are copied once. Term and vote are
//! the engine's metadata record.
//!
//! **Retention** (`[retention]`, checked every `RETENTION_CHECK_TICKS`):
//! whole sealed segments go, oldest first, never above the core's purge limit
//! (committed, applied, durable), the start record first (see the engine's
//! log docs), and then the core is told (`LogPurged`). A leader holds back
//! for followers that are behind, until the log exceeds its limit by
//! `hold_for_followers_mib`, and for a follower whose match has not moved for
//! `hold_for_followers_secs` no longer; past either, the follower is sent the
//! log start. With retention on, below `purge_below_free_percent` of free
//! disk, everything allowed goes and holds are released; whether or not it
//! is on, below `refuse_below_free_percent`, a leader refuses appends with
//! `DiskFull` (followers still take the leader's entries: what a quorum
//! acknowledged must reach them). A group with a state machine also never
//! purges past its newest complete snapshot. Reads for catch-up and for
//! clients run on this thread, as does the purge, so a purge never runs
//! under a read.
//!
//! **Snapshot install.** A follower of a group with a state machine that is
//! sent a log start past what its state machine has applied (or restarts
//! with its log starting there) pulls a snapshot covering the start from a
//! peer, the leader first (`dledger_raft::SnapshotPull` decides, the apply
//! thread does the file work, see `apply.rs`): 1 MiB checksummed chunks,
//! each fsynced before the next is asked for, resumed after a restart of
//! either side from the byte reached, installed only whole. Meanwhile it
//! feeds its state machine nothing, and it does not campaign (a leader must
//! serve its state machine); it keeps voting, unlike the issue asked: its
//! log and term are whole, and a follower that refused to vote while it
//! waited for a snapshot would leave a three-node cluster that lost its
//! leader with no quorum (the survivor needs its vote; it needs a source).
//!
//! With a state machine (see `apply.rs`), every entry the core applies is fed
//! to the group's apply thread, in order and exactly once from the index the
//! state machine restored to (`ApplyFeed::fed`). The core hands over only the
//! entries it holds in memory, so entries before that (after a restart, or
//! when the apply thread fell behind by more than `MAX_APPLY_LAG_*`) are read
//! back from memory or the log files in bounded chunks, a chunk per turn.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dledger_engine::{Log, Meta};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{oneshot, watch};

use crate::apply::{AppendReply, ApplyMsg, ApplyProgress, InstallEvent, ReadReply, MAX_CHUNK_BYTES};
use crate::config::Retention;
use crate::error::GroupError;
use crate::state_machine::CommittedEntry;
use crate::{Applied, GroupEvent};

use dledger_proto::peer::PeerMessage;
use dledger_proto::{ClientEntry, Frame, GroupStatus, Request, Response, ServerError};
use dledger_raft::{
    ClientError, ClientReply, Command, Config as RaftConfig, ConfigRecord, Entry, EntryKind, Event, HardState,
    LogStart, LogStorage, MemberRole, Membership, MembershipChange, Message, NodeId, PullStep, RaftCore, RestoredState,
    Role, SessionRefusal, SnapshotId, SnapshotMessage, SnapshotPull,
};

/// How often a group checks its retention (100 ms at the default tick).
const RETENTION_CHECK_TICKS: u64 = 10;

/// A snapshot fetch asks again after this many ticks without an answer
/// (500 ms at the default tick; a chunk being written does not count).
const INSTALL_RETRY_TICKS: u32 = 50;

/// The most payload bytes one read answer carries by default (`max_read_mib`).
pub const MAX_READ_BYTES: usize = 8 << 20;

/// The most entries one read answer carries: empty entries (no-ops) count no
/// payload, and a million of them would not fit in a frame.
pub const MAX_READ_ENTRIES: u64 = 64 * 1024;

/// Where a client's answer goes: the writer of its connection, with the
/// answer budget the connection charged for the request (credited back once
/// the answer is written).
#[derive(Debug, Clone)]
pub(crate) struct ReplyTo {
    tx: UnboundedSender<(Frame, usize)>,
    budget: usize,
}

impl ReplyTo {
    pub(crate) fn new(tx: UnboundedSender<(Frame, usize)>, budget: usize) -> Self {
        ReplyTo { tx, budget }
    }

    /// Queues the answer; an error means the connection is gone.
    pub(crate) fn send(&self, f: Frame) -> Result<(), ()> {
        self.tx.send((f, self.budget)).map_err(|_| ())
    }
}

/// What a group's task receives from other tasks and cores.
#[derive(Debug)]
pub(crate) enum GroupInput {
    /// A message from a peer.
    Raft(Message),
    /// A peer's snapshot-fetch message.
    Snapshot { from: NodeId, message: SnapshotMessage },
    /// The apply thread's word on a snapshot transfer.
    Installer(InstallEvent),
    /// A network client's request.
    Client { id: u64, request: Request, reply: ReplyTo },
    /// A request through a [`GroupHandle`](crate::GroupHandle) in this process.
    Local(LocalRequest),
    /// Render this group's metrics in the Prometheus text format.
    Metrics(tokio::sync::oneshot::Sender<String>),
    /// Stop: finish what is in flight (within a grace period), sync, exit.
    Shutdown,
}

/// A request of the embedding application.
#[derive(Debug)]
pub(crate) enum LocalRequest {
    Append {
        payloads: Vec<Bytes>,
        reply: AppendReply,
    },
    Read {
        query: Bytes,
        reply: ReadReply,
    },
    Status(oneshot::Sender<GroupStatus>),
    /// Snapshot the state machine now; the index it covers.
    Snapshot(oneshot::Sender<Result<u64, GroupError>>),
}

/// Answers a local request that cannot be served with `error`.
pub(crate) fn refuse_local(request: LocalRequest, error: ServerError) {
    match request {
        LocalRequest::Append { reply, .. } => drop(reply.send(Err(GroupError::Server(error)))),
        LocalRequest::Read { reply, .. } => drop(reply.send(Err(GroupError::Server(error)))),
        // A status needs no running group, but the host is gone: the handle sees `Stopped`.
        LocalRequest::Status(_) => {}
        LocalRequest::Snapshot(reply) => drop(reply.send(Err(GroupError::Server(error)))),
    }
}

/// Serves the inbox of a group whose log failed while the node's other
/// groups go on: every request is refused naming the failure, a status says
/// `failed`, messages from peers are dropped; until the node stops.
pub(crate) async fn serve_failed(
    group: u64,
    node: NodeId,
    reason: String,
    inbox: &mut tokio::sync::mpsc::UnboundedReceiver<GroupInput>,
) {
    let error = ServerError::Internal(format!(
        "group {group} failed on node {node}: {reason}; restart the node to recover it (its other groups serve)"
    ));
    while let Some(input) = inbox.recv().await {
        match input {
            GroupInput::Client { id, request: Request::Status, reply } => {
                let status = GroupStatus {
                    group,
                    node,
                    role: "failed".into(),
                    term: 0,
                    leader: None,
                    last_index: 0,
                    commit_index: 0,
                    durable_index: 0,
                    first_index: 0,
                    disk_bytes: 0,
                    followers: Vec::new(),
                    config_version: 0,
                    voters: Vec::new(),
                    learners: Vec::new(),
                };
                let _ = reply.send(Frame::Response { id, response: Response::Status(vec![status]) });
            }
            // Reads name the failure; what needs a leader is sent elsewhere (the
            // client library moves on to another node).
            GroupInput::Client {
                id,
                request: Request::Get { .. } | Request::Read { .. } | Request::Subscribe { .. },
                reply,
            } => {
                let _ = reply.send(Frame::Response { id, response: Response::Error(error.clone()) });
            }
            GroupInput::Client { id, reply, .. } => {
                let not_leader = ServerError::NotLeader { leader: None, address: None };
                let _ = reply.send(Frame::Response { id, response: Response::Error(not_leader) });
            }
            GroupInput::Local(request) => refuse_local(request, error.clone()),
            GroupInput::Metrics(tx) => drop(tx.send(format!("dledger_group_failed{{group=\"{group}\"}} 1\n"))),
            GroupInput::Shutdown => return,
            GroupInput::Raft(_) | GroupInput::Snapshot { .. } | GroupInput::Installer(_) => {}
        }
    }
}

/// A peer message this group wants sent: (to, group, message).
pub(crate) type Outgoing = (NodeId, u64, PeerMessage);

/// Who waits for a request registered with the core.
enum Waiter {
    Wire {
        reply: ReplyTo,
        client_id: u64,
    },
    /// A membership change: answered with the configuration once committed.
    Members {
        reply: ReplyTo,
        client_id: u64,
    },
    Append(AppendReply),
    Read(Bytes, ReadReply),
}

struct Pending {
    to: Waiter,
    started: Instant,
}

/// The apply thread falls behind by at most this many entries, and this many
/// payload bytes, before the group stops feeding it (the rest waits in the log).
const MAX_APPLY_LAG_ENTRIES: u64 = 64 * 1024;
const MAX_APPLY_LAG_BYTES: u64 = 64 << 20;
/// The most one catch-up chunk reads back from the log files.
const MAX_CATCH_UP_BYTES: usize = 1 << 20;

/// The group's end of its apply thread.
pub(crate) struct ApplyFeed {
    pub(crate) tx: crossbeam_channel::Sender<ApplyMsg>,
    pub(crate) progress: Arc<ApplyProgress>,
    /// The last index sent (or restored: a snapshot's, the state machine's own).
    pub(crate) fed: u64,
    /// Payload bytes sent since start.
    fed_bytes: u64,
    /// The highest index a local append waits on: outputs up to it are kept.
    waited_upto: u64,
    /// A snapshot fetch a restart interrupted: the file, and its bytes on disk.
    pub(crate) partial: Option<(SnapshotId, u64)>,
}

impl ApplyFeed {
    pub(crate) fn new(tx: crossbeam_channel::Sender<ApplyMsg>, progress: Arc<ApplyProgress>, fed: u64) -> Self {
        ApplyFeed { tx, progress, fed, fed_bytes: 0, waited_upto: 0, partial: None }
    }
}

/// The longest a node holds a subscription's long poll.
pub const MAX_SUBSCRIBE_WAIT_MS: u32 = 30_000;

/// A subscription waiting for entries (`Request::Subscribe`). It holds no
/// entries: they are read (from memory or the files) when it is answered.
struct Parked {
    client_id: u64,
    reply: ReplyTo,
    from: u64,
    max_bytes: usize,
    min_bytes: usize,
    deadline: Instant,
}

/// A snapshot fetch under way (see the module docs).
struct Install {
    pull: SnapshotPull,
    /// A chunk (or the whole file) of this snapshot is with the apply thread:
    /// judge no other chunk until it answers. The fetch may have been replaced
    /// meanwhile (a newer log start): an answer for another file is stale.
    busy: Option<SnapshotId>,
    started: Instant,
    /// Bytes of the file when the fetch began (a resume).
    resumed_at: u64,
}

struct GroupMetrics {
    append_latency_us: Histogram<u64>,
    write_sync_us: Histogram<u64>,
    batches_seen: u64,
    batch_entries: Histogram<u64>,
    proposals: u64,
    entries_appended: u64,
    bytes_written: u64,
    elections_won: u64,
    purges: u64,
    log_starts_installed: u64,
    snapshots_installed: u64,
    /// Fetched chunks that failed their checksum, and whole files that did.
    corrupt_chunks: u64,
    corrupt_files: u64,
    /// Followers a leader's last retention check held back for: (follower, its match).
    holds: Vec<(NodeId, u64)>,
    /// The last check released a hold (the log passed its limit plus the hold).
    hold_released: bool,
    /// Appends of producer sessions taken, answered as duplicates, refused.
    session_proposals: u64,
    session_duplicates: u64,
    session_refusals: u64,
}

impl GroupMetrics {
    fn new() -> Self {
        GroupMetrics {
            append_latency_us: Histogram::new_with_bounds(1, 600_000_000, 2).expect("bounds"),
            write_sync_us: Histogram::new_with_bounds(1, 600_000_000, 2).expect("bounds"),
            batches_seen: 0,
            batch_entries: Histogram::new_with_bounds(1, 1_000_000, 2).expect("bounds"),
            proposals: 0,
            entries_appended: 0,
            bytes_written: 0,
            elections_won: 0,
            purges: 0,
            log_starts_installed: 0,
            snapshots_installed: 0,
            corrupt_chunks: 0,
            corrupt_files: 0,
            holds: Vec::new(),
            hold_released: false,
            session_proposals: 0,
            session_duplicates: 0,
            session_refusals: 0,
        }
    }
}

/// The fatal error of a group: its log failed and the server must restart it.
#[derive(Debug, thiserror::Error)]
#[error("group {group}: {source}")]
pub struct GroupFatal {
    /// The group.
    pub group: u64,
    /// The engine's error.
    #[source]
    pub source: dledger_engine::Error,
}

pub(crate) struct GroupHost {
    pub(crate) group: u64,
    node_id: NodeId,
    core: RaftCore,
    log: Log,
    /// Addresses of the voters, for NotLeader answers.
    addresses: HashMap<NodeId, String>,
    pending: HashMap<u64, Pending>,
    /// Read barriers waiting for apply: (read_index, request id).
    reads: Vec<(u64, u64)>,
    next_request: u64,
    reported_durable: u64,
    applied_index: u64,
    /// Messages produced, drained by the core's loop after each turn.
    pub outbox: Vec<Outgoing>,
    metrics: GroupMetrics,
    was_leader: bool,
    /// Entries the core asked to persist that the engine has not taken yet (full disk).
    backlog: std::collections::VecDeque<Entry>,
    disk_full: bool,
    /// Client appends of this turn not yet given to the core: they go in as
    /// one `ProposeBatch` (one engine write and one message per peer for all
    /// of them) before any other event and at the end of the turn.
    proposals: Vec<dledger_raft::Proposal>,
    /// The apply thread, for a group with a state machine.
    feed: Option<ApplyFeed>,
    /// Local appends not yet committed.
    local_appends: usize,
    /// Local reads whose read index is known, waiting for it to be fed.
    local_reads: Vec<(u64, Bytes, ReadReply)>,
    /// Role, term and leader as last published to `events`.
    published: (Role, u64, Option<NodeId>),
    events: watch::Sender<GroupEvent>,
    /// This group's configuration records on disk (see `members`).
    configs: crate::members::ConfigFile,
    /// This group's saved producer-session table (see `sessions`).
    sessions_file: crate::sessions::SessionsFile,
    /// `metrics.bytes_written` when the table was last saved by a checkpoint.
    sessions_saved_at_bytes: u64,
    /// Peer addresses from the node's config file, for members whose
    /// configuration names none (the bootstrap of an older directory).
    static_addresses: HashMap<NodeId, String>,
    /// This node is not a member of the committed configuration: it was
    /// removed (said once).
    removed_said: bool,
    retention: Retention,
    ticks: u64,
    /// Free disk is below the refusing watermark: a leader takes no appends.
    disk_low: bool,
    /// Free disk, in percent, at the last check (none without watermarks).
    free_percent: Option<f64>,
    /// Per follower: its match at the last retention check, and since when it has not moved.
    stuck_since: HashMap<NodeId, (u64, Instant)>,
    /// A state-machine snapshot being fetched.
    install: Option<Install>,
    /// The highest index an operator's replicated purge let go (0: none).
    manual_purge_to: u64,
    /// An operator's purge was applied since the last tick.
    manual_purge_due: bool,
    /// Subscriptions waiting for entries or for their deadline.
    subscribers: Vec<Parked>,
    /// The most payload one read answer carries (`max_read_mib`).
    max_read_bytes: usize,
    /// The commit index the parked subscriptions were last checked at.
    subscribers_seen_commit: u64,
}

/// Free space of the file system holding `dir`, in percent of its size
/// (statvfs through rustix: the server crate has no `unsafe`).
fn free_percent(dir: &std::path::Path) -> Option<f64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    (st.f_blocks > 0).then(|| st.f_bavail as f64 * 100.0 / st.f_blocks as f64)
}

/// An entry's kind, as the first byte of what the engine stores.
fn encode_kind(kind: EntryKind) -> &'static [u8] {
    match kind {
        EntryKind::Noop => &[0],
        EntryKind::Command => &[1],
        EntryKind::Admin => &[2],
        EntryKind::Config => &[3],
        EntryKind::SessionCommand => &[4],
    }
}

/// The kind [`encode_kind`] stored as `byte`, if any.
fn decode_kind(byte: u8) -> Option<EntryKind> {
    match byte {
        0 => Some(EntryKind::Noop),
        1 => Some(EntryKind::Command),
        2 => Some(EntryKind::Admin),
        3 => Some(EntryKind::Config),
        4 => Some(EntryKind::SessionCommand),
        _ => None,
    }
}

/// How a group learns its first configuration.
#[derive(Debug, Clone)]
pub(crate) enum Founding {
    /// A member of the cluster's bootstrap (or of an older directory, which
    /// had no configuration file): this configuration, when the group has
    /// no record of its own.
    Bootstrap(Membership),
    /// Joining: it waits for a leader to send it the log.
    Join,
}

impl GroupHost {
    /// The saved producer-session table, or (none, or damaged) an empty one
    /// at the log start that the log's stamps rebuild (see `sessions`).
    fn restore_sessions(
        group: u64,
        dir: &std::path::Path,
        log: &Log,
        start: LogStart,
    ) -> Result<(crate::sessions::SessionsFile, dledger_raft::SessionTable), String> {
        let (mut file, loaded) = crate::sessions::SessionsFile::load(dir);
        let why = match loaded {
            Ok(Some(table)) => return Ok((file, table)),
            Ok(None) if log.last_index() == start.prev_index => None,
            Ok(None) => Some("there is no saved table".to_string()),
            Err(why) => Some(why),
        };
        if let Some(why) = why {
            if start.prev_index > 0 {
                tracing::warn!(
                    group,
                    %why,
                    log_start = start.first_index(),
                    "rebuilding the producer sessions from the log: retries of appends older than the log start \
                     are no longer recognized as duplicates"
                );
            } else {
                tracing::info!(group, %why, "rebuilding the producer sessions from the whole log");
            }
        }
        let table = dledger_raft::SessionTable::empty_at(start.prev_index);
        file.save(&table).map_err(|e| format!("group {group}: cannot write its producer sessions: {e}"))?;
        Ok((file, table))
    }

    /// Restores the group from its log and starts its Raft core.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        group: u64,
        node_id: NodeId,
        founding: Founding,
        addresses: HashMap<NodeId, String>,
        static_addresses: HashMap<NodeId, String>,
        raft: RaftConfig,
        log: Log,
        dir: &std::path::Path,
    ) -> Result<GroupHost, String> {
        // This host saves term and vote (synchronously) before it persists any
        // entry of that term, so entries (or a log start) beside term 0 mean the
        // record was lost (zeroed): the node's votes are unknown and it must not
        // vote again.
        if log.meta().current_term == 0 && log.last_index() > 0 {
            return Err(format!(
                "group {group}: its metadata record reads as never written (term 0, no vote) but its log holds \
                 {} entries: the record was lost, so the node must not rejoin as the same voter",
                log.last_index()
            ));
        }
        // The core learns every term from the engine's term runs and reads
        // payloads back from the engine when it needs them: nothing is loaded.
        let terms = log.term_runs().to_vec();
        let last_index = log.last_index();
        let m = log.meta();
        let meta = HardState { term: m.current_term, voted_for: m.voted_for };
        let (prev_index, prev_term) = log.start();
        let start = LogStart { prev_index, prev_term };
        let seed = node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group ^ dledger_engine::segment::fresh_salt();
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let err = |e: std::io::Error| format!("group {group}: cannot write its configuration records: {e}");
        let file = crate::members::ConfigFile::load(dir).map_err(|e| format!("group {group}: {e}"))?;
        let (file, voters) = match (file, &founding) {
            (Some(file), _) => (Some(file), Vec::new()),
            // The bootstrap (or an older directory's static peers), recorded at the log's start.
            (None, Founding::Bootstrap(m)) => {
                let record = ConfigRecord { index: start.prev_index, term: start.prev_term, membership: m.clone() };
                let history = dledger_raft::ConfigHistory::from_records(vec![record]);
                (Some(crate::members::ConfigFile::create(dir, history).map_err(err)?), m.voters().collect())
            }
            (None, Founding::Join) => (None, Vec::new()),
        };
        let records = file.as_ref().map(|f| f.records().to_vec()).unwrap_or_default();
        let (sessions_file, sessions) = Self::restore_sessions(group, dir, &log, start)?;
        let (stamped, unreadable) = crate::sessions::stamped_entries(&log, sessions.as_of, decode_kind);
        if unreadable > 0 {
            tracing::warn!(
                group,
                unreadable,
                "entries of the log could not be read back for their producer stamps (damaged); retries of \
                 appends among them are not recognized as duplicates"
            );
        }
        let restored =
            RestoredState { meta, start, terms, last_index, tail: Vec::new(), configs: records, stamped, sessions };
        let core = RaftCore::new(node_id, voters, raft, restored, rng).map_err(|e| format!("group {group}: {e}"))?;
        // The file holds from now on exactly what the core restored.
        let configs = match file {
            Some(mut f) => {
                f.rewrite(core.config_history().clone()).map_err(err)?;
                f
            }
            None => crate::members::ConfigFile::create(dir, core.config_history().clone()).map_err(err)?,
        };
        if let Founding::Bootstrap(seed) = &founding {
            let in_force = core.membership();
            let seed_ids: Vec<NodeId> = seed.members.keys().copied().collect();
            let ids: Vec<NodeId> = in_force.members.keys().copied().collect();
            if in_force.version > 0 && seed_ids != ids {
                tracing::warn!(
                    group,
                    config_peers = ?seed_ids,
                    members = ?ids,
                    version = in_force.version,
                    "the config file's [[peers]] differ from the group's replicated membership, which is in force \
                     ([[peers]] only seed a new cluster)"
                );
            }
        }
        let voters: Vec<NodeId> = core.membership().voters().collect();
        let reported_durable = log.durable_index();
        let s = core.status();
        let published = (s.role, s.term, s.leader_id);
        let (events, _) = watch::channel(GroupEvent {
            group,
            role: s.role,
            term: s.term,
            leader: s.leader_id,
            voters: voters.clone(),
        });
        Ok(GroupHost {
            group,
            node_id,
            core,
            log,
            addresses,
            pending: HashMap::new(),
            reads: Vec::new(),
            next_request: 1,
            reported_durable,
            applied_index: 0,
            outbox: Vec::new(),
            metrics: GroupMetrics::new(),
            was_leader: false,
            backlog: Default::default(),
            disk_full: false,
            proposals: Vec::new(),
            feed: None,
            local_appends: 0,
            local_reads: Vec::new(),
            published,
            events,
            configs,
            sessions_file,
            sessions_saved_at_bytes: 0,
            static_addresses,
            removed_said: false,
            retention: Retention::default(),
            ticks: 0,
            disk_low: false,
            free_percent: None,
            stuck_since: HashMap::new(),
            install: None,
            manual_purge_to: 0,
            manual_purge_due: false,
            subscribers: Vec::new(),
            max_read_bytes: MAX_READ_BYTES,
            subscribers_seen_commit: 0,
        })
    }

    /// How much log this group keeps.
    pub(crate) fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    /// The most payload one read answer carries.
    pub(crate) fn set_max_read_bytes(&mut self, bytes: usize) {
        self.max_read_bytes = bytes.max(1);
    }

    /// Feeds a state machine that has applied up to `feed.fed` (restored).
    ///
    /// `fed` may lie beyond the local log's end: a follower applies what is
    /// committed (a quorum has it), which may not have reached its own disk
    /// before a crash. Those entries are committed, so the leader sends them
    /// again, and feeding resumes after `fed` (the feed only ever moves up).
    ///
    /// `fed` may also lie below the log's start (a restart in the middle of a
    /// snapshot install): the fetch goes on from its partial file.
    pub(crate) fn attach_state_machine(&mut self, feed: ApplyFeed) -> Result<(), String> {
        if feed.fed > self.log.last_index() {
            tracing::info!(
                group = self.group,
                applied = feed.fed,
                log_end = self.log.last_index(),
                "the state machine is ahead of the local log (committed entries not yet durable here); the leader resends them"
            );
        }
        let (fed, start) = (feed.fed, self.log.start().0);
        self.feed = Some(feed);
        if start > fed {
            self.begin_install(start).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub(crate) fn has_state_machine(&self) -> bool {
        self.feed.is_some()
    }

    /// Leadership changes of this group, for the embedding application.
    pub(crate) fn subscribe(&self) -> watch::Receiver<GroupEvent> {
        self.events.subscribe()
    }

    pub fn eventfd(&self) -> std::os::unix::io::RawFd {
        self.log.eventfd()
    }

    pub(crate) fn node(&self) -> NodeId {
        self.node_id
    }

    pub fn role(&self) -> Role {
        self.core.status().role
    }

    pub fn tick(&mut self) -> Result<(), GroupFatal> {
        if !self.backlog.is_empty() {
            self.drain_backlog()?;
        }
        self.step(Event::Tick)?;
        self.install_tick();
        self.answer_subscribers(true);
        // An operator's purge goes at once, and what its limits held back at each retention check.
        let check = (self.ticks + 1).is_multiple_of(RETENTION_CHECK_TICKS);
        if self.manual_purge_due || (check && self.manual_purge_to >= self.log.first_index()) {
            self.manual_purge_due = false;
            self.purge_manually()?;
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(RETENTION_CHECK_TICKS) {
            self.apply_retention()?;
            self.checkpoint_sessions()?;
        }
        // Resume feeding an apply thread that had fallen behind.
        self.feed_state_machine(None)
    }

    /// An admin entry at `index` is committed and applied here.
    fn apply_admin(&mut self, index: u64, payload: &[u8]) -> Result<(), GroupFatal> {
        match crate::admin::AdminCommand::decode(payload) {
            Ok(crate::admin::AdminCommand::PurgeTo(to)) => {
                tracing::info!(group = self.group, to, at = index, "an operator's purge is committed");
                // Purged at the next tick, outside this step.
                self.manual_purge_to = self.manual_purge_to.max(to);
                self.manual_purge_due = true;
                Ok(())
            }
            Err(why) => {
                tracing::warn!(group = self.group, index, %why, "ignoring an admin entry this node does not know");
                Ok(())
            }
        }
    }

    /// Purges up to the operator's purge point, as far as this replica's own
    /// limits allow (holds for followers aside); what is left goes at later
    /// retention checks, as those limits move.
    fn purge_manually(&mut self) -> Result<(), GroupFatal> {
        let before = self.log.first_index();
        if self.manual_purge_to < before {
            return Ok(());
        }
        let mut floor = self.core.purge_limit().min(self.manual_purge_to);
        if let Some(feed) = &self.feed {
            floor = floor.min(feed.progress.snapshot_index.load(Ordering::Acquire));
        }
        let everything = dledger_engine::RetentionPolicy { max_total_bytes: Some(0), ..Default::default() };
        self.save_sessions_for_purge(floor)?;
        let first = self.log.apply_retention(&everything, floor + 1).map_err(|e| self.fatal(e))?;
        if first > before {
            self.metrics.purges += 1;
            tracing::info!(group = self.group, first, purged = first - before, "purged by an operator's purge");
            self.step(Event::LogPurged { first_index: first })?;
        }
        Ok(())
    }

    /// Before a purge up to `floor`: the stamps of the entries it removes
    /// live on only in the saved table, so that must reach `floor`.
    fn save_sessions_for_purge(&mut self, floor: u64) -> Result<(), GroupFatal> {
        if self.sessions_file.saved_as_of() >= floor {
            return Ok(());
        }
        let table = self.core.sessions().table();
        assert!(table.as_of >= floor, "the committed table ({}) reaches the purge limit ({floor})", table.as_of);
        let saved = self.sessions_file.save(table);
        saved.map_err(|e| self.fatal_io("save the producer sessions", e))
    }

    /// Every `CHECKPOINT_ENTRIES` committed entries or `CHECKPOINT_BYTES`
    /// of payload written, the table is saved: a restart reads back the
    /// stamps after it only.
    fn checkpoint_sessions(&mut self) -> Result<(), GroupFatal> {
        let table = self.core.sessions().table();
        let saved_as_of = self.sessions_file.saved_as_of();
        let written = self.metrics.bytes_written - self.sessions_saved_at_bytes;
        let due = table.as_of >= saved_as_of + crate::sessions::CHECKPOINT_ENTRIES
            || (table.as_of > saved_as_of && written >= crate::sessions::CHECKPOINT_BYTES);
        if !due {
            return Ok(());
        }
        let saved = self.sessions_file.save(table);
        self.sessions_saved_at_bytes = self.metrics.bytes_written;
        saved.map_err(|e| self.fatal_io("save the producer sessions", e))
    }

    /// Purges what the retention policy lets go (see the module docs).
    fn apply_retention(&mut self) -> Result<(), GroupFatal> {
        let low = self.watch_free_disk();
        if !self.retention.is_on() && !low {
            return Ok(());
        }
        let Some(floor) = self.purge_floor(low) else { return Ok(()) };
        let mut policy = self.retention.policy();
        if low {
            policy.max_total_bytes = Some(0);
        }
        let before = self.log.first_index();
        self.save_sessions_for_purge(floor)?;
        let first = self.log.apply_retention(&policy, floor + 1).map_err(|e| self.fatal(e))?;
        if first > before {
            self.metrics.purges += 1;
            tracing::debug!(group = self.group, first, purged = first - before, "purged the log's oldest segments");
            self.step(Event::LogPurged { first_index: first })?;
        }
        Ok(())
    }

    /// Measures free disk against the watermarks: sets `disk_low` (appends
    /// refused) and returns whether this group should purge all it may.
    fn watch_free_disk(&mut self) -> bool {
        let r = &self.retention;
        let (purge_mark, refuse_mark) = (r.purge_below_free_percent as f64, r.refuse_below_free_percent as f64);
        if purge_mark == 0.0 && refuse_mark == 0.0 {
            return false;
        }
        let free = free_percent(&self.log.config().dir).unwrap_or(100.0);
        self.free_percent = Some(free);
        let refuse = refuse_mark > 0.0 && free < refuse_mark;
        if refuse != self.disk_low {
            if refuse {
                tracing::error!(group = self.group, free_percent = free, "disk almost full: appends refused");
            } else {
                tracing::info!(group = self.group, free_percent = free, "disk has room again");
            }
            self.disk_low = refuse;
        }
        // Only a group with retention on gives up history for space: with it off,
        // the log is kept whole and the refusing mark protects the disk.
        self.retention.is_on() && purge_mark > 0.0 && free < purge_mark
    }

    /// The highest index this node may purge up to now (`None`: nothing):
    /// the core's purge limit, lowered by a leader's holds for its followers.
    fn purge_floor(&mut self, low: bool) -> Option<u64> {
        let leader = self.role() == Role::Leader;
        let mut floor = self.core.purge_limit();
        self.metrics.holds.clear();
        self.metrics.hold_released = false;
        if let Some(feed) = &self.feed {
            // Never past what a snapshot holds: a restart replays the log after it.
            floor = floor.min(feed.progress.snapshot_index.load(Ordering::Acquire));
        }
        if !leader {
            self.stuck_since.clear();
            return Some(floor);
        }
        let now = Instant::now();
        let mut behind = Vec::new();
        for peer in self.peers() {
            let m = self.core.progress(peer).map_or(0, |pr| pr.match_index);
            let since = self.stuck_since.entry(peer).or_insert((m, now));
            if since.0 != m {
                *since = (m, now);
            }
            if m < floor {
                behind.push((peer, m, now.duration_since(since.1)));
            }
        }
        let max_secs = self.retention.hold_for_followers_secs;
        let allowance = (self.retention.max_log_mib + self.retention.hold_for_followers_mib) << 20;
        let within_bytes = !low && self.log.disk_bytes() <= allowance;
        for (peer, m, stuck_for) in behind {
            let within_time = max_secs == 0 || stuck_for.as_secs() < max_secs;
            if within_bytes && within_time {
                self.metrics.holds.push((peer, m));
                floor = floor.min(m);
            } else {
                self.metrics.hold_released = true;
            }
        }
        Some(floor)
    }

    pub fn on_message(&mut self, m: Message) -> Result<(), GroupFatal> {
        self.step(Event::Message(m))
    }

    /// Reaps engine completions and reports newly durable entries to the core.
    pub fn on_storage_ready(&mut self) -> Result<(), GroupFatal> {
        loop {
            match self.log.poll_completions() {
                Ok(Some(_)) => {
                    let st = self.log.stats();
                    if st.batches_written != self.metrics.batches_seen {
                        self.metrics.batches_seen = st.batches_written;
                        self.metrics.write_sync_us.saturating_record(st.last_write_sync_us.max(1));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.fatal(e)),
            }
        }
        self.report_durable()
    }

    /// Ends a turn: proposes the queued appends and submits what the turn
    /// appended (group commit: one engine batch per turn).
    pub fn flush(&mut self) -> Result<(), GroupFatal> {
        self.propose_queued()?;
        self.log.flush().map_err(|e| self.fatal(e))
    }

    fn propose_queued(&mut self) -> Result<(), GroupFatal> {
        if self.proposals.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.proposals);
        self.step_core(Event::ProposeBatch(batch))
    }

    /// Steps the core, with the engine as its storage for entries that left memory.
    fn step_core(&mut self, event: Event) -> Result<(), GroupFatal> {
        let storage = EngineStorage { log: &self.log, error: std::cell::RefCell::new(None) };
        let commands = self.core.step_with(event, &storage);
        if let Some(e) = storage.error.into_inner() {
            return Err(self.fatal(e));
        }
        self.execute(commands)
    }

    fn fatal(&self, source: dledger_engine::Error) -> GroupFatal {
        GroupFatal { group: self.group, source }
    }

    /// The configuration file could not be written: as fatal as a failed log write.
    fn fatal_io(&self, op: &'static str, e: std::io::Error) -> GroupFatal {
        self.fatal(dledger_engine::Error::Io { op, path: crate::members::CONFIGS_FILE.into(), source: e })
    }

    /// Every other member of the configurations this node holds (whom it
    /// replicates to as leader, fetches snapshots from, holds the log for).
    fn peers(&self) -> Vec<NodeId> {
        self.core.peers_known().to_vec()
    }

    /// Where to reach peer `id`: its address in the configuration, or the
    /// node config's for an older directory's bootstrap.
    pub(crate) fn peer_address(&self, id: NodeId) -> Option<&str> {
        match self.core.member_address(id) {
            Some(a) if !a.is_empty() => Some(a),
            _ => self.static_addresses.get(&id).map(String::as_str),
        }
    }

    fn report_durable(&mut self) -> Result<(), GroupFatal> {
        let d = self.log.durable_index();
        if d != self.reported_durable {
            self.reported_durable = d;
            if let Some(term) = self.log.term_at(d) {
                self.step(Event::EntriesDurable { index: d, term })?;
            }
        }
        Ok(())
    }

    fn step(&mut self, event: Event) -> Result<(), GroupFatal> {
        // Queued appends go first: the core sees inputs in arrival order.
        self.propose_queued()?;
        self.step_core(event)
    }

    fn execute(&mut self, commands: Vec<Command>) -> Result<(), GroupFatal> {
        for c in commands {
            match c {
                Command::SaveMeta(hs) => {
                    let meta = Meta { current_term: hs.term, voted_for: hs.voted_for, ..self.log.meta().clone() };
                    self.log.save_meta(&meta).map_err(|e| self.fatal(e))?;
                    self.step(Event::MetaSaved(hs))?;
                }
                Command::PersistEntries { truncate_from, entries } => {
                    if let Some(from) = truncate_from {
                        self.backlog.retain(|e| e.index < from);
                        if from <= self.log.last_index() {
                            self.log.truncate_suffix(from).map_err(|e| self.fatal(e))?;
                        }
                        self.reported_durable = self.reported_durable.min(from - 1);
                        // Durable now: records of the entries it removed go.
                        let core = self.core.config_history();
                        self.configs.truncated(from, core).map_err(|e| self.fatal_io("record the configuration", e))?;
                    }
                    if !entries.is_empty() {
                        self.metrics.batch_entries.saturating_record(entries.len() as u64);
                    }
                    self.backlog.extend(entries);
                    self.drain_backlog()?;
                }
                Command::Send(m) => self.outbox.push((m.to, self.group, PeerMessage::Raft(m))),
                Command::Apply(entries) => {
                    for e in entries.iter().filter(|e| e.kind == EntryKind::Admin) {
                        self.apply_admin(e.index, &e.payload)?;
                    }
                    self.applied_index = self.core.log().applied_index();
                    self.answer_reads();
                    self.feed_state_machine(Some(entries))?;
                }
                Command::Reply(r) => self.reply(r),
                Command::InstallLogStart(start) => {
                    self.install_log_start(start)?;
                    self.configs.reset().map_err(|e| self.fatal_io("record the configuration", e))?;
                }
                Command::SaveSessions(table) => {
                    self.sessions_file.save(&table).map_err(|e| self.fatal_io("save the producer sessions", e))?;
                }
                Command::SaveConfig(record) => {
                    let upto = self.core.log().committed_index().min(self.log.durable_index());
                    tracing::info!(
                        group = self.group,
                        index = record.index,
                        version = record.membership.version,
                        voters = ?record.membership.voters().collect::<Vec<_>>(),
                        learners = ?record.membership.learners().collect::<Vec<_>>(),
                        "configuration in force"
                    );
                    self.configs.append(record, upto).map_err(|e| self.fatal_io("record the configuration", e))?;
                }
            }
        }
        if self.core.log().committed_index() != self.subscribers_seen_commit {
            self.answer_subscribers(false);
        }
        let s = self.core.status();
        if !self.removed_said && self.core.membership_committed() && self.core.membership().version > 0 {
            let m = self.core.membership();
            if !m.contains(self.node_id) {
                self.removed_said = true;
                tracing::warn!(
                    group = self.group,
                    node = self.node_id,
                    version = m.version,
                    members = ?m.members.keys().collect::<Vec<_>>(),
                    "this node was removed from the group (committed configuration version {}): it no longer \
                     votes, leads or serves it; requests are sent to the leader",
                    m.version
                );
            }
        }
        let leader = s.role == Role::Leader;
        if leader && !self.was_leader {
            self.metrics.elections_won += 1;
        }
        self.was_leader = leader;
        // Publish only changes: the watch channel takes a lock, the comparison does not.
        let now = (s.role, s.term, s.leader_id);
        if now != self.published {
            self.published = now;
            let voters = self.core.membership().voters().collect();
            self.events.send_replace(GroupEvent {
                group: self.group,
                role: s.role,
                term: s.term,
                leader: s.leader_id,
                voters,
            });
        }
        Ok(())
    }

    /// The leader's log starts after `start`, which this follower does not
    /// hold: drop the log and start there.
    fn install_log_start(&mut self, start: LogStart) -> Result<(), GroupFatal> {
        tracing::info!(
            group = self.group,
            start = start.prev_index + 1,
            local_last = self.log.last_index(),
            "installing the leader's log start: this node's log is behind it"
        );
        self.backlog.clear();
        self.log.reset_to(start.prev_index, start.prev_term).map_err(|e| self.fatal(e))?;
        self.reported_durable = start.prev_index;
        self.metrics.log_starts_installed += 1;
        self.answer_reads();
        let behind = self.feed.as_ref().is_some_and(|f| f.fed < start.prev_index);
        let fetching_enough = self.install.as_ref().is_some_and(|i| i.pull.min_index() >= start.prev_index);
        if behind && !fetching_enough {
            self.begin_install(start.prev_index)?;
        }
        Ok(())
    }

    /// Starts fetching a snapshot that covers `min_index` (going on from a
    /// partial file or a fetch under way), and stops campaigning.
    fn begin_install(&mut self, min_index: u64) -> Result<(), GroupFatal> {
        let peers = self.peers();
        let Some(&first_peer) = peers.first() else {
            return Err(self.fatal(dledger_engine::Error::InvalidArgument(format!(
                "the log starts after index {min_index}, past what the state machine holds, and this single-node \
                 group has no peer to fetch a snapshot from (its newest snapshot is missing or damaged)"
            ))));
        };
        let source = self.core.status().leader_id.filter(|&l| l != self.node_id).unwrap_or(first_peer);
        let mut pull = SnapshotPull::new(min_index, source, MAX_CHUNK_BYTES, INSTALL_RETRY_TICKS);
        // Go on from what is on disk: a fetch under way, or one a restart interrupted.
        let busy = self.install.as_ref().and_then(|i| i.busy);
        let held = match &self.install {
            Some(i) => match i.pull.progress() {
                (Some(id), offset) => Some((id, offset)),
                (None, _) => None,
            },
            None => self.feed.as_mut().and_then(|f| f.partial.take()),
        };
        if let Some((id, offset)) = held {
            pull = pull.resume(id, offset);
        }
        let resumed_at = pull.progress().1;
        tracing::info!(
            group = self.group,
            min_index,
            source,
            resumed_at,
            "the log starts past the state machine: fetching a snapshot from a peer"
        );
        self.core.suspend_campaigns(true);
        let request = pull.request();
        self.install = Some(Install { pull, busy, started: Instant::now(), resumed_at });
        if busy.is_none() {
            self.send_snapshot(source, request);
        }
        Ok(())
    }

    fn send_snapshot(&mut self, to: NodeId, message: SnapshotMessage) {
        self.outbox.push((to, self.group, PeerMessage::Snapshot { from: self.node_id, to, message }));
    }

    /// Every tick: a fetch asks again when its answer is late.
    fn install_tick(&mut self) {
        let leader = self.core.status().leader_id.filter(|&l| l != self.node_id);
        let peers = self.peers();
        let Some(install) = &mut self.install else { return };
        if install.busy.is_some() {
            return;
        }
        if let Some(request) = install.pull.tick(leader, &peers) {
            let to = install.pull.source();
            self.send_snapshot(to, request);
        }
    }

    /// A peer's snapshot message: a request is served by the apply thread;
    /// a chunk goes to the fetch (if there is one, and it is not busy).
    pub(crate) fn on_snapshot_message(&mut self, from: NodeId, message: SnapshotMessage) -> Result<(), GroupFatal> {
        if let SnapshotMessage::Request { .. } = message {
            if let Some(feed) = &self.feed {
                let _ = feed.tx.send(ApplyMsg::Serve { from, request: message });
            }
            return Ok(());
        }
        let Some(install) = &mut self.install else { return Ok(()) };
        if install.busy.is_some() {
            return Ok(());
        }
        let corrupt = install.pull.corrupt_chunks;
        let step = install.pull.on_message(from, message);
        self.metrics.corrupt_chunks += install.pull.corrupt_chunks - corrupt;
        match step {
            PullStep::Ignore => {}
            PullStep::Send(request) => {
                let to = install.pull.source();
                self.send_snapshot(to, request);
            }
            PullStep::Write { id, offset, data, restart } => {
                install.busy = Some(id);
                if let Some(feed) = &self.feed {
                    let _ = feed.tx.send(ApplyMsg::WriteChunk { id, offset, data, restart });
                }
            }
        }
        Ok(())
    }

    /// The apply thread's word on a snapshot transfer.
    pub(crate) fn on_install_event(&mut self, event: InstallEvent) -> Result<(), GroupFatal> {
        if let InstallEvent::Send { to, message } = event {
            self.send_snapshot(to, message);
            return Ok(());
        }
        if let InstallEvent::Installed { id } = event {
            return self.installed(id);
        }
        let Some(install) = &mut self.install else { return Ok(()) };
        let was_for = install.busy.take();
        if was_for.is_some() && was_for != install.pull.progress().0 {
            // The fetch was replaced while the apply thread worked on the old
            // one: its answer is stale; ask for the new one's next bytes.
            let request = install.pull.request();
            let to = install.pull.source();
            self.send_snapshot(to, request);
            return Ok(());
        }
        match event {
            InstallEvent::Send { .. } | InstallEvent::Installed { .. } => unreachable!("handled above"),
            InstallEvent::Written { n } => match install.pull.written(n) {
                Err(request) => {
                    let to = install.pull.source();
                    self.send_snapshot(to, request);
                }
                Ok(id) => {
                    install.busy = Some(id);
                    if let Some(feed) = &self.feed {
                        let _ = feed.tx.send(ApplyMsg::Install { id });
                    }
                }
            },
            InstallEvent::WriteFailed { error } => {
                // The bytes durable so far stay; the fetch asks again on its clock.
                tracing::warn!(group = self.group, %error, "cannot write a fetched snapshot chunk; retrying");
            }
            InstallEvent::Mismatch { reason } => {
                self.metrics.corrupt_files += 1;
                tracing::warn!(group = self.group, %reason, "fetched snapshot damaged; fetching it again");
                let request = install.pull.restart();
                let to = install.pull.source();
                self.send_snapshot(to, request);
            }
        }
        Ok(())
    }

    /// The state machine now holds snapshot `id` (whatever fetch is under
    /// way: the apply thread restored it). If the log still starts past it
    /// (a newer log start came meanwhile), the fetch goes on for that one.
    fn installed(&mut self, id: SnapshotId) -> Result<(), GroupFatal> {
        let took = self.install.as_ref().map_or(0, |i| i.started.elapsed().as_millis() as u64);
        self.metrics.snapshots_installed += 1;
        if let Some(feed) = &mut self.feed {
            feed.fed = feed.fed.max(id.index);
        }
        self.install = None;
        let start = self.log.start().0;
        if id.index < start {
            tracing::info!(
                group = self.group,
                index = id.index,
                start,
                "installed a snapshot the log start has passed"
            );
            return self.begin_install(start);
        }
        self.core.suspend_campaigns(false);
        tracing::info!(
            group = self.group,
            index = id.index,
            bytes = id.len,
            took_ms = took,
            "state-machine snapshot fetched and installed"
        );
        self.feed_state_machine(None)
    }

    /// Sends the apply thread what the core has applied and it has not been
    /// sent: `batch` (what the core's `Apply` just handed over) when it
    /// follows on, or else a chunk read back from memory or the log files.
    /// Stops while the thread is more than `MAX_APPLY_LAG_*` behind; the
    /// next tick resumes.
    fn feed_state_machine(&mut self, batch: Option<Vec<Entry>>) -> Result<(), GroupFatal> {
        if self.install.is_some() {
            // The state machine is behind the log's start: nothing to feed until installed.
            return Ok(());
        }
        let Some(mut feed) = self.feed.take() else { return Ok(()) };
        let r = self.feed_with(&mut feed, batch);
        self.feed = Some(feed);
        self.send_ready_queries();
        r
    }

    /// Local reads whose read index has been fed go to the apply thread,
    /// behind those entries (the channel keeps the order).
    fn send_ready_queries(&mut self) {
        let Some(feed) = &self.feed else { return };
        let mut i = 0;
        while i < self.local_reads.len() {
            if self.local_reads[i].0 <= feed.fed {
                let (_, query, reply) = self.local_reads.swap_remove(i);
                let _ = feed.tx.send(ApplyMsg::Query { query, reply });
            } else {
                i += 1;
            }
        }
    }

    fn feed_with(&mut self, feed: &mut ApplyFeed, mut batch: Option<Vec<Entry>>) -> Result<(), GroupFatal> {
        let target = self.core.log().applied_index();
        while feed.fed < target {
            let behind = feed.fed - feed.progress.applied.load(Ordering::Acquire);
            let behind_bytes = feed.fed_bytes - feed.progress.applied_bytes.load(Ordering::Acquire);
            if behind >= MAX_APPLY_LAG_ENTRIES || behind_bytes >= MAX_APPLY_LAG_BYTES {
                break;
            }
            let mut entries = match batch.take() {
                Some(mut b) => {
                    b.retain(|e| e.index > feed.fed);
                    b
                }
                None => Vec::new(),
            };
            if entries.first().is_none_or(|e| e.index != feed.fed + 1) {
                entries = self.catch_up_chunk(feed.fed + 1, target)?;
            }
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else { break };
            assert_eq!(first.index, feed.fed + 1, "group {}: the apply thread is fed without gaps", self.group);
            let (first_index, last, last_term) = (first.index, last.index, last.term);
            let mut bytes = 0;
            let entries: Vec<CommittedEntry> = entries
                .into_iter()
                .filter_map(|e| {
                    // A client's payload, a session's stamp taken off.
                    let payload = e.client_payload()?;
                    bytes += payload.len() as u64;
                    Some(CommittedEntry { index: e.index, term: e.term, payload })
                })
                .collect();
            let keep_outputs = self.local_appends > 0 || feed.waited_upto >= first_index;
            // A closed channel means the state machine failed: the server is stopping.
            let _ = feed.tx.send(ApplyMsg::Batch { entries, last, last_term, bytes, keep_outputs });
            feed.fed = last;
            feed.fed_bytes += bytes;
        }
        Ok(())
    }

    /// Applied entries from `lo` (up to `hi`): from memory where the core
    /// still holds them, else from the log files; a bounded chunk.
    fn catch_up_chunk(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, GroupFatal> {
        let log = self.core.log();
        if lo >= log.first_in_memory() {
            // Bounded by entries and by bytes (the lag bound counts bytes too).
            let mut bytes = 0;
            let mut out = Vec::new();
            for e in log.entries(lo, hi.min(lo + 4095)) {
                bytes += e.payload.len();
                out.push(e.clone());
                if bytes >= MAX_CATCH_UP_BYTES {
                    break;
                }
            }
            return Ok(out);
        }
        let storage = EngineStorage { log: &self.log, error: std::cell::RefCell::new(None) };
        let to = hi.min(log.first_in_memory() - 1);
        match storage.entries(lo, to, MAX_CATCH_UP_BYTES as u64) {
            Some(e) => Ok(e),
            None => Err(self.fatal(storage.error.into_inner().expect("an error when no entries"))),
        }
    }

    /// Hands waiting entries to the engine, in order. A full disk is not fatal:
    /// the entries wait here (not durable, so never acknowledged) and are retried
    /// every tick until space returns.
    fn drain_backlog(&mut self) -> Result<(), GroupFatal> {
        while let Some(e) = self.backlog.front() {
            match self.log.append_parts(e.term, &[encode_kind(e.kind), &e.payload]) {
                Ok(i) => {
                    debug_assert_eq!(i, e.index);
                    self.metrics.entries_appended += 1;
                    self.metrics.bytes_written += e.payload.len() as u64 + 1;
                    self.backlog.pop_front();
                }
                // The disk is behind by a whole ring: wait for it.
                Err(dledger_engine::Error::Backpressure { .. }) => {
                    let next = self.log.durable_index() + 1;
                    self.log.wait_durable(next).map_err(|e| self.fatal(e))?;
                }
                Err(err @ dledger_engine::Error::NoSpace { .. }) => {
                    if !self.disk_full {
                        tracing::error!(group = self.group, error = %err, "disk full: entries wait in memory until space returns");
                        self.disk_full = true;
                    }
                    return Ok(());
                }
                Err(err) => return Err(self.fatal(err)),
            }
        }
        if self.disk_full {
            tracing::info!(group = self.group, "disk has space again; appends resume");
            self.disk_full = false;
        }
        Ok(())
    }

    fn answer_reads(&mut self) {
        // The core's own applied index: after a restart it applies entries it does
        // not hold in memory without an `Apply` command.
        self.applied_index = self.core.log().applied_index();
        let applied = self.applied_index;
        let mut i = 0;
        while i < self.reads.len() {
            if self.reads[i].0 <= applied {
                let (read_index, id) = self.reads.swap_remove(i);
                self.respond(id, Response::ReadIndex(read_index));
            } else {
                i += 1;
            }
        }
    }

    /// Answers a registered request; a local one gets errors only (its
    /// successes are answered in [`Self::reply`]).
    fn respond(&mut self, request_id: u64, response: Response) {
        if let Some(p) = self.pending.remove(&request_id) {
            self.answer(p, response);
        }
    }

    fn answer(&mut self, p: Pending, response: Response) {
        let error = |response| match response {
            Response::Error(e) => GroupError::Server(e),
            other => GroupError::Server(ServerError::Internal(format!("unexpected answer {other:?}"))),
        };
        match p.to {
            Waiter::Wire { reply, client_id } => {
                if matches!(response, Response::Appended { .. }) {
                    self.metrics.append_latency_us.saturating_record(p.started.elapsed().as_micros() as u64);
                }
                // A closed connection has nobody to answer.
                let _ = reply.send(Frame::Response { id: client_id, response });
            }
            Waiter::Members { reply, client_id } => {
                let _ = reply.send(Frame::Response { id: client_id, response });
            }
            Waiter::Append(reply) => {
                self.local_appends -= 1;
                let _ = reply.send(Err(error(response)));
            }
            Waiter::Read(_, reply) => {
                let _ = reply.send(Err(error(response)));
            }
        }
    }

    /// A local append committed: answered at once without a state machine,
    /// else by the apply thread once it has applied the entries.
    fn committed_locally(&mut self, reply: AppendReply, first_index: u64, last_index: u64, term: u64) {
        self.local_appends -= 1;
        match &mut self.feed {
            Some(feed) => {
                feed.waited_upto = feed.waited_upto.max(last_index);
                let _ = feed.tx.send(ApplyMsg::Waiter { first: first_index, last: last_index, term, reply });
            }
            None => {
                let _ = reply.send(Ok(Applied { first_index, last_index, term, outputs: Vec::new() }));
            }
        }
    }

    fn not_leader(&self, hint: Option<NodeId>) -> ServerError {
        let address =
            hint.and_then(|h| self.addresses.get(&h).cloned().or_else(|| self.peer_address(h).map(Into::into)));
        ServerError::NotLeader { leader: hint, address }
    }

    fn reply(&mut self, r: ClientReply) {
        match r {
            ClientReply::Committed { request_id, first_index, last_index, term } => {
                let Some(p) = self.pending.remove(&request_id) else { return };
                match p.to {
                    Waiter::Append(reply) => {
                        self.metrics.append_latency_us.saturating_record(p.started.elapsed().as_micros() as u64);
                        self.committed_locally(reply, first_index, last_index, term);
                    }
                    Waiter::Members { reply, client_id } => {
                        let response = Response::Members(self.members_view());
                        let _ = reply.send(Frame::Response { id: client_id, response });
                    }
                    to => self.answer(Pending { to, ..p }, Response::Appended { first_index, last_index, term }),
                }
            }
            ClientReply::Duplicate { request_id, first_index, last_index, term } => {
                self.metrics.session_duplicates += 1;
                self.respond(request_id, Response::Duplicate { first_index, last_index, term });
            }
            ClientReply::ReadReady { request_id, read_index } => match self.pending.get(&request_id) {
                Some(Pending { to: Waiter::Read(..), .. }) => {
                    if let Some(Pending { to: Waiter::Read(query, reply), .. }) = self.pending.remove(&request_id) {
                        self.local_reads.push((read_index, query, reply));
                        self.send_ready_queries();
                    }
                }
                Some(_) => {
                    self.reads.push((read_index, request_id));
                    self.answer_reads();
                }
                None => {}
            },
            ClientReply::TransferDone { request_id, new_term, .. } => {
                self.respond(request_id, Response::Transferred { new_term })
            }
            ClientReply::Failed { request_id, error } => {
                let e = match error {
                    ClientError::NotLeader { leader_hint } => self.not_leader(leader_hint),
                    ClientError::LeadershipLost { .. } => ServerError::LeadershipLost,
                    ClientError::TransferInProgress { target } => self.not_leader(Some(target)),
                    ClientError::TransferFailed { target, reason } => {
                        ServerError::TransferFailed(format!("to node {target}: {reason}"))
                    }
                    ClientError::EmptyProposal => ServerError::BadRequest("an append needs at least one entry".into()),
                    ClientError::MembershipRefused(r @ dledger_raft::MembershipRefusal::NotReady) => {
                        ServerError::NotReady(r.to_string())
                    }
                    ClientError::MembershipRefused(r) => ServerError::MembershipRefused(r.to_string()),
                    ClientError::Session(r) => {
                        self.metrics.session_refusals += 1;
                        match r {
                            SessionRefusal::OutOfOrderSequence { expected } => {
                                ServerError::OutOfOrderSequence { expected }
                            }
                            SessionRefusal::ProducerFenced { epoch } => ServerError::ProducerFenced { epoch },
                            SessionRefusal::SequenceTooOld { oldest } => ServerError::SequenceTooOld { oldest },
                        }
                    }
                };
                self.respond(request_id, Response::Error(e));
            }
        }
    }

    /// Handles a client request: answers at once or registers it with the core.
    pub(crate) fn on_client(&mut self, client_id: u64, request: Request, reply: ReplyTo) -> Result<(), GroupFatal> {
        let answer = |reply: &ReplyTo, response| {
            let _ = reply.send(Frame::Response { id: client_id, response });
        };
        let request_id = self.next_request;
        self.next_request += 1;
        // A node removed from the group serves nothing of it (its log stops
        // where the removal committed): reads and all go to the leader.
        if self.removed_said && !matches!(request, Request::Status | Request::Members) {
            answer(&reply, Response::Error(self.not_leader(self.core.status().leader_id)));
            return Ok(());
        }
        let event = match request {
            Request::Append { payloads } => {
                if let Err(e) = self.check_append(&payloads, 0) {
                    answer(&reply, Response::Error(e));
                    return Ok(());
                }
                self.metrics.proposals += 1;
                self.pending
                    .insert(request_id, Pending { to: Waiter::Wire { reply, client_id }, started: Instant::now() });
                self.proposals.push(dledger_raft::Proposal::plain(request_id, payloads));
                return Ok(());
            }
            Request::AppendSession { producer_id, epoch, seq, payloads } => {
                if let Err(e) = self.check_append(&payloads, dledger_raft::STAMP_LEN) {
                    answer(&reply, Response::Error(e));
                    return Ok(());
                }
                self.metrics.proposals += 1;
                self.metrics.session_proposals += 1;
                self.pending
                    .insert(request_id, Pending { to: Waiter::Wire { reply, client_id }, started: Instant::now() });
                // The leader's wall clock goes into the stamp: sessions expire by it.
                let time_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let session = dledger_raft::ProducerSession { producer_id, epoch, seq, time_ms };
                self.proposals.push(dledger_raft::Proposal { request_id, payloads, session: Some(session) });
                return Ok(());
            }
            Request::ReadBarrier => Event::ReadIndex { request_id },
            Request::TransferLeader { target } => Event::TransferLeadership { request_id, target },
            Request::Get { index } => {
                answer(&reply, self.read(index, index.saturating_add(1), 0));
                return Ok(());
            }
            Request::Read { lo, hi, max_bytes } => {
                answer(&reply, self.read(lo, hi, max_bytes as usize));
                return Ok(());
            }
            Request::Status => {
                answer(&reply, Response::Status(vec![self.status()]));
                return Ok(());
            }
            Request::Members => {
                answer(&reply, Response::Members(self.members_view()));
                return Ok(());
            }
            Request::ChangeMembership { change, expected_version, force } => {
                let change = match change {
                    dledger_proto::MembershipChange::AddLearner { id, address } => {
                        if address.is_empty() || address.len() > dledger_raft::MAX_ADDRESS_BYTES {
                            let e = ServerError::BadRequest(format!(
                                "node {id} needs an address of 1 to {} bytes",
                                dledger_raft::MAX_ADDRESS_BYTES
                            ));
                            answer(&reply, Response::Error(e));
                            return Ok(());
                        }
                        MembershipChange::AddLearner { id, address }
                    }
                    dledger_proto::MembershipChange::Promote { id } => MembershipChange::Promote { id },
                    dledger_proto::MembershipChange::Demote { id } => MembershipChange::Demote { id },
                    dledger_proto::MembershipChange::Remove { id } => MembershipChange::Remove { id },
                };
                tracing::info!(group = self.group, ?change, expected_version, force, "membership change asked");
                self.pending
                    .insert(request_id, Pending { to: Waiter::Members { reply, client_id }, started: Instant::now() });
                self.step(Event::ChangeMembership { request_id, change, expected_version, force })?;
                return Ok(());
            }
            Request::Subscribe { from, max_bytes, min_bytes, max_wait_ms } => {
                let cap = self.max_read_bytes;
                let max_bytes = if max_bytes == 0 { cap } else { (max_bytes as usize).min(cap) };
                let wait = Duration::from_millis(max_wait_ms.min(MAX_SUBSCRIBE_WAIT_MS) as u64);
                let parked = Parked {
                    client_id,
                    reply,
                    from,
                    max_bytes,
                    min_bytes: min_bytes as usize,
                    deadline: Instant::now() + wait,
                };
                match self.subscription_answer(&parked, wait.is_zero()) {
                    Some(response) => answer(&parked.reply, response),
                    None => self.subscribers.push(parked),
                }
                return Ok(());
            }
            Request::Purge { to } => {
                let commit = self.core.log().committed_index();
                if self.role() == Role::Leader && to > commit {
                    let e = ServerError::BadRequest(format!(
                        "cannot purge to index {to}: the log is committed only up to {commit}"
                    ));
                    answer(&reply, Response::Error(e));
                    return Ok(());
                }
                let payload = crate::admin::AdminCommand::PurgeTo(to).encode();
                Event::ProposeAdmin { request_id, payload }
            }
            Request::Query { query } => {
                if self.feed.is_none() {
                    let e = ServerError::BadRequest(format!("group {} has no state machine to query", self.group));
                    answer(&reply, Response::Error(e));
                    return Ok(());
                }
                // The embedding's read path; its answer goes to the connection.
                let (tx, rx) = oneshot::channel();
                tokio::task::spawn_local(async move {
                    let response = match rx.await {
                        Ok(Ok(b)) => Response::QueryResult(b),
                        Ok(Err(GroupError::Server(e))) => Response::Error(e),
                        Ok(Err(GroupError::Query(e))) => Response::Error(ServerError::BadRequest(e.to_string())),
                        Ok(Err(e @ GroupError::NoStateMachine(_))) => {
                            Response::Error(ServerError::BadRequest(e.to_string()))
                        }
                        Ok(Err(GroupError::Stopped)) | Err(_) => Response::Error(ServerError::ShuttingDown),
                    };
                    let _ = reply.send(Frame::Response { id: client_id, response });
                });
                return self.on_local(LocalRequest::Read { query, reply: tx });
            }
        };
        self.pending.insert(request_id, Pending { to: Waiter::Wire { reply, client_id }, started: Instant::now() });
        self.step(event)
    }

    /// Handles a request of the embedding application.
    pub(crate) fn on_local(&mut self, request: LocalRequest) -> Result<(), GroupFatal> {
        let request_id = self.next_request;
        self.next_request += 1;
        match request {
            LocalRequest::Append { payloads, reply } => {
                if let Err(e) = self.check_append(&payloads, 0) {
                    let _ = reply.send(Err(GroupError::Server(e)));
                    return Ok(());
                }
                self.metrics.proposals += 1;
                self.local_appends += 1;
                self.pending.insert(request_id, Pending { to: Waiter::Append(reply), started: Instant::now() });
                self.proposals.push(dledger_raft::Proposal::plain(request_id, payloads));
                Ok(())
            }
            LocalRequest::Read { query, reply } => {
                if self.feed.is_none() {
                    let _ = reply.send(Err(GroupError::NoStateMachine(self.group)));
                    return Ok(());
                }
                self.pending.insert(request_id, Pending { to: Waiter::Read(query, reply), started: Instant::now() });
                self.step(Event::ReadIndex { request_id })
            }
            LocalRequest::Status(reply) => {
                let _ = reply.send(self.status());
                Ok(())
            }
            LocalRequest::Snapshot(reply) => {
                match (&self.feed, &self.install) {
                    (None, _) => drop(reply.send(Err(GroupError::NoStateMachine(self.group)))),
                    (Some(_), Some(_)) => {
                        let e = ServerError::BadRequest("installing a snapshot fetched from a peer".into());
                        drop(reply.send(Err(GroupError::Server(e))))
                    }
                    (Some(feed), None) => drop(feed.tx.send(ApplyMsg::SnapshotNow { reply })),
                }
                Ok(())
            }
        }
    }

    /// The answer a subscription gets now, if it is due: entries from its
    /// index once at least `min_bytes` of them (or any, at its deadline) are
    /// committed; at the deadline, an empty batch; below the log start, `OutOfRange`.
    fn subscription_answer(&self, p: &Parked, timed_out: bool) -> Option<Response> {
        let log = self.core.log();
        let (commit, first) = (log.committed_index(), log.first_index());
        if p.from < first {
            return Some(Response::Error(ServerError::OutOfRange { index: p.from, first, commit }));
        }
        let batch = |entries| Response::Batch {
            entries,
            commit_index: commit,
            log_start: first,
            leader: self.core.status().leader_id,
        };
        if p.from > commit {
            return timed_out.then(|| batch(Vec::new()));
        }
        let last = commit.min(p.from.saturating_add(MAX_READ_ENTRIES - 1));
        match self.committed_entries(p.from, last, p.max_bytes) {
            Ok(entries) => {
                let bytes: usize = entries.iter().map(|e| e.payload.len()).sum();
                let full = bytes >= p.max_bytes || entries.last().is_some_and(|e| e.index == last && last < commit);
                (timed_out || bytes >= p.min_bytes.max(1) || full).then(|| batch(entries))
            }
            Err(e) => Some(Response::Error(ServerError::Internal(format!("reading the log: {e}")))),
        }
    }

    /// Answers the parked subscriptions that are due (all whose deadline
    /// passed, when `ticking`).
    fn answer_subscribers(&mut self, ticking: bool) {
        self.subscribers_seen_commit = self.core.log().committed_index();
        if self.subscribers.is_empty() {
            return;
        }
        let now = Instant::now();
        let parked = std::mem::take(&mut self.subscribers);
        for p in parked {
            let timed_out = ticking && now >= p.deadline;
            match self.subscription_answer(&p, timed_out) {
                Some(response) => drop(p.reply.send(Frame::Response { id: p.client_id, response })),
                None => self.subscribers.push(p),
            }
        }
    }

    /// Why an append cannot be taken now, if it cannot.
    /// Refuses an append the log cannot take; `stamp` bytes are added to
    /// its last payload (a session's stamp).
    fn check_append(&self, payloads: &[Bytes], stamp: usize) -> Result<(), ServerError> {
        if payloads.len() > dledger_proto::MAX_APPEND_ENTRIES {
            return Err(ServerError::BadRequest(format!(
                "an append of {} entries exceeds the maximum of {}",
                payloads.len(),
                dledger_proto::MAX_APPEND_ENTRIES
            )));
        }
        // One kind byte is stored before each payload.
        let max = self.log.config().max_entry_bytes().saturating_sub(1 + stamp);
        if let Some(big) = payloads.iter().find(|p| p.len() > max) {
            return Err(ServerError::BadRequest(format!("entry of {} bytes exceeds the maximum of {max}", big.len())));
        }
        if self.disk_low && self.role() == Role::Leader {
            return Err(ServerError::DiskFull(format!(
                "group {}: {:.1}% of the disk is free, below refuse_below_free_percent ({}%); appends resume when \
                 space returns",
                self.group,
                self.free_percent.unwrap_or(0.0),
                self.retention.refuse_below_free_percent
            )));
        }
        if self.disk_full && self.role() == Role::Leader {
            // Accepting more would only grow the entries waiting in memory.
            return Err(ServerError::DiskFull(format!(
                "group {} cannot write its log; appends resume when space returns",
                self.group
            )));
        }
        Ok(())
    }

    /// Committed entries `[lo, hi)`, up to `max_bytes` of payload (0: the cap), never
    /// more than [`MAX_READ_BYTES`] so that an answer always fits in a frame.
    fn read(&self, lo: u64, hi: u64, max_bytes: usize) -> Response {
        let cap = self.max_read_bytes;
        let max_bytes = if max_bytes == 0 { cap } else { max_bytes.min(cap) };
        let commit = self.core.log().committed_index();
        let first = self.core.log().first_index();
        if lo < first || lo > commit || hi <= lo {
            return Response::Error(ServerError::OutOfRange { index: lo, first, commit });
        }
        let last = (hi - 1).min(commit).min(lo.saturating_add(MAX_READ_ENTRIES - 1));
        match self.committed_entries(lo, last, max_bytes) {
            Ok(out) => Response::Entries(out),
            Err(e) => Response::Error(ServerError::Internal(format!("reading the log: {e}"))),
        }
    }

    /// Committed entries `lo..=hi`, from memory where the core still holds
    /// them and from the engine before that; stops once `max_bytes` of payload
    /// are in (at least one entry). A leader's no-op has an empty payload.
    fn committed_entries(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<ClientEntry>, dledger_engine::Error> {
        let log = self.core.log();
        debug_assert!(hi <= log.committed_index());
        let mut out = Vec::new();
        let mut bytes = 0;
        let from_memory = log.first_in_memory();
        if lo < from_memory {
            let mut stored = Vec::new();
            self.log.read_range(lo, (hi + 1).min(from_memory), max_bytes, &mut stored)?;
            for e in stored {
                bytes += e.payload.len().saturating_sub(1);
                // Only commands are the clients' own (a session's stamp taken
                // off); a no-op or an admin entry reads as empty.
                let payload = match e.payload.first().copied().and_then(decode_kind) {
                    Some(kind) => Entry { index: e.index, term: e.term, kind, payload: e.payload.slice(1..) }
                        .client_payload()
                        .unwrap_or_default(),
                    None => Bytes::new(),
                };
                out.push(ClientEntry { index: e.index, term: e.term, payload });
            }
        }
        let next = out.last().map_or(lo, |e| e.index + 1);
        // Go on in memory only where the files left off: the answer is contiguous.
        if bytes < max_bytes && next >= from_memory {
            for e in log.entries(next, hi) {
                bytes += e.payload.len();
                let payload = e.client_payload().unwrap_or_default();
                out.push(ClientEntry { index: e.index, term: e.term, payload });
                if bytes >= max_bytes {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn status(&self) -> GroupStatus {
        let s = self.core.status();
        let role = match s.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate | Role::PreCandidate => "candidate",
        };
        let mut followers = Vec::new();
        if s.role == Role::Leader {
            for id in self.peers() {
                if let Some(p) = self.core.progress(id) {
                    followers.push((id, p.match_index));
                }
            }
            followers.sort_unstable();
        }
        GroupStatus {
            group: self.group,
            node: self.node_id,
            role: role.to_string(),
            term: s.term,
            leader: s.leader_id,
            last_index: s.last_index,
            commit_index: s.committed_index,
            durable_index: s.durable_index,
            first_index: self.core.log().first_index(),
            disk_bytes: self.log.disk_bytes(),
            followers,
            config_version: s.config_version,
            voters: self.core.membership().voters().collect(),
            learners: self.core.membership().learners().collect(),
        }
    }

    /// The configuration in force, with each member's match index as this
    /// node knows it (a leader knows its followers').
    pub fn members_view(&self) -> dledger_proto::MembersView {
        let s = self.core.status();
        let m = self.core.membership();
        let members = m
            .members
            .iter()
            .map(|(&id, member)| dledger_proto::MemberView {
                id,
                address: self.peer_address(id).unwrap_or_default().to_string(),
                role: match member.role {
                    MemberRole::Voter => "voter".into(),
                    MemberRole::Learner => "learner".into(),
                },
                match_index: if id == self.node_id {
                    Some(s.durable_index)
                } else {
                    self.core.progress(id).map(|p| p.match_index)
                },
            })
            .collect();
        dledger_proto::MembersView {
            version: m.version,
            committed: self.core.membership_committed(),
            leader: s.leader_id,
            last_index: s.last_index,
            members,
        }
    }

    /// Fails every waiting request (the node is stopping).
    pub fn fail_all(&mut self, error: ServerError) {
        for p in self.subscribers.drain(..) {
            let _ = p.reply.send(Frame::Response { id: p.client_id, response: Response::Error(error.clone()) });
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.respond(id, Response::Error(error.clone()));
        }
        self.reads.clear();
        for (_, _, reply) in self.local_reads.drain(..) {
            let _ = reply.send(Err(GroupError::Server(error.clone())));
        }
    }

    /// Makes everything appended durable (for shutdown) and reports it.
    pub fn sync(&mut self) -> Result<(), GroupFatal> {
        self.log.sync_all().map_err(|e| self.fatal(e))?;
        self.report_durable()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Prometheus text lines for this group.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.core.status();
        let g = self.group;
        let role = match s.role {
            Role::Leader => 3,
            Role::Candidate => 2,
            Role::PreCandidate => 1,
            Role::Follower => 0,
        };
        let m = &self.metrics;
        let _ = writeln!(out, "dledger_term{{group=\"{g}\"}} {}", s.term);
        let _ = writeln!(out, "dledger_role{{group=\"{g}\"}} {role}");
        let _ = writeln!(out, "dledger_last_index{{group=\"{g}\"}} {}", s.last_index);
        let _ = writeln!(out, "dledger_commit_index{{group=\"{g}\"}} {}", s.committed_index);
        let _ = writeln!(out, "dledger_durable_index{{group=\"{g}\"}} {}", s.durable_index);
        let _ = writeln!(out, "dledger_disk_full{{group=\"{g}\"}} {}", self.disk_full as u8);
        let _ = writeln!(out, "dledger_log_first_index{{group=\"{g}\"}} {}", self.core.log().first_index());
        let _ = writeln!(out, "dledger_log_disk_bytes{{group=\"{g}\"}} {}", self.log.disk_bytes());
        let _ = writeln!(out, "dledger_log_segments{{group=\"{g}\"}} {}", self.log.segment_count());
        let _ = writeln!(out, "dledger_log_purges_total{{group=\"{g}\"}} {}", m.purges);
        let producers = self.core.sessions().table().producers.len();
        let _ = writeln!(out, "dledger_producer_sessions{{group=\"{g}\"}} {producers}");
        let _ = writeln!(out, "dledger_session_appends_total{{group=\"{g}\"}} {}", m.session_proposals);
        let _ = writeln!(out, "dledger_session_duplicates_total{{group=\"{g}\"}} {}", m.session_duplicates);
        let _ = writeln!(out, "dledger_session_refusals_total{{group=\"{g}\"}} {}", m.session_refusals);
        let _ = writeln!(out, "dledger_log_starts_sent_total{{group=\"{g}\"}} {}", self.core.log_starts_sent());
        let _ = writeln!(out, "dledger_log_starts_installed_total{{group=\"{g}\"}} {}", m.log_starts_installed);
        let _ = writeln!(out, "dledger_retention_on{{group=\"{g}\"}} {}", self.retention.is_on() as u8);
        let _ = writeln!(out, "dledger_group_failed{{group=\"{g}\"}} 0");
        if let Some(feed) = &self.feed {
            let p = &feed.progress;
            let (fetching, done, total) = match &self.install {
                Some(i) => {
                    let (id, offset) = i.pull.progress();
                    (1, offset, id.map_or(0, |id| id.len))
                }
                None => (0, 0, 0),
            };
            let resumed_at = self.install.as_ref().map_or(0, |i| i.resumed_at);
            let _ =
                writeln!(out, "dledger_snapshot_index{{group=\"{g}\"}} {}", p.snapshot_index.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "dledger_state_machine_applied_index{{group=\"{g}\"}} {}",
                p.applied.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "dledger_snapshot_install_in_progress{{group=\"{g}\"}} {fetching}");
            let _ = writeln!(out, "dledger_snapshot_install_bytes_done{{group=\"{g}\"}} {done}");
            let _ = writeln!(out, "dledger_snapshot_install_bytes_total{{group=\"{g}\"}} {total}");
            let _ = writeln!(out, "dledger_snapshot_install_resumed_at_bytes{{group=\"{g}\"}} {resumed_at}");
            let _ = writeln!(out, "dledger_snapshots_installed_total{{group=\"{g}\"}} {}", m.snapshots_installed);
            let _ = writeln!(out, "dledger_snapshot_chunks_corrupt_total{{group=\"{g}\"}} {}", m.corrupt_chunks);
            let _ = writeln!(out, "dledger_snapshot_files_corrupt_total{{group=\"{g}\"}} {}", m.corrupt_files);
            let _ = writeln!(
                out,
                "dledger_snapshot_chunks_served_total{{group=\"{g}\"}} {}",
                p.chunks_served.load(Ordering::Relaxed)
            );
        }
        if let Some(free) = self.free_percent {
            let _ = writeln!(out, "dledger_disk_free_percent{{group=\"{g}\"}} {free:.2}");
        }
        let _ = writeln!(out, "dledger_disk_low{{group=\"{g}\"}} {}", self.disk_low as u8);
        let _ = writeln!(out, "dledger_retention_hold_released{{group=\"{g}\"}} {}", m.hold_released as u8);
        for (follower, at) in &m.holds {
            let _ = writeln!(out, "dledger_retention_hold_index{{group=\"{g}\",follower=\"{follower}\"}} {at}");
        }
        let _ = writeln!(out, "dledger_proposals_total{{group=\"{g}\"}} {}", m.proposals);
        let _ = writeln!(out, "dledger_entries_appended_total{{group=\"{g}\"}} {}", m.entries_appended);
        let _ = writeln!(out, "dledger_bytes_written_total{{group=\"{g}\"}} {}", self.log.stats().bytes_written);
        let _ = writeln!(out, "dledger_payload_bytes_total{{group=\"{g}\"}} {}", m.bytes_written);
        let _ = writeln!(out, "dledger_leader_elections_won_total{{group=\"{g}\"}} {}", m.elections_won);
        let memory = self.core.log().memory_bytes();
        let _ = writeln!(out, "dledger_log_memory_bytes{{group=\"{g}\"}} {memory}");
        let read_back = self.core.entries_from_storage();
        let _ = writeln!(out, "dledger_entries_read_back_total{{group=\"{g}\"}} {read_back}");
        if let Some(feed) = &self.feed {
            let applied = feed.progress.applied.load(Ordering::Relaxed);
            let snapshot = feed.progress.snapshot_index.load(Ordering::Relaxed);
            let _ = writeln!(out, "dledger_applied_index{{group=\"{g}\"}} {applied}");
            let _ = writeln!(out, "dledger_apply_lag_entries{{group=\"{g}\"}} {}", feed.fed - applied.min(feed.fed));
            let _ = writeln!(out, "dledger_snapshot_index{{group=\"{g}\"}} {snapshot}");
        }
        let histograms = [
            ("dledger_append_latency_us", &m.append_latency_us),
            ("dledger_write_sync_latency_us", &m.write_sync_us),
            ("dledger_batch_entries", &m.batch_entries),
        ];
        for (name, h) in histograms {
            for q in [0.5, 0.9, 0.99, 0.999] {
                let _ = writeln!(out, "{name}{{group=\"{g}\",quantile=\"{q}\"}} {}", h.value_at_quantile(q));
            }
            let _ = writeln!(out, "{name}_count{{group=\"{g}\"}} {}", h.len());
        }
        if s.role == Role::Leader {
            for (node, match_index) in self.status().followers {
                let lag = s.last_index.saturating_sub(match_index);
                let _ = writeln!(out, "dledger_follower_lag_entries{{group=\"{g}\",follower=\"{node}\"}} {lag}");
            }
        }
    }
}

/// The engine log as the core's storage for entries that left memory. A
/// read error is kept and turned into the group's fatal error after the step.
struct EngineStorage<'a> {
    log: &'a Log,
    error: std::cell::RefCell<Option<dledger_engine::Error>>,
}

/// The most one read for a follower takes from the files (the read blocks the
/// group's thread; the follower's next ack asks for more).
const MAX_READ_BACK_BYTES: u64 = 1 << 20;

impl LogStorage for EngineStorage<'_> {
    fn entries(&self, from: u64, to: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        let mut stored = Vec::new();
        let max_bytes = max_bytes.clamp(1, MAX_READ_BACK_BYTES) as usize;
        if let Err(e) = self.log.read_range(from, to + 1, max_bytes, &mut stored) {
            self.error.borrow_mut().get_or_insert(e);
            return None;
        }
        let mut out = Vec::with_capacity(stored.len());
        for e in stored {
            let kind = match e.payload.first().copied().and_then(decode_kind) {
                Some(kind) => kind,
                None => {
                    let err = dledger_engine::Error::Corrupt {
                        segment: self.log.config().dir.clone(),
                        offset: 0,
                        entry_index: e.index,
                        reason: "entry has no valid kind byte",
                    };
                    self.error.borrow_mut().get_or_insert(err);
                    return None;
                }
            };
            out.push(Entry { index: e.index, term: e.term, kind, payload: e.payload.slice(1..) });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_kind_is_read_back_as_written() {
        // The match makes a new kind a compile error here until it is listed.
        let all = |k: EntryKind| match k {
            EntryKind::Noop | EntryKind::Command | EntryKind::Admin | EntryKind::Config | EntryKind::SessionCommand => {
                k
            }
        };
        let kinds =
            [EntryKind::Noop, EntryKind::Command, EntryKind::Admin, EntryKind::Config, EntryKind::SessionCommand];
        for kind in kinds.map(all) {
            assert_eq!(decode_kind(encode_kind(kind)[0]), Some(kind), "{kind:?}");
        }
        assert_eq!(decode_kind(5), None);
    }
}
