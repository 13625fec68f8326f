//! Client messages: the requests a client sends to one group and the
//! answers a node gives, with the error codes a server answers with.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{
    get_bool, get_bytes, get_count, get_opt_u64, get_str, get_u32, get_u64, get_u8, put_bytes, put_opt_u64, put_str,
};
use crate::frame::WireError;

/// The first frame on a connection: who opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id; 0 for a client.
    pub node_id: u64,
    /// The cluster the sender belongs to (or wants to talk to).
    pub cluster: String,
    /// A node's data-directory incarnation (its `IDENTITY`); 0 for a client.
    pub incarnation: u64,
}

/// One membership change, as a client asks for it (the Raft core's
/// `MembershipChange`, for clients that do not link the core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a node that receives the log and does not vote.
    AddLearner {
        /// Its node id (never used before in this cluster).
        id: u64,
        /// Where it listens.
        address: String,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Make a voter a learner.
    Demote {
        /// The voter.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// The member.
        id: u64,
    },
}

/// What a client asks of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Append these payloads as consecutive entries; answered with
    /// [`Response::Appended`] once they are committed (a quorum has them on disk).
    Append {
        /// The entries' payloads, in order.
        payloads: Vec<Bytes>,
    },
    /// An append of a producer session (an idempotent producer): appended
    /// at most once however often it is retried. Answered with
    /// [`Response::Appended`], or [`Response::Duplicate`] when the same
    /// `(producer_id, epoch, seq)` is in the log already; refused with
    /// [`ServerError::OutOfOrderSequence`], [`ServerError::ProducerFenced`]
    /// or [`ServerError::SequenceTooOld`] (nothing appended).
    AppendSession {
        /// The producer (any id the client picks; random by default).
        producer_id: u64,
        /// Its instance: a higher epoch fences the lower ones.
        epoch: u32,
        /// The sequence of the first payload; the next append of this
        /// producer starts at `seq + payloads.len()`.
        seq: u64,
        /// The entries' payloads, in order.
        payloads: Vec<Bytes>,
    },
    /// The committed entry at `index`; answered with [`Response::Entries`].
    Get {
        /// The log index.
        index: u64,
    },
    /// Committed entries from `lo` up to `hi` (exclusive), at most `max_bytes`
    /// of payload (always at least one entry); answered with [`Response::Entries`].
    Read {
        /// First index wanted.
        lo: u64,
        /// One past the last index wanted.
        hi: u64,
        /// Payload budget of the answer.
        max_bytes: u32,
    },
    /// A linearizable read point: the leader confirms it still leads and
    /// answers [`Response::ReadIndex`] with the commit index to read up to.
    ReadBarrier,
    /// Status of `group`, or of every group on the node when `group == ALL_GROUPS`.
    Status,
    /// Hand leadership to node `target`; answered with [`Response::Transferred`].
    TransferLeader {
        /// The node that should lead.
        target: u64,
    },
    /// A linearizable query of the group's state machine (a group run with
    /// one); answered with [`Response::QueryResult`] by the leader.
    Query {
        /// What the state machine is asked.
        query: Bytes,
    },
    /// Committed entries from `from` on, as a long poll: answered with
    /// [`Response::Batch`] as soon as at least `min_bytes` of payload (at least
    /// one entry) are committed from `from`, or after `max_wait_ms` with what
    /// there is (possibly nothing: a heartbeat carrying the commit index and
    /// the log start). Any replica serves it, up to its own commit index. A
    /// `from` below the log start answers `OutOfRange` naming the start.
    Subscribe {
        /// The first index wanted.
        from: u64,
        /// Payload budget of the answer (0: the node's maximum).
        max_bytes: u32,
        /// Answer early once this much payload is ready.
        min_bytes: u32,
        /// The longest the node holds the request (capped by the node).
        max_wait_ms: u32,
    },
    /// Purge the group's log up to `to` on every replica, as a replicated
    /// command (one admin entry); answered with [`Response::Appended`] (the
    /// entry's index) once committed. Refused above the commit index.
    Purge {
        /// The last index that may go.
        to: u64,
    },
    /// The group's configuration in force, with each member's lag as the
    /// leader sees it; answered with [`Response::Members`].
    Members,
    /// One membership change, proposed by the leader; answered with
    /// [`Response::Members`] (the new configuration) once it commits.
    ChangeMembership {
        /// The change.
        change: MembershipChange,
        /// Refuse unless the configuration in force has this version.
        expected_version: Option<u64>,
        /// Propose even if the new configuration's quorum is not reachable.
        force: bool,
    },
}

/// The most entries one [`Request::Append`] may carry. More is refused when
/// decoding, before anything is allocated for them: one 64 MiB frame of empty
/// payloads used to become 16 million entries and gigabytes of heap.
pub const MAX_APPEND_ENTRIES: usize = 64 * 1024;

/// The group id that asks a node about all its groups (with [`Request::Status`]).
pub const ALL_GROUPS: u64 = u64::MAX;

/// A committed entry as returned to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// The entry's log index.
    pub index: u64,
    /// The term it was appended in.
    pub term: u64,
    /// What the client appended.
    pub payload: Bytes,
}

/// One node's view of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct GroupStatus {
    /// The group.
    pub group: u64,
    /// The node answering.
    pub node: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    /// The node's current term.
    pub term: u64,
    /// The leader the node knows of, if any.
    pub leader: Option<u64>,
    /// The last index in the node's log.
    pub last_index: u64,
    /// The highest index the node knows is committed.
    pub commit_index: u64,
    /// The highest index on the node's disk.
    pub durable_index: u64,
    /// The first index the node's log holds (entries below it were purged).
    pub first_index: u64,
    /// Bytes the group's log files take on the node's disk.
    pub disk_bytes: u64,
    /// On a leader: each follower's match index.
    pub followers: Vec<(u64, u64)>,
    /// Version of the configuration in force on the node.
    pub config_version: u64,
    /// Its voters.
    pub voters: Vec<u64>,
    /// Its learners.
    pub learners: Vec<u64>,
}

/// One member of a group's configuration, as [`Response::Members`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MemberView {
    /// Its node id.
    pub id: u64,
    /// Its address.
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Its match index as the leader knows it (the leader's own durable
    /// index for the leader; none when a follower answers).
    pub match_index: Option<u64>,
}

/// A group's configuration as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MembersView {
    /// The configuration's version (0: the bootstrap).
    pub version: u64,
    /// Whether it is committed (no change pending).
    pub committed: bool,
    /// The leader the node knows of.
    pub leader: Option<u64>,
    /// The answering node's last index (members' lag is measured from it).
    pub last_index: u64,
    /// The members.
    pub members: Vec<MemberView>,
}

/// The error codes a server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// This node does not lead the group; try `leader` at `address` if known.
    #[error("not the leader{}", match (leader, address) {
        (Some(l), Some(a)) => format!(" (the leader is node {l} at {a})"),
        (Some(l), None) => format!(" (the leader is node {l})"),
        _ => " (no leader known)".to_string(),
    })]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u64>,
        /// That leader's client address.
        address: Option<String>,
    },
    /// The node lost leadership while the request was in flight.
    #[error("leadership lost with the request in flight; its outcome is unknown (it may still commit)")]
    LeadershipLost,
    /// A leadership transfer did not complete.
    #[error("leadership transfer failed: {0}")]
    TransferFailed(String),
    /// No such group on this node.
    #[error("unknown group {0}")]
    UnknownGroup(u64),
    /// The index asked is not committed, or already purged.
    #[error("{}", if index < first {
        format!("index {index} was purged: the log starts at {first} (committed up to {commit})")
    } else {
        format!("index {index} is not committed yet (the log holds [{first}, {commit}] committed)")
    })]
    OutOfRange {
        /// The index asked.
        index: u64,
        /// The first index still in the log.
        first: u64,
        /// The commit index.
        commit: u64,
    },
    /// The node is stopping.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The request is not valid (named).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The server failed in a way the client cannot fix.
    #[error("server error: {0}")]
    Internal(String),
    /// The leader's disk is full: appends are refused (nothing acknowledged
    /// is lost) until space returns. Not retried by the client library.
    #[error("disk full on the leader: {0}")]
    DiskFull(String),
    /// The node already serves as many client connections as it takes (its
    /// `max_client_connections`); sent with request id 0, then the
    /// connection is closed.
    #[error("the node refuses the connection: it already serves {max} client connections (max_client_connections)")]
    TooManyConnections {
        /// The node's cap.
        max: u64,
    },
    /// A membership change was refused; nothing changed.
    #[error("membership change refused: {0}")]
    MembershipRefused(String),
    /// The node cannot take the request yet (a new leader that has not
    /// committed an entry of its term); nothing changed, retry shortly.
    #[error("not ready, retry: {0}")]
    NotReady(String),
    /// A session append whose sequence does not follow the producer's last
    /// append in this leader's log; nothing appended. Below `seq` (a gap):
    /// this leader lacks the producer's last append (a stale leader) or it
    /// never committed. Above: another instance uses this producer id and epoch.
    #[error("out-of-order sequence: the producer's next sequence here is {expected}")]
    OutOfOrderSequence {
        /// The sequence this leader expects next.
        expected: u64,
    },
    /// A newer instance of the producer (a higher epoch) took over; nothing appended.
    #[error("producer fenced: epoch {epoch} of this producer is in force")]
    ProducerFenced {
        /// The epoch in force.
        epoch: u32,
    },
    /// A retry of an append older than the ones the leader keeps for
    /// duplicates: it was appended once (its index is no longer known) and
    /// is not appended again.
    #[error("sequence older than the appends kept for duplicates (oldest kept: {oldest})")]
    SequenceTooOld {
        /// The first sequence of the oldest append kept.
        oldest: u64,
    },
}

/// A node's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The appended entries are committed at `first_index..=last_index` in `term`.
    Appended {
        /// Index of the first payload.
        first_index: u64,
        /// Index of the last payload.
        last_index: u64,
        /// The term they were appended in.
        term: u64,
    },
    /// A [`Request::AppendSession`] that was in the log already (a retry):
    /// the original is committed at `first_index..=last_index` in `term`,
    /// and nothing was appended again.
    Duplicate {
        /// Index of the original's first payload.
        first_index: u64,
        /// Index of its last payload.
        last_index: u64,
        /// Its term.
        term: u64,
    },
    /// Committed entries, in index order.
    Entries(Vec<ClientEntry>),
    /// Read up to this commit index for a linearizable read.
    ReadIndex(u64),
    /// One status per group asked.
    Status(Vec<GroupStatus>),
    /// Leadership moved; the new leader's term.
    Transferred {
        /// The term the target leads in.
        new_term: u64,
    },
    /// The state machine's answer to a [`Request::Query`].
    QueryResult(Bytes),
    /// The answer to a [`Request::Subscribe`]: committed entries from the
    /// index asked (possibly none), and where the node stands.
    Batch {
        /// Consecutive committed entries, from the index asked.
        entries: Vec<ClientEntry>,
        /// The answering node's commit index.
        commit_index: u64,
        /// The first index its log holds.
        log_start: u64,
        /// The leader it knows of.
        leader: Option<u64>,
    },
    /// A group's configuration (for [`Request::Members`] and
    /// [`Request::ChangeMembership`]).
    Members(MembersView),
    /// The request failed.
    Error(ServerError),
}

fn put_ids(out: &mut BytesMut, ids: &[u64]) {
    out.put_u32_le(ids.len() as u32);
    for id in ids {
        out.put_u64_le(*id);
    }
}

fn get_ids(p: &mut Bytes) -> Result<Vec<u64>, WireError> {
    let n = get_count(p, 8, "response")?;
    (0..n).map(|_| get_u64(p, "response")).collect()
}

pub(crate) fn encode_request(r: &Request, out: &mut BytesMut) {
    match r {
        Request::Append { payloads } => {
            out.put_u8(1);
            put_payloads(out, payloads);
        }
        Request::AppendSession { producer_id, epoch, seq, payloads } => {
            out.put_u8(12);
            out.put_u64_le(*producer_id);
            out.put_u32_le(*epoch);
            out.put_u64_le(*seq);
            put_payloads(out, payloads);
        }
        Request::Get { index } => {
            out.put_u8(2);
            out.put_u64_le(*index);
        }
        Request::Read { lo, hi, max_bytes } => {
            out.put_u8(3);
            out.put_u64_le(*lo);
            out.put_u64_le(*hi);
            out.put_u32_le(*max_bytes);
        }
        Request::ReadBarrier => out.put_u8(4),
        Request::Status => out.put_u8(5),
        Request::TransferLeader { target } => {
            out.put_u8(6);
            out.put_u64_le(*target);
        }
        Request::Query { query } => {
            out.put_u8(7);
            put_bytes(out, query);
        }
        Request::Purge { to } => {
            out.put_u8(8);
            out.put_u64_le(*to);
        }
        Request::Subscribe { from, max_bytes, min_bytes, max_wait_ms } => {
            out.put_u8(9);
            out.put_u64_le(*from);
            out.put_u32_le(*max_bytes);
            out.put_u32_le(*min_bytes);
            out.put_u32_le(*max_wait_ms);
        }
        Request::Members => out.put_u8(10),
        Request::ChangeMembership { change, expected_version, force } => {
            out.put_u8(11);
            let (kind, id, address) = match change {
                MembershipChange::AddLearner { id, address } => (1, id, address.as_str()),
                MembershipChange::Promote { id } => (2, id, ""),
                MembershipChange::Demote { id } => (3, id, ""),
                MembershipChange::Remove { id } => (4, id, ""),
            };
            out.put_u8(kind);
            out.put_u64_le(*id);
            put_str(out, address);
            put_opt_u64(out, *expected_version);
            out.put_u8(*force as u8);
        }
    }
}

/// An append's payloads: their count, then each length-prefixed.
fn put_payloads(out: &mut BytesMut, payloads: &[Bytes]) {
    out.put_u32_le(payloads.len() as u32);
    for p in payloads {
        put_bytes(out, p);
    }
}

/// [`put_payloads`]' bytes, their count bounded before anything is allocated.
fn get_payloads(p: &mut Bytes) -> Result<Vec<Bytes>, WireError> {
    let n = get_count(p, 4, "request")?;
    if n > MAX_APPEND_ENTRIES {
        return Err(WireError::Malformed("append (more entries than MAX_APPEND_ENTRIES)"));
    }
    (0..n).map(|_| get_bytes(p, "request")).collect()
}

pub(crate) fn decode_request(p: &mut Bytes) -> Result<Request, WireError> {
    const W: &str = "request";
    Ok(match get_u8(p, W)? {
        1 => Request::Append { payloads: get_payloads(p)? },
        12 => Request::AppendSession {
            producer_id: get_u64(p, W)?,
            epoch: get_u32(p, W)?,
            seq: get_u64(p, W)?,
            payloads: get_payloads(p)?,
        },
        2 => Request::Get { index: get_u64(p, W)? },
        3 => Request::Read { lo: get_u64(p, W)?, hi: get_u64(p, W)?, max_bytes: get_u32(p, W)? },
        4 => Request::ReadBarrier,
        5 => Request::Status,
        6 => Request::TransferLeader { target: get_u64(p, W)? },
        7 => Request::Query { query: get_bytes(p, W)? },
        8 => Request::Purge { to: get_u64(p, W)? },
        9 => Request::Subscribe {
            from: get_u64(p, W)?,
            max_bytes: get_u32(p, W)?,
            min_bytes: get_u32(p, W)?,
            max_wait_ms: get_u32(p, W)?,
        },
        10 => Request::Members,
        11 => {
            let kind = get_u8(p, W)?;
            let id = get_u64(p, W)?;
            let address = get_str(p, W)?;
            let change = match kind {
                1 => MembershipChange::AddLearner { id, address },
                2 => MembershipChange::Promote { id },
                3 => MembershipChange::Demote { id },
                4 => MembershipChange::Remove { id },
                _ => return Err(WireError::Malformed("membership change")),
            };
            Request::ChangeMembership { change, expected_version: get_opt_u64(p, W)?, force: get_bool(p, W)? }
        }
        _ => return Err(WireError::Malformed(W)),
    })
}

pub(crate) fn encode_response(r: &Response, out: &mut BytesMut) {
    match r {
        Response::Appended { first_index, last_index, term } => {
            out.put_u8(1);
            out.put_u64_le(*first_index);
            out.put_u64_le(*last_index);
            out.put_u64_le(*term);
        }
        Response::Duplicate { first_index, last_index, term } => {
            out.put_u8(10);
            out.put_u64_le(*first_index);
            out.put_u64_le(*last_index);
            out.put_u64_le(*term);
        }
        Response::Entries(entries) => {
            out.put_u8(2);
            out.put_u32_le(entries.len() as u32);
            for e in entries {
                out.put_u64_le(e.index);
                out.put_u64_le(e.term);
                put_bytes(out, &e.payload);
            }
        }
        Response::ReadIndex(i) => {
            out.put_u8(3);
            out.put_u64_le(*i);
        }
        Response::Status(groups) => {
            out.put_u8(4);
            out.put_u32_le(groups.len() as u32);
            for g in groups {
                out.put_u64_le(g.group);
                out.put_u64_le(g.node);
                put_str(out, &g.role);
                out.put_u64_le(g.term);
                put_opt_u64(out, g.leader);
                out.put_u64_le(g.last_index);
                out.put_u64_le(g.commit_index);
                out.put_u64_le(g.durable_index);
                out.put_u64_le(g.first_index);
                out.put_u64_le(g.disk_bytes);
                out.put_u32_le(g.followers.len() as u32);
                for (node, m) in &g.followers {
                    out.put_u64_le(*node);
                    out.put_u64_le(*m);
                }
                out.put_u64_le(g.config_version);
                put_ids(out, &g.voters);
                put_ids(out, &g.learners);
            }
        }
        Response::Members(v) => {
            out.put_u8(9);
            out.put_u64_le(v.version);
            out.put_u8(v.committed as u8);
            put_opt_u64(out, v.leader);
            out.put_u64_le(v.last_index);
            out.put_u32_le(v.members.len() as u32);
            for m in &v.members {
                out.put_u64_le(m.id);
                put_str(out, &m.address);
                put_str(out, &m.role);
                put_opt_u64(out, m.match_index);
            }
        }
        Response::Transferred { new_term } => {
            out.put_u8(5);
            out.put_u64_le(*new_term);
        }
        Response::QueryResult(b) => {
            out.put_u8(7);
            put_bytes(out, b);
        }
        Response::Batch { entries, commit_index, log_start, leader } => {
            out.put_u8(8);
            out.put_u64_le(*commit_index);
            out.put_u64_le(*log_start);
            put_opt_u64(out, *leader);
            out.put_u32_le(entries.len() as u32);
            for e in entries {
                out.put_u64_le(e.index);
                out.put_u64_le(e.term);
                put_bytes(out, &e.payload);
            }
        }
        Response::Error(e) => {
            out.put_u8(6);
            match e {
                ServerError::NotLeader { leader, address } => {
                    out.put_u8(1);
                    put_opt_u64(out, *leader);
                    put_str(out, address.as_deref().unwrap_or(""));
                }
                ServerError::LeadershipLost => out.put_u8(2),
                ServerError::TransferFailed(m) => {
                    out.put_u8(3);
                    put_str(out, m);
                }
                ServerError::UnknownGroup(g) => {
                    out.put_u8(4);
                    out.put_u64_le(*g);
                }
                ServerError::OutOfRange { index, first, commit } => {
                    out.put_u8(5);
                    out.put_u64_le(*index);
                    out.put_u64_le(*first);
                    out.put_u64_le(*commit);
                }
                ServerError::ShuttingDown => out.put_u8(6),
                ServerError::BadRequest(m) => {
                    out.put_u8(7);
                    put_str(out, m);
                }
                ServerError::Internal(m) => {
                    out.put_u8(8);
                    put_str(out, m);
                }
                ServerError::DiskFull(m) => {
                    out.put_u8(9);
                    put_str(out, m);
                }
                ServerError::TooManyConnections { max } => {
                    out.put_u8(10);
                    out.put_u64_le(*max);
                }
                ServerError::MembershipRefused(m) => {
                    out.put_u8(11);
                    put_str(out, m);
                }
                ServerError::NotReady(m) => {
                    out.put_u8(12);
                    put_str(out, m);
                }
                ServerError::OutOfOrderSequence { expected } => {
                    out.put_u8(13);
                    out.put_u64_le(*expected);
                }
                ServerError::ProducerFenced { epoch } => {
                    out.put_u8(14);
                    out.put_u32_le(*epoch);
                }
                ServerError::SequenceTooOld { oldest } => {
                    out.put_u8(15);
                    out.put_u64_le(*oldest);
                }
            }
        }
    }
}

pub(crate) fn decode_response(p: &mut Bytes) -> Result<Response, WireError> {
    const W: &str = "response";
    Ok(match get_u8(p, W)? {
        1 => Response::Appended { first_index: get_u64(p, W)?, last_index: get_u64(p, W)?, term: get_u64(p, W)? },
        10 => Response::Duplicate { first_index: get_u64(p, W)?, last_index: get_u64(p, W)?, term: get_u64(p, W)? },
        2 => {
            let n = get_count(p, 20, W)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(ClientEntry { index: get_u64(p, W)?, term: get_u64(p, W)?, payload: get_bytes(p, W)? });
            }
            Response::Entries(entries)
        }
        3 => Response::ReadIndex(get_u64(p, W)?),
        4 => {
            let n = get_count(p, 66, W)?;
            let mut groups = Vec::with_capacity(n);
            for _ in 0..n {
                let group = get_u64(p, W)?;
                let node = get_u64(p, W)?;
                let role = get_str(p, W)?;
                let term = get_u64(p, W)?;
                let leader = get_opt_u64(p, W)?;
                let last_index = get_u64(p, W)?;
                let commit_index = get_u64(p, W)?;
                let durable_index = get_u64(p, W)?;
                let first_index = get_u64(p, W)?;
                let disk_bytes = get_u64(p, W)?;
                let k = get_count(p, 16, W)?;
                let mut followers = Vec::with_capacity(k);
                for _ in 0..k {
                    followers.push((get_u64(p, W)?, get_u64(p, W)?));
                }
                let config_version = get_u64(p, W)?;
                let voters = get_ids(p)?;
                let learners = get_ids(p)?;
                groups.push(GroupStatus {
                    group,
                    node,
                    role,
                    term,
                    leader,
                    last_index,
                    commit_index,
                    durable_index,
                    first_index,
                    disk_bytes,
                    followers,
                    config_version,
                    voters,
                    learners,
                });
            }
            Response::Status(groups)
        }
        5 => Response::Transferred { new_term: get_u64(p, W)? },
        7 => Response::QueryResult(get_bytes(p, W)?),
        8 => {
            let commit_index = get_u64(p, W)?;
            let log_start = get_u64(p, W)?;
            let leader = get_opt_u64(p, W)?;
            let n = get_count(p, 20, W)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(ClientEntry { index: get_u64(p, W)?, term: get_u64(p, W)?, payload: get_bytes(p, W)? });
            }
            Response::Batch { entries, commit_index, log_start, leader }
        }
        6 => Response::Error(match get_u8(p, W)? {
            1 => {
                let leader = get_opt_u64(p, W)?;
                let address = get_str(p, W)?;
                ServerError::NotLeader { leader, address: (!address.is_empty()).then_some(address) }
            }
            2 => ServerError::LeadershipLost,
            3 => ServerError::TransferFailed(get_str(p, W)?),
            4 => ServerError::UnknownGroup(get_u64(p, W)?),
            5 => ServerError::OutOfRange { index: get_u64(p, W)?, first: get_u64(p, W)?, commit: get_u64(p, W)? },
            6 => ServerError::ShuttingDown,
            7 => ServerError::BadRequest(get_str(p, W)?),
            8 => ServerError::Internal(get_str(p, W)?),
            9 => ServerError::DiskFull(get_str(p, W)?),
            10 => ServerError::TooManyConnections { max: get_u64(p, W)? },
            11 => ServerError::MembershipRefused(get_str(p, W)?),
            12 => ServerError::NotReady(get_str(p, W)?),
            13 => ServerError::OutOfOrderSequence { expected: get_u64(p, W)? },
            14 => ServerError::ProducerFenced { epoch: get_u32(p, W)? },
            15 => ServerError::SequenceTooOld { oldest: get_u64(p, W)? },
            _ => return Err(WireError::Malformed(W)),
        }),
        9 => {
            let version = get_u64(p, W)?;
            let committed = get_bool(p, W)?;
            let leader = get_opt_u64(p, W)?;
            let last_index = get_u64(p, W)?;
            let n = get_count(p, 22, W)?;
            let mut members = Vec::with_capacity(n);
            for _ in 0..n {
                members.push(MemberView {
                    id: get_u64(p, W)?,
                    address: get_str(p, W)?,
                    role: get_str(p, W)?,
                    match_index: get_opt_u64(p, W)?,
                });
            }
            Response::Members(MembersView { version, committed, leader, last_index, members })
        }
        _ => return Err(WireError::Malformed(W)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader_plainly() {
        let e = |leader, address: Option<&str>| {
            ServerError::NotLeader { leader, address: address.map(Into::into) }.to_string()
        };
        assert_eq!(e(Some(2), Some("10.0.0.2:20911")), "not the leader (the leader is node 2 at 10.0.0.2:20911)");
        assert_eq!(e(Some(2), None), "not the leader (the leader is node 2)");
        assert_eq!(e(None, None), "not the leader (no leader known)");
    }
}
