//! Safety checkers, one per property, each named for its place in the Raft
//! paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", Figure 3), plus client-visible properties. The simulation
//! calls them after every event with what that event changed.
//!
//! * Election Safety (§5.2): at most one leader per term.
//! * Leader Append-Only (§5.3): a leader never overwrites or deletes entries
//!   in its log.
//! * Log Matching (§5.3): two logs holding an entry with the same index and
//!   term hold the same entries up to it. Checked incrementally: every
//!   (index, term) ever written anywhere maps to one (kind, payload, term of
//!   the previous entry); by induction on the index that is the property.
//! * Leader Completeness (§5.4): an entry committed in term `t` is in the log
//!   of every leader of a term `> t`; checked when a node becomes leader and
//!   when an entry commits (against current leaders).
//! * State Machine Safety (§5.4.3): no two nodes apply different entries at
//!   one index.
//! * Commit Monotonic: a node's commit index never decreases (within one
//!   run of the process; a restart begins again from 0).
//! * Acknowledged Proposals Durable: an entry acknowledged to a client is the
//!   proposal's payload, at the acknowledged index, forever.
//! * Read Barrier Linearizable: a read index is at least every index
//!   acknowledged to a client before the read was issued.
//! * Log Start Committed: a log start (a purge, or a leader's start taken by
//!   a follower) is at most the highest commit index any node has reached,
//!   and agrees with the entry committed there. Entries below a node's start
//!   are *expired*, not lost: the other checkers skip them on that node, and
//!   an index still never comes back with another entry.
//! * State Machines Agree: on seeds with a state machine, every node's state
//!   after index `i` (applied entry by entry, or restored from a snapshot
//!   fetched from a peer) is the same digest.
//! * Installer Never Leads: a node installing a snapshot does not become
//!   leader (its state machine could not serve).
//! * Committed Entry Agrees: the entry at a node's commit index is the one
//!   committed there (so a commit that jumps over a wrong entry is seen even
//!   when that entry is never applied from memory).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::storage::SimDisk;
use crate::{Entry, EntryKind, LogIndex, LogStart, NodeId, RaftLog, Role, Status, Term};

/// A safety or liveness property the simulation found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker, named for the property (and its paper section).
    pub checker: &'static str,
    /// What was seen.
    pub detail: String,
}

/// Checker names, shared with the tests that prove them.
pub mod names {
    /// §5.2.
    pub const ELECTION_SAFETY: &str = "Election Safety (§5.2)";
    /// §5.3.
    pub const LEADER_APPEND_ONLY: &str = "Leader Append-Only (§5.3)";
    /// §5.3.
    pub const LOG_MATCHING: &str = "Log Matching (§5.3)";
    /// §5.4.
    pub const LEADER_COMPLETENESS: &str = "Leader Completeness (§5.4)";
    /// §5.4.3.
    pub const STATE_MACHINE_SAFETY: &str = "State Machine Safety (§5.4.3)";
    /// Commit index per node.
    pub const COMMIT_MONOTONIC: &str = "Commit Index Never Decreases";
    /// Client acknowledgements.
    pub const ACKED_DURABLE: &str = "Acknowledged Proposal Never Lost Or Moved";
    /// Read barriers.
    pub const READ_LINEARIZABLE: &str = "Read Barrier Not Below Earlier Acked Write";
    /// Liveness after heal.
    pub const LIVENESS: &str = "Liveness After Heal";
    /// Every request answered.
    pub const REQUESTS_ANSWERED: &str = "Client Requests Answered";
    /// A panic inside the core (an `assert!` fired).
    pub const CORE_ASSERTION: &str = "Core Assertion";
    /// Purges and installed log starts.
    pub const LOG_START_COMMITTED: &str = "Log Start Only At A Committed Entry";
    /// State machines (and snapshots) at one index.
    pub const MACHINES_AGREE: &str = "State Machines Agree At Every Index";
    /// Snapshot installs and leadership.
    pub const INSTALLER_NEVER_LEADS: &str = "A Node Installing A Snapshot Never Leads";
    /// Idempotent producers.
    pub const SESSION_ONCE: &str = "A Producer's Append Is Committed At Most Once";
}

/// What a client's acknowledgement names: the payload it proposed (an
/// admin entry's too), without a session's stamp.
fn acked_bytes(e: &Entry) -> Bytes {
    match e.kind {
        EntryKind::SessionCommand => e.client_payload().expect("a client payload"),
        _ => e.payload.clone(),
    }
}

impl CommittedRecord {
    fn acked_bytes(&self) -> Bytes {
        acked_bytes(&Entry { index: 0, term: self.term, kind: self.kind, payload: self.payload.clone() })
    }
}

#[derive(Clone, Debug)]
struct CommittedRecord {
    term: Term,
    kind: EntryKind,
    payload: Bytes,
    /// Lowest term in which a node was known to have this entry committed.
    commit_term: Term,
}

/// All checker state for one simulation run.
#[derive(Debug, Default)]
pub struct Checkers {
    leaders_by_term: HashMap<Term, NodeId>,
    written: HashMap<(LogIndex, Term), (EntryKind, Bytes, Term)>,
    committed: BTreeMap<LogIndex, CommittedRecord>,
    commit_index_by_node: HashMap<(NodeId, u32), LogIndex>,
    acked: BTreeMap<LogIndex, Bytes>,
    machine_digests: HashMap<LogIndex, (u64, NodeId)>,
    /// (producer, epoch, first sequence) of each committed session append,
    /// and the index of its stamped entry.
    session_appends: HashMap<(u64, u32, u64), LogIndex>,
    /// Highest index acknowledged to any client so far.
    pub max_acked_index: LogIndex,
}

fn fail(checker: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { checker, detail })
}

impl Checkers {
    /// Election Safety: called whenever a node is leader after an event.
    pub fn election_safety(&mut self, status: &Status) -> Result<(), Violation> {
        if status.role != Role::Leader {
            return Ok(());
        }
        let leader = *self.leaders_by_term.entry(status.term).or_insert(status.id);
        if leader != status.id {
            return fail(
                names::ELECTION_SAFETY,
                format!("nodes {leader} and {} are both leader of term {}", status.id, status.term),
            );
        }
        Ok(())
    }

    /// Leader Append-Only: `status` is the node that asked to truncate its
    /// log from `truncate_from` (after the event that asked for it).
    pub fn leader_append_only(&self, status: &Status, truncate_from: Option<LogIndex>) -> Result<(), Violation> {
        match truncate_from {
            Some(from) if status.role == Role::Leader => fail(
                names::LEADER_APPEND_ONLY,
                format!("leader {} of term {} truncated its log from index {from}", status.id, status.term),
            ),
            _ => Ok(()),
        }
    }

    /// Log Matching: `entries` were just written to `node`'s log, which now
    /// reads `disk` (for the term of each entry's predecessor).
    pub fn log_matching(&mut self, node: NodeId, entries: &[Entry], disk: &SimDisk) -> Result<(), Violation> {
        for entry in entries {
            let prev_term = disk.term_at(entry.index - 1).expect("an entry follows its predecessor or the start");
            let seen = (entry.kind, entry.payload.clone(), prev_term);
            match self.written.get(&(entry.index, entry.term)) {
                None => {
                    self.written.insert((entry.index, entry.term), seen);
                }
                Some(first) if *first == seen => {}
                Some(first) => {
                    return fail(
                        names::LOG_MATCHING,
                        format!(
                            "node {node} wrote entry (index {}, term {}) as {:?} after previous term {}, but it \
                             was first written as {:?} after previous term {}",
                            entry.index, entry.term, seen.1, seen.2, first.1, first.2
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// State Machine Safety and acked-proposal checks: `node`, in `term`,
    /// applied `entries`; `leaders` are the current leaders' (term, log).
    pub fn state_machine_safety(
        &mut self,
        node: NodeId,
        term: Term,
        entries: &[Entry],
        leaders: &[(NodeId, Term, &RaftLog)],
    ) -> Result<(), Violation> {
        for entry in entries {
            match self.committed.get_mut(&entry.index) {
                None => {
                    self.committed.insert(
                        entry.index,
                        CommittedRecord {
                            term: entry.term,
                            kind: entry.kind,
                            payload: entry.payload.clone(),
                            commit_term: term,
                        },
                    );
                }
                Some(record) => {
                    if record.term != entry.term || record.kind != entry.kind || record.payload != entry.payload {
                        return fail(
                            names::STATE_MACHINE_SAFETY,
                            format!(
                                "node {node} applied (index {}, term {}, {:?}) but (term {}, {:?}) was applied there \
                                 before",
                                entry.index, entry.term, entry.payload, record.term, record.payload
                            ),
                        );
                    }
                    record.commit_term = record.commit_term.min(term);
                }
            }
            if let Some(payload) = self.acked.get(&entry.index) {
                if acked_bytes(entry) != *payload {
                    return fail(
                        names::ACKED_DURABLE,
                        format!("node {node} applied {:?} at acknowledged index {}", entry.payload, entry.index),
                    );
                }
            }
            let commit_term = self.committed[&entry.index].commit_term;
            for &(leader, leader_term, log) in leaders {
                let expired = entry.index < log.start().prev_index;
                if leader_term > commit_term && !expired && log.term_at(entry.index) != Some(entry.term) {
                    return fail(
                        names::LEADER_COMPLETENESS,
                        format!(
                            "entry (index {}, term {}) committed in term {commit_term} is missing from leader {leader} \
                             of term {leader_term}",
                            entry.index, entry.term
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Leader Completeness: `node` just became leader of `term` with `log`.
    pub fn leader_completeness(&self, node: NodeId, term: Term, log: &RaftLog) -> Result<(), Violation> {
        for (&index, record) in self.committed.range(log.start().prev_index..) {
            if record.commit_term < term && log.term_at(index) != Some(record.term) {
                return fail(
                    names::LEADER_COMPLETENESS,
                    format!(
                        "new leader {node} of term {term} lacks entry (index {index}, term {}) committed in term {}",
                        record.term, record.commit_term
                    ),
                );
            }
        }
        Ok(())
    }

    /// Commit Monotonic, per process incarnation.
    pub fn commit_monotonic(
        &mut self,
        node: NodeId,
        incarnation: u32,
        committed_index: LogIndex,
    ) -> Result<(), Violation> {
        let seen = self.commit_index_by_node.entry((node, incarnation)).or_insert(0);
        if committed_index < *seen {
            return fail(
                names::COMMIT_MONOTONIC,
                format!("node {node} commit index went from {seen} to {committed_index}"),
            );
        }
        *seen = committed_index;
        Ok(())
    }

    /// Committed Entry Agrees: `node`'s log says the entry at its commit
    /// index has the term `log` gives it.
    pub fn committed_agrees(&self, node: NodeId, log: &RaftLog) -> Result<(), Violation> {
        let index = log.committed_index();
        let (Some(record), Some(term)) = (self.committed.get(&index), log.term_at(index)) else { return Ok(()) };
        if record.term != term {
            return fail(
                names::STATE_MACHINE_SAFETY,
                format!(
                    "node {node} committed up to index {index} holding term {term}, but term {} committed there",
                    record.term
                ),
            );
        }
        Ok(())
    }

    /// Log Start Committed: `node` is about to start its log after `start`
    /// (a purge, or a leader's log start it installs).
    pub fn log_start(&self, node: NodeId, start: LogStart, how: &str) -> Result<(), Violation> {
        let max_commit = self.commit_index_by_node.values().copied().max().unwrap_or(0);
        if start.prev_index > max_commit {
            return fail(
                names::LOG_START_COMMITTED,
                format!(
                    "node {node} {how} up to index {} but no node has committed past {max_commit}",
                    start.prev_index
                ),
            );
        }
        if let Some(record) = self.committed.get(&start.prev_index) {
            if record.term != start.prev_term {
                return fail(
                    names::LOG_START_COMMITTED,
                    format!(
                        "node {node} {how} up to (index {}, term {}) but term {} is committed there",
                        start.prev_index, start.prev_term, record.term
                    ),
                );
            }
        }
        Ok(())
    }

    /// A proposal of `payloads` was acknowledged at `first_index..` in `term`
    /// by a node whose log is `log`.
    pub fn proposal_acked(
        &mut self,
        node: NodeId,
        (first_index, term): (LogIndex, Term),
        payloads: &[Bytes],
        log: &RaftLog,
        disk: &SimDisk,
        must_be_applied: bool,
    ) -> Result<(), Violation> {
        for (k, payload) in payloads.iter().enumerate() {
            let index = first_index + k as u64;
            let in_log = entry_of(log, disk, index);
            let committed = self.committed.get(&index);
            // Part of a proposal may commit, be applied and expire before the rest commits.
            let expired = index < log.first_index();
            // A duplicate's original may be committed and not yet applied
            // anywhere (a restarted leader applies none of what it restored
            // without payloads); it is then checked when it is applied.
            let applied_ok = match committed {
                Some(c) => c.term == term && c.acked_bytes() == *payload,
                None => !must_be_applied,
            };
            let ok = (expired || in_log.is_some_and(|e| e.term == term && acked_bytes(e) == *payload)) && applied_ok;
            if !ok {
                return fail(
                    names::ACKED_DURABLE,
                    format!(
                        "node {node} acked {payload:?} at (index {index}, term {term}) but its log holds {:?} and the \
                         committed entry there is {:?}",
                        in_log.map(|e| (e.term, &e.payload)),
                        committed.map(|c| (c.term, &c.payload))
                    ),
                );
            }
            self.acked.insert(index, payload.clone());
            self.max_acked_index = self.max_acked_index.max(index);
        }
        Ok(())
    }

    /// Committed entries `entries` were applied on `node`: no producer's
    /// append (its stamp) is committed at two indexes.
    pub fn session_applied(&mut self, node: NodeId, entries: &[Entry]) -> Result<(), Violation> {
        for e in entries {
            let Some(s) = e.stamp() else { continue };
            let key = (s.producer_id, s.epoch, s.first_seq);
            let at = *self.session_appends.entry(key).or_insert(e.index);
            if at != e.index {
                return fail(
                    names::SESSION_ONCE,
                    format!(
                        "node {node} applied producer {} epoch {} seq {} at index {} and it was committed at {at} \
                         already: a retry was appended twice",
                        s.producer_id, s.epoch, s.first_seq, e.index
                    ),
                );
            }
        }
        Ok(())
    }

    /// `node` answered the session append `key` as committed with its last
    /// entry at `last_index`: the committed entry there carries its stamp.
    pub fn session_acked(
        &mut self,
        node: NodeId,
        key: (u64, u32, u64),
        last_index: LogIndex,
        log: &RaftLog,
        disk: &SimDisk,
    ) -> Result<(), Violation> {
        let committed = self.committed.get(&last_index).and_then(|c| {
            let e = Entry { index: last_index, term: c.term, kind: c.kind, payload: c.payload.clone() };
            e.stamp()
        });
        let stamp = committed.or_else(|| entry_of(log, disk, last_index)?.stamp());
        // Purged here (and never applied where the checker saw it): the table still answers for it.
        let expired = stamp.is_none() && last_index < log.first_index();
        if !expired && stamp.map(|s| (s.producer_id, s.epoch, s.first_seq)) != Some(key) {
            return fail(
                names::SESSION_ONCE,
                format!("node {node} answered append {key:?} at {last_index}, where the committed stamp is {stamp:?}"),
            );
        }
        let at = *self.session_appends.entry(key).or_insert(last_index);
        if at != last_index {
            return fail(
                names::SESSION_ONCE,
                format!("node {node} answered append {key:?} at {last_index}, committed at {at}"),
            );
        }
        Ok(())
    }

    /// A read barrier issued when `max_acked_index` was `acked_before`
    /// returned `read_index`.
    pub fn read_barrier(&self, node: NodeId, read_index: LogIndex, acked_before: LogIndex) -> Result<(), Violation> {
        if read_index < acked_before {
            return fail(
                names::READ_LINEARIZABLE,
                format!(
                    "node {node} returned read index {read_index} but index {acked_before} was acked before the read"
                ),
            );
        }
        Ok(())
    }

    /// Every acknowledged entry at or above `node`'s log start is in `log`
    /// (used once logs converged); those below it expired.
    pub fn acked_present(&self, node: NodeId, log: &RaftLog, disk: &SimDisk) -> Result<(), Violation> {
        for (&index, payload) in self.acked.range(log.first_index()..) {
            if entry_of(log, disk, index).map(acked_bytes).as_ref() != Some(payload) {
                return fail(names::ACKED_DURABLE, format!("acked index {index} missing from node {node} at the end"));
            }
        }
        Ok(())
    }

    /// State Machines Agree: `node`'s state machine holds `digest` after `index`.
    pub fn machine_state(&mut self, node: NodeId, index: LogIndex, digest: u64, how: &str) -> Result<(), Violation> {
        let (first, by) = *self.machine_digests.entry(index).or_insert((digest, node));
        if first != digest {
            return fail(
                names::MACHINES_AGREE,
                format!("node {node} {how} index {index} with state {digest:#x}, but node {by} had {first:#x} there"),
            );
        }
        Ok(())
    }

    /// Installer Never Leads: called after every step.
    pub fn installer_never_leads(&self, status: &Status, installing: bool) -> Result<(), Violation> {
        if installing && status.role == Role::Leader {
            return fail(
                names::INSTALLER_NEVER_LEADS,
                format!("node {} became leader of term {} while installing a snapshot", status.id, status.term),
            );
        }
        Ok(())
    }

    /// Entries acknowledged to clients.
    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    /// Distinct committed indexes seen.
    pub fn committed_count(&self) -> usize {
        self.committed.len()
    }
}

/// The entry at `index` as the node holds it: in the core's memory, or (once
/// it left memory) on the node's disk, which then must agree on its term.
fn entry_of<'a>(log: &'a RaftLog, disk: &'a SimDisk, index: LogIndex) -> Option<&'a Entry> {
    log.entry(index).or_else(|| {
        let e = disk.entry(index)?;
        (log.term_at(index) == Some(e.term)).then_some(e)
    })
}
