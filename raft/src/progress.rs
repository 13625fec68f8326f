//! What a leader knows about one follower's log, and the per-follower
//! replication window.
//!
//! ```text
//!   0 ≤ match_index < next_index ≤ leader.last_index + 1
//!   entries in flight = next_index - 1 - match_index ≤ max_inflight_entries (Replicate)
//! ```
//!
//! * `match_index` only grows within a term: it is raised by acknowledgements,
//!   which name entries durable on the follower and matching the leader.
//! * `Probe`: the leader does not know where the logs meet; it sends one
//!   append at a time (`probe_sent` pauses it) and moves `next_index` back on
//!   each rejection using the conflict hint. The first acceptance switches to
//!   `Replicate`.
//! * `Replicate`: the leader streams batches without waiting for acks, as long
//!   as the window (entries and bytes) has room; any rejection, or no ack for
//!   an election timeout while entries are in flight, falls back to `Probe`.

use std::collections::VecDeque;

use super::message::LogIndex;

/// Replication mode of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Looking for the point where the logs agree, one append at a time.
    Probe,
    /// Streaming batches inside the window.
    Replicate,
}

/// The leader's view of one follower; see the module docs.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known durable on the follower and matching our log.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Probe or Replicate.
    pub state: ProgressState,
    /// In `Probe`: an append is outstanding, wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// Batches in flight in `Replicate`: (last index, bytes).
    inflight: VecDeque<(LogIndex, u64)>,
    inflight_bytes: u64,
    /// Heard from this follower since the last check-quorum round.
    pub recent_active: bool,
    /// The leader's tick when it last heard from this follower.
    pub heard_at_ticks: Option<u64>,
    /// Highest heartbeat round this follower acknowledged in this term.
    pub acked_round: u64,
    /// Ticks since `match_index` last moved while entries were in flight.
    pub stalled_ticks: u64,
}

impl Progress {
    /// A fresh follower record for a new leader whose log ends at `last_index`.
    pub fn new(last_index: LogIndex) -> Self {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            heard_at_ticks: None,
            acked_round: 0,
            stalled_ticks: 0,
        }
    }

    /// An answer came from this follower at tick `now`.
    pub fn heard(&mut self, now: u64) {
        self.recent_active = true;
        self.heard_at_ticks = Some(now);
    }

    /// Entries sent and not yet acknowledged.
    pub fn inflight_entry_count(&self) -> u64 {
        self.next_index - 1 - self.match_index
    }

    /// Payload bytes sent and not yet acknowledged.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }

    /// Whether another batch may be sent now.
    pub fn can_send(&self, max_inflight_entries: u64, max_inflight_bytes: u64) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => {
                self.inflight_entry_count() < max_inflight_entries && self.inflight_bytes < max_inflight_bytes
            }
        }
    }

    /// Room for the next batch, in entries and bytes: a probe carries up to
    /// one message's worth, a pipeline what is left of the window.
    pub fn room(&self, max_entries: u64, max_inflight_entries: u64, max_inflight_bytes: u64) -> (u64, u64) {
        match self.state {
            ProgressState::Probe => (max_entries, max_inflight_bytes),
            ProgressState::Replicate => (
                max_entries.min(max_inflight_entries - self.inflight_entry_count()),
                max_inflight_bytes - self.inflight_bytes,
            ),
        }
    }

    /// Records a batch ending at `last_index` of `size_bytes` as sent.
    pub fn on_sent(&mut self, last_index: LogIndex, size_bytes: u64) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                assert!(last_index >= self.next_index - 1, "batches are sent in order");
                self.next_index = last_index + 1;
                self.inflight.push_back((last_index, size_bytes));
                self.inflight_bytes += size_bytes;
            }
        }
    }

    /// An acknowledgement up to `match_index`. Returns whether it was news.
    pub fn on_ack(&mut self, match_index: LogIndex) -> bool {
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        self.stalled_ticks = 0;
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > match_index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        match self.state {
            ProgressState::Probe => self.become_replicate(),
            ProgressState::Replicate => self.next_index = self.next_index.max(match_index + 1),
        }
        true
    }

    /// Switches to streaming from just after `match_index`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_ticks = 0;
    }

    /// Switches to probing at `next_index` (clamped above `match_index`).
    pub fn become_probe(&mut self, next_index: LogIndex) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_ticks = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_fills_and_drains() {
        let mut pr = Progress::new(10);
        pr.on_ack(10);
        assert_eq!(pr.state, ProgressState::Replicate);
        assert_eq!(pr.next_index, 11);
        pr.on_sent(14, 100);
        pr.on_sent(18, 100);
        assert_eq!(pr.inflight_entry_count(), 8);
        assert!(!pr.can_send(8, 1000), "entry window full");
        assert!(!pr.can_send(100, 200), "byte window full");
        assert!(pr.can_send(9, 1000));
        pr.on_ack(14);
        assert_eq!(pr.inflight_entry_count(), 4);
        assert!(pr.can_send(8, 200));
        assert!(!pr.on_ack(12), "old ack is not news");
    }

    #[test]
    fn probe_sends_one_at_a_time_and_never_goes_below_match() {
        let mut pr = Progress::new(10);
        assert!(pr.can_send(1, 1));
        pr.on_sent(10, 0);
        assert!(!pr.can_send(1, 1));
        assert_eq!(pr.next_index, 11, "probing does not advance next_index");
        pr.on_ack(5);
        pr.become_probe(2);
        assert_eq!(pr.next_index, 6);
    }
}
