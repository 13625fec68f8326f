//! Leadership transfer (Raft thesis §3.10) and the preferred-leader option.
//!
//! A transfer runs on the leader: it refuses new proposals, brings the target
//! up to date (normal replication), and once the target's durable match
//! reaches the leader's last index sends it `TimeoutNow`; the target then
//! campaigns at once, skipping pre-vote, with requests that voters honour
//! even though they have a live leader. If the leader is still leader an
//! election timeout (`election_timeout_min_ticks`) after the start, it gives
//! up, says so (`TransferFailed { TimedOut }`) and accepts proposals again.
//! If it sees a higher term meanwhile, it reports `TransferDone`.
//!
//! Preferred leader: a leader that is not `Config::preferred_leader` starts a
//! transfer (without a client) whenever that node is caught up and was heard
//! from recently, at most once per election timeout.
//!
//! Invariants: at most one transfer at a time; only a leader has one; it is
//! answered exactly once (done, failed, or timed out).

use super::command::{ClientError, ClientReply, TransferFailure};
use super::core::{RaftCore, Role};
use super::message::{MessageBody, NodeId, RequestId};

/// A transfer in progress.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// The node that should take over.
    pub target: NodeId,
    /// The client that asked, if any (none for the preferred leader).
    pub request_id: Option<RequestId>,
    /// Ticks since the transfer started.
    pub elapsed_ticks: u64,
}

impl RaftCore {
    pub(super) fn on_transfer_request(&mut self, request_id: Option<RequestId>, target: NodeId) {
        let fail = |core: &mut RaftCore, error: ClientError| {
            if let Some(request_id) = request_id {
                core.reply(ClientReply::Failed { request_id, error });
            }
        };
        if self.role != Role::Leader {
            let leader_hint = self.leader_id;
            fail(self, ClientError::NotLeader { leader_hint });
            return;
        }
        if let Some(transfer) = &self.transfer {
            let target = transfer.target;
            fail(self, ClientError::TransferInProgress { target });
            return;
        }
        if target == self.id {
            fail(self, ClientError::TransferFailed { target, reason: TransferFailure::AlreadyLeader });
            return;
        }
        if !self.voters.contains(&target) {
            fail(self, ClientError::TransferFailed { target, reason: TransferFailure::UnknownTarget });
            return;
        }
        self.transfer = Some(Transfer { target, request_id, elapsed_ticks: 0 });
        self.reads.revoke_lease();
        self.on_transfer_target_progress(target);
        if self.transfer.is_some() {
            self.send_appends(target, true);
        }
    }

    /// The target's match moved: if it holds our whole log, tell it to go.
    pub(super) fn on_transfer_target_progress(&mut self, peer: NodeId) {
        let Some(transfer) = self.transfer else { return };
        if transfer.target != peer || self.role != Role::Leader {
            return;
        }
        let caught_up = self.progress.get(&peer).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(peer, MessageBody::TimeoutNow);
        }
    }

    /// Leader tick for a transfer: give up after an election timeout.
    pub(super) fn transfer_tick(&mut self) {
        let Some(transfer) = self.transfer.as_mut() else { return };
        transfer.elapsed_ticks += 1;
        if transfer.elapsed_ticks < self.config.election_timeout_min_ticks {
            return;
        }
        let transfer = self.transfer.take().expect("checked above");
        // Rounds sent during the transfer may predate a TimeoutNow election.
        self.reads.revoke_lease();
        if let Some(request_id) = transfer.request_id {
            self.reply(ClientReply::Failed {
                request_id,
                error: ClientError::TransferFailed { target: transfer.target, reason: TransferFailure::TimedOut },
            });
        } else {
            self.preferred_cooldown_ticks = self.config.election_timeout_max_ticks;
        }
    }

    /// Leadership ended during a transfer: done if a higher term ended it,
    /// failed if the leader lost its quorum in its own term.
    pub(super) fn end_transfer_on_step_down(&mut self, old_term: super::message::Term) {
        let Some(transfer) = self.transfer.take() else { return };
        let Some(request_id) = transfer.request_id else { return };
        let reply = if self.term > old_term {
            ClientReply::TransferDone { request_id, target: transfer.target, new_term: self.term }
        } else {
            ClientReply::Failed {
                request_id,
                error: ClientError::LeadershipLost { term: old_term, leader_hint: self.leader_id },
            }
        };
        self.reply(reply);
    }

    /// Leader tick: hand over to the preferred leader when it is caught up.
    pub(super) fn preferred_leader_tick(&mut self) {
        self.preferred_cooldown_ticks = self.preferred_cooldown_ticks.saturating_sub(1);
        let Some(preferred) = self.config.preferred_leader else { return };
        if preferred == self.id
            || self.transfer.is_some()
            || self.preferred_cooldown_ticks > 0
            || !self.voters.contains(&preferred)
        {
            return;
        }
        let ready =
            self.progress.get(&preferred).is_some_and(|p| p.recent_active && p.match_index == self.log.last_index());
        if ready {
            self.on_transfer_request(None, preferred);
        }
    }

    /// The leader of our term says: campaign now.
    pub(super) fn on_timeout_now(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader_id != Some(from) {
            return;
        }
        self.campaign(true);
    }
}
