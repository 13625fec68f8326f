//! Builders shared by the handler and scenario tests.

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;

pub fn config() -> Config {
    Config {
        election_timeout_min_ticks: 10,
        election_timeout_max_ticks: 20,
        heartbeat_ticks: 2,
        max_inflight_entries: 64,
        max_inflight_bytes: 1 << 20,
        max_entries_per_append: 16,
        max_log_memory_bytes: u64::MAX,
        pre_vote: true,
        check_quorum: true,
        lease: None,
        preferred_leader: None,
        promote_max_lag_entries: 100,
        promote_max_lag_bytes: u64::MAX,
        sessions: SessionLimits::default(),
        injected_bugs: InjectedBugs::default(),
    }
}

pub fn entry(index: LogIndex, term: Term) -> Entry {
    Entry { index, term, kind: EntryKind::Noop, payload: Bytes::new() }
}

pub fn command_entry(index: LogIndex, term: Term, payload: &'static [u8]) -> Entry {
    Entry { index, term, kind: EntryKind::Command, payload: Bytes::from_static(payload) }
}

pub fn log_of_terms(terms: &[Term]) -> Vec<Entry> {
    terms.iter().enumerate().map(|(k, &term)| entry(k as u64 + 1, term)).collect()
}

/// A core restarted from `meta` and a log with the given entry terms.
pub fn node_with(id: NodeId, voters: &[NodeId], config: Config, meta: HardState, log_terms: &[Term]) -> RaftCore {
    let restored = RestoredState::whole(meta, log_of_terms(log_terms));
    RaftCore::new(id, voters.to_vec(), config, restored, ChaCha8Rng::seed_from_u64(id)).expect("valid test node")
}

pub fn node(id: NodeId, voters: &[NodeId], term: Term, log_terms: &[Term]) -> RaftCore {
    node_with(id, voters, config(), HardState { term, voted_for: None }, log_terms)
}

pub fn message(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message { from, to, term, body }
}

pub fn recv(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Event {
    Event::Message(message(from, to, term, body))
}

pub fn send(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Command {
    Command::Send(message(from, to, term, body))
}

pub fn append(prev: (LogIndex, Term), entries: Vec<Entry>, commit: LogIndex) -> MessageBody {
    MessageBody::AppendRequest { prev_log_index: prev.0, prev_log_term: prev.1, entries, leader_commit_index: commit }
}

/// Ticks until the core emits something (its election timeout fired).
pub fn tick_until_output(core: &mut RaftCore) -> Vec<Command> {
    for _ in 0..core.config.election_timeout_max_ticks + 1 {
        let out = core.step(Event::Tick);
        if !out.is_empty() {
            return out;
        }
    }
    panic!("no output within an election timeout");
}

/// Node 1 of `voters`, elected leader of `term + 1` over a log with
/// `log_terms` (so its no-op sits at `log_terms.len() + 1`, not yet durable).
pub fn elected_leader(voters: &[NodeId], term: Term, log_terms: &[Term]) -> RaftCore {
    let mut core = node(1, voters, term, log_terms);
    tick_until_output(&mut core);
    let new_term = term + 1;
    for &peer in voters.iter().filter(|&&p| p != 1) {
        core.step(recv(peer, 1, new_term, MessageBody::PreVoteResponse { granted: true }));
    }
    core.step(Event::MetaSaved(HardState { term: new_term, voted_for: Some(1) }));
    for &peer in voters.iter().filter(|&&p| p != 1) {
        core.step(recv(peer, 1, new_term, MessageBody::VoteResponse { granted: true }));
    }
    assert_eq!(core.status().role, Role::Leader);
    core
}
