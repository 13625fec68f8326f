//! Hostile input: messages with arbitrary fields (terms and indexes at and
//! past every bound, entries that do not fit together, strangers and
//! members, answers to nothing) stepped into cores in every role, with the
//! host answering the core's storage commands as a real host would. The core
//! must never panic (its assertions run in release too), never reach a term
//! past `MAX_TERM` or an index past `MAX_INDEX`, and keep its own invariants
//! (commit ≤ durable-or-last, applied = commit); property tests with a fixed
//! case count, shrinking to the smallest failing sequence.

use bytes::Bytes;
use proptest::prelude::*;

use super::test_support::*;
use super::*;

const VOTERS: [NodeId; 3] = [1, 2, 3];

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..8u64,
        1 => Just(u64::MAX),
        1 => Just(MAX_TERM),
        1 => (MAX_TERM - 2)..(MAX_TERM + 3),
        1 => Just(MAX_INDEX),
        1 => any::<u64>(),
    ]
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (value(), value(), 0..3u8, proptest::collection::vec(any::<u8>(), 0..4)).prop_map(|(index, term, k, p)| Entry {
        index,
        term,
        kind: [EntryKind::Noop, EntryKind::Command, EntryKind::Admin][k as usize],
        payload: Bytes::from(p),
    })
}

/// An append that often fits together (entries after `prev`), sometimes not.
fn append_strategy() -> impl Strategy<Value = MessageBody> {
    (value(), value(), value(), 0..4usize, any::<bool>(), proptest::collection::vec(entry_strategy(), 0..4)).prop_map(
        |(prev, prev_term, commit, n, fit, mut entries)| {
            if fit {
                let start = prev.min(MAX_INDEX - 8);
                entries = (0..n as u64)
                    .map(|k| Entry {
                        index: start + 1 + k,
                        term: prev_term.max(1),
                        kind: EntryKind::Command,
                        payload: Bytes::new(),
                    })
                    .collect();
                return MessageBody::AppendRequest {
                    prev_log_index: start,
                    prev_log_term: prev_term,
                    entries,
                    leader_commit_index: commit,
                };
            }
            MessageBody::AppendRequest {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit_index: commit,
            }
        },
    )
}

fn body_strategy() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (value(), value()).prop_map(|(i, t)| MessageBody::PreVoteRequest { last_log_index: i, last_log_term: t }),
        any::<bool>().prop_map(|g| MessageBody::PreVoteResponse { granted: g }),
        (value(), value(), any::<bool>()).prop_map(|(i, t, l)| MessageBody::VoteRequest {
            last_log_index: i,
            last_log_term: t,
            leadership_transfer: l
        }),
        any::<bool>().prop_map(|g| MessageBody::VoteResponse { granted: g }),
        append_strategy(),
        value().prop_map(|m| MessageBody::AppendResponse { result: Ok(m) }),
        (value(), proptest::option::of(value()), value()).prop_map(|(r, t, f)| MessageBody::AppendResponse {
            result: Err(ConflictHint { rejected_prev_log_index: r, conflict_term: t, conflict_first_index: f })
        }),
        (value(), value()).prop_map(|(c, r)| MessageBody::Heartbeat { leader_commit_index: c, round: r }),
        (value(), value()).prop_map(|(r, m)| MessageBody::HeartbeatResponse { round: r, match_index: m }),
        Just(MessageBody::TimeoutNow),
        (value(), value(), value()).prop_map(|(i, t, c)| MessageBody::LogStart {
            start: LogStart { prev_index: i, prev_term: t },
            leader_commit_index: c,
            membership: Membership::bootstrap([(1, String::new()), (2, String::new())]),
            sessions: crate::SessionTable::empty_at(i),
        }),
    ]
}

/// Mostly members writing to node 1, sometimes strangers or misdirected.
fn message_strategy() -> impl Strategy<Value = Message> {
    (prop_oneof![6 => 2..4u64, 1 => 0..9u64], prop_oneof![6 => Just(1u64), 1 => 0..5u64], value(), body_strategy())
        .prop_map(|(from, to, term, body)| Message { from, to, term, body })
}

/// What the host does between inputs: saves and syncs what it is asked to,
/// and ticks now and then.
#[derive(Clone, Debug)]
enum Input {
    Message(Message),
    Tick,
    Propose,
}

fn input_strategy() -> impl Strategy<Value = Input> {
    prop_oneof![8 => message_strategy().prop_map(Input::Message), 2 => Just(Input::Tick), 1 => Just(Input::Propose)]
}

/// Steps `event` and carries out the host's side: metadata saved, entries made durable.
fn step_as_host(core: &mut RaftCore, event: Event) {
    let mut pending = vec![event];
    while let Some(event) = pending.pop() {
        for command in core.step(event) {
            match command {
                Command::SaveMeta(hs) => pending.push(Event::MetaSaved(hs)),
                Command::PersistEntries { entries, .. } => {
                    if let Some(last) = entries.last() {
                        pending.push(Event::EntriesDurable { index: last.index, term: last.term });
                    }
                }
                _ => {}
            }
        }
    }
}

fn check_invariants(core: &RaftCore) -> Result<(), TestCaseError> {
    let s = core.status();
    prop_assert!(s.term <= MAX_TERM, "term {} past MAX_TERM", s.term);
    prop_assert!(s.last_index <= MAX_INDEX, "last index {} past MAX_INDEX", s.last_index);
    prop_assert!(s.committed_index <= s.last_index, "{s:?}");
    prop_assert_eq!(core.log().applied_index(), s.committed_index);
    prop_assert!(s.role != Role::Leader || s.leader_id == Some(1), "{s:?}");
    Ok(())
}

fn run(mut core: RaftCore, inputs: Vec<Input>) -> Result<(), TestCaseError> {
    for input in inputs {
        let event = match input {
            Input::Message(m) => Event::Message(m),
            Input::Tick => Event::Tick,
            Input::Propose => Event::Propose { request_id: 1, payloads: vec![Bytes::from_static(b"x")] },
        };
        step_as_host(&mut core, event);
        check_invariants(&core)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_follower_survives_any_messages(inputs in proptest::collection::vec(input_strategy(), 1..40)) {
        run(node(1, &VOTERS, 2, &[1, 1, 2]), inputs)?;
    }

    #[test]
    fn a_leader_survives_any_messages(inputs in proptest::collection::vec(input_strategy(), 1..40)) {
        let mut core = elected_leader(&VOTERS, 2, &[1, 2]);
        step_as_host(&mut core, Event::EntriesDurable { index: 3, term: 3 });
        run(core, inputs)?;
    }

    #[test]
    fn a_candidate_survives_any_messages(inputs in proptest::collection::vec(input_strategy(), 1..40)) {
        let mut core = node_with(1, &VOTERS, Config { pre_vote: false, ..config() }, HardState { term: 4, voted_for: None }, &[1, 4]);
        tick_until_output(&mut core);
        step_as_host(&mut core, Event::MetaSaved(HardState { term: 5, voted_for: Some(1) }));
        run(core, inputs)?;
    }
}

/// Messages that name a term or an index past the bounds are dropped whole:
/// nothing changes, nothing is sent.
#[test]
fn out_of_range_terms_and_indexes_are_dropped_whole() {
    let huge = [MAX_TERM + 1, u64::MAX];
    let bodies = |x: u64| {
        vec![
            MessageBody::Heartbeat { leader_commit_index: x, round: 1 },
            MessageBody::AppendRequest { prev_log_index: x, prev_log_term: 1, entries: vec![], leader_commit_index: 0 },
            MessageBody::AppendRequest {
                prev_log_index: MAX_INDEX,
                prev_log_term: 1,
                entries: vec![entry(MAX_INDEX.wrapping_add(1), 1)],
                leader_commit_index: 0,
            },
            MessageBody::LogStart {
                start: LogStart { prev_index: x, prev_term: 1 },
                leader_commit_index: x,
                membership: Membership::bootstrap([(1, String::new())]),
                sessions: crate::SessionTable::empty_at(x),
            },
            MessageBody::VoteRequest { last_log_index: x, last_log_term: 1, leadership_transfer: true },
            MessageBody::HeartbeatResponse { round: 1, match_index: x },
        ]
    };
    for x in huge {
        for body in bodies(x) {
            let mut core = node(1, &VOTERS, 2, &[1, 2]);
            let before = core.status();
            assert_eq!(core.step(recv(2, 1, 3, body.clone())), vec![], "{body:?}");
            assert_eq!(core.status(), before, "{body:?}");
        }
        let mut core = node(1, &VOTERS, 2, &[1, 2]);
        assert_eq!(core.step(recv(2, 1, x, MessageBody::TimeoutNow)), vec![]);
        assert_eq!(core.status().term, 2);
    }
}
