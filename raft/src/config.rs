//! Configuration of one Raft core, validated once at construction.
//!
//! Invariants (checked by [`Config::validate`]):
//! `0 < heartbeat_ticks < election_timeout_min_ticks < election_timeout_max_ticks`,
//! windows are non-zero, and a lease requires check-quorum and fits inside the
//! minimum election timeout after its drift margin.

use super::message::NodeId;

/// Leader-lease reads (see the `read_index` module docs for the argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Ticks subtracted from `election_timeout_min_ticks` to absorb clock
    /// drift between this leader's ticks and its followers' ticks.
    pub drift_margin_ticks: u64,
}

/// Test-only switches that re-introduce known Raft bugs, to prove that the
/// simulation's checkers catch them. The `Config` field that holds them
/// exists only in tests and with the `sim` feature; elsewhere every switch
/// is a constant `false` and the checks compile away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedBugs {
    /// Followers accept an append whose `prev_log_term` does not match.
    pub skip_prev_log_term_check: bool,
    /// The leader commits any index stored on a quorum, whatever its term
    /// (the Figure 8 bug, §5.4.2).
    pub commit_old_term_by_count: bool,
    /// Voters grant votes without the (last term, last index) comparison.
    pub vote_without_log_check: bool,
    /// Followers acknowledge entries before storage reports them durable.
    pub ack_before_durable: bool,
    /// The leader answers ReadIndex at once, without a quorum round.
    pub read_without_quorum_round: bool,
    /// [`RaftCore::purge_limit`](super::RaftCore::purge_limit) allows purging
    /// every durable entry, committed or not.
    pub purge_above_commit: bool,
    /// A follower told of the leader's log start takes any entry it holds at
    /// that index as the leader's, whatever its term, and keeps its log.
    pub log_start_skips_term_check: bool,
    /// A leader proposes a membership change before it has committed an
    /// entry of its own term (the single-server change bug).
    pub change_before_own_term_commit: bool,
    /// A leader proposes a membership change while another is uncommitted.
    pub concurrent_membership_changes: bool,
    /// The leader checks a session's append against the committed table
    /// only, missing the stamps of its uncommitted entries.
    pub sessions_ignore_uncommitted: bool,
}

/// Configuration of a [`RaftCore`](super::RaftCore).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Lower bound (inclusive) of the randomized election timeout.
    pub election_timeout_min_ticks: u64,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max_ticks: u64,
    /// A leader sends a heartbeat round every this many ticks.
    pub heartbeat_ticks: u64,
    /// Most entries in flight (sent, not acknowledged) to one follower.
    pub max_inflight_entries: u64,
    /// Most payload bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Entries (by `Entry::size_bytes`) kept in memory once applied and
    /// durable; older ones are read back from the host's storage when a
    /// follower needs them. `u64::MAX` keeps the whole log in memory.
    pub max_log_memory_bytes: u64,
    /// Most entries in one append message.
    pub max_entries_per_append: u64,
    /// Campaign with a pre-vote round first (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down if it has not heard from a quorum within an
    /// election timeout; followers ignore vote requests while they have a
    /// leader they heard from within the minimum election timeout.
    pub check_quorum: bool,
    /// Serve reads from a leader lease instead of a heartbeat round.
    pub lease: Option<LeaseConfig>,
    /// Hand leadership over to this node whenever it is caught up.
    pub preferred_leader: Option<NodeId>,
    /// A learner is promoted only if it lags the leader by at most this
    /// many entries...
    pub promote_max_lag_entries: u64,
    /// ...and this many bytes (`u64::MAX`: no byte bound).
    pub promote_max_lag_bytes: u64,
    /// Bounds of the producer-session table (the same on every node).
    pub sessions: crate::SessionLimits,
    /// Bug injection for the simulation; leave at the default.
    #[cfg(any(test, feature = "sim"))]
    pub injected_bugs: InjectedBugs,
}

impl InjectedBugs {
    /// Every switch off.
    pub const NONE: InjectedBugs = InjectedBugs {
        skip_prev_log_term_check: false,
        commit_old_term_by_count: false,
        vote_without_log_check: false,
        ack_before_durable: false,
        read_without_quorum_round: false,
        purge_above_commit: false,
        log_start_skips_term_check: false,
        change_before_own_term_commit: false,
        concurrent_membership_changes: false,
        sessions_ignore_uncommitted: false,
    };
}

impl Default for Config {
    fn default() -> Self {
        Config {
            election_timeout_min_ticks: 10,
            election_timeout_max_ticks: 20,
            heartbeat_ticks: 2,
            max_inflight_entries: 256,
            max_inflight_bytes: 4 << 20,
            max_entries_per_append: 64,
            max_log_memory_bytes: u64::MAX,
            pre_vote: true,
            check_quorum: true,
            lease: None,
            preferred_leader: None,
            promote_max_lag_entries: 10_000,
            promote_max_lag_bytes: 64 << 20,
            sessions: crate::SessionLimits::default(),
            #[cfg(any(test, feature = "sim"))]
            injected_bugs: InjectedBugs::default(),
        }
    }
}

/// A configuration that cannot work, with the rule it breaks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Timeouts out of order.
    #[error("need 0 < heartbeat_ticks ({heartbeat_ticks}) < election_timeout_min_ticks ({min}) < election_timeout_max_ticks ({max})")]
    Timeouts {
        /// Configured heartbeat interval.
        heartbeat_ticks: u64,
        /// Configured minimum election timeout.
        min: u64,
        /// Configured maximum election timeout.
        max: u64,
    },
    /// A window or batch size of zero would stall replication.
    #[error("max_inflight_entries, max_inflight_bytes and max_entries_per_append must be > 0")]
    ZeroWindow,
    /// The producer-session table must hold at least one producer.
    #[error("sessions.max_producers must be at least 1")]
    NoProducers,
    /// Lease reads are only safe with check-quorum and a positive lease.
    #[error("lease reads need check_quorum and drift_margin_ticks ({drift_margin_ticks}) < election_timeout_min_ticks ({min})")]
    Lease {
        /// Configured drift margin.
        drift_margin_ticks: u64,
        /// Configured minimum election timeout.
        min: u64,
    },
    /// The voter set must be non-empty, without duplicates, and contain us.
    #[error("voters {voters:?} must be unique and include this node {id}")]
    Voters {
        /// This node.
        id: NodeId,
        /// The voter set given.
        voters: Vec<NodeId>,
    },
    /// The restored log is not contiguous from index 1 or its terms decrease.
    #[error("restored log is malformed at index {index}: {reason}")]
    RestoredLog {
        /// First offending index.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The restored term (metadata or log) is beyond [`MAX_TERM`](crate::MAX_TERM).
    #[error("restored term {0} is beyond the largest term a node accepts (2^62): the metadata came from a hostile or corrupt source")]
    RestoredTerm(u64),
}

impl Config {
    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0 < self.heartbeat_ticks
            && self.heartbeat_ticks < self.election_timeout_min_ticks
            && self.election_timeout_min_ticks < self.election_timeout_max_ticks)
        {
            return Err(ConfigError::Timeouts {
                heartbeat_ticks: self.heartbeat_ticks,
                min: self.election_timeout_min_ticks,
                max: self.election_timeout_max_ticks,
            });
        }
        if self.max_inflight_entries == 0 || self.max_inflight_bytes == 0 || self.max_entries_per_append == 0 {
            return Err(ConfigError::ZeroWindow);
        }
        if self.sessions.max_producers == 0 {
            return Err(ConfigError::NoProducers);
        }
        if let Some(lease) = self.lease {
            if !self.check_quorum || lease.drift_margin_ticks >= self.election_timeout_min_ticks {
                return Err(ConfigError::Lease {
                    drift_margin_ticks: lease.drift_margin_ticks,
                    min: self.election_timeout_min_ticks,
                });
            }
        }
        Ok(())
    }

    /// The bug-injection switches in force (all off outside tests and sims).
    #[inline]
    pub(crate) fn bugs(&self) -> InjectedBugs {
        #[cfg(any(test, feature = "sim"))]
        return self.injected_bugs;
        #[cfg(not(any(test, feature = "sim")))]
        return InjectedBugs::NONE;
    }

    /// Ticks a lease lasts after the heartbeat round that confirmed it was sent.
    pub fn lease_ticks(&self) -> Option<u64> {
        self.lease.map(|l| self.election_timeout_min_ticks - l.drift_margin_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_each_broken_rule() {
        let ok = Config::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases: Vec<(&str, Config)> = vec![
            ("heartbeat not below election", Config { heartbeat_ticks: 10, ..ok.clone() }),
            ("empty timeout range", Config { election_timeout_max_ticks: 10, ..ok.clone() }),
            ("zero heartbeat", Config { heartbeat_ticks: 0, ..ok.clone() }),
            ("zero window", Config { max_inflight_entries: 0, ..ok.clone() }),
            (
                "lease without check quorum",
                Config { check_quorum: false, lease: Some(LeaseConfig { drift_margin_ticks: 2 }), ..ok.clone() },
            ),
            ("lease margin too big", Config { lease: Some(LeaseConfig { drift_margin_ticks: 10 }), ..ok.clone() }),
        ];
        for (name, config) in cases {
            assert!(config.validate().is_err(), "case {name} should be rejected");
        }
    }
}
