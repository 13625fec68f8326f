//! Scenario tests that read like the Raft paper: a small hand-driven cluster
//! where the test decides which message is delivered when.
//!
//! Storage in this harness is instant: a `SaveMeta` or `PersistEntries` is
//! durable as soon as it is executed, and the completion is fed back at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::test_support::*;
use super::*;

struct Cluster {
    voters: Vec<NodeId>,
    config: Config,
    cores: BTreeMap<NodeId, RaftCore>,
    disks: BTreeMap<NodeId, RestoredState>,
    in_flight: VecDeque<Message>,
    isolated: BTreeSet<NodeId>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    replies: Vec<ClientReply>,
}

impl Cluster {
    /// Nodes given as (id, current term, terms of their log entries).
    fn new(config: Config, nodes: &[(NodeId, Term, &[Term])]) -> Self {
        let voters: Vec<NodeId> = nodes.iter().map(|n| n.0).collect();
        let mut cluster = Cluster {
            voters,
            config,
            cores: BTreeMap::new(),
            disks: BTreeMap::new(),
            in_flight: VecDeque::new(),
            isolated: BTreeSet::new(),
            applied: BTreeMap::new(),
            replies: Vec::new(),
        };
        for &(id, term, log_terms) in nodes {
            let restored = RestoredState::whole(HardState { term, voted_for: None }, log_of_terms(log_terms));
            cluster.disks.insert(id, restored);
            cluster.restart(id);
        }
        cluster
    }

    fn restart(&mut self, id: NodeId) {
        // The disk's tail is its whole log here; recompute its term runs.
        let disk = &self.disks[&id];
        let restored = RestoredState::whole(disk.meta, disk.tail.clone());
        let core = RaftCore::new(id, self.voters.clone(), self.config.clone(), restored, ChaCha8Rng::seed_from_u64(id))
            .expect("valid node");
        self.cores.insert(id, core);
    }

    fn crash(&mut self, id: NodeId) {
        self.cores.remove(&id);
        self.in_flight.retain(|m| m.from != id && m.to != id);
    }

    fn step(&mut self, id: NodeId, event: Event) {
        let mut work = VecDeque::from([event]);
        while let Some(event) = work.pop_front() {
            let Some(core) = self.cores.get_mut(&id) else { return };
            for command in core.step(event) {
                match command {
                    Command::SaveMeta(hard_state) => {
                        self.disks.get_mut(&id).expect("disk").meta = hard_state;
                        work.push_back(Event::MetaSaved(hard_state));
                    }
                    Command::PersistEntries { truncate_from, entries } => {
                        let disk = &mut self.disks.get_mut(&id).expect("disk").tail;
                        if let Some(from) = truncate_from {
                            disk.truncate(from as usize - 1);
                        }
                        disk.extend(entries);
                        if let Some(last) = disk.last() {
                            work.push_back(Event::EntriesDurable { index: last.index, term: last.term });
                        }
                    }
                    Command::Send(message) => {
                        if !self.isolated.contains(&message.from) && !self.isolated.contains(&message.to) {
                            self.in_flight.push_back(message);
                        }
                    }
                    Command::Apply(entries) => self.applied.entry(id).or_default().extend(entries),
                    Command::Reply(reply) => self.replies.push(reply),
                    Command::InstallLogStart(start) => panic!("no purges in these scenarios, yet {start:?}"),
                    Command::SaveSessions(table) => panic!("no log starts in these scenarios, yet {table:?}"),
                    Command::SaveConfig(record) => self.disks.get_mut(&id).expect("disk").configs.push(record),
                }
            }
        }
    }

    /// Lets `id`'s election timer fire (it starts a pre-vote or an election).
    fn time_out(&mut self, id: NodeId) {
        let before = (self.status(id).role, self.status(id).term);
        for _ in 0..=self.config.election_timeout_max_ticks {
            self.step(id, Event::Tick);
            if (self.status(id).role, self.status(id).term) != before {
                return;
            }
        }
        panic!("node {id} did not time out");
    }

    /// Delivers the oldest message from `from` to `to`.
    fn deliver(&mut self, from: NodeId, to: NodeId) -> MessageBody {
        let k = self
            .in_flight
            .iter()
            .position(|m| m.from == from && m.to == to)
            .unwrap_or_else(|| panic!("no message from {from} to {to} in flight: {:?}", self.in_flight));
        let message = self.in_flight.remove(k).expect("found");
        let body = message.body.clone();
        self.step(to, Event::Message(message));
        body
    }

    /// Delivers everything, including what the deliveries produce.
    fn deliver_all(&mut self) {
        while let Some(message) = self.in_flight.pop_front() {
            if !self.isolated.contains(&message.to) && self.cores.contains_key(&message.to) {
                let to = message.to;
                self.step(to, Event::Message(message));
            }
        }
    }

    fn status(&self, id: NodeId) -> Status {
        self.cores[&id].status()
    }

    fn log_terms(&self, id: NodeId) -> Vec<Term> {
        let log = self.cores[&id].log();
        log.entries(1, log.last_index()).iter().map(|e| e.term).collect()
    }

    fn applied_terms(&self, id: NodeId) -> Vec<(LogIndex, Term)> {
        self.applied.get(&id).map(|a| a.iter().map(|e| (e.index, e.term)).collect()).unwrap_or_default()
    }
}

fn figure_8_config(bugs: InjectedBugs) -> Config {
    Config { pre_vote: false, check_quorum: false, max_entries_per_append: 1, injected_bugs: bugs, ..config() }
}

/// Figure 8 (c): S5 is down. S1, leader of term 4, holds index 2 from term 2;
/// it brings S3 up to index 2, so index 2 (term 2) is on S1, S2 and S3, a
/// majority, while its own term-4 entry is on fewer.
fn figure_8_up_to_c(bugs: InjectedBugs) -> Cluster {
    let mut c = Cluster::new(
        figure_8_config(bugs),
        &[(1, 3, &[1, 2]), (2, 3, &[1, 2]), (3, 3, &[1]), (4, 3, &[1]), (5, 4, &[1, 3])],
    );
    c.isolated.insert(5);
    c.time_out(1);
    for peer in [2, 3, 4] {
        c.deliver(1, peer);
        c.deliver(peer, 1);
    }
    assert_eq!((c.status(1).role, c.status(1).term), (Role::Leader, 4));
    assert_eq!(c.log_terms(1), vec![1, 2, 4], "S1 appended its no-op at index 3");

    // S2 takes index 3 but we deliver only its first ack (index 2 durable
    // and verified); S3 is repaired up to index 2 only.
    c.deliver(1, 2);
    assert_eq!(c.deliver(2, 1), MessageBody::AppendResponse { result: Ok(2) });
    c.deliver(1, 3); // probe at prev 2: S3 is short
    c.deliver(3, 1); // rejection: next index 2
    c.deliver(1, 3); // index 2 (term 2)
    c.deliver(3, 1); // ack 1 (index 2 not yet durable when it answered)
    assert_eq!(c.deliver(3, 1), MessageBody::AppendResponse { result: Ok(2) });
    assert_eq!(c.log_terms(3), vec![1, 2]);
    c
}

#[test]
fn figure_8_c_an_old_term_entry_on_a_majority_is_not_committed() {
    let c = figure_8_up_to_c(InjectedBugs::default());
    assert_eq!(c.status(1).committed_index, 0, "index 2 is from term 2, not the leader's term 4 (§5.4.2)");
}

#[test]
fn figure_8_d_a_leader_without_that_entry_can_still_win_and_overwrite_it() {
    let mut c = figure_8_up_to_c(InjectedBugs::default());
    c.crash(1);
    c.isolated.remove(&5);
    // S5's last entry (term 3) beats S3's and S4's (terms 2 and 1).
    c.time_out(5);
    for peer in [3, 4] {
        c.deliver(5, peer);
        c.deliver(peer, 5);
    }
    assert_eq!((c.status(5).role, c.status(5).term), (Role::Leader, 5));
    c.in_flight.retain(|m| m.to != 2 && m.from != 2);
    c.isolated.insert(2);
    c.deliver_all();
    assert_eq!(c.log_terms(3), vec![1, 3, 5], "index 2 (term 2) was overwritten with term 3");
    assert_eq!(c.applied_terms(5), vec![(1, 1), (2, 3), (3, 5)]);
}

#[test]
fn figure_8_e_once_a_current_term_entry_is_on_a_majority_both_commit() {
    let mut c = figure_8_up_to_c(InjectedBugs::default());
    c.deliver(1, 3); // index 3 (term 4) to S3
    c.deliver_all();
    assert_eq!(c.status(1).committed_index, 3);
    assert_eq!(c.applied_terms(1), vec![(1, 1), (2, 2), (3, 4)]);
    // Now S5 cannot win: S2 and S3 hold a term-4 entry, newer than its term 3.
    c.crash(1);
    c.isolated.remove(&5);
    c.time_out(5);
    c.deliver_all();
    assert_ne!(c.status(5).role, Role::Leader);
}

#[test]
fn figure_8_with_old_term_commit_by_count_breaks_state_machine_safety() {
    // The bug the paper warns about: commit index 2 because a majority holds it.
    let bugs = InjectedBugs { commit_old_term_by_count: true, ..InjectedBugs::default() };
    let mut c = figure_8_up_to_c(bugs);
    assert_eq!(c.applied_terms(1), vec![(1, 1), (2, 2)], "S1 applied (index 2, term 2)");
    c.crash(1);
    c.isolated.remove(&5);
    c.time_out(5);
    for peer in [3, 4] {
        c.deliver(5, peer);
        c.deliver(peer, 5);
    }
    c.isolated.insert(2);
    c.in_flight.retain(|m| m.to != 2 && m.from != 2);
    c.deliver_all();
    assert_eq!(c.applied_terms(5)[1], (2, 3), "S5 applied (index 2, term 3): two different entries at index 2");
}

#[test]
fn figure_7_a_new_leader_repairs_every_kind_of_follower_log() {
    // Figure 7: the leader of term 8 and followers (a) to (f).
    let leader: &[Term] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[Term]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    let mut nodes: Vec<(NodeId, Term, &[Term])> = vec![(1, 7, leader)];
    nodes.extend(followers.iter().enumerate().map(|(k, log)| (k as NodeId + 2, 7, *log)));
    let mut c = Cluster::new(Config { check_quorum: false, ..config() }, &nodes);
    c.time_out(1);
    c.deliver_all();
    assert_eq!((c.status(1).role, c.status(1).term), (Role::Leader, 8), "(a), (b), (e), (f) vote for it");
    let expected = [leader, &[8]].concat();
    for id in 1..=7 {
        assert_eq!(c.log_terms(id), expected, "node {id}");
        assert_eq!(c.status(id).durable_index, 11, "node {id}");
    }
    assert_eq!(c.status(1).committed_index, 11);
}

#[test]
fn election_restriction_a_candidate_missing_committed_entries_loses() {
    // §5.4.1: node 3 missed index 2, which is committed on 1 and 2.
    let mut c = Cluster::new(config(), &[(1, 2, &[1, 2]), (2, 2, &[1, 2]), (3, 2, &[1])]);
    c.time_out(3);
    c.deliver_all();
    assert_eq!(c.status(3).role, Role::Follower, "pre-vote refused: its log is behind");
    assert_eq!(c.status(3).term, 2, "and the refused pre-vote disturbed no one's term");
}

#[test]
fn clients_hear_back_only_after_commit_and_in_flight_proposals_fail_on_leader_change() {
    // Without check-quorum, so node 3 (whose clock the test does not run)
    // does not hold on to its old leader's lease.
    let mut c = Cluster::new(Config { check_quorum: false, ..config() }, &[(1, 1, &[]), (2, 1, &[]), (3, 1, &[])]);
    c.time_out(1);
    c.deliver_all();
    assert_eq!(c.status(1).role, Role::Leader);
    c.step(1, Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"a")] });
    assert_eq!(c.replies, vec![], "not committed yet");
    c.deliver_all();
    c.step(1, Event::Tick);
    c.step(1, Event::Tick);
    c.deliver_all();
    assert_eq!(c.replies, vec![ClientReply::Committed { request_id: 1, first_index: 2, last_index: 2, term: 2 }]);
    // Isolate the leader; a proposal there can never commit. Node 2 takes over.
    c.isolated.insert(1);
    c.step(1, Event::Propose { request_id: 2, payloads: vec![Bytes::from_static(b"b")] });
    c.time_out(2);
    c.deliver_all();
    assert_eq!(c.status(2).role, Role::Leader);
    c.isolated.remove(&1);
    c.step(2, Event::Tick);
    c.step(2, Event::Tick);
    c.deliver_all();
    let lost = ClientError::LeadershipLost { term: 2, leader_hint: Some(2) };
    assert_eq!(c.replies[1], ClientReply::Failed { request_id: 2, error: lost });
    assert_eq!(c.log_terms(1), c.log_terms(2), "the uncommitted proposal was overwritten");
}

#[test]
fn seed_659_a_restarted_follower_learns_the_commit_index_again() {
    // Found by the simulation (seed 659): after a restart a follower has
    // forgotten which of its entries it verified against the leader, and the
    // leader, believing it up to date, sent it nothing to verify: its commit
    // index stayed at 0 for ever.
    let mut c = Cluster::new(config(), &[(1, 1, &[]), (2, 1, &[]), (3, 1, &[])]);
    c.time_out(1);
    c.deliver_all();
    c.step(1, Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"a")] });
    c.deliver_all();
    c.step(1, Event::Tick);
    c.step(1, Event::Tick);
    c.deliver_all();
    assert_eq!(c.status(3).committed_index, 2);
    c.crash(3);
    c.restart(3);
    assert_eq!(c.status(3).committed_index, 0);
    for _ in 0..4 {
        c.step(1, Event::Tick);
        c.deliver_all();
    }
    assert_eq!(c.status(3).committed_index, 2);
}

#[test]
fn leadership_transfer_hands_over_to_a_caught_up_target() {
    // Thesis §3.10: the leader catches the target up, sends TimeoutNow, the
    // target wins at once (voters waive their leader stickiness for it).
    let mut c = Cluster::new(config(), &[(1, 1, &[]), (2, 1, &[]), (3, 1, &[])]);
    c.time_out(1);
    c.deliver_all();
    c.step(1, Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"a")] });
    c.deliver_all();
    c.step(1, Event::TransferLeadership { request_id: 2, target: 3 });
    c.deliver_all();
    assert_eq!((c.status(3).role, c.status(3).term), (Role::Leader, 3));
    assert_eq!(c.status(1).leader_id, Some(3));
    assert!(c.replies.contains(&ClientReply::TransferDone { request_id: 2, target: 3, new_term: 3 }));
    assert_eq!(c.log_terms(3), vec![2, 2, 3], "the new leader's no-op follows everything the old one had");
}

#[test]
fn split_vote_is_resolved_by_the_next_randomized_timeout() {
    // §5.2: two candidates split the vote; neither wins; a later timeout
    // (randomized, so rarely simultaneous) elects one of them.
    let no_pre_vote = Config { pre_vote: false, check_quorum: false, ..config() };
    let mut c = Cluster::new(no_pre_vote, &[(1, 1, &[]), (2, 1, &[]), (3, 1, &[]), (4, 1, &[])]);
    c.time_out(1);
    c.time_out(2);
    c.deliver(1, 3);
    c.deliver(2, 4);
    c.deliver_all();
    assert_ne!(c.status(1).role, Role::Leader);
    assert_ne!(c.status(2).role, Role::Leader);
    c.time_out(1);
    c.deliver_all();
    assert_eq!((c.status(1).role, c.status(1).term), (Role::Leader, 3));
}

/// Delivers every message between `a` and each of `peers`, both ways,
/// until none is left (what they produce included); drops the rest of
/// what `a` sent to nodes outside `peers` when `drop_others`.
fn exchange(c: &mut Cluster, a: NodeId, peers: &[NodeId]) {
    loop {
        let next = c
            .in_flight
            .iter()
            .position(|m| (m.from == a && peers.contains(&m.to)) || (m.to == a && peers.contains(&m.from)));
        let Some(k) = next else { return };
        let message = c.in_flight.remove(k).expect("found");
        let to = message.to;
        if c.cores.contains_key(&to) {
            c.step(to, Event::Message(message));
        }
    }
}

/// Four voters (1-4) and two caught-up learners (5, 6), all holding the
/// configuration entry and leader 1's no-op of term 2, committed. Leader 1
/// then promotes 5; only 5 receives that entry before 1 is cut off, and 2
/// wins term 3 with the votes of 3 and 4.
fn ongaro_up_to_a_new_leader(bugs: InjectedBugs) -> Cluster {
    let ids: [NodeId; 6] = [1, 2, 3, 4, 5, 6];
    let mut c = Cluster::new(figure_8_config(bugs), &ids.map(|id| (id, 1, &[][..])));
    let mut c0 = Membership::bootstrap([1, 2, 3, 4].map(|v| (v, String::new())));
    for learner in [5, 6] {
        c0 = c0.changed(&MembershipChange::AddLearner { id: learner, address: String::new() }).expect("add");
    }
    for id in ids {
        let disk = c.disks.get_mut(&id).expect("disk");
        disk.tail = vec![Entry { index: 1, term: 1, kind: EntryKind::Config, payload: c0.encode() }];
        c.restart(id);
    }
    c.time_out(1);
    c.deliver_all();
    c.step(1, Event::Tick); // a heartbeat round: 1 hears from everyone
    c.step(1, Event::Tick);
    c.deliver_all();
    assert_eq!((c.status(1).role, c.status(1).committed_index), (Role::Leader, 2));
    assert_eq!(c.cores[&1].membership().learners().collect::<Vec<_>>(), vec![5, 6]);

    let promote = |id| Event::ChangeMembership {
        request_id: 100 + id,
        change: MembershipChange::Promote { id },
        expected_version: None,
        force: false,
    };
    c.step(1, promote(5));
    exchange(&mut c, 1, &[5]);
    assert!(c.cores[&5].membership().is_voter(5), "5 holds its promotion (index 3, term 2)");
    c.in_flight.retain(|m| m.from != 1 && m.to != 1);
    c.isolated.insert(1);

    c.time_out(2);
    for voter in [3, 4] {
        assert!(matches!(c.deliver(2, voter), MessageBody::VoteRequest { .. }));
        assert_eq!(c.deliver(voter, 2), MessageBody::VoteResponse { granted: true });
    }
    assert_eq!((c.status(2).role, c.status(2).term), (Role::Leader, 3));
    // 4 voted, and hears nothing more from 2; nor does 3 yet, so 2's no-op
    // (index 3) is not committed.
    c.in_flight.retain(|m| m.to != 4 && m.to != 3);
    // 2 hears from 6 (a heartbeat round), so 6 counts as caught up and reachable.
    c.step(2, Event::Tick);
    c.step(2, Event::Tick);
    exchange(&mut c, 2, &[6]);
    c
}

#[test]
fn ongaro_a_change_before_the_leaders_own_term_commit_is_refused() {
    let mut c = ongaro_up_to_a_new_leader(InjectedBugs::default());
    c.step(
        2,
        Event::ChangeMembership {
            request_id: 7,
            change: MembershipChange::Promote { id: 6 },
            expected_version: None,
            force: false,
        },
    );
    let refused = ClientError::MembershipRefused(MembershipRefusal::NotReady);
    assert_eq!(c.replies.last(), Some(&ClientReply::Failed { request_id: 7, error: refused }));
    assert_eq!(c.cores[&2].membership().voters().collect::<Vec<_>>(), vec![1, 2, 3, 4], "nothing changed");
}

#[test]
fn ongaro_with_the_bug_a_committed_entry_is_lost() {
    // The single-server change bug (Ongaro, raft-dev 2015): 2 promotes 6
    // under a configuration that lacks 1's promotion of 5, commits it and
    // an entry with {2, 3, 6} (a quorum of {1,2,3,4,6}); 1 then wins with
    // {1, 4, 5} (a quorum of {1,2,3,4,5}) without that entry.
    let bugs = InjectedBugs { change_before_own_term_commit: true, ..InjectedBugs::default() };
    let mut c = ongaro_up_to_a_new_leader(bugs);
    c.step(
        2,
        Event::ChangeMembership {
            request_id: 7,
            change: MembershipChange::Promote { id: 6 },
            expected_version: None,
            force: true, // 3 has not answered this leader yet
        },
    );
    c.step(2, Event::Propose { request_id: 8, payloads: vec![Bytes::from_static(b"x")] });
    exchange(&mut c, 2, &[3, 6]);
    c.step(2, Event::Tick);
    c.step(2, Event::Tick);
    exchange(&mut c, 2, &[3, 6]);
    let committed_x = c.replies.iter().find_map(|r| match r {
        ClientReply::Committed { request_id: 8, first_index, .. } => Some(*first_index),
        _ => None,
    });
    let x = committed_x.unwrap_or_else(|| panic!("x committed by {{2, 3, 6}}: {:?}", c.replies));

    c.isolated.remove(&1);
    c.in_flight.clear();
    c.crash(1);
    c.restart(1);
    c.time_out(1); // term 3: 4 and 5 voted already, or refuse
    c.in_flight.clear();
    c.time_out(1); // term 4
    exchange(&mut c, 1, &[4, 5]);
    assert_eq!((c.status(1).role, c.status(1).term), (Role::Leader, 4), "1 won with {{1, 4, 5}}");
    let held = c.cores[&1].log().term_at(x);
    assert_ne!(held, Some(3), "Leader Completeness broken: the new leader lacks committed entry {x}");
}
