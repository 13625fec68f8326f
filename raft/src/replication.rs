//! Log replication: the leader's pipelined sends, the follower's append
//! handling, durability completions and the commit rule.
//!
//! Invariants:
//! * A follower appends only after checking that its entry at
//!   `prev_log_index` has `prev_log_term` (Log Matching, Raft §5.3), and only
//!   truncates from the first entry that conflicts, never below its commit.
//! * A follower acknowledges `min(verified_index, durable_index)`: entries it
//!   has verified against this term's leader *and* that are durable. A crash
//!   can therefore never lose an entry a leader counted toward commit.
//! * The leader counts its own `durable_index` as its match: it writes its
//!   entries to its disk in parallel with sending them.
//! * The leader commits the highest index durable on a quorum, and only if
//!   that entry is from its current term (§5.4.2, Figure 8); earlier entries
//!   commit with it. A slow follower only ever lowers its own match, and
//!   the quorum-th highest match ignores the slowest minority.
//! * A follower whose next entry the leader has purged gets the leader's log
//!   start (`LogStart`) instead, one at a time like a probe. A follower
//!   that holds the entry there with that term already agrees up to it;
//!   one that does not drops its whole log (none of it is committed past its
//!   commit index, which is below the start) and starts there.
//! * Entries at or below a follower's own log start are committed, so they
//!   match every leader: an append reaching below it is cut to what follows.

use super::command::Command;
use super::core::{LogStorage, RaftCore, Role};
use super::message::{ConflictHint, Entry, LogIndex, LogStart, MessageBody, NodeId, Term};
use super::progress::ProgressState;

/// Storage reads one step may make for followers behind the memory window.
const MAX_STORAGE_READS_PER_STEP: usize = 4;

/// How many of `candidates` fit in `room_bytes` of window. Into an empty
/// window one entry always goes, so an entry larger than the whole window
/// still moves.
fn fit_window(candidates: &[Entry], window_empty: bool, room_bytes: u64) -> usize {
    let mut batch_bytes = 0;
    candidates
        .iter()
        .take_while(|e| {
            let fits = (window_empty && batch_bytes == 0) || batch_bytes + e.size_bytes() <= room_bytes;
            if fits {
                batch_bytes += e.size_bytes();
            }
            fits
        })
        .count()
}

impl RaftCore {
    /// Appends entries of the current term to the leader's log, persists them
    /// and starts sending them, in parallel.
    pub(super) fn append_as_leader(&mut self, entries: Vec<Entry>) {
        assert_eq!(self.role, Role::Leader);
        self.log.append(&entries);
        self.note_config_entries(&entries);
        self.sessions.note_entries(&entries);
        self.out.push(Command::PersistEntries { truncate_from: None, entries });
        for peer in self.peers() {
            self.send_appends(peer, false);
        }
        // A single-node cluster commits as soon as its own disk reports.
    }

    /// Sends as many appends to `peer` as its window allows. With
    /// `even_if_empty`, a probe is sent even when there is nothing new.
    pub(super) fn send_appends(&mut self, peer: NodeId, even_if_empty: bool) {
        loop {
            let last_index = self.log.last_index();
            let commit = self.log.committed_index();
            let max_entries = self.config.max_entries_per_append;
            let (max_inflight_entries, max_inflight_bytes) =
                (self.config.max_inflight_entries, self.config.max_inflight_bytes);
            let pr = self.progress.get_mut(&peer).expect("progress for every peer");
            if !pr.can_send(max_inflight_entries, max_inflight_bytes) {
                return;
            }
            let next_index = pr.next_index;
            if next_index < self.log.first_index() {
                self.send_log_start(peer);
                return;
            }
            let has_new = next_index <= last_index;
            let probe_anyway = even_if_empty && pr.state == ProgressState::Probe;
            if !has_new && !probe_anyway {
                return;
            }
            if has_new && next_index < self.log.first_in_memory() {
                // Only storage has them now: served at the end of the step.
                if !self.needs_storage.contains(&peer) {
                    self.needs_storage.push(peer);
                }
                return;
            }
            let (room_entries, room_bytes) = pr.room(max_entries, max_inflight_entries, max_inflight_bytes);
            let window_empty = pr.inflight_bytes() == 0;
            let candidates = self.log.entries(next_index, next_index + room_entries - 1);
            let fitting = fit_window(candidates, window_empty, room_bytes);
            if fitting == 0 && has_new {
                return;
            }
            let entries = candidates[..fitting].to_vec();
            if !self.send_append_batch(peer, next_index, entries, commit) {
                return;
            }
        }
    }

    /// Follower: `from` leads this term (an append, a heartbeat or a log start
    /// came from it). A candidate or pre-candidate of this term steps down.
    fn heard_from_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.leader_id = Some(from);
        self.election_elapsed_ticks = 0;
    }

    /// `peer` needs entries this leader purged: send the log start, as a
    /// probe (its answer moves `next_index` past the start).
    fn send_log_start(&mut self, peer: NodeId) {
        let (max_inflight_entries, max_inflight_bytes) =
            (self.config.max_inflight_entries, self.config.max_inflight_bytes);
        let start = self.log.start();
        let membership = self.config_record_at(start.prev_index).expect("the start has a term").membership;
        let pr = self.progress.get_mut(&peer).expect("progress for every peer");
        if pr.state == ProgressState::Replicate {
            let next_index = pr.next_index;
            pr.become_probe(next_index);
        }
        if pr.next_index >= start.first_index() || !pr.can_send(max_inflight_entries, max_inflight_bytes) {
            return;
        }
        let sent_upto = pr.next_index - 1;
        pr.on_sent(sent_upto, 0);
        let leader_commit_index = self.log.committed_index();
        self.log_starts_sent += 1;
        let sessions = self.sessions.table().clone();
        self.send(peer, MessageBody::LogStart { start, leader_commit_index, membership, sessions });
    }

    /// Follower: the leader's log starts after `start`.
    pub(super) fn on_log_start(
        &mut self,
        from: NodeId,
        start: LogStart,
        leader_commit_index: LogIndex,
        membership: crate::Membership,
        sessions: crate::SessionTable,
    ) {
        self.heard_from_leader(from);
        let here = self.log.term_at(start.prev_index);
        let held = start.prev_index <= self.log.start().prev_index
            || here == Some(start.prev_term)
            || (here.is_some() && self.config.bugs().log_start_skips_term_check);
        if !held {
            if start.prev_index <= self.log.committed_index() {
                // We committed another entry there: no correct leader says so. Drop it.
                return;
            }
            self.log.reset_to(start);
            let record = crate::ConfigRecord { index: start.prev_index, term: start.prev_term, membership };
            self.configs.reset(record.clone());
            self.out.push(Command::SaveConfig(record));
            self.out.push(Command::SaveSessions(sessions.clone()));
            self.sessions.reset(sessions);
            self.out.push(Command::InstallLogStart(start));
            self.refresh_config();
        }
        self.verified_index = self.verified_index.max(start.prev_index);
        if self.log.commit_to(leader_commit_index.min(self.verified_index)) {
            self.apply_committed();
        }
        self.send_append_ack(from, true);
    }

    /// Records `entries` (starting at `next_index`) as sent to `peer` and
    /// sends them; returns whether the pipeline may go on (not probing).
    fn send_append_batch(&mut self, peer: NodeId, next_index: LogIndex, entries: Vec<Entry>, commit: LogIndex) -> bool {
        let size_bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let batch_last = next_index - 1 + entries.len() as u64;
        let pr = self.progress.get_mut(&peer).expect("progress for every peer");
        pr.on_sent(batch_last, size_bytes);
        let probing = pr.state == ProgressState::Probe;
        let prev_log_index = next_index - 1;
        let prev_log_term = self.log.term_at(prev_log_index).expect("prev entry present on the leader");
        let body = MessageBody::AppendRequest { prev_log_index, prev_log_term, entries, leader_commit_index: commit };
        self.send(peer, body);
        !probing
    }

    /// Serves the peers whose next entries left memory, from `storage`: a
    /// batch at a time, then the pipeline goes on from memory (or storage
    /// again). Reads are synchronous on the host's thread, so a step makes at
    /// most [`MAX_STORAGE_READS_PER_STEP`]; the follower's next ack or the next
    /// heartbeat continues.
    pub(super) fn send_from_storage(&mut self, storage: &dyn LogStorage) {
        if self.role != Role::Leader {
            self.needs_storage.clear();
            return;
        }
        // First come, first served, and who is left over waits for the next
        // step: serving the newest first let a few peers that never answer
        // (probed again every heartbeat) starve a live one behind them
        // forever (simulation seed 6764, with removed nodes still probed).
        let mut unavailable: Vec<NodeId> = Vec::new();
        let mut reads = 0;
        while reads < MAX_STORAGE_READS_PER_STEP && !self.needs_storage.is_empty() {
            let peer = self.needs_storage.remove(0);
            if unavailable.contains(&peer) || !self.progress.contains_key(&peer) {
                continue;
            }
            reads += 1;
            if self.send_one_from_storage(peer, storage) {
                self.send_appends(peer, false);
            } else {
                unavailable.push(peer);
            }
        }
    }

    fn send_one_from_storage(&mut self, peer: NodeId, storage: &dyn LogStorage) -> bool {
        let first_in_memory = self.log.first_in_memory();
        let commit = self.log.committed_index();
        let (max_entries, max_inflight_entries, max_inflight_bytes) =
            (self.config.max_entries_per_append, self.config.max_inflight_entries, self.config.max_inflight_bytes);
        let pr = self.progress.get_mut(&peer).expect("progress for every peer");
        let next_index = pr.next_index;
        let purged = next_index < self.log.first_index();
        if purged || !pr.can_send(max_inflight_entries, max_inflight_bytes) || next_index >= first_in_memory {
            return false;
        }
        let (room_entries, room_bytes) = pr.room(max_entries, max_inflight_entries, max_inflight_bytes);
        // A probe (repeated every heartbeat to a peer that may be down) reads
        // one entry; the pipeline reads full batches once the peer answers.
        let room_entries = if pr.state == ProgressState::Probe { 1 } else { room_entries };
        let window_empty = pr.inflight_bytes() == 0;
        let last = (next_index + room_entries - 1).min(first_in_memory - 1);
        let Some(mut loaded) = storage.entries(next_index, last, room_bytes) else { return false };
        for (k, e) in loaded.iter().enumerate() {
            assert_eq!(e.index, next_index + k as LogIndex, "storage returned entries out of order");
            assert!(e.index <= last, "storage returned entries past {last}");
            assert_eq!(Some(e.term), self.log.term_at(e.index), "storage and the log disagree at {}", e.index);
        }
        let fitting = fit_window(&loaded, window_empty, room_bytes);
        if fitting == 0 {
            return false;
        }
        loaded.truncate(fitting);
        self.entries_from_storage += fitting as u64;
        self.send_append_batch(peer, next_index, loaded, commit);
        true
    }

    /// Sends a heartbeat round to every peer; a new round number each time.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let round = self.reads.start_round(self.now_ticks, self.config.lease_ticks());
        let commit = self.log.committed_index();
        for peer in self.peers() {
            let pr = self.progress.get_mut(&peer).expect("progress for every peer");
            let leader_commit_index = commit.min(pr.match_index);
            if pr.state == ProgressState::Probe {
                // Retry a probe whose answer may have been lost.
                pr.probe_sent = false;
            }
            self.send(peer, MessageBody::Heartbeat { leader_commit_index, round });
            self.send_appends(peer, true);
        }
    }

    /// Leader tick: a follower that acknowledges nothing for an election
    /// timeout while entries are in flight lost some of them; probe again.
    pub(super) fn replication_tick(&mut self) {
        let timeout = self.config.election_timeout_min_ticks;
        for pr in self.progress.values_mut() {
            if pr.state == ProgressState::Replicate && pr.inflight_entry_count() > 0 {
                pr.stalled_ticks += 1;
                if pr.stalled_ticks >= timeout {
                    let next_index = pr.match_index + 1;
                    pr.become_probe(next_index);
                }
            }
        }
    }

    pub(super) fn on_append_request(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit_index: LogIndex,
    ) {
        self.heard_from_leader(from);

        // What reaches at or below our log start is committed, hence ours already.
        let start = self.log.start();
        let (prev_log_index, prev_log_term, entries) = if prev_log_index < start.prev_index {
            let skip = (start.prev_index - prev_log_index).min(entries.len() as LogIndex) as usize;
            // An entry at our start must be the committed one there: a message
            // that says otherwise comes from no correct leader (a hostile
            // proptest case appended a term-1 entry after a start of term 2^62).
            let at_start = entries.get(skip.wrapping_sub(1)).filter(|e| e.index == start.prev_index);
            if at_start.is_some_and(|e| e.term != start.prev_term) {
                return;
            }
            let mut entries = entries;
            entries.drain(..skip);
            (start.prev_index, start.prev_term, entries)
        } else {
            (prev_log_index, prev_log_term, entries)
        };
        let prev_matches = match self.log.term_at(prev_log_index) {
            None => false,
            Some(term) => term == prev_log_term || self.config.bugs().skip_prev_log_term_check,
        };
        if !prev_matches {
            let hint = match self.log.term_at(prev_log_index) {
                None => ConflictHint {
                    rejected_prev_log_index: prev_log_index,
                    conflict_term: None,
                    conflict_first_index: self.log.last_index() + 1,
                },
                Some(term) => ConflictHint {
                    rejected_prev_log_index: prev_log_index,
                    conflict_term: Some(term),
                    conflict_first_index: self.log.first_index_of_term_at(prev_log_index),
                },
            };
            self.send(from, MessageBody::AppendResponse { result: Err(hint) });
            return;
        }

        let batch_last = prev_log_index + entries.len() as LogIndex;
        let conflict = entries.iter().position(|e| self.log.term_at(e.index) != Some(e.term));
        if let Some(first_new) = conflict {
            let entries = entries[first_new..].to_vec();
            let first_index = entries[0].index;
            let truncate_from = if first_index <= self.log.last_index() {
                self.log.truncate_from(first_index);
                self.truncate_configs(first_index);
                self.sessions.truncate_from(first_index);
                Some(first_index)
            } else {
                None
            };
            self.log.append(&entries);
            self.note_config_entries(&entries);
            self.sessions.note_entries(&entries);
            self.out.push(Command::PersistEntries { truncate_from, entries });
        }
        self.verified_index = self.verified_index.max(batch_last);
        if self.log.commit_to(leader_commit_index.min(self.verified_index)) {
            self.apply_committed();
        }
        self.send_append_ack(from, true);
    }

    /// Acknowledges what is durable and verified to the leader of this term;
    /// with `always`, even when there is nothing new (so the leader hears us).
    fn send_append_ack(&mut self, leader: NodeId, always: bool) {
        let match_index = self.ackable_index();
        if match_index > self.acked_index || always {
            self.acked_index = self.acked_index.max(match_index);
            self.send(leader, MessageBody::AppendResponse { result: Ok(match_index) });
        }
    }

    /// What a follower may acknowledge: verified against this term's leader
    /// and durable.
    fn ackable_index(&self) -> LogIndex {
        if self.config.bugs().ack_before_durable {
            return self.verified_index.min(self.log.last_index());
        }
        self.verified_index.min(self.log.durable_index())
    }

    pub(super) fn on_append_response(&mut self, from: NodeId, result: Result<LogIndex, ConflictHint>) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        match result {
            Ok(match_index) if match_index > last_index => {
                // A follower cannot hold entries of our term we never sent:
                // a malformed or misdirected answer. Drop it.
            }
            Ok(match_index) => {
                let now = self.now_ticks;
                let Some(pr) = self.progress.get_mut(&from) else { return };
                pr.heard(now);
                if pr.on_ack(match_index) {
                    self.maybe_commit();
                    self.on_transfer_target_progress(from);
                }
                if self.role == Role::Leader {
                    self.send_appends(from, false);
                }
            }
            Err(hint) => {
                let next_index = self.next_index_after_reject(hint);
                let now = self.now_ticks;
                let Some(pr) = self.progress.get_mut(&from) else { return };
                pr.heard(now);
                let stale = hint.rejected_prev_log_index < pr.match_index
                    || (pr.state == ProgressState::Probe && hint.rejected_prev_log_index + 1 != pr.next_index);
                if stale {
                    return;
                }
                pr.become_probe(next_index);
                self.send_appends(from, true);
            }
        }
    }

    /// Fast back-off: skip the follower's whole conflicting term.
    pub(super) fn next_index_after_reject(&self, hint: ConflictHint) -> LogIndex {
        let candidate = match hint.conflict_term.and_then(|term| self.log.last_index_of_term(term)) {
            // We hold the follower's conflicting term: resume after our last
            // entry of it (the logs may agree up to there).
            Some(last_of_term) => last_of_term + 1,
            // We never had that term (or the follower's log is short): skip
            // all of it.
            None => hint.conflict_first_index,
        };
        // The rejected prev entry itself did not match: go at least below it.
        candidate.min(hint.rejected_prev_log_index).clamp(1, self.log.last_index() + 1)
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, leader_commit_index: LogIndex, round: u64) {
        self.heard_from_leader(from);
        if self.log.commit_to(leader_commit_index.min(self.verified_index)) {
            self.apply_committed();
        }
        let match_index = self.ackable_index();
        self.acked_index = self.acked_index.max(match_index);
        self.send(from, MessageBody::HeartbeatResponse { round, match_index });
    }

    pub(super) fn on_heartbeat_response(&mut self, from: NodeId, round: u64, match_index: LogIndex) {
        if self.role != Role::Leader {
            return;
        }
        // A match past our log is malformed; keep the round, drop the match.
        let match_index = if match_index > self.log.last_index() { 0 } else { match_index };
        let now = self.now_ticks;
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.heard(now);
        pr.acked_round = pr.acked_round.max(round);
        // The follower no longer knows what we know it holds (it restarted,
        // forgetting what it verified this term): re-verify with an empty
        // append at our last index, so it can learn the commit index again.
        // (Found by simulation seed 659.)
        let forgot =
            match_index < pr.match_index && pr.state == ProgressState::Replicate && pr.inflight_entry_count() == 0;
        if pr.on_ack(match_index) {
            self.maybe_commit();
            self.on_transfer_target_progress(from);
        }
        if forgot && self.role == Role::Leader {
            let prev_log_index = self.log.last_index();
            let prev_log_term = self.log.last_term();
            let leader_commit_index = self.log.committed_index();
            let body =
                MessageBody::AppendRequest { prev_log_index, prev_log_term, entries: Vec::new(), leader_commit_index };
            self.send(from, body);
        }
        if self.role == Role::Leader {
            self.on_round_acked();
        }
    }

    pub(super) fn on_entries_durable(&mut self, index: LogIndex, term: Term) {
        if !self.log.mark_durable(index, term) {
            return;
        }
        match self.role {
            Role::Leader => self.maybe_commit(),
            Role::Follower => {
                if let Some(leader) = self.leader_id {
                    self.send_append_ack(leader, false);
                }
            }
            Role::PreCandidate | Role::Candidate => {}
        }
    }

    /// Commit = the quorum-th highest durable match among the voters in
    /// force, if from this term. Learners never count.
    pub(super) fn maybe_commit(&mut self) {
        let durable = self.log.durable_index();
        let mut matches: Vec<LogIndex> = self
            .voters
            .iter()
            .map(|&v| if v == self.id { durable } else { self.progress.get(&v).map_or(0, |p| p.match_index) })
            .collect();
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matches[self.quorum() - 1];
        if quorum_index <= self.log.committed_index() {
            return;
        }
        let term_ok = self.log.term_at(quorum_index) == Some(self.term);
        if (term_ok || self.config.bugs().commit_old_term_by_count) && self.log.commit_to(quorum_index) {
            self.apply_committed();
        }
    }
}
