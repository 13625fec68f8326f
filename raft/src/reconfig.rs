//! Membership changes on the core: the leader's checks before it proposes
//! one, and every node's reaction to configuration entries entering or
//! leaving its log (see `membership` for the rules and the file a host
//! keeps).
//!
//! Invariants (asserted in `debug_check` where cheap):
//! * `voters` and `targets` are the latest configuration's voters and every
//!   member of a configuration still in the history (and, on a leader, the
//!   `leaving`: removed members that do not hold their removal yet), so a
//!   member leaving keeps receiving the log until it holds its committed
//!   removal, and learns it.
//! * The base of the history (its first record) is committed, or the
//!   bootstrap, or (on a joining node) the first it received: truncation
//!   removes it only in that last case.
//! * A leader's `progress` has exactly one record per target.

use super::command::{ClientError, ClientReply, Command};
use super::core::{RaftCore, Role};
use super::membership::{ConfigHistory, ConfigRecord, Membership, MembershipChange, MembershipRefusal};
use super::message::{Entry, EntryKind, LogIndex, MessageBody, NodeId, RequestId};
use super::progress::Progress;

impl RaftCore {
    /// The configuration in force (the latest in the log); empty on a node
    /// that has joined no cluster yet.
    pub fn membership(&self) -> &Membership {
        static EMPTY: Membership = Membership { version: 0, members: std::collections::BTreeMap::new() };
        self.configs.latest_record().map_or(&EMPTY, |r| &r.membership)
    }

    /// Whether the configuration in force is committed (no change pending).
    pub fn membership_committed(&self) -> bool {
        self.configs.latest_record().is_none_or(|r| r.index <= self.log.committed_index())
    }

    /// The configurations this core holds: the latest committed one and
    /// later (what a host's file must keep, and what it rewrites it to at
    /// start; see `membership`).
    pub fn config_history(&self) -> &ConfigHistory {
        &self.configs
    }

    /// Every other member of the configurations this core holds (and, on a
    /// leader, removed members still sent the log), sorted: whom a leader
    /// replicates to, and whom a host may fetch snapshots from.
    pub fn peers_known(&self) -> &[NodeId] {
        &self.targets
    }

    /// The address of `id` in the newest configuration that has it.
    pub fn member_address(&self, id: NodeId) -> Option<&str> {
        self.configs.records().iter().rev().find_map(|r| r.membership.members.get(&id)).map(|m| m.address.as_str())
    }

    /// The configuration in force at `prev_index` as far as this core
    /// still knows it (the latest committed one otherwise, which the log
    /// after `prev_index` then holds again): what a leader sends with its
    /// log start.
    pub(super) fn config_record_at(&self, prev_index: LogIndex) -> Option<ConfigRecord> {
        let term = self.log.term_at(prev_index)?;
        let membership = self.configs.at(prev_index).or(self.configs.records().first())?.membership.clone();
        Some(ConfigRecord { index: prev_index, term, membership })
    }

    pub(super) fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether this node may campaign: it is a voter in some configuration
    /// of its history, not only the latest. A voter whose demotion (or
    /// removal) is in its log but not committed may be the only node with
    /// the longest log; if it could not campaign, and the others need its
    /// vote under the configuration before, no one could win. Its votes
    /// are counted by the latest configuration's voters, its own vote not
    /// among them, and once its latest configuration commits it hands
    /// leadership to a voter (thesis §4.2.2).
    pub(super) fn may_campaign(&self) -> bool {
        self.configs.records().iter().any(|r| r.membership.is_voter(self.id))
    }

    /// Leader tick: a leader that is not a voter of its committed
    /// configuration hands over to the most caught-up voter.
    pub(super) fn leave_if_not_voter(&mut self) {
        if self.is_voter(self.id) || !self.membership_committed() || self.transfer.is_some() {
            return;
        }
        let best = self.voters.iter().copied().max_by_key(|v| self.progress.get(v).map_or(0, |p| p.match_index));
        if let Some(target) = best {
            self.on_transfer_request(None, target);
        }
    }

    /// Recomputes `voters` and `targets` from the history; a leader adds
    /// progress for new targets and drops it for members whose removal
    /// committed (telling them the commit first); a candidate that is no
    /// longer a voter stops.
    pub(super) fn refresh_config(&mut self) {
        let mut voters: Vec<NodeId> = self.membership().voters().collect();
        voters.sort_unstable();
        let mut targets: Vec<NodeId> = self
            .configs
            .records()
            .iter()
            .flat_map(|r| r.membership.members.keys().copied())
            .filter(|&p| p != self.id)
            .collect();
        self.voters = voters;
        if matches!(self.role, Role::Candidate | Role::PreCandidate) && !self.may_campaign() {
            let term = self.term;
            self.become_follower(term, None);
        }
        if self.role != Role::Leader {
            self.leaving.clear();
        }
        if self.role == Role::Leader {
            // A member whose removal committed before it had the entry is
            // still sent the log until it has it (or for a while, if it is
            // down): it must learn that it was removed, and stop.
            let removal_index = self.configs.records().first().map_or(0, |r| r.index);
            let deadline = self.now_ticks + 4 * self.config.election_timeout_max_ticks;
            for (&peer, pr) in &self.progress {
                if !targets.contains(&peer) && pr.match_index < removal_index {
                    self.leaving.entry(peer).or_insert((removal_index, deadline));
                }
            }
            targets.extend(self.leaving.keys().copied());
        }
        targets.sort_unstable();
        targets.dedup();
        self.targets = targets;
        if self.role == Role::Leader {
            let last_index = self.log.last_index();
            let commit = self.log.committed_index();
            let gone: Vec<NodeId> = self.progress.keys().copied().filter(|p| !self.targets.contains(p)).collect();
            for peer in gone {
                let pr = self.progress.remove(&peer).expect("listed");
                // Its removal is committed: say so once, so it stops for good.
                let leader_commit_index = commit.min(pr.match_index);
                self.send(peer, MessageBody::Heartbeat { leader_commit_index, round: 0 });
            }
            let new: Vec<NodeId> = self.targets.iter().copied().filter(|p| !self.progress.contains_key(p)).collect();
            for peer in new {
                self.progress.insert(peer, Progress::new(last_index));
                self.send_appends(peer, true);
            }
            // Fewer voters may make a quorum of what is already acknowledged.
            self.maybe_commit();
            if self.role == Role::Leader {
                self.on_round_acked();
            }
        }
    }

    /// Leader tick: a removed member that now holds its removal (or that
    /// did not answer for a while) is let go.
    pub(super) fn leaving_tick(&mut self) {
        let now = self.now_ticks;
        let done: Vec<NodeId> = self
            .leaving
            .iter()
            .filter(|(p, (index, deadline))| {
                now >= *deadline || self.progress.get(p).is_none_or(|pr| pr.match_index >= *index)
            })
            .map(|(&p, _)| p)
            .collect();
        if done.is_empty() {
            return;
        }
        let commit = self.log.committed_index();
        for p in done {
            self.leaving.remove(&p);
            if let Some(pr) = self.progress.remove(&p) {
                let leader_commit_index = commit.min(pr.match_index);
                self.send(p, MessageBody::Heartbeat { leader_commit_index, round: 0 });
            }
        }
        self.refresh_config();
    }

    /// Entries just appended to the log (by the leader or from one): each
    /// configuration among them is in force from now on, and its record
    /// goes to the host before the entries do. A configuration entry whose
    /// payload does not decode changes nothing, on every node alike.
    pub(super) fn note_config_entries(&mut self, entries: &[Entry]) {
        let mut changed = false;
        for e in entries.iter().filter(|e| e.kind == EntryKind::Config) {
            if let Some(membership) = Membership::decode(&e.payload) {
                let record = ConfigRecord { index: e.index, term: e.term, membership };
                self.configs.push(record.clone());
                self.out.push(Command::SaveConfig(record));
                changed = true;
            }
        }
        if changed {
            self.refresh_config();
        }
    }

    /// The log lost its entries from `index` on (a follower's conflict).
    pub(super) fn truncate_configs(&mut self, index: LogIndex) {
        // Never the base when it is committed (truncation stays above the
        // commit index); an uncommitted first configuration of a joining
        // node may go, and it is joining again.
        let before = self.configs.records().len();
        self.configs.truncate_from(index);
        if self.configs.records().len() != before {
            self.refresh_config();
        }
    }

    /// The commit index moved: forget configurations before the latest
    /// committed one, and let go of members whose removal committed.
    pub(super) fn compact_configs(&mut self) {
        let before = self.configs.records().len();
        self.configs.compact(self.log.committed_index());
        if self.configs.records().len() != before {
            self.refresh_config();
        }
    }

    pub(super) fn on_change_membership(
        &mut self,
        request_id: RequestId,
        change: MembershipChange,
        expected_version: Option<u64>,
        force: bool,
    ) {
        match self.check_change(&change, expected_version, force) {
            Err(error) => self.reply(ClientReply::Failed { request_id, error }),
            Ok(next) => {
                let index = self.log.last_index() + 1;
                let entry = Entry { index, term: self.term, kind: EntryKind::Config, payload: next.encode() };
                self.proposals.push_back(super::core::PendingProposal {
                    request_id,
                    first_index: index,
                    last_index: index,
                });
                self.append_as_leader(vec![entry]);
            }
        }
    }

    /// The configuration `change` leads to, if this leader may propose it now.
    fn check_change(
        &self,
        change: &MembershipChange,
        expected_version: Option<u64>,
        force: bool,
    ) -> Result<Membership, ClientError> {
        fn refuse<T>(r: MembershipRefusal) -> Result<T, ClientError> {
            Err(ClientError::MembershipRefused(r))
        }
        if self.role != Role::Leader {
            return Err(ClientError::NotLeader { leader_hint: self.leader_id });
        }
        if let Some(transfer) = &self.transfer {
            return Err(ClientError::TransferInProgress { target: transfer.target });
        }
        if !self.is_voter(self.id) {
            // A leader that is leaving only hands over.
            return Err(ClientError::NotLeader { leader_hint: None });
        }
        let bugs = self.config.bugs();
        let commit = self.log.committed_index();
        if self.log.term_at(commit) != Some(self.term) && !bugs.change_before_own_term_commit {
            return refuse(MembershipRefusal::NotReady);
        }
        let latest = self.configs.latest_record().expect("a leader has a configuration");
        if latest.index > commit && !bugs.concurrent_membership_changes {
            return refuse(MembershipRefusal::ChangeInProgress { index: latest.index });
        }
        let current = &latest.membership;
        if let Some(expected) = expected_version.filter(|&v| v != current.version) {
            return refuse(MembershipRefusal::VersionMismatch { expected, current: current.version });
        }
        if let MembershipChange::Remove { id } | MembershipChange::Demote { id } = change {
            if *id == self.id && current.is_voter(*id) {
                return refuse(MembershipRefusal::IsLeader { id: *id });
            }
        }
        let next = current.changed(change).or_else(refuse)?;
        if let MembershipChange::Promote { id } = change {
            self.check_caught_up(*id).or_else(refuse)?;
        }
        let reachable = next
            .voters()
            .filter(|&v| v == self.id || self.progress.get(&v).is_some_and(|p| self.heard_recently(p)))
            .count();
        if reachable < next.quorum() && !force {
            return refuse(MembershipRefusal::NoReachableQuorum { reachable, needed: next.quorum() });
        }
        Ok(next)
    }

    /// A learner may be promoted once it lags by at most the configured
    /// entries and bytes (absolute bounds: a promoted voter that is far
    /// behind would stall commits while it catches up).
    fn check_caught_up(&self, id: NodeId) -> Result<(), MembershipRefusal> {
        let (max_entries, max_bytes) = (self.config.promote_max_lag_entries, self.config.promote_max_lag_bytes);
        let last = self.log.last_index();
        let pr = self.progress.get(&id);
        let matched = pr.map_or(0, |p| p.match_index);
        let lag_entries = last - matched;
        let lag_bytes = if matched + 1 >= self.log.first_in_memory() || lag_entries == 0 {
            self.log.entries(matched + 1, last).iter().map(Entry::size_bytes).sum()
        } else {
            u64::MAX
        };
        let heard = pr.is_some_and(|p| self.heard_recently(p));
        if !heard || lag_entries > max_entries || (lag_bytes > max_bytes && max_bytes != u64::MAX) {
            return Err(MembershipRefusal::LearnerBehind { id, lag_entries, lag_bytes, max_entries, max_bytes });
        }
        Ok(())
    }

    /// Heard from within the maximum election timeout.
    pub(super) fn heard_recently(&self, p: &Progress) -> bool {
        p.heard_at_ticks.is_some_and(|t| self.now_ticks - t <= self.config.election_timeout_max_ticks)
    }

    /// Whether a message from `from` may reach the handlers: anything from
    /// a member of any configuration in the history (so a member being
    /// added or removed is heard), and requests from anyone: a leader's (a
    /// node whose log is behind may not yet know its leader, and must learn
    /// the newer configuration from it) and a candidate's (one added after
    /// this node's latest configuration may need its vote; thesis §4.1:
    /// servers answer requests without consulting their configuration). A
    /// removed server that campaigns is held off by pre-vote and the leader
    /// lease (§4.2.3). Answers from a node outside every configuration
    /// count for nothing and are dropped.
    pub(super) fn accepts_from(&self, from: NodeId, body: &MessageBody) -> bool {
        self.targets.binary_search(&from).is_ok()
            || matches!(
                body,
                MessageBody::AppendRequest { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::LogStart { .. }
                    | MessageBody::VoteRequest { .. }
                    | MessageBody::PreVoteRequest { .. }
            )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;

    fn change(core: &mut RaftCore, request_id: u64, change: MembershipChange, expected: Option<u64>) -> Vec<Command> {
        core.step(Event::ChangeMembership { request_id, change, expected_version: expected, force: false })
    }

    fn refusal(out: &[Command]) -> Option<MembershipRefusal> {
        out.iter().find_map(|c| match c {
            Command::Reply(ClientReply::Failed { error: ClientError::MembershipRefused(r), .. }) => Some(r.clone()),
            _ => None,
        })
    }

    fn ack(core: &mut RaftCore, from: NodeId, match_index: LogIndex) -> Vec<Command> {
        let term = core.status().term;
        core.step(recv(from, 1, term, MessageBody::AppendResponse { result: Ok(match_index) }))
    }

    /// Leader 1 of {1, 2, 3} (term 2) with its no-op (index 2) committed.
    fn leader() -> RaftCore {
        let mut core = elected_leader(&[1, 2, 3], 1, &[1]);
        core.step(Event::EntriesDurable { index: 2, term: 2 });
        ack(&mut core, 2, 2);
        assert_eq!(core.status().committed_index, 2);
        core
    }

    #[test]
    fn a_learner_receives_the_log_and_never_counts() {
        let mut core = leader();
        let add = MembershipChange::AddLearner { id: 4, address: "d:4".into() };
        let out = change(&mut core, 1, add, Some(0));
        let record = out.iter().find_map(|c| if let Command::SaveConfig(r) = c { Some(r.clone()) } else { None });
        assert_eq!(record.map(|r| (r.index, r.membership.version)), Some((3, 1)), "recorded before it persists");
        let save_at = out.iter().position(|c| matches!(c, Command::SaveConfig(_))).expect("saved");
        let persist_at = out.iter().position(|c| matches!(c, Command::PersistEntries { .. })).expect("persisted");
        assert!(save_at < persist_at);
        assert!(out.iter().any(|c| matches!(c, Command::Send(m) if m.to == 4)), "the learner is sent the log");
        assert!(core.progress(4).is_some());
        core.step(Event::EntriesDurable { index: 3, term: 2 });
        // The learner's ack alone commits nothing: one voter (the leader) of three.
        ack(&mut core, 4, 3);
        assert_eq!(core.status().committed_index, 2);
        let out = ack(&mut core, 3, 3);
        assert!(out.iter().any(|c| matches!(c, Command::Reply(ClientReply::Committed { request_id: 1, .. }))));
        assert_eq!(core.membership().learners().collect::<Vec<_>>(), vec![4]);
        assert_eq!(core.status().config_version, 1);
    }

    #[test]
    fn changes_are_refused_one_at_a_time_with_a_version_check() {
        let mut core = leader();
        let out = change(&mut core, 1, MembershipChange::Remove { id: 3 }, Some(7));
        assert_eq!(refusal(&out), Some(MembershipRefusal::VersionMismatch { expected: 7, current: 0 }));
        let out = change(&mut core, 2, MembershipChange::Remove { id: 1 }, None);
        assert_eq!(refusal(&out), Some(MembershipRefusal::IsLeader { id: 1 }));
        let out = change(&mut core, 3, MembershipChange::AddLearner { id: 2, address: String::new() }, None);
        assert_eq!(refusal(&out), Some(MembershipRefusal::AlreadyMember { id: 2 }));
        // 2 and 3 answered lately? Only 2 did: removing 2 leaves {1, 3}, which
        // needs 3, who has not been heard from.
        let out = change(&mut core, 4, MembershipChange::Remove { id: 2 }, None);
        assert_eq!(refusal(&out), Some(MembershipRefusal::NoReachableQuorum { reachable: 1, needed: 2 }));
        let out = change(&mut core, 5, MembershipChange::AddLearner { id: 4, address: String::new() }, None);
        assert_eq!(refusal(&out), None);
        let out = change(&mut core, 6, MembershipChange::AddLearner { id: 5, address: String::new() }, None);
        assert_eq!(refusal(&out), Some(MembershipRefusal::ChangeInProgress { index: 3 }));
        // A learner that never answered is not promoted.
        core.step(Event::EntriesDurable { index: 3, term: 2 });
        ack(&mut core, 2, 3);
        let out = change(&mut core, 7, MembershipChange::Promote { id: 4 }, None);
        assert!(matches!(refusal(&out), Some(MembershipRefusal::LearnerBehind { id: 4, lag_entries: 3, .. })));
        ack(&mut core, 4, 3);
        let out = change(&mut core, 8, MembershipChange::Promote { id: 4 }, Some(1));
        assert_eq!(refusal(&out), None);
        assert_eq!(core.membership().voters().collect::<Vec<_>>(), vec![1, 2, 3, 4], "in force once appended");
    }

    #[test]
    fn a_restart_finds_its_configuration_in_the_records_not_the_bootstrap() {
        let later = Membership::bootstrap([(1, String::new()), (2, String::new())]);
        let entries = vec![
            Entry { index: 1, term: 1, kind: EntryKind::Noop, payload: Default::default() },
            Entry { index: 2, term: 1, kind: EntryKind::Config, payload: later.encode() },
        ];
        let mut restored = RestoredState::whole(HardState { term: 1, voted_for: None }, entries);
        // A record for an entry the log no longer holds (term 2 at 3) is ignored.
        restored.configs.push(ConfigRecord {
            index: 3,
            term: 2,
            membership: Membership::bootstrap([(9, String::new())]),
        });
        let core = RaftCore::new(1, vec![1, 2, 3], config(), restored, rand::SeedableRng::seed_from_u64(1)).unwrap();
        assert_eq!(core.membership().voters().collect::<Vec<_>>(), vec![1, 2]);
        // A node that joins has none, and does not campaign.
        let mut joining =
            RaftCore::new(5, vec![], config(), RestoredState::default(), rand::SeedableRng::seed_from_u64(5)).unwrap();
        for _ in 0..100 {
            assert!(joining.step(Event::Tick).is_empty());
        }
        assert!(!joining.status().voter);
    }
}
