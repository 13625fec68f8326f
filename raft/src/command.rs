//! What [`RaftCore::step`](super::RaftCore::step) asks the host to do.
//!
//! The host executes the commands of one step in order. Ordering rules the
//! core relies on:
//! * `PersistEntries` are applied to storage in order (truncate, then append).
//! * `SaveMeta` writes are applied in order; each is reported back with
//!   `Event::MetaSaved`. The core itself withholds every message until the
//!   metadata it depends on is saved, so `Send` may go out at once.
//! * `Apply` hands committed entries over at most once, in index order, and
//!   every one of them committed since this core started. Entries restored
//!   without their payload (`RestoredState::tail` is partial) count as applied
//!   when the commit index passes them but are not handed out again: a host
//!   with a state machine must restore it from its own storage up to there
//!   (`RaftLog::applied_index` says how far the core got).

use super::membership::{ConfigRecord, MembershipRefusal};
use super::message::{Entry, HardState, LogIndex, LogStart, Message, NodeId, RequestId, Term};
use super::sessions::SessionRefusal;

/// One output of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Atomically replace the metadata record; report `Event::MetaSaved`.
    SaveMeta(HardState),
    /// Remove entries from `truncate_from` on (if set), then append
    /// `entries`; report durability with `Event::EntriesDurable`.
    PersistEntries {
        /// First index to remove (a conflicting suffix), if any.
        truncate_from: Option<LogIndex>,
        /// Entries to append, contiguous with what remains.
        entries: Vec<Entry>,
    },
    /// Send this message to `message.to` (best effort; loss is tolerated).
    Send(Message),
    /// Durably append this configuration record to the host's file before
    /// the next command (the entry or log start it describes follows; see
    /// `membership` for the file's rules).
    SaveConfig(ConfigRecord),
    /// Durably replace the host's saved producer-session table with this
    /// one before the next command (a log start follows; see `sessions`).
    SaveSessions(crate::SessionTable),
    /// These entries are committed; apply them to the state machine.
    Apply(Vec<Entry>),
    /// Answer a client request.
    Reply(ClientReply),
    /// Drop the whole log and start it after `start` (a leader's log start
    /// this follower does not hold the entry of), durably, before the next
    /// command: the core counts everything up to `start.prev_index` durable,
    /// committed and applied, and a state machine, if any, does not have it.
    InstallLogStart(LogStart),
}

/// An answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReply {
    /// The proposal is committed at `first_index..=last_index` in `term`.
    Committed {
        /// The request.
        request_id: RequestId,
        /// Index of its first entry.
        first_index: LogIndex,
        /// Index of its last entry.
        last_index: LogIndex,
        /// Term of its entries.
        term: Term,
    },
    /// An append of a producer session that was in the log already (a
    /// retry): the original is committed at `first_index..=last_index` in
    /// `term`, and nothing was appended again.
    Duplicate {
        /// The request.
        request_id: RequestId,
        /// Index of the original's first entry.
        first_index: LogIndex,
        /// Index of its last entry.
        last_index: LogIndex,
        /// Term of its entries.
        term: Term,
    },
    /// Reads may be served once the state machine has applied `read_index`.
    ReadReady {
        /// The request.
        request_id: RequestId,
        /// Index reads must wait for.
        read_index: LogIndex,
    },
    /// This leader handed over: it sent TimeoutNow to the target and then
    /// saw a higher term.
    TransferDone {
        /// The request.
        request_id: RequestId,
        /// The node we asked to take over.
        target: NodeId,
        /// The term that ended our leadership.
        new_term: Term,
    },
    /// The request failed; see the error.
    Failed {
        /// The request.
        request_id: RequestId,
        /// Why.
        error: ClientError,
    },
}

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// This node is not the leader; retry at `leader_hint` if known.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node believes in, if any.
        leader_hint: Option<NodeId>,
    },
    /// This node lost leadership with the request in flight. A proposal's
    /// outcome is unknown: it may still commit under the next leader.
    #[error(
        "leadership lost in term {term} with the request in flight; outcome unknown (leader hint: {leader_hint:?})"
    )]
    LeadershipLost {
        /// The term in which we were leader.
        term: Term,
        /// The new leader, if known.
        leader_hint: Option<NodeId>,
    },
    /// A leadership transfer is under way; proposals are refused until it
    /// ends.
    #[error("leadership transfer to {target} in progress")]
    TransferInProgress {
        /// The transfer target.
        target: NodeId,
    },
    /// The transfer did not happen.
    #[error("leadership transfer to {target} failed: {reason}")]
    TransferFailed {
        /// The transfer target.
        target: NodeId,
        /// Why.
        reason: TransferFailure,
    },
    /// A proposal must carry at least one payload.
    #[error("empty proposal")]
    EmptyProposal,
    /// A membership change was refused; nothing changed.
    #[error("membership change refused: {0}")]
    MembershipRefused(MembershipRefusal),
    /// An append of a producer session was refused; nothing was appended.
    #[error("{0}")]
    Session(SessionRefusal),
}

/// Why a leadership transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferFailure {
    /// The target did not take over within an election timeout.
    #[error("target did not take over within an election timeout")]
    TimedOut,
    /// The target is not a voter of this cluster.
    #[error("target is not a voter")]
    UnknownTarget,
    /// The target is this leader already.
    #[error("target is already the leader")]
    AlreadyLeader,
}
