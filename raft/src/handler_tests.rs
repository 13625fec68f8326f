//! Handler tests: given this state, this event yields exactly these commands.

use bytes::Bytes;

use super::test_support::*;
use super::*;

const VOTERS: [NodeId; 3] = [1, 2, 3];

#[test]
fn election_timeout_sends_pre_votes_without_changing_term() {
    let mut core = node(1, &VOTERS, 1, &[1]);
    let out = tick_until_output(&mut core);
    let pre_vote = MessageBody::PreVoteRequest { last_log_index: 1, last_log_term: 1 };
    assert_eq!(out, vec![send(1, 2, 2, pre_vote.clone()), send(1, 3, 2, pre_vote)]);
    assert_eq!((core.status().term, core.status().role), (1, Role::PreCandidate));
}

#[test]
fn pre_vote_quorum_starts_election_but_holds_vote_requests_until_vote_saved() {
    let mut core = node(1, &VOTERS, 1, &[1]);
    tick_until_output(&mut core);
    let out = core.step(recv(2, 1, 2, MessageBody::PreVoteResponse { granted: true }));
    assert_eq!(out, vec![Command::SaveMeta(HardState { term: 2, voted_for: Some(1) })]);
    assert_eq!(core.status().role, Role::Candidate);
    let out = core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(1) }));
    let request = MessageBody::VoteRequest { last_log_index: 1, last_log_term: 1, leadership_transfer: false };
    assert_eq!(out, vec![send(1, 2, 2, request.clone()), send(1, 3, 2, request)]);
}

#[test]
fn candidate_with_votes_waits_for_its_own_vote_to_be_saved() {
    let mut core = node_with(1, &VOTERS, Config { pre_vote: false, ..config() }, HardState::default(), &[]);
    tick_until_output(&mut core);
    let out = core.step(recv(2, 1, 1, MessageBody::VoteResponse { granted: true }));
    assert_eq!(out, vec![], "vote requests are still held, so this grant cannot be real yet; no win");
    assert_eq!(core.status().role, Role::Candidate);
    let out = core.step(Event::MetaSaved(HardState { term: 1, voted_for: Some(1) }));
    assert_eq!(core.status().role, Role::Leader);
    assert!(matches!(out.last(), Some(Command::Send(_))));
    assert!(out.contains(&Command::PersistEntries { truncate_from: None, entries: vec![entry(1, 1)] }));
}

#[test]
fn vote_grant_is_sent_only_after_the_vote_is_saved() {
    let mut core = node(2, &VOTERS, 1, &[1]);
    let request = MessageBody::VoteRequest { last_log_index: 1, last_log_term: 1, leadership_transfer: false };
    let out = core.step(recv(1, 2, 2, request));
    assert_eq!(out, vec![Command::SaveMeta(HardState { term: 2, voted_for: Some(1) })]);
    let out = core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(1) }));
    assert_eq!(out, vec![send(2, 1, 2, MessageBody::VoteResponse { granted: true })]);
}

#[test]
fn vote_request_compares_last_term_then_last_index() {
    // Voter's log ends at (term 2, index 3).
    // (candidate last term, candidate last index, granted)
    let cases = [(2, 3, true), (2, 2, false), (3, 1, true), (1, 5, false), (2, 4, true)];
    for (last_log_term, last_log_index, granted) in cases {
        let mut core = node(2, &VOTERS, 4, &[1, 1, 2]);
        let request = MessageBody::VoteRequest { last_log_index, last_log_term, leadership_transfer: false };
        let out = core.step(recv(1, 2, 5, request));
        let voted_for = granted.then_some(1);
        assert_eq!(
            out,
            vec![Command::SaveMeta(HardState { term: 5, voted_for })],
            "case {last_log_term}/{last_log_index}"
        );
        let out = core.step(Event::MetaSaved(HardState { term: 5, voted_for }));
        assert_eq!(
            out,
            vec![send(2, 1, 5, MessageBody::VoteResponse { granted })],
            "case {last_log_term}/{last_log_index}"
        );
    }
}

#[test]
fn one_vote_per_term() {
    let mut core = node(2, &VOTERS, 1, &[1]);
    let request = MessageBody::VoteRequest { last_log_index: 1, last_log_term: 1, leadership_transfer: false };
    core.step(recv(1, 2, 2, request.clone()));
    core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(1) }));
    let out = core.step(recv(3, 2, 2, request));
    assert_eq!(out, vec![send(2, 3, 2, MessageBody::VoteResponse { granted: false })]);
}

#[test]
fn follower_with_a_live_leader_ignores_vote_and_pre_vote_requests() {
    let mut core = node(2, &VOTERS, 2, &[1]);
    let out = core.step(recv(1, 2, 2, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    assert_eq!(out, vec![send(2, 1, 2, MessageBody::HeartbeatResponse { round: 1, match_index: 0 })]);
    let request = MessageBody::VoteRequest { last_log_index: 5, last_log_term: 2, leadership_transfer: false };
    assert_eq!(core.step(recv(3, 2, 3, request)), vec![]);
    assert_eq!(core.status().term, 2);
    let pre_vote = MessageBody::PreVoteRequest { last_log_index: 5, last_log_term: 2 };
    let out = core.step(recv(3, 2, 3, pre_vote));
    assert_eq!(out, vec![send(2, 3, 2, MessageBody::PreVoteResponse { granted: false })]);
}

#[test]
fn pre_vote_grant_changes_nothing_on_the_voter() {
    let mut core = node(2, &VOTERS, 2, &[1]);
    let pre_vote = MessageBody::PreVoteRequest { last_log_index: 1, last_log_term: 1 };
    let out = core.step(recv(3, 2, 3, pre_vote));
    assert_eq!(out, vec![send(2, 3, 3, MessageBody::PreVoteResponse { granted: true })]);
    assert_eq!(core.hard_state(), HardState { term: 2, voted_for: None });
}

#[test]
fn append_rejection_carries_the_conflict_hint() {
    // Follower log terms by index: 1 1 2 2 2.
    // (prev index, prev term, expected hint: conflict term, first index of it)
    let cases = [(7, 3, None, 6), (4, 3, Some(2), 3), (2, 2, Some(1), 1)];
    for (prev_index, prev_term, conflict_term, conflict_first_index) in cases {
        let mut core = node(2, &VOTERS, 3, &[1, 1, 2, 2, 2]);
        let out = core.step(recv(1, 2, 3, append((prev_index, prev_term), vec![], 0)));
        let hint = ConflictHint { rejected_prev_log_index: prev_index, conflict_term, conflict_first_index };
        let expected = send(2, 1, 3, MessageBody::AppendResponse { result: Err(hint) });
        assert_eq!(out, vec![expected], "prev ({prev_index}, {prev_term})");
    }
}

#[test]
fn append_truncates_the_conflicting_suffix_and_acks_only_durable_entries() {
    let mut core = node(2, &VOTERS, 2, &[1, 1, 1]);
    let new_entries = vec![entry(2, 2), entry(3, 2), entry(4, 2)];
    let out = core.step(recv(1, 2, 2, append((1, 1), new_entries.clone(), 1)));
    assert_eq!(
        out,
        vec![
            Command::PersistEntries { truncate_from: Some(2), entries: new_entries },
            Command::Apply(vec![entry(1, 1)]),
            send(2, 1, 2, MessageBody::AppendResponse { result: Ok(1) }),
        ]
    );
    let out = core.step(Event::EntriesDurable { index: 4, term: 2 });
    assert_eq!(out, vec![send(2, 1, 2, MessageBody::AppendResponse { result: Ok(4) })]);
}

#[test]
fn append_of_entries_already_held_truncates_nothing() {
    let mut core = node(2, &VOTERS, 2, &[1, 2, 2]);
    let out = core.step(recv(1, 2, 2, append((1, 1), vec![entry(2, 2)], 0)));
    assert_eq!(out, vec![send(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) })]);
    assert_eq!(core.status().last_index, 3, "the matching suffix beyond the batch stays");
}

#[test]
fn durable_report_for_an_overwritten_entry_is_ignored() {
    let mut core = node(2, &VOTERS, 3, &[1, 1]);
    core.step(recv(1, 2, 3, append((1, 1), vec![entry(2, 3)], 0)));
    let out = core.step(Event::EntriesDurable { index: 2, term: 1 });
    assert_eq!(out, vec![]);
    assert_eq!(core.status().durable_index, 1);
}

#[test]
fn leader_commits_on_quorum_durability_with_its_own_write_in_parallel() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    // The no-op is index 2. Our disk reports it; alone we are no quorum.
    assert_eq!(core.step(Event::EntriesDurable { index: 2, term: 2 }), vec![]);
    let out = core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert_eq!(out, vec![Command::Apply(vec![entry(1, 1), entry(2, 2)])]);

    let out = core.step(Event::Propose { request_id: 7, payloads: vec![Bytes::from_static(b"x")] });
    let e3 = command_entry(3, 2, b"x");
    assert_eq!(
        out,
        vec![
            Command::PersistEntries { truncate_from: None, entries: vec![e3.clone()] },
            send(1, 2, 2, append((2, 2), vec![e3.clone()], 2)),
        ],
        "node 3 is still being probed, so only node 2 gets the entry"
    );
    // Follower 2 holds it durably but our own write is still in flight: one
    // durable copy of three is no quorum, so no commit yet.
    assert_eq!(core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(3) })), vec![]);
    let out = core.step(Event::EntriesDurable { index: 3, term: 2 });
    assert_eq!(
        out,
        vec![
            Command::Apply(vec![e3]),
            Command::Reply(ClientReply::Committed { request_id: 7, first_index: 3, last_index: 3, term: 2 }),
        ]
    );
}

#[test]
fn a_batch_of_proposals_is_one_write_and_one_append_per_peer_with_a_reply_each() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert_eq!(core.status().committed_index, 2);

    let b = Bytes::from_static;
    let out = core.step(Event::ProposeBatch(vec![
        Proposal::plain(1, vec![b(b"a"), b(b"b")]),
        Proposal::plain(2, vec![]),
        Proposal::plain(3, vec![b(b"c")]),
    ]));
    let (ea, eb, ec) = (command_entry(3, 2, b"a"), command_entry(4, 2, b"b"), command_entry(5, 2, b"c"));
    let all = vec![ea.clone(), eb.clone(), ec.clone()];
    assert_eq!(
        out,
        vec![
            Command::Reply(ClientReply::Failed { request_id: 2, error: ClientError::EmptyProposal }),
            Command::PersistEntries { truncate_from: None, entries: all.clone() },
            send(1, 2, 2, append((2, 2), all.clone(), 2)),
        ],
        "one persist and one message for three requests (node 3 is still being probed)"
    );
    // Durable up to 4 on a quorum: request 1 commits whole, request 3 waits.
    core.step(Event::EntriesDurable { index: 5, term: 2 });
    let out = core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(4) }));
    assert_eq!(
        out,
        vec![
            Command::Apply(vec![ea, eb]),
            Command::Reply(ClientReply::Committed { request_id: 1, first_index: 3, last_index: 4, term: 2 }),
        ]
    );
    let out = core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(5) }));
    assert_eq!(
        out,
        vec![
            Command::Apply(vec![ec]),
            Command::Reply(ClientReply::Committed { request_id: 3, first_index: 5, last_index: 5, term: 2 }),
        ]
    );
}

#[test]
fn a_batch_of_proposals_to_a_follower_fails_each_with_a_hint() {
    let mut core = node(2, &VOTERS, 3, &[1]);
    core.step(recv(1, 2, 3, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    let out = core.step(Event::ProposeBatch(vec![
        Proposal::plain(8, vec![Bytes::from_static(b"x")]),
        Proposal::plain(9, vec![]),
    ]));
    let not_leader = |request_id| {
        Command::Reply(ClientReply::Failed { request_id, error: ClientError::NotLeader { leader_hint: Some(1) } })
    };
    assert_eq!(out, vec![not_leader(8), not_leader(9)]);
    assert_eq!(core.status().last_index, 1, "a follower appends nothing");
}

#[test]
fn leader_pipelines_batches_up_to_the_window() {
    let config = Config { max_inflight_entries: 4, max_entries_per_append: 2, ..config() };
    let mut core = node_with(1, &VOTERS, Config { pre_vote: false, ..config }, HardState::default(), &[]);
    tick_until_output(&mut core);
    core.step(Event::MetaSaved(HardState { term: 1, voted_for: Some(1) }));
    core.step(recv(2, 1, 1, MessageBody::VoteResponse { granted: true }));
    core.step(Event::EntriesDurable { index: 1, term: 1 });
    core.step(recv(2, 1, 1, MessageBody::AppendResponse { result: Ok(1) }));
    assert_eq!(core.status().committed_index, 1);

    let payloads: Vec<Bytes> = (0..6).map(|_| Bytes::from_static(b"p")).collect();
    let out = core.step(Event::Propose { request_id: 1, payloads });
    let e = |i| command_entry(i, 1, b"p");
    assert_eq!(
        out,
        vec![
            Command::PersistEntries { truncate_from: None, entries: (2..=7).map(e).collect() },
            send(1, 2, 1, append((1, 1), vec![e(2), e(3)], 1)),
            send(1, 2, 1, append((3, 1), vec![e(4), e(5)], 1)),
        ],
        "window of 4 entries in flight, 2 per message"
    );
    let out = core.step(recv(2, 1, 1, MessageBody::AppendResponse { result: Ok(3) }));
    assert_eq!(out, vec![send(1, 2, 1, append((5, 1), vec![e(6), e(7)], 1))]);
}

#[test]
fn leader_rejection_moves_next_index_back_a_term_at_a_time() {
    // Leader log terms by index 1..=10: 1 1 1 4 4 5 5 6 6 6.
    let core = elected_leader(&VOTERS, 6, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
    // (rejected prev, follower's conflict term, its first index, expected next)
    let cases = [
        (10, None, 7, 7),    // follower's log is short: resume after its end
        (10, Some(2), 4, 4), // we never had term 2: skip all of it
        (10, Some(4), 4, 6), // we have term 4 up to 5: resume at 6
        (5, Some(3), 4, 4),  // unknown term, below the rejected prev
        (3, Some(1), 1, 3),  // never at or past the rejected prev itself
    ];
    for (rejected, conflict_term, conflict_first_index, expected) in cases {
        let hint = ConflictHint { rejected_prev_log_index: rejected, conflict_term, conflict_first_index };
        assert_eq!(core.next_index_after_reject(hint), expected, "{hint:?}");
    }
}

#[test]
fn proposal_to_a_follower_is_answered_not_leader_with_a_hint() {
    let mut core = node(2, &VOTERS, 2, &[1]);
    core.step(recv(1, 2, 2, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    let out = core.step(Event::Propose { request_id: 4, payloads: vec![Bytes::from_static(b"x")] });
    let error = ClientError::NotLeader { leader_hint: Some(1) };
    assert_eq!(out, vec![Command::Reply(ClientReply::Failed { request_id: 4, error })]);
}

#[test]
fn leader_that_sees_a_higher_term_fails_everything_in_flight() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(Event::Propose { request_id: 7, payloads: vec![Bytes::from_static(b"x")] });
    core.step(Event::ReadIndex { request_id: 8 });
    let out = core.step(recv(3, 1, 5, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    let lost = ClientError::LeadershipLost { term: 2, leader_hint: Some(3) };
    assert_eq!(
        out,
        vec![
            Command::SaveMeta(HardState { term: 5, voted_for: None }),
            Command::Reply(ClientReply::Failed { request_id: 7, error: lost.clone() }),
            Command::Reply(ClientReply::Failed { request_id: 8, error: lost }),
        ],
        "and the heartbeat response waits for the new term to be saved"
    );
    assert_eq!(core.status().role, Role::Follower);
}

#[test]
fn check_quorum_leader_steps_down_after_an_election_timeout_of_silence() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    for tick in 1..10 {
        core.step(Event::Tick);
        assert_eq!(core.status().role, Role::Leader, "tick {tick}");
    }
    core.step(Event::Tick);
    assert_eq!((core.status().role, core.status().term), (Role::Follower, 2));
}

#[test]
fn transfer_refuses_proposals_sends_timeout_now_and_gives_up_after_a_timeout() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    let out = core.step(Event::TransferLeadership { request_id: 9, target: 2 });
    assert_eq!(out, vec![send(1, 2, 2, MessageBody::TimeoutNow)]);
    let out = core.step(Event::Propose { request_id: 10, payloads: vec![Bytes::from_static(b"x")] });
    let error = ClientError::TransferInProgress { target: 2 };
    assert_eq!(out, vec![Command::Reply(ClientReply::Failed { request_id: 10, error })]);
    let mut replies = Vec::new();
    for _ in 0..10 {
        // Keep node 2 looking alive so check-quorum does not interfere.
        core.step(recv(2, 1, 2, MessageBody::HeartbeatResponse { round: 0, match_index: 2 }));
        replies.extend(core.step(Event::Tick).into_iter().filter(|c| matches!(c, Command::Reply(_))));
    }
    let error = ClientError::TransferFailed { target: 2, reason: TransferFailure::TimedOut };
    assert_eq!(replies, vec![Command::Reply(ClientReply::Failed { request_id: 9, error })]);
    assert_eq!(core.status().role, Role::Leader);
}

#[test]
fn timeout_now_makes_the_follower_campaign_at_once_skipping_pre_vote() {
    let mut core = node(2, &VOTERS, 2, &[1, 2]);
    core.step(recv(1, 2, 2, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    let out = core.step(recv(1, 2, 2, MessageBody::TimeoutNow));
    assert_eq!(out, vec![Command::SaveMeta(HardState { term: 3, voted_for: Some(2) })]);
    let out = core.step(Event::MetaSaved(HardState { term: 3, voted_for: Some(2) }));
    let request = MessageBody::VoteRequest { last_log_index: 2, last_log_term: 2, leadership_transfer: true };
    assert_eq!(out, vec![send(2, 1, 3, request.clone()), send(2, 3, 3, request)]);
}

#[test]
fn read_index_is_served_after_a_quorum_acknowledges_a_later_round() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    let out = core.step(Event::ReadIndex { request_id: 5 });
    let round = out
        .iter()
        .find_map(|c| match c {
            Command::Send(Message { to: 2, body: MessageBody::Heartbeat { round, .. }, .. }) => Some(*round),
            _ => None,
        })
        .expect("a heartbeat round starts");
    assert!(!out.iter().any(|c| matches!(c, Command::Reply(_))));
    let stale = core.step(recv(2, 1, 2, MessageBody::HeartbeatResponse { round: round - 1, match_index: 2 }));
    assert_eq!(stale, vec![], "an older round proves nothing about this read");
    let out = core.step(recv(2, 1, 2, MessageBody::HeartbeatResponse { round, match_index: 2 }));
    assert_eq!(out, vec![Command::Reply(ClientReply::ReadReady { request_id: 5, read_index: 2 })]);
}

#[test]
fn read_index_waits_for_the_first_commit_of_the_term() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    let out = core.step(Event::ReadIndex { request_id: 5 });
    assert_eq!(out, vec![], "commit index 0 may be behind an earlier leader's");
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    let out = core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert!(out.iter().any(|c| matches!(c, Command::Send(Message { body: MessageBody::Heartbeat { .. }, .. }))));
}

#[test]
fn lease_read_needs_no_round_trip_while_the_lease_holds() {
    let lease = Some(LeaseConfig { drift_margin_ticks: 2 });
    let mut core = node_with(1, &VOTERS, Config { lease, ..config() }, HardState { term: 1, voted_for: None }, &[1]);
    tick_until_output(&mut core);
    core.step(recv(2, 1, 2, MessageBody::PreVoteResponse { granted: true }));
    core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(1) }));
    core.step(recv(2, 1, 2, MessageBody::VoteResponse { granted: true }));
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    // A heartbeat round, acknowledged: the lease starts.
    core.step(Event::Tick);
    core.step(Event::Tick);
    core.step(recv(2, 1, 2, MessageBody::HeartbeatResponse { round: 1, match_index: 2 }));
    let out = core.step(Event::ReadIndex { request_id: 6 });
    assert_eq!(out, vec![Command::Reply(ClientReply::ReadReady { request_id: 6, read_index: 2 })]);
}

#[test]
fn restart_with_entries_newer_than_the_saved_term_raises_the_term_and_saves_it_first() {
    let meta = HardState { term: 1, voted_for: Some(3) };
    let mut core = node_with(2, &VOTERS, config(), meta, &[1, 2]);
    assert_eq!(core.hard_state(), HardState { term: 2, voted_for: None });
    let out = core.step(recv(1, 2, 2, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    assert_eq!(out, vec![Command::SaveMeta(HardState { term: 2, voted_for: None })], "response held");
    let out = core.step(Event::MetaSaved(HardState { term: 2, voted_for: None }));
    assert_eq!(out, vec![send(2, 1, 2, MessageBody::HeartbeatResponse { round: 1, match_index: 0 })]);
}

#[test]
fn stale_leader_is_told_the_newer_term() {
    let mut core = node(2, &VOTERS, 5, &[1]);
    let out = core.step(recv(1, 2, 3, append((1, 1), vec![], 0)));
    assert_eq!(out, vec![send(2, 1, 5, MessageBody::HeartbeatResponse { round: 0, match_index: 0 })]);
}

#[test]
fn single_node_cluster_commits_on_its_own_durability() {
    let mut core = node_with(1, &[1], config(), HardState::default(), &[]);
    let out = tick_until_output(&mut core);
    assert_eq!(out, vec![Command::SaveMeta(HardState { term: 1, voted_for: Some(1) })]);
    let out = core.step(Event::MetaSaved(HardState { term: 1, voted_for: Some(1) }));
    assert_eq!(out, vec![Command::PersistEntries { truncate_from: None, entries: vec![entry(1, 1)] }]);
    let out = core.step(Event::EntriesDurable { index: 1, term: 1 });
    assert_eq!(out, vec![Command::Apply(vec![entry(1, 1)])]);
}

#[test]
fn leader_window_in_bytes_limits_what_is_in_flight() {
    // Each entry counts 24 bytes of header plus its 1-byte payload: 25.
    let config = Config { max_inflight_bytes: 60, pre_vote: false, ..config() };
    let mut core = node_with(1, &VOTERS, config, HardState::default(), &[]);
    tick_until_output(&mut core);
    core.step(Event::MetaSaved(HardState { term: 1, voted_for: Some(1) }));
    core.step(recv(2, 1, 1, MessageBody::VoteResponse { granted: true }));
    core.step(recv(2, 1, 1, MessageBody::AppendResponse { result: Ok(1) }));
    let payloads: Vec<Bytes> = (0..4).map(|_| Bytes::from_static(b"p")).collect();
    let out = core.step(Event::Propose { request_id: 1, payloads });
    let e = |i| command_entry(i, 1, b"p");
    assert_eq!(
        out,
        vec![
            Command::PersistEntries { truncate_from: None, entries: (2..=5).map(e).collect() },
            send(1, 2, 1, append((1, 1), vec![e(2), e(3)], 0)),
        ],
        "two entries (50 bytes) fit in 60; a third would not"
    );
    let out = core.step(recv(2, 1, 1, MessageBody::AppendResponse { result: Ok(3) }));
    assert_eq!(out, vec![send(1, 2, 1, append((3, 1), vec![e(4), e(5)], 0))]);
}

#[test]
fn malformed_messages_are_dropped_not_fatal() {
    let mut follower = node(2, &VOTERS, 2, &[1]);
    // (description, append body)
    let cases = [
        ("gap after prev", append((1, 1), vec![entry(3, 2)], 0)),
        ("entry term above the sender's", append((1, 1), vec![entry(2, 3)], 0)),
        ("terms decrease", append((1, 1), vec![entry(2, 2), entry(3, 1)], 0)),
        ("index 0 with a term", append((0, 1), vec![], 0)),
    ];
    for (name, body) in cases {
        assert_eq!(follower.step(recv(1, 2, 2, body)), vec![], "{name}");
    }
    let mut leader = elected_leader(&VOTERS, 1, &[1]);
    let out = leader.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(99) }));
    assert_eq!(out, vec![], "an ack past our last index");
    assert_eq!(leader.progress(2).map(|p| p.match_index), Some(0));
}

/// The hostile heartbeat that once froze a cluster: term `u64::MAX` (or
/// anything above MAX_TERM) is dropped, the node keeps its term and leader,
/// and a node restored at such a term refuses to start.
#[test]
fn a_message_beyond_the_term_space_is_dropped_and_never_adopted() {
    let mut follower = node(2, &VOTERS, 2, &[1]);
    for term in [u64::MAX, MAX_TERM + 1] {
        for body in [
            MessageBody::Heartbeat { leader_commit_index: 0, round: 1 },
            MessageBody::VoteRequest { last_log_index: 9, last_log_term: 9, leadership_transfer: true },
            MessageBody::PreVoteRequest { last_log_index: 9, last_log_term: 9 },
        ] {
            assert_eq!(follower.step(recv(1, 2, term, body.clone())), vec![], "term {term}: {body:?}");
            assert_eq!(follower.status().term, 2);
        }
    }
    let mut leader = elected_leader(&VOTERS, 1, &[1]);
    let before = leader.status();
    assert_eq!(leader.step(recv(2, 1, u64::MAX, MessageBody::AppendResponse { result: Ok(1) })), vec![]);
    assert_eq!((leader.status().role, leader.status().term), (Role::Leader, before.term));
    // A node at the top of the term space never campaigns (never wraps to 0).
    let mut top = node_with(1, &VOTERS, config(), HardState { term: MAX_TERM, voted_for: None }, &[1]);
    for _ in 0..100 {
        assert!(top.step(Event::Tick).iter().all(|c| !matches!(c, Command::SaveMeta(_) | Command::Send(_))));
    }
    let restored = RestoredState::whole(HardState { term: u64::MAX, voted_for: None }, Vec::new());
    let rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    assert!(matches!(RaftCore::new(1, VOTERS.to_vec(), config(), restored, rng), Err(ConfigError::RestoredTerm(_))));
}

#[test]
fn a_dead_follower_never_holds_back_commit() {
    let voters = [1, 2, 3, 4, 5];
    let mut core = elected_leader(&voters, 1, &[1]);
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert_eq!(core.status().committed_index, 0, "2 of 5");
    let out = core.step(recv(3, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert_eq!(out, vec![Command::Apply(vec![entry(1, 1), entry(2, 2)])], "3 of 5, nodes 4 and 5 silent");
}

#[test]
fn preferred_leader_gets_leadership_once_caught_up() {
    let config = Config { preferred_leader: Some(3), pre_vote: false, ..config() };
    let mut core = node_with(1, &VOTERS, config, HardState { term: 1, voted_for: None }, &[1]);
    tick_until_output(&mut core);
    core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(1) }));
    core.step(recv(2, 1, 2, MessageBody::VoteResponse { granted: true }));
    assert_eq!(core.status().role, Role::Leader);
    let mut timeout_now_sent = false;
    for _ in 0..4 {
        core.step(recv(3, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
        let out = core.step(Event::Tick);
        timeout_now_sent |= out.contains(&send(1, 3, 2, MessageBody::TimeoutNow));
    }
    assert!(timeout_now_sent, "node 3 is preferred and caught up");
    let out = core.step(Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"x")] });
    let error = ClientError::TransferInProgress { target: 3 };
    assert_eq!(out, vec![Command::Reply(ClientReply::Failed { request_id: 1, error })]);
}

#[test]
fn transfer_revokes_the_lease_so_reads_take_a_quorum_round() {
    let lease = Some(LeaseConfig { drift_margin_ticks: 2 });
    let config = Config { lease, pre_vote: false, ..config() };
    let mut core = node_with(1, &VOTERS, config, HardState { term: 1, voted_for: None }, &[1]);
    tick_until_output(&mut core);
    core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(1) }));
    core.step(recv(2, 1, 2, MessageBody::VoteResponse { granted: true }));
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    core.step(Event::Tick);
    core.step(Event::Tick);
    core.step(recv(2, 1, 2, MessageBody::HeartbeatResponse { round: 1, match_index: 2 }));
    core.step(Event::TransferLeadership { request_id: 1, target: 3 });
    let out = core.step(Event::ReadIndex { request_id: 2 });
    assert!(!out.iter().any(|c| matches!(c, Command::Reply(_))), "no lease read during a transfer: {out:?}");
}

#[test]
fn with_lease_a_restarted_node_refuses_votes_for_an_election_timeout() {
    let lease = Some(LeaseConfig { drift_margin_ticks: 2 });
    let mut core = node_with(2, &VOTERS, Config { lease, ..config() }, HardState { term: 2, voted_for: None }, &[1]);
    let request = MessageBody::VoteRequest { last_log_index: 1, last_log_term: 1, leadership_transfer: false };
    assert_eq!(core.step(recv(3, 2, 3, request.clone())), vec![], "it may have acked a lease round before crashing");
    for _ in 0..10 {
        core.step(Event::Tick);
    }
    // Its own election timer may have fired meanwhile; either way a vote
    // request from node 3 is now considered.
    let out = core.step(recv(3, 2, 4, request));
    assert!(!out.is_empty());
}

#[test]
fn transfer_is_reported_done_when_a_higher_term_ends_our_leadership() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    core.step(Event::TransferLeadership { request_id: 9, target: 2 });
    let request = MessageBody::VoteRequest { last_log_index: 2, last_log_term: 2, leadership_transfer: true };
    let out = core.step(recv(2, 1, 3, request));
    assert_eq!(
        out,
        vec![
            Command::SaveMeta(HardState { term: 3, voted_for: Some(2) }),
            Command::Reply(ClientReply::TransferDone { request_id: 9, target: 2, new_term: 3 }),
        ],
        "the vote for the target waits for the save"
    );
}

#[test]
fn replication_that_stalls_for_an_election_timeout_falls_back_to_probing() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    core.step(Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"x")] });
    assert_eq!(core.progress(2).map(|p| (p.state, p.next_index)), Some((ProgressState::Replicate, 4)));
    for _ in 0..10 {
        // Node 2 stays in touch (heartbeats) but its ack for index 3 was lost.
        core.step(recv(2, 1, 2, MessageBody::HeartbeatResponse { round: 0, match_index: 2 }));
        core.step(Event::Tick);
    }
    assert_eq!(core.progress(2).map(|p| p.state), Some(ProgressState::Probe));
    assert_eq!(core.progress(2).map(|p| p.match_index), Some(2));
}

/// Storage holding a fixed log (index 1 onwards), for the out-of-memory path.
struct FixedStorage(Vec<Entry>);

impl LogStorage for FixedStorage {
    fn entries(&self, from: LogIndex, to: LogIndex, max_bytes: u64) -> Option<Vec<Entry>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.0.iter().filter(|e| (from..=to).contains(&e.index)) {
            out.push(e.clone());
            bytes += e.size_bytes();
            if bytes >= max_bytes {
                break;
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[test]
fn a_follower_behind_the_memory_window_is_served_from_storage() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.config.max_log_memory_bytes = 0;
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert_eq!(core.status().committed_index, 2);
    assert_eq!(core.log().first_in_memory(), 3, "applied and durable entries left memory");
    assert_eq!(core.log().term_at(1), Some(1), "their terms did not");

    // Node 3 has nothing: it rejects the election's probe.
    let hint = ConflictHint { rejected_prev_log_index: 1, conflict_term: None, conflict_first_index: 1 };
    let reject = recv(3, 1, 2, MessageBody::AppendResponse { result: Err(hint) });
    assert_eq!(core.step(reject), vec![], "without storage nothing can be sent");
    // The next heartbeat round probes again, now with storage.
    let storage = FixedStorage(vec![entry(1, 1), entry(2, 2)]);
    let mut out = Vec::new();
    for _ in 0..config().heartbeat_ticks {
        out.extend(core.step_with(Event::Tick, &storage));
    }
    // A probe reads one entry (the peer may be down); its answer opens the pipeline.
    let expected = send(1, 3, 2, append((0, 0), vec![entry(1, 1)], 2));
    assert!(out.contains(&expected), "{out:?}");
    let out = core.step_with(recv(3, 1, 2, MessageBody::AppendResponse { result: Ok(1) }), &storage);
    assert_eq!(out, vec![send(1, 3, 2, append((1, 1), vec![entry(2, 2)], 2))]);
    assert_eq!(core.entries_from_storage(), 2);
}

#[test]
fn a_restart_with_no_entries_in_memory_still_knows_every_term() {
    // Terms by index: 1 1 2 2; nothing of it in memory.
    let restored = RestoredState {
        meta: HardState { term: 2, voted_for: None },
        start: Default::default(),
        terms: vec![(1, 1), (3, 2)],
        last_index: 4,
        tail: vec![],
        configs: vec![],
        ..Default::default()
    };
    let mut core = RaftCore::new(2, VOTERS.to_vec(), config(), restored, rand::SeedableRng::seed_from_u64(2)).unwrap();
    core.step(recv(1, 2, 3, append((4, 3), vec![], 0)));
    let out = core.step(Event::MetaSaved(HardState { term: 3, voted_for: None }));
    let hint = ConflictHint { rejected_prev_log_index: 4, conflict_term: Some(2), conflict_first_index: 3 };
    assert_eq!(out.last(), Some(&send(2, 1, 3, MessageBody::AppendResponse { result: Err(hint) })));
    let out = core.step(recv(1, 2, 3, append((2, 1), vec![entry(3, 3)], 0)));
    assert_eq!(out[0], Command::PersistEntries { truncate_from: Some(3), entries: vec![entry(3, 3)] });
    assert_eq!((core.log().last_index(), core.log().term_at(2), core.log().term_at(3)), (3, Some(1), Some(3)));
}

#[test]
fn a_restored_log_that_disagrees_with_itself_is_refused() {
    let cases = [
        (vec![(1, 1), (3, 2)], 2, vec![], "a term run starts past the last index"),
        (vec![(2, 1)], 2, vec![], "term runs do not start at the log's first index"),
        (vec![(1, 2), (3, 1)], 4, vec![], "term runs out of order or terms decrease"),
        (vec![(1, 1)], 3, vec![entry(2, 1)], "entries not contiguous up to the last index"),
        (vec![(1, 1)], 2, vec![entry(2, 2)], "entry term differs from the term runs"),
    ];
    for (terms, last_index, tail, want) in cases {
        let restored = RestoredState {
            meta: HardState::default(),
            start: Default::default(),
            terms,
            last_index,
            tail,
            configs: vec![],
            ..Default::default()
        };
        let err = RaftCore::new(1, VOTERS.to_vec(), config(), restored, rand::SeedableRng::seed_from_u64(1));
        assert!(err.as_ref().is_err_and(|e| e.to_string().contains(want)), "{want}: {:?}", err.err());
    }
}

#[test]
fn a_follower_behind_the_leaders_log_start_is_sent_the_start_and_resets_to_it() {
    // Leader of term 2 with log 1 1 2 (its no-op at 3), all committed; it purges below 3.
    let mut leader = elected_leader(&VOTERS, 1, &[1, 1]);
    leader.step(Event::EntriesDurable { index: 3, term: 2 });
    leader.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(3) }));
    assert_eq!((leader.status().committed_index, leader.purge_limit()), (3, 3));
    leader.step(Event::LogPurged { first_index: 3 });
    let start = LogStart { prev_index: 2, prev_term: 1 };
    assert_eq!(leader.log().start(), start);
    let membership = Membership::bootstrap(VOTERS.map(|v| (v, String::new())));
    // Follower 3 holds only index 1: the probe's back-off reaches below the start.
    let hint = ConflictHint { rejected_prev_log_index: 2, conflict_term: None, conflict_first_index: 2 };
    let out = leader.step(recv(3, 1, 2, MessageBody::AppendResponse { result: Err(hint) }));
    assert_eq!(
        out,
        vec![send(
            1,
            3,
            2,
            MessageBody::LogStart {
                start,
                leader_commit_index: 3,
                membership: membership.clone(),
                sessions: SessionTable::empty_at(3)
            }
        )]
    );
    assert_eq!(leader.log_starts_sent(), 1);

    // The follower drops its log, counts the start committed and acknowledges it.
    let mut follower = node(3, &VOTERS, 2, &[1]);
    let out = follower.step(recv(
        1,
        3,
        2,
        MessageBody::LogStart {
            start,
            leader_commit_index: 3,
            membership: membership.clone(),
            sessions: SessionTable::empty_at(3),
        },
    ));
    assert_eq!(
        out,
        vec![
            Command::SaveConfig(ConfigRecord { index: 2, term: 1, membership: membership.clone() }),
            Command::SaveSessions(SessionTable::empty_at(3)),
            Command::InstallLogStart(start),
            send(3, 1, 2, MessageBody::AppendResponse { result: Ok(2) })
        ]
    );
    let log = follower.log();
    assert_eq!((log.first_index(), log.last_index(), log.committed_index(), log.term_at(2)), (3, 2, 2, Some(1)));
    // The leader goes on from the start: entry 3 after (2, 1).
    let out = leader.step(recv(3, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    assert_eq!(out, vec![send(1, 3, 2, append((2, 1), vec![entry(3, 2)], 3))]);
    let out = follower.step(recv(1, 3, 2, append((2, 1), vec![entry(3, 2)], 3)));
    assert_eq!(out[0], Command::PersistEntries { truncate_from: None, entries: vec![entry(3, 2)] });

    // A follower that holds the entry at the start, with its term, keeps its log.
    let mut caught_up = node(2, &VOTERS, 2, &[1, 1, 2]);
    let out = caught_up.step(recv(
        1,
        2,
        2,
        MessageBody::LogStart {
            start,
            leader_commit_index: 3,
            membership: membership.clone(),
            sessions: SessionTable::empty_at(3),
        },
    ));
    let ack = send(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) });
    assert_eq!(out, vec![Command::Apply(vec![entry(1, 1), entry(2, 1)]), ack], "it commits up to the start");
    assert_eq!(caught_up.log().last_index(), 3);
}

#[test]
fn an_append_reaching_below_the_followers_start_is_cut_to_what_follows() {
    let mut follower = node(2, &VOTERS, 2, &[1, 1, 2]);
    follower.step(recv(1, 2, 2, append((3, 2), vec![], 3)));
    follower.step(Event::LogPurged { first_index: 3 });
    assert_eq!(follower.log().first_index(), 3);
    // An append from index 1 on: entries 1 and 2 are committed (expired here), 3 and 4 go on.
    let entries = vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)];
    let out = follower.step(recv(1, 2, 2, append((0, 0), entries, 3)));
    assert_eq!(out[0], Command::PersistEntries { truncate_from: None, entries: vec![entry(4, 2)] });
    assert_eq!(out.last(), Some(&send(2, 1, 2, MessageBody::AppendResponse { result: Ok(3) })));
}

#[test]
fn a_node_with_campaigns_suspended_never_campaigns_but_still_votes() {
    for pre_vote in [true, false] {
        let mut core =
            node_with(1, &VOTERS, Config { pre_vote, ..config() }, HardState { term: 1, voted_for: None }, &[1]);
        core.suspend_campaigns(true);
        for _ in 0..10 * core.config.election_timeout_max_ticks {
            assert_eq!(core.step(Event::Tick), vec![], "pre_vote {pre_vote}");
        }
        assert_eq!(core.status().role, Role::Follower);
        // A leader's TimeoutNow does not make it campaign either.
        let heartbeat = MessageBody::Heartbeat { leader_commit_index: 0, round: 1 };
        core.step(recv(2, 1, 1, heartbeat));
        let out = core.step(recv(2, 1, 1, MessageBody::TimeoutNow));
        assert!(out.iter().all(|c| !matches!(c, Command::SaveMeta(_))), "{out:?}");
        assert_eq!((core.status().role, core.status().term), (Role::Follower, 1));
        // It still votes.
        let request = MessageBody::VoteRequest { last_log_index: 1, last_log_term: 1, leadership_transfer: true };
        let out = core.step(recv(3, 1, 2, request));
        assert_eq!(out, vec![Command::SaveMeta(HardState { term: 2, voted_for: Some(3) })]);
        let out = core.step(Event::MetaSaved(HardState { term: 2, voted_for: Some(3) }));
        assert_eq!(out, vec![send(1, 3, 2, MessageBody::VoteResponse { granted: true })]);
        // Resumed, it campaigns again.
        core.suspend_campaigns(false);
        let out = tick_until_output(&mut core);
        assert!(!out.is_empty());
        assert_ne!(core.status().role, Role::Follower);
    }
}

#[test]
fn a_session_retry_in_the_same_batch_waits_for_the_original_and_a_lost_leadership_fails_it() {
    let mut core = elected_leader(&VOTERS, 1, &[1]);
    core.step(Event::EntriesDurable { index: 2, term: 2 });
    core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(2) }));
    let session = |seq| Some(ProducerSession { producer_id: 9, epoch: 0, seq, time_ms: 5 });
    let b = Bytes::from_static;
    let out = core.step(Event::ProposeBatch(vec![
        Proposal { request_id: 1, payloads: vec![b(b"a"), b(b"b")], session: session(0) },
        // A retry of it in the same step, and the next one.
        Proposal { request_id: 2, payloads: vec![b(b"a"), b(b"b")], session: session(0) },
        Proposal { request_id: 3, payloads: vec![b(b"c")], session: session(2) },
    ]));
    let Some(Command::PersistEntries { entries, .. }) = out.first() else { panic!("{out:?}") };
    let kinds: Vec<EntryKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EntryKind::Command, EntryKind::SessionCommand, EntryKind::SessionCommand], "once, stamped last");
    assert_eq!(entries[1].client_payload().as_deref(), Some(&b"b"[..]));
    assert_eq!(entries[2].stamp().map(|s| (s.first_seq, s.count)), Some((2, 1)));
    // Committed: the original and its retry are answered with the same indexes.
    core.step(Event::EntriesDurable { index: 5, term: 2 });
    let out = core.step(recv(2, 1, 2, MessageBody::AppendResponse { result: Ok(5) }));
    let replies: Vec<&ClientReply> =
        out.iter().filter_map(|c| if let Command::Reply(r) = c { Some(r) } else { None }).collect();
    assert!(replies.contains(&&ClientReply::Committed { request_id: 1, first_index: 3, last_index: 4, term: 2 }));
    assert!(replies.contains(&&ClientReply::Duplicate { request_id: 2, first_index: 3, last_index: 4, term: 2 }));
    // A retry of an uncommitted append waits; a lost leadership answers it as unknown.
    core.step(Event::ProposeBatch(vec![Proposal { request_id: 4, payloads: vec![b(b"d")], session: session(3) }]));
    let out =
        core.step(Event::ProposeBatch(vec![Proposal { request_id: 5, payloads: vec![b(b"d")], session: session(3) }]));
    assert!(!out.iter().any(|c| matches!(c, Command::Reply(_))), "waits for the original: {out:?}");
    let out = core.step(recv(3, 1, 3, MessageBody::Heartbeat { leader_commit_index: 0, round: 1 }));
    for request_id in [4, 5] {
        assert!(
            out.iter().any(|c| matches!(c, Command::Reply(ClientReply::Failed { request_id: r, error: ClientError::LeadershipLost { .. } }) if *r == request_id)),
            "request {request_id}: {out:?}"
        );
    }
}
