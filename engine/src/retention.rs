//! Retention: which sealed segments may be deleted by age and by total size.
//!
//! Applied by [`crate::Log::apply_retention`], which deletes a prefix of sealed,
//! durable segments, oldest first, and never a segment holding an index at or
//! above the caller's floor (Raft passes what it no longer needs: the last
//! snapshot's index, or the lowest index a follower still lacks).

use std::time::Duration;

/// Limits on the log's history; `None` disables a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete sealed segments last written longer ago than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while all segments together exceed this.
    pub max_total_bytes: Option<u64>,
}
