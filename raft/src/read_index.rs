//! Linearizable reads: ReadIndex and the optional leader lease.
//!
//! **ReadIndex** (Raft thesis §6.4). A read arriving at the leader is held
//! until the leader has committed an entry of its own term (its no-op), so
//! that its commit index is at least every index committed by any earlier
//! leader. It then records `read_index = committed_index` and starts a new
//! heartbeat round `r`. Once a quorum (counting itself) has acknowledged a
//! round `≥ r`, no other leader of a higher term existed when those followers
//! answered, so `read_index` covers every write acknowledged before the read
//! arrived: the host serves the read after applying up to `read_index`.
//!
//! **Lease** (optional, `Config::lease`). Rounds are numbered and stamped with
//! the tick they were sent at. When a quorum acknowledges round `r`, sent at
//! tick `t`, the leader holds a lease until `t + election_timeout_min_ticks −
//! drift_margin_ticks`. Every follower that acknowledged `r` received it after
//! `t` and, with check-quorum, will neither grant a vote nor campaign until
//! `election_timeout_min_ticks` of *its* ticks pass after that receipt. So
//! while the lease holds (and ticks on different nodes run at rates that
//! differ by less than the drift margin over one timeout), no other leader
//! can exist, and reads are served at `committed_index` with no round trip.
//! Host contract: ticks must measure real elapsed time. A host whose
//! process was stopped (SIGSTOP, a long pause) must deliver the ticks it
//! missed before anything else when it resumes; otherwise a deposed leader
//! believes its lease still holds. The simulation proves the read checker
//! catches exactly that host bug (`host_skips_tick_catch_up`).
//! Leadership transfer breaks that argument (its vote requests bypass the
//! followers' stickiness), so a leader stops lease reads when a transfer
//! starts and only trusts rounds sent after the transfer ends.
//!
//! Invariants: round numbers increase; a pending read's `round` was started
//! after the read arrived; reads are answered in arrival order; a leader that
//! steps down fails all pending reads.

use std::collections::VecDeque;

use super::command::{ClientError, ClientReply};
use super::core::{RaftCore, Role};
use super::message::{LogIndex, RequestId};

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    request_id: RequestId,
    read_index: LogIndex,
    round: u64,
}

/// A leader's heartbeat rounds, held reads and lease.
#[derive(Clone, Debug, Default)]
pub struct ReadIndexState {
    /// Last round started.
    round: u64,
    /// Rounds not yet acknowledged by a quorum, with the tick they were sent.
    rounds_sent: VecDeque<(u64, u64)>,
    /// Highest round acknowledged by a quorum.
    quorum_round: u64,
    /// Reads waiting for their round.
    pending: VecDeque<PendingRead>,
    /// Reads waiting for the first commit of this leader's term.
    waiting_for_commit: Vec<RequestId>,
    /// The lease is valid while `now_ticks < lease_expiry_ticks`.
    lease_expiry_ticks: u64,
    /// Only rounds at or above this may extend the lease.
    lease_min_round: u64,
}

impl ReadIndexState {
    /// Starts a new heartbeat round at `now_ticks` and returns its number.
    /// Send ticks are kept only for leases, and only while they could still
    /// extend one (a leader cut off from its quorum keeps no backlog).
    pub fn start_round(&mut self, now_ticks: u64, lease_ticks: Option<u64>) -> u64 {
        self.round += 1;
        if let Some(lease_ticks) = lease_ticks {
            while self.rounds_sent.front().is_some_and(|&(_, sent)| sent + lease_ticks <= now_ticks) {
                self.rounds_sent.pop_front();
            }
            self.rounds_sent.push_back((self.round, now_ticks));
        }
        self.round
    }

    /// Every held read, for failing them when leadership ends.
    pub fn drain_all(&mut self) -> Vec<RequestId> {
        let mut out: Vec<RequestId> = self.pending.drain(..).map(|r| r.request_id).collect();
        out.append(&mut self.waiting_for_commit);
        out
    }

    /// Forget the lease; only rounds started from now on may renew it.
    pub fn revoke_lease(&mut self) {
        self.lease_expiry_ticks = 0;
        self.lease_min_round = self.round + 1;
    }
}

impl RaftCore {
    pub(super) fn on_read_index(&mut self, request_id: RequestId) {
        if self.role != Role::Leader {
            let leader_hint = self.leader_id;
            self.reply(ClientReply::Failed { request_id, error: ClientError::NotLeader { leader_hint } });
            return;
        }
        if self.log.term_at(self.log.committed_index()) != Some(self.term) {
            self.reads.waiting_for_commit.push(request_id);
            return;
        }
        self.start_reads(vec![request_id]);
    }

    /// Serves reads from the lease, or queues them behind one new round.
    fn start_reads(&mut self, request_ids: Vec<RequestId>) {
        let read_index = self.log.committed_index();
        let round = self.reads.round + 1;
        let mut need_round = false;
        for request_id in request_ids {
            if self.lease_valid() || self.quorum() == 1 || self.config.bugs().read_without_quorum_round {
                self.reply(ClientReply::ReadReady { request_id, read_index });
            } else {
                self.reads.pending.push_back(PendingRead { request_id, read_index, round });
                need_round = true;
            }
        }
        if need_round {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
            debug_assert_eq!(self.reads.round, round);
        }
    }

    fn lease_valid(&self) -> bool {
        self.config.lease.is_some() && self.transfer.is_none() && self.now_ticks < self.reads.lease_expiry_ticks
    }

    /// A peer acknowledged a round: serve the reads a quorum now covers and
    /// extend the lease.
    pub(super) fn on_round_acked(&mut self) {
        let own = self.reads.round;
        let mut rounds: Vec<u64> = self
            .voters
            .iter()
            .map(|&v| if v == self.id { own } else { self.progress.get(&v).map_or(0, |p| p.acked_round) })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_round = rounds[self.quorum() - 1];
        if quorum_round <= self.reads.quorum_round {
            return;
        }
        self.reads.quorum_round = quorum_round;
        let mut sent_ticks = None;
        while let Some(&(round, ticks)) = self.reads.rounds_sent.front() {
            if round > quorum_round {
                break;
            }
            sent_ticks = Some((round, ticks));
            self.reads.rounds_sent.pop_front();
        }
        if let (Some(lease_ticks), Some((round, ticks))) = (self.config.lease_ticks(), sent_ticks) {
            if round >= self.reads.lease_min_round && self.transfer.is_none() {
                self.reads.lease_expiry_ticks = self.reads.lease_expiry_ticks.max(ticks + lease_ticks);
            }
        }
        while let Some(read) = self.reads.pending.front().copied() {
            if read.round > quorum_round {
                break;
            }
            self.reads.pending.pop_front();
            self.reply(ClientReply::ReadReady { request_id: read.request_id, read_index: read.read_index });
        }
    }

    /// The commit index moved on a leader: start reads that waited for the
    /// first commit of this term.
    pub(super) fn on_commit_for_reads(&mut self) {
        if self.reads.waiting_for_commit.is_empty() || self.log.term_at(self.log.committed_index()) != Some(self.term) {
            return;
        }
        let waiting = std::mem::take(&mut self.reads.waiting_for_commit);
        self.start_reads(waiting);
    }
}
