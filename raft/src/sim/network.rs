//! Simulated network: per-message delay (so reordering), drop, duplication,
//! and cut links (symmetric partitions are two one-way cuts).
//!
//! Invariant: a message crosses a link only if the link is up both when it is
//! sent and when it would be delivered (a cut also kills what is in flight).

use std::collections::BTreeSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::NodeId;

/// Link state and fault rates.
#[derive(Clone, Debug, Default)]
pub struct SimNetwork {
    /// Directed links that are cut: (from, to).
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Per-mille probability a message is dropped.
    pub drop_per_mille: u32,
    /// Per-mille probability a message is delivered twice.
    pub duplicate_per_mille: u32,
    /// Delay is uniform in `1..=max_delay_ms`.
    pub max_delay_ms: u64,
}

impl SimNetwork {
    /// Delivery delays for one message: empty if dropped, two if duplicated.
    pub fn route(&self, from: NodeId, to: NodeId, rng: &mut ChaCha8Rng) -> Vec<u64> {
        if !self.link_up(from, to) || rng.gen_range(0..1000) < self.drop_per_mille {
            return Vec::new();
        }
        let copies = if rng.gen_range(0..1000) < self.duplicate_per_mille { 2 } else { 1 };
        (0..copies).map(|_| rng.gen_range(1..=self.max_delay_ms)).collect()
    }

    /// Whether `from → to` is up.
    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut_links.contains(&(from, to))
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&mut self, nodes: &[NodeId], side: &[NodeId]) {
        for &a in side {
            for &b in nodes.iter().filter(|b| !side.contains(b)) {
                self.cut_links.insert((a, b));
                self.cut_links.insert((b, a));
            }
        }
    }

    /// Cuts one direction of one link.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut_links.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut_links.clear();
    }

    /// Number of cut directed links.
    pub fn cut_link_count(&self) -> usize {
        self.cut_links.len()
    }
}
