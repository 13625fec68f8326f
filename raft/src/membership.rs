//! Cluster membership: who votes, who only learns, and how it changes.
//!
//! A configuration ([`Membership`]) travels in the log as an
//! [`EntryKind::Config`](super::EntryKind::Config) entry and takes effect on
//! a node as soon as the entry is in its log, committed or not (Raft thesis
//! §4.1). Changes are single-server: each adds a learner, promotes one,
//! demotes a voter or removes a member, so any quorum of the old voters
//! intersects any quorum of the new ones. Single-server changes rather than
//! joint consensus because the operations users ask for (grow, shrink,
//! replace) are sequences of single steps anyway, each is one entry the
//! operator can watch commit, and a replacement goes through a learner that
//! never counts toward a quorum until it is promoted, so there is never a
//! moment when the two-server difference of a direct swap would be needed.
//!
//! Invariants (the leader checks them before proposing; see `core`):
//! * at most one configuration entry is uncommitted at a time;
//! * a leader proposes one only after it has committed an entry of its own
//!   term (Ongaro's fix to the single-server change bug: a leader elected
//!   under the old configuration may otherwise overwrite a change another
//!   leader committed under the new one);
//! * every configuration keeps at least one voter, and `version` grows by
//!   one per change (a compare-and-set target for operators).
//!
//! # Persistence
//!
//! A node needs the latest configuration in its log after a restart, and
//! the log may be long. So the host keeps a small side file of
//! [`ConfigRecord`]s; the core says what to write (`Command::SaveConfig`)
//! *before* the entry or log start it describes reaches storage, since an
//! entry durable without its record would, after a crash, leave the node on
//! an older configuration than its log holds (and then free to stack a
//! second change on the wrong one). The file's rules, in [`ConfigHistory`]:
//! * append each `SaveConfig` record durably before the next command;
//! * after a durable truncation from `T`, drop the records at or above `T`
//!   that the core no longer holds ([`ConfigHistory::drop_truncated`]);
//! * after a durable log-start install, keep only its record;
//! * keep the latest record at or below what is both committed and durable
//!   here, and everything after it ([`ConfigHistory::compact`]);
//! * at restart, [`ConfigHistory::restore`] keeps the record of the log's
//!   start (or the latest below it) and the records after it whose
//!   `(index, term)` the surviving log holds (Log Matching: the pair names
//!   one entry), and the host rewrites the file to that.
//!
//! A crash between any two steps leaves only records that restore filters
//! out: a record of a replaced entry has an index above the commit index
//! at the time, so above the log start, where its term is checked.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::message::{LogIndex, LogStart, NodeId, Term};

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Votes and counts toward every quorum.
    Voter,
    /// Receives the log; never votes, never counts.
    Learner,
}

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// Voter or learner.
    pub role: MemberRole,
    /// Where the host reaches it (opaque to the core; empty if unknown).
    pub address: String,
}

/// A configuration: its members and its version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// 0 for the bootstrap configuration; one more per change.
    pub version: u64,
    /// Every member, by node id.
    pub members: BTreeMap<NodeId, Member>,
}

/// Longest address a configuration may carry.
pub const MAX_ADDRESS_BYTES: usize = 255;
/// Most members a configuration may carry.
pub const MAX_MEMBERS: usize = 64;

impl Membership {
    /// The configuration a cluster is created with: `voters`, with addresses.
    pub fn bootstrap(voters: impl IntoIterator<Item = (NodeId, String)>) -> Membership {
        let members =
            voters.into_iter().map(|(id, address)| (id, Member { role: MemberRole::Voter, address })).collect();
        Membership { version: 0, members }
    }

    /// The voters, in id order.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| m.role == MemberRole::Voter).map(|(&id, _)| id)
    }

    /// The learners, in id order.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| m.role == MemberRole::Learner).map(|(&id, _)| id)
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.role == MemberRole::Voter)
    }

    /// Whether `id` is a member (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// Votes needed for a quorum of the voters.
    pub fn quorum(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    /// The configuration after `change`, or why it is not a valid change of
    /// this one (structurally: whether it is safe now is the leader's call).
    pub fn changed(&self, change: &MembershipChange) -> Result<Membership, MembershipRefusal> {
        let mut next = self.clone();
        next.version += 1;
        match change {
            MembershipChange::AddLearner { id, address } => {
                if self.contains(*id) {
                    return Err(MembershipRefusal::AlreadyMember { id: *id });
                }
                if *id == 0 || address.len() > MAX_ADDRESS_BYTES || self.members.len() >= MAX_MEMBERS {
                    return Err(MembershipRefusal::Invalid);
                }
                next.members.insert(*id, Member { role: MemberRole::Learner, address: address.clone() });
            }
            MembershipChange::Promote { id } => match next.members.get_mut(id) {
                None => return Err(MembershipRefusal::NotMember { id: *id }),
                Some(m) if m.role != MemberRole::Learner => return Err(MembershipRefusal::NotLearner { id: *id }),
                Some(m) => m.role = MemberRole::Voter,
            },
            MembershipChange::Demote { id } => match next.members.get_mut(id) {
                None => return Err(MembershipRefusal::NotMember { id: *id }),
                Some(m) if m.role != MemberRole::Voter => return Err(MembershipRefusal::NotVoter { id: *id }),
                Some(m) => m.role = MemberRole::Learner,
            },
            MembershipChange::Remove { id } => {
                if next.members.remove(id).is_none() {
                    return Err(MembershipRefusal::NotMember { id: *id });
                }
            }
        }
        if next.voters().next().is_none() {
            return Err(MembershipRefusal::LastVoter);
        }
        Ok(next)
    }

    /// The wire and log encoding: version, count, then per member its id,
    /// role and address (all little-endian).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(12 + self.members.len() * 12);
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Appends [`Self::encode`]'s bytes to `b`.
    pub fn encode_into(&self, b: &mut impl BufMut) {
        b.put_u64_le(self.version);
        b.put_u32_le(self.members.len() as u32);
        for (&id, m) in &self.members {
            b.put_u64_le(id);
            b.put_u8(match m.role {
                MemberRole::Voter => 1,
                MemberRole::Learner => 2,
            });
            b.put_u8(m.address.len() as u8);
            b.put_slice(m.address.as_bytes());
        }
    }

    /// Decodes [`Self::encode`]'s bytes from the front of `bytes`, returning
    /// the configuration and the bytes it took; `None` if they are not a
    /// valid configuration (unknown role, duplicate or zero id, too many
    /// members, no voter, bad UTF-8, short).
    pub fn decode_prefix(bytes: &[u8]) -> Option<(Membership, usize)> {
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let s = bytes.get(*at..at.checked_add(n)?)?;
            *at += n;
            Some(s)
        };
        let mut at = 0;
        let version = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        if count > MAX_MEMBERS {
            return None;
        }
        let mut members = BTreeMap::new();
        for _ in 0..count {
            let id = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
            let role = match take(&mut at, 1)?[0] {
                1 => MemberRole::Voter,
                2 => MemberRole::Learner,
                _ => return None,
            };
            let len = take(&mut at, 1)?[0] as usize;
            let address = std::str::from_utf8(take(&mut at, len)?).ok()?.to_string();
            if id == 0 || members.insert(id, Member { role, address }).is_some() {
                return None;
            }
        }
        let membership = Membership { version, members };
        membership.voters().next()?;
        Some((membership, at))
    }

    /// Decodes a whole buffer holding one configuration.
    pub fn decode(bytes: &[u8]) -> Option<Membership> {
        Membership::decode_prefix(bytes).filter(|(_, used)| *used == bytes.len()).map(|(m, _)| m)
    }
}

/// One single-server change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new member that receives the log and does not vote.
    AddLearner {
        /// Its node id (never used before in this cluster).
        id: NodeId,
        /// Where it listens.
        address: String,
    },
    /// A learner becomes a voter (only once it is caught up).
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// A voter becomes a learner.
    Demote {
        /// The voter.
        id: NodeId,
    },
    /// A member leaves.
    Remove {
        /// The member.
        id: NodeId,
    },
}

/// Why a membership change was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipRefusal {
    /// The leader has not yet committed an entry of its own term; retry.
    #[error("the leader has not yet committed an entry of its term; retry shortly")]
    NotReady,
    /// Another change is not yet committed.
    #[error("another membership change (at index {index}) is not yet committed")]
    ChangeInProgress {
        /// Its log index.
        index: LogIndex,
    },
    /// The compare-and-set on the version failed.
    #[error("configuration version is {current}, not {expected}")]
    VersionMismatch {
        /// The version the caller expected.
        expected: u64,
        /// The version in force.
        current: u64,
    },
    /// The id is a member already (ids are never reused).
    #[error("node {id} is already a member")]
    AlreadyMember {
        /// The id.
        id: NodeId,
    },
    /// The id is not a member.
    #[error("node {id} is not a member")]
    NotMember {
        /// The id.
        id: NodeId,
    },
    /// Only a learner can be promoted.
    #[error("node {id} is not a learner")]
    NotLearner {
        /// The id.
        id: NodeId,
    },
    /// Only a voter can be demoted.
    #[error("node {id} is not a voter")]
    NotVoter {
        /// The id.
        id: NodeId,
    },
    /// The change would leave no voter.
    #[error("the change would remove the last voter")]
    LastVoter,
    /// The leader cannot remove or demote itself: hand leadership over first.
    #[error("node {id} is the leader: transfer leadership first")]
    IsLeader {
        /// The leader.
        id: NodeId,
    },
    /// The learner is too far behind to be promoted.
    #[error("learner {id} is {lag_entries} entries ({lag_bytes} bytes) behind; the bound is {max_entries} entries and {max_bytes} bytes")]
    LearnerBehind {
        /// The learner.
        id: NodeId,
        /// Entries it lacks.
        lag_entries: u64,
        /// Bytes it lacks (`u64::MAX` when they are not in memory to count).
        lag_bytes: u64,
        /// The configured bound in entries.
        max_entries: u64,
        /// The configured bound in bytes.
        max_bytes: u64,
    },
    /// Too few of the new configuration's voters were heard from recently.
    #[error(
        "only {reachable} of the new configuration's voters are reachable, {needed} are needed (force to override)"
    )]
    NoReachableQuorum {
        /// Voters heard from within an election timeout (with the leader).
        reachable: usize,
        /// The new configuration's quorum.
        needed: usize,
    },
    /// An id of 0, an address too long, or too many members.
    #[error("invalid change: node ids are non-zero, addresses at most 255 bytes, at most 64 members")]
    Invalid,
}

/// A configuration as of the log entry `(index, term)` that holds it (or,
/// for `index` 0, the bootstrap; for a log start, the entry it starts after).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRecord {
    /// Its log index.
    pub index: LogIndex,
    /// That entry's term.
    pub term: Term,
    /// The configuration.
    pub membership: Membership,
}

/// The configurations a log holds: the latest committed one (the base,
/// first) and any after it. The core keeps one; a host keeps the same on
/// disk by the rules in the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigHistory {
    records: Vec<ConfigRecord>,
}

impl ConfigHistory {
    /// A history holding `records` as given (sorted by index).
    pub fn from_records(mut records: Vec<ConfigRecord>) -> ConfigHistory {
        records.sort_by_key(|r| r.index);
        records.dedup_by_key(|r| r.index);
        ConfigHistory { records }
    }

    /// The records, oldest first.
    pub fn records(&self) -> &[ConfigRecord] {
        &self.records
    }

    /// The latest record, if any.
    pub fn latest_record(&self) -> Option<&ConfigRecord> {
        self.records.last()
    }

    /// The configuration in force at `index`: the latest at or below it.
    pub fn at(&self, index: LogIndex) -> Option<&ConfigRecord> {
        self.records.iter().rev().find(|r| r.index <= index)
    }

    /// Adds a record for a newer entry.
    pub fn push(&mut self, record: ConfigRecord) {
        debug_assert!(self.records.last().is_none_or(|r| r.index < record.index));
        self.records.push(record);
    }

    /// Appends a record as a host's file does, in the order written (after
    /// a truncation that may go below an older, now stale, record).
    pub fn append_written(&mut self, record: ConfigRecord) {
        self.records.push(record);
    }

    /// A host's file after a durable truncation from `from`: records at or
    /// above it go unless the core still holds them (`core`: the step that
    /// truncated also appended, and recorded, the replacing entries).
    pub fn drop_truncated(&mut self, from: LogIndex, core: &ConfigHistory) {
        self.records.retain(|r| r.index < from || core.records.contains(r));
    }

    /// The log lost entries from `index` on.
    pub fn truncate_from(&mut self, index: LogIndex) {
        self.records.retain(|r| r.index < index);
    }

    /// The log was replaced by one starting after the record's entry.
    pub fn reset(&mut self, record: ConfigRecord) {
        self.records.clear();
        self.records.push(record);
    }

    /// Entries up to `committed` are committed: records before the latest
    /// one at or below it are no longer needed.
    pub fn compact(&mut self, committed: LogIndex) {
        let keep_from = self.records.iter().rposition(|r| r.index <= committed).unwrap_or(0);
        self.records.drain(..keep_from);
    }

    /// What survives a restart, from a host's file `records` and the log
    /// that survived (its start, and `term_at` for indexes after it): the
    /// record of its start and the records after it that the log holds.
    /// A file with no record of the start (one written before
    /// configurations were recorded) falls back on the latest record below
    /// it. See the module docs.
    pub fn restore(
        records: &[ConfigRecord],
        start: LogStart,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) -> ConfigHistory {
        let exact_start = records.iter().rfind(|r| r.index == start.prev_index && r.term == start.prev_term);
        let base =
            exact_start.or_else(|| records.iter().filter(|r| r.index < start.prev_index).max_by_key(|r| r.index));
        let mut kept: Vec<ConfigRecord> = base.cloned().into_iter().collect();
        kept.extend(records.iter().filter(|r| r.index > start.prev_index && term_at(r.index) == Some(r.term)).cloned());
        ConfigHistory::from_records(kept)
    }

    /// The file encoding: count, then per record index, term, configuration.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u32_le(self.records.len() as u32);
        for r in &self.records {
            b.put_u64_le(r.index);
            b.put_u64_le(r.term);
            r.membership.encode_into(&mut b);
        }
        b.freeze()
    }

    /// Decodes [`Self::encode`]'s bytes, keeping the order written.
    pub fn decode(bytes: &[u8]) -> Option<ConfigHistory> {
        let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let mut at = 4;
        let mut records = Vec::new();
        for _ in 0..count {
            let index = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
            let term = u64::from_le_bytes(bytes.get(at + 8..at + 16)?.try_into().ok()?);
            let (membership, used) = Membership::decode_prefix(bytes.get(at + 16..)?)?;
            at += 16 + used;
            records.push(ConfigRecord { index, term, membership });
        }
        (at == bytes.len()).then_some(ConfigHistory { records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::bootstrap([(1, "a:1".into()), (2, "b:2".into()), (3, String::new())])
    }

    fn rec(index: LogIndex, term: Term, version: u64) -> ConfigRecord {
        ConfigRecord { index, term, membership: Membership { version, ..three() } }
    }

    #[test]
    fn changes_are_single_server_and_checked() {
        let m = three();
        assert_eq!(m.quorum(), 2);
        let added = m.changed(&MembershipChange::AddLearner { id: 4, address: "d:4".into() }).unwrap();
        assert_eq!((added.version, added.quorum(), added.learners().collect::<Vec<_>>()), (1, 2, vec![4]));
        assert_eq!(
            added.changed(&MembershipChange::AddLearner { id: 4, address: String::new() }),
            Err(MembershipRefusal::AlreadyMember { id: 4 })
        );
        let promoted = added.changed(&MembershipChange::Promote { id: 4 }).unwrap();
        assert_eq!(promoted.quorum(), 3);
        assert_eq!(
            promoted.changed(&MembershipChange::Promote { id: 4 }),
            Err(MembershipRefusal::NotLearner { id: 4 })
        );
        assert_eq!(m.changed(&MembershipChange::Remove { id: 9 }), Err(MembershipRefusal::NotMember { id: 9 }));
        let one = Membership::bootstrap([(1, String::new())]);
        assert_eq!(one.changed(&MembershipChange::Remove { id: 1 }), Err(MembershipRefusal::LastVoter));
        assert_eq!(one.changed(&MembershipChange::Demote { id: 1 }), Err(MembershipRefusal::LastVoter));
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let m = three().changed(&MembershipChange::AddLearner { id: 7, address: "x".into() }).unwrap();
        assert_eq!(Membership::decode(&m.encode()), Some(m.clone()));
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            assert_eq!(Membership::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad_role = bytes.to_vec();
        bad_role[12 + 8] = 9;
        assert_eq!(Membership::decode(&bad_role), None);
        let learners_only = Membership {
            version: 1,
            members: [(1, Member { role: MemberRole::Learner, address: String::new() })].into(),
        };
        assert_eq!(Membership::decode(&learners_only.encode()), None, "a configuration has a voter");
        let h = ConfigHistory::from_records(vec![rec(0, 0, 0), rec(5, 2, 1)]);
        assert_eq!(ConfigHistory::decode(&h.encode()), Some(h));
    }

    #[test]
    fn restore_keeps_only_what_the_log_holds() {
        // Written: bootstrap, a config at 5 (term 2) that was later
        // truncated, and its replacement at 4 (term 3); the log now holds
        // term 3 from index 4 on, and starts after 2.
        let file = [rec(0, 0, 0), rec(5, 2, 1), rec(4, 3, 1)];
        let start = LogStart { prev_index: 2, prev_term: 1 };
        let term_at = |i: LogIndex| (i > 2 && i <= 9).then_some(if i >= 4 { 3 } else { 1 });
        let h = ConfigHistory::restore(&file, start, term_at);
        assert_eq!(h.records().iter().map(|r| (r.index, r.term)).collect::<Vec<_>>(), vec![(0, 0), (4, 3)]);
        // The log was reset to a start whose record was written first: it wins.
        let file = [rec(0, 0, 0), rec(6, 2, 1), rec(8, 4, 2)];
        let start = LogStart { prev_index: 8, prev_term: 4 };
        let h = ConfigHistory::restore(&file, start, |_| None);
        assert_eq!(h.records().iter().map(|r| r.index).collect::<Vec<_>>(), vec![8]);
        // The reset did not happen (the start differs): the start record goes.
        let start = LogStart { prev_index: 0, prev_term: 0 };
        let h = ConfigHistory::restore(&file, start, |i| (i == 6).then_some(2));
        assert_eq!(h.records().iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 6]);
    }

    #[test]
    fn compaction_keeps_the_latest_committed_and_later() {
        let mut h = ConfigHistory::from_records(vec![rec(0, 0, 0), rec(3, 1, 1), rec(7, 2, 2)]);
        h.compact(5);
        assert_eq!(h.records().iter().map(|r| r.index).collect::<Vec<_>>(), vec![3, 7]);
        h.truncate_from(6);
        assert_eq!(h.at(100).map(|r| r.index), Some(3));
    }
}
