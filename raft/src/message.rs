//! Log entries and the messages Raft peers exchange.
//!
//! Invariants every sender upholds (and receivers check where cheap):
//! - `Message::term` is the sender's current term when the message was built
//!   (for a pre-vote request: the term the sender *would* campaign in).
//! - In an `AppendRequest`, entries are contiguous and start at
//!   `prev_log_index + 1`, and their terms never decrease.
//! - An `AppendResponse::Accepted { match_index }` only names entries that are
//!   durable on the follower *and* known to match the leader of that term.

use bytes::Bytes;

/// Identifies a node of the cluster (a Raft voter).
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;
/// The index of a log entry; the first entry has index 1, and 0 means "none".
pub type LogIndex = u64;
/// An identifier the host picks for a client request; echoed in the reply.
pub type RequestId = u64;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// The empty entry a new leader appends so that it can commit entries of
    /// earlier terms (Raft §5.4.2, §8).
    Noop,
    /// A client payload.
    Command,
    /// An operator's command to every replica's host (a purge, say): the
    /// core replicates and commits it like a command; the host acts on it
    /// and never hands it to an application.
    Admin,
    /// A cluster configuration ([`Membership`](crate::Membership), in its
    /// encoding): in force on a node from the moment it is in its log.
    Config,
    /// A client payload that ends an append of a producer session: the
    /// client's bytes followed by a [`ProducerStamp`](crate::ProducerStamp)
    /// of [`STAMP_LEN`](crate::STAMP_LEN) bytes (see `sessions`).
    SessionCommand,
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Position in the log (1-based).
    pub index: LogIndex,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// No-op or client command.
    pub kind: EntryKind,
    /// Opaque client bytes (empty for a no-op).
    pub payload: Bytes,
}

impl Entry {
    /// Bytes this entry counts toward replication windows.
    pub fn size_bytes(&self) -> u64 {
        // A fixed per-entry overhead (index, term, kind, length) plus payload.
        24 + self.payload.len() as u64
    }
}

/// Why an append was rejected, with the fast back-off hint of the Raft
/// thesis §5.3: the leader skips a whole conflicting term per round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictHint {
    /// The `prev_log_index` of the rejected request (lets the leader drop
    /// stale rejections).
    pub rejected_prev_log_index: LogIndex,
    /// Term of the follower's entry at `prev_log_index`, or `None` when the
    /// follower's log is shorter than that.
    pub conflict_term: Option<Term>,
    /// First index of `conflict_term` in the follower's log, or the
    /// follower's `last_index + 1` when `conflict_term` is `None`.
    pub conflict_first_index: LogIndex,
}

/// The body of a Raft message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me in `Message::term`?" Does not change anyone's
    /// term (Raft thesis §9.6).
    PreVoteRequest {
        /// Index of the candidate's last entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last entry.
        last_log_term: Term,
    },
    /// Answer to a pre-vote; when granted, `Message::term` is the term asked.
    PreVoteResponse {
        /// Whether the pre-vote was granted.
        granted: bool,
    },
    /// RequestVote (Raft §5.2, §5.4.1).
    VoteRequest {
        /// Index of the candidate's last entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last entry.
        last_log_term: Term,
        /// Set when the campaign follows a TimeoutNow: voters then ignore
        /// their "I heard from a leader recently" lease.
        leadership_transfer: bool,
    },
    /// Answer to a vote request.
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (Raft §5.3).
    AppendRequest {
        /// Index of the entry just before `entries`.
        prev_log_index: LogIndex,
        /// Term of that entry in the leader's log.
        prev_log_term: Term,
        /// Contiguous entries starting at `prev_log_index + 1`; may be empty.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit_index: LogIndex,
    },
    /// Answer to an append.
    AppendResponse {
        /// `Ok(match_index)`: the follower holds, durably, entries up to
        /// `match_index` that match the leader. `Err`: the prev check failed.
        result: Result<LogIndex, ConflictHint>,
    },
    /// Leader liveness and ReadIndex round: carries no entries.
    Heartbeat {
        /// `min(leader commit, follower match)`, so a follower never learns a
        /// commit index past what it is known to hold.
        leader_commit_index: LogIndex,
        /// The heartbeat round, echoed back; ReadIndex and the lease count
        /// rounds acknowledged by a quorum.
        round: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatResponse {
        /// The round being acknowledged.
        round: u64,
        /// What the follower could acknowledge as an `AppendResponse` now
        /// (durable and matching); lets the leader recover from a lost ack.
        match_index: LogIndex,
    },
    /// Leadership transfer: "campaign now, skipping pre-vote" (thesis §3.10).
    TimeoutNow,
    /// The leader's log no longer holds the entries this follower needs: it
    /// starts after `start`, and everything up to there is committed. The
    /// follower that does not hold the entry at `start.prev_index` with
    /// `start.prev_term` drops its log and starts there (answered like an
    /// append: `AppendResponse`).
    LogStart {
        /// The last entry the leader no longer holds.
        start: LogStart,
        /// The leader's commit index (at least `start.prev_index`).
        leader_commit_index: LogIndex,
        /// The configuration in force at the start.
        membership: crate::Membership,
        /// The leader's producer sessions, of a committed prefix reaching
        /// at least the start.
        sessions: crate::SessionTable,
    },
}

/// Where a log begins once its prefix has been purged: the last entry it no
/// longer holds. Every entry up to there is committed. `(0, 0)` for a log
/// that starts at index 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LogStart {
    /// Index of the last purged entry (the log's first index is one more).
    pub prev_index: LogIndex,
    /// That entry's term.
    pub prev_term: Term,
}

impl LogStart {
    /// The first index the log holds (or will hold).
    pub fn first_index(&self) -> LogIndex {
        self.prev_index + 1
    }
}

/// A message between two peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term (see the module invariants).
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}

/// The highest term a node accepts or reaches. Terms grow by one per
/// election, so no real cluster comes near 2^62; a message claiming more is
/// malformed (one heartbeat at `u64::MAX` once froze a cluster for good: the
/// term was saved, and `term + 1` wrapped), and a node at this term does not
/// campaign.
pub const MAX_TERM: Term = 1 << 62;

/// The highest log index a message may name. No log comes near 2^62
/// entries; a message naming more is malformed, so that no arithmetic on an
/// index from the network (`index + 1`, `index + entries`) can overflow.
pub const MAX_INDEX: LogIndex = 1 << 62;

impl Message {
    /// Structural checks a receiver applies before acting on a message: its
    /// term is at most [`MAX_TERM`] and every index it names at most
    /// [`MAX_INDEX`]; an append's entries continue `prev_log_index` one by
    /// one, with terms that never decrease and never exceed the sender's term.
    pub fn is_well_formed(&self) -> bool {
        if self.term > MAX_TERM || !self.indexes_in_range() {
            return false;
        }
        match &self.body {
            MessageBody::AppendRequest { prev_log_index, prev_log_term, entries, .. } => {
                // Index 0 is the empty log's end, whose term is 0.
                if *prev_log_term > self.term || (*prev_log_index == 0 && *prev_log_term != 0) {
                    return false;
                }
                let mut min_term = *prev_log_term;
                for (expected_index, entry) in (prev_log_index + 1..).zip(entries) {
                    if entry.index != expected_index || entry.term < min_term || entry.term > self.term {
                        return false;
                    }
                    min_term = entry.term;
                }
                true
            }
            MessageBody::LogStart { start, leader_commit_index, membership, sessions } => {
                membership.voters().next().is_some()
                    && sessions.as_of >= start.prev_index
                    && start.prev_index >= 1
                    && start.prev_term >= 1
                    && start.prev_term <= self.term
                    && *leader_commit_index >= start.prev_index
            }
            _ => true,
        }
    }
}

impl Message {
    fn indexes_in_range(&self) -> bool {
        let ok = |i: &LogIndex| *i <= MAX_INDEX;
        match &self.body {
            MessageBody::PreVoteRequest { last_log_index, last_log_term }
            | MessageBody::VoteRequest { last_log_index, last_log_term, .. } => {
                ok(last_log_index) && *last_log_term <= MAX_TERM
            }
            MessageBody::AppendRequest { prev_log_index, entries, leader_commit_index, .. } => {
                ok(prev_log_index) && ok(leader_commit_index) && (entries.len() as u64) <= MAX_INDEX - prev_log_index
            }
            MessageBody::AppendResponse { result: Ok(match_index) } => ok(match_index),
            MessageBody::AppendResponse { result: Err(h) } => {
                ok(&h.rejected_prev_log_index)
                    && ok(&h.conflict_first_index)
                    && h.conflict_term.is_none_or(|t| t <= MAX_TERM)
            }
            MessageBody::Heartbeat { leader_commit_index, .. } => ok(leader_commit_index),
            MessageBody::HeartbeatResponse { match_index, .. } => ok(match_index),
            MessageBody::LogStart { start, leader_commit_index, sessions, .. } => {
                ok(&start.prev_index) && ok(leader_commit_index) && ok(&sessions.as_of)
            }
            MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } | MessageBody::TimeoutNow => true,
        }
    }
}

/// The durable metadata record: current term and vote (Raft Figure 2,
/// "persistent state"). The host stores it atomically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate that received this node's vote in `term`, if any.
    pub voted_for: Option<NodeId>,
}
