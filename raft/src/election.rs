//! Elections: randomized timeouts, pre-vote, votes, and becoming leader.
//!
//! Invariants:
//! * A node grants at most one vote per term, and only to a candidate whose
//!   log is at least as up-to-date as its own, compared by
//!   (last log term, last log index) (Raft §5.2, §5.4.1).
//! * The vote is saved before the grant is sent, and a candidate's own term
//!   and self-vote are saved before its requests go out and before it may
//!   win (the send gate in `core`).
//! * A pre-vote changes no state on the voter: it is granted when the voter
//!   would grant a real vote in `term` and has no live leader (thesis §9.6).
//! * With check-quorum, a node that heard from a leader within the minimum
//!   election timeout ignores vote requests (unless they follow a
//!   TimeoutNow), which protects both stable leaders and the leader lease.

use super::core::{RaftCore, Role};
use super::message::{LogIndex, MessageBody, NodeId, Term, MAX_TERM};
use super::progress::Progress;

impl RaftCore {
    /// The election timer fired on a non-leader.
    pub(super) fn start_election_timeout(&mut self) {
        if self.config.pre_vote {
            self.campaign_pre_vote();
        } else {
            self.campaign(false);
        }
    }

    fn campaign_pre_vote(&mut self) {
        if self.term >= MAX_TERM || self.campaigns_suspended || !self.may_campaign() {
            // Unreachable by counting elections; never wrap (see MAX_TERM).
            // A learner, or a node not (or no longer) a member, never campaigns.
            self.reset_election_timer();
            return;
        }
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.quorum() == 1 {
            self.campaign(false);
            return;
        }
        let proposed_term = self.term + 1;
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            let message = super::message::Message {
                from: self.id,
                to: peer,
                term: proposed_term,
                body: MessageBody::PreVoteRequest { last_log_index, last_log_term },
            };
            self.send_with_term(message);
        }
    }

    /// Starts a real election in the next term.
    pub(super) fn campaign(&mut self, leadership_transfer: bool) {
        if self.term >= MAX_TERM || self.campaigns_suspended || !self.may_campaign() {
            if self.role == Role::PreCandidate {
                let term = self.term;
                self.become_follower(term, None);
            }
            self.reset_election_timer();
            return;
        }
        let term = self.term + 1;
        self.set_term(term);
        self.set_vote(self.id);
        self.role = Role::Candidate;
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            self.send(peer, MessageBody::VoteRequest { last_log_index, last_log_term, leadership_transfer });
        }
        self.maybe_win_election();
    }

    pub(super) fn on_pre_vote_request(
        &mut self,
        from: NodeId,
        proposed_term: Term,
        last_log_term: Term,
        last_log_index: LogIndex,
    ) {
        let log_ok = self.config.bugs().vote_without_log_check || self.log.is_up_to_date(last_log_term, last_log_index);
        let granted = proposed_term > self.term && log_ok && !self.in_leader_lease();
        // A grant echoes the term asked; a refusal carries our own term, so
        // a pre-candidate behind us catches up.
        let term = if granted { proposed_term } else { self.term };
        let message =
            super::message::Message { from: self.id, to: from, term, body: MessageBody::PreVoteResponse { granted } };
        self.send_with_term(message);
    }

    pub(super) fn on_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool) {
        // A grant echoes the proposed term; a refusal carries the voter's
        // own term, which is ours (a higher one made us a follower already).
        let expected_term = if granted { self.term + 1 } else { self.term };
        if self.role != Role::PreCandidate || term != expected_term {
            return;
        }
        self.votes.insert(from, granted);
        if self.count_votes(true) >= self.quorum() {
            self.campaign(false);
        } else if self.count_votes(false) >= self.quorum() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    pub(super) fn on_vote_request(&mut self, from: NodeId, last_log_term: Term, last_log_index: LogIndex) {
        let log_ok = self.config.bugs().vote_without_log_check || self.log.is_up_to_date(last_log_term, last_log_index);
        let can_vote = self.voted_for.is_none() || self.voted_for == Some(from);
        let granted = can_vote && log_ok && matches!(self.role, Role::Follower | Role::PreCandidate);
        if granted {
            self.role = Role::Follower;
            self.set_vote(from);
            self.reset_election_timer();
        }
        self.send(from, MessageBody::VoteResponse { granted });
    }

    pub(super) fn on_vote_response(&mut self, from: NodeId, granted: bool) {
        if self.role != Role::Candidate {
            return;
        }
        self.votes.insert(from, granted);
        if self.count_votes(false) >= self.quorum() {
            let term = self.term;
            self.become_follower(term, None);
        } else {
            self.maybe_win_election();
        }
    }

    /// Votes of the voters in force (a vote from a node that has since
    /// left the configuration counts for nothing).
    fn count_votes(&self, granted: bool) -> usize {
        self.votes.iter().filter(|&(&id, &g)| g == granted && self.is_voter(id)).count()
    }

    /// A candidate with a quorum of votes and its own vote saved becomes leader.
    pub(super) fn maybe_win_election(&mut self) {
        if self.role == Role::Candidate
            && self.saved_meta == self.hard_state()
            && self.count_votes(true) >= self.quorum()
        {
            self.become_leader();
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself");
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed_ticks = 0;
        self.check_quorum_elapsed_ticks = 0;
        self.preferred_cooldown_ticks = 0;
        self.reads = Default::default();
        let last_index = self.log.last_index();
        self.progress = self.peers().into_iter().map(|p| (p, Progress::new(last_index))).collect();
        // The no-op lets this leader commit entries of earlier terms (§5.4.2)
        // and tells it when its commit index is current (for ReadIndex).
        let noop = super::message::Entry {
            index: last_index + 1,
            term: self.term,
            kind: super::message::EntryKind::Noop,
            payload: Default::default(),
        };
        self.append_as_leader(vec![noop]);
    }
}
