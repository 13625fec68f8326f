//! What the host feeds into [`RaftCore::step`](super::RaftCore::step).

use bytes::Bytes;

use super::membership::MembershipChange;
use super::message::{HardState, LogIndex, Message, NodeId, RequestId, Term};
use super::sessions::ProducerSession;

/// One input to the core. The core handles it completely before returning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message from a peer (any message; stale ones are dropped inside).
    Message(Message),
    /// One unit of logical time passed. The host ticks every core at a fixed
    /// interval; all timeouts are counted in ticks.
    Tick,
    /// A client append: one entry per payload, committed together or not at
    /// all as far as the reply goes.
    Propose {
        /// Echoed in the reply.
        request_id: RequestId,
        /// One entry per element; must be non-empty.
        payloads: Vec<Bytes>,
    },
    /// Several client appends that arrived together: each is handled as its
    /// own `Propose` (own reply, own all-or-nothing range), but their entries
    /// are persisted and replicated as one batch, so a busy leader sends one
    /// append per peer per batch rather than one per request.
    ProposeBatch(Vec<Proposal>),
    /// An operator's command for every replica's host: one
    /// [`EntryKind::Admin`](super::EntryKind::Admin) entry, replied to like a `Propose`.
    ProposeAdmin {
        /// Echoed in the reply.
        request_id: RequestId,
        /// The command, in the host's encoding.
        payload: Bytes,
    },
    /// A linearizable read barrier: reply with an index the host may serve
    /// reads at once it has applied up to it.
    ReadIndex {
        /// Echoed in the reply.
        request_id: RequestId,
    },
    /// Change the membership by one server; replied to like a `Propose`
    /// once the configuration entry commits (it is in force on the leader
    /// at once).
    ChangeMembership {
        /// Echoed in the reply.
        request_id: RequestId,
        /// The change.
        change: MembershipChange,
        /// Refuse unless the configuration in force has this version.
        expected_version: Option<u64>,
        /// Propose even if the new configuration's quorum is not reachable now.
        force: bool,
    },
    /// Hand leadership to `target`.
    TransferLeadership {
        /// Echoed in the reply.
        request_id: RequestId,
        /// The node that should become leader.
        target: NodeId,
    },
    /// Storage completion: every entry up to `index` is durable, and the
    /// entry at `index` had `term` when written. Completions are delivered
    /// in the order storage produced them, and none issued before a
    /// `truncate_from` that removed `index` may arrive after it.
    EntriesDurable {
        /// Last durable index.
        index: LogIndex,
        /// Term of that entry.
        term: Term,
    },
    /// Storage completion: the metadata record now durably holds this value.
    MetaSaved(HardState),
    /// The host durably purged its storage below `first_index`, which is at
    /// most [`RaftCore::purge_limit`](super::RaftCore::purge_limit)` + 1`.
    LogPurged {
        /// The first index storage still holds.
        first_index: LogIndex,
    },
}

/// One client append of an [`Event::ProposeBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Echoed in the reply.
    pub request_id: RequestId,
    /// One entry per element; must be non-empty.
    pub payloads: Vec<Bytes>,
    /// The producer session it belongs to, if any: the leader appends it at
    /// most once (see `sessions`).
    pub session: Option<ProducerSession>,
}

impl Proposal {
    /// An append without a session.
    pub fn plain(request_id: RequestId, payloads: Vec<Bytes>) -> Proposal {
        Proposal { request_id, payloads, session: None }
    }
}
