//! The server's configuration: a TOML file, every field documented with its
//! default, overridable from the command line.
//!
//! ```toml
//! node_id = 1                       # this node, one of the peers' ids
//! cluster = "dledger"               # name; a data directory of another cluster is refused
//! listen = "127.0.0.1:20911"        # peers and clients, one port
//! data_dir = "./data/n1"
//! groups = 1                        # Raft groups 0..groups, each with its own log
//! cores = 0                         # event loops (0 = every CPU)
//! # cpus = [0, 1]                   # pin event loop i to cpus[i % len]; [] = no pinning;
//!                                   # absent = loop i on CPU i (a node that owns its host)
//! metrics_listen = "127.0.0.1:9911" # optional Prometheus endpoint
//! tick_ms = 10
//! election_timeout_min_ticks = 15   # 150 ms
//! election_timeout_max_ticks = 30   # 300 ms
//! heartbeat_ticks = 3               # 30 ms
//! max_batch_kib = 4096              # largest write (and entry) of a group's log
//! log_memory_mib = 64               # per group: applied entries kept in memory for followers
//!                                   # and reads; older ones are read back from the log files
//! snapshot_every_entries = 100000   # groups with a state machine (embedded): snapshot after
//!                                   # this many applied entries (0 = never)
//! snapshot_every_mib = 0            # or after this many MiB of payload applied (0 = never)
//! snapshots_kept = 2                # and keep the newest this many
//! # peer_secret_file = "secret"     # the cluster's shared secret: peers must prove they hold it
//! max_frame_mib = 64                # largest frame from a peer or client
//! max_read_mib = 8                  # the most payload one read answer carries (at least one entry)
//! max_client_connections = 4096     # client connections at once (peers aside); more are refused
//! client_idle_timeout_secs = 600    # a client connection idle this long is closed (0 = never)
//! producer_expiry_secs = 3600       # idempotent producers: one with no append for this long (by the
//!                                   # leaders' clocks in the log) is forgotten; must match the peers'
//! max_producers = 16384             # per group: producer sessions kept (least recently used go first);
//!                                   # must match the peers' (a peer that differs is refused)
//!
//! [retention]                       # per group; off by default: the log grows until the disk fills
//! max_log_mib = 0                   # purge the oldest whole segments beyond this much log (0 = no limit)
//! max_age_secs = 0                  # purge segments last written longer ago than this (0 = no limit)
//! hold_for_followers_mib = 1024     # a leader keeps up to this much more for a follower that is behind;
//!                                   # past it, the follower is sent the log start and catches up from there
//! hold_for_followers_secs = 3600    # nor for longer than this for a follower whose log has not moved (0 = no limit)
//! purge_below_free_percent = 10     # disk watermark (with retention on): with less free, purge all
//!                                   # that is committed and applied, holds released (0 = off)
//! refuse_below_free_percent = 3     # with less free than this, a leader refuses appends (DiskFull)
//!                                   # instead of filling the disk (0 = off)
//!
//! [[peers]]                         # every voter, this node included
//! id = 1
//! address = "127.0.0.1:20911"
//! # client_address = "..."          # if clients reach it elsewhere than `address`
//! ```
//!
//! Defaults are chosen for failover well under a second: a follower notices a
//! dead leader after 150–300 ms, a pre-vote and a vote round on a LAN take a
//! few milliseconds, and the new leader's no-op commits in one more round.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

fn default_producer_expiry_secs() -> u64 {
    3600
}
fn default_max_producers() -> usize {
    16_384
}
fn default_cluster() -> String {
    "dledger".into()
}
fn default_groups() -> u64 {
    1
}
fn default_tick_ms() -> u64 {
    10
}
fn default_election_min() -> u64 {
    15
}
fn default_election_max() -> u64 {
    30
}
fn default_heartbeat() -> u64 {
    3
}
fn default_segment_mib() -> u64 {
    64
}
fn default_max_read_mib() -> u64 {
    8
}

fn default_max_client_connections() -> usize {
    4096
}

fn default_client_idle_timeout_secs() -> u64 {
    600
}

fn default_max_frame_mib() -> u64 {
    64
}
fn default_log_memory_mib() -> u64 {
    64
}
fn default_max_batch_kib() -> usize {
    4096
}
fn default_snapshot_every() -> u64 {
    100_000
}
fn default_snapshots_kept() -> usize {
    2
}

fn default_hold_for_followers_mib() -> u64 {
    1024
}
fn default_hold_for_followers_secs() -> u64 {
    3600
}
fn default_purge_below_free_percent() -> u8 {
    10
}
fn default_refuse_below_free_percent() -> u8 {
    3
}

/// How much log each group keeps; see the module docs. Only whole sealed
/// segments are purged, never above the commit index (nor above what the
/// group's state machine has snapshotted), and a leader holds back for its
/// followers up to `hold_for_followers_mib`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Purge the oldest whole segments while the log is larger than this (0: no limit).
    #[serde(default)]
    pub max_log_mib: u64,
    /// Purge segments last written longer ago than this (0: no limit).
    #[serde(default)]
    pub max_age_secs: u64,
    /// How much more log a leader keeps for a follower that is behind.
    #[serde(default = "default_hold_for_followers_mib")]
    pub hold_for_followers_mib: u64,
    /// Nor for longer than this for a follower whose match has not moved (0: no limit).
    #[serde(default = "default_hold_for_followers_secs")]
    pub hold_for_followers_secs: u64,
    /// Disk watermark, for a group with retention on: with less free space
    /// than this (percent of the data directory's file system), purge
    /// everything committed and applied, releasing holds (0: off).
    #[serde(default = "default_purge_below_free_percent")]
    pub purge_below_free_percent: u8,
    /// With less free space than this, a leader refuses appends with
    /// `DiskFull` rather than fill the disk (0: off).
    #[serde(default = "default_refuse_below_free_percent")]
    pub refuse_below_free_percent: u8,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_log_mib: 0,
            max_age_secs: 0,
            hold_for_followers_mib: default_hold_for_followers_mib(),
            hold_for_followers_secs: default_hold_for_followers_secs(),
            purge_below_free_percent: default_purge_below_free_percent(),
            refuse_below_free_percent: default_refuse_below_free_percent(),
        }
    }
}

impl Retention {
    /// Whether any limit is set.
    pub fn is_on(&self) -> bool {
        self.max_log_mib > 0 || self.max_age_secs > 0
    }

    /// The engine's policy for these limits.
    pub fn policy(&self) -> dledger_engine::RetentionPolicy {
        dledger_engine::RetentionPolicy {
            max_age: (self.max_age_secs > 0).then(|| std::time::Duration::from_secs(self.max_age_secs)),
            max_total_bytes: (self.max_log_mib > 0).then_some(self.max_log_mib << 20),
        }
    }
}

/// One voter of the cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id (at least 1).
    pub id: u64,
    /// Where this node reaches the peer (its `listen`, or a proxy in front of it).
    pub address: String,
    /// Where clients reach the peer, when that differs from `address`
    /// (told to clients in `NotLeader` answers).
    #[serde(default)]
    pub client_address: Option<String>,
}

/// A server's configuration; see the module docs for the TOML and the defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node, one of the peers' ids.
    pub node_id: u64,
    /// The cluster's name; a data directory of another cluster is refused.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Where peers and clients connect (one port).
    pub listen: String,
    /// Where the logs (and snapshots) live.
    pub data_dir: PathBuf,
    /// Raft groups `0..groups`, each with its own log.
    #[serde(default = "default_groups")]
    pub groups: u64,
    /// Event loops (0: one per CPU); never more than groups.
    #[serde(default)]
    pub cores: usize,
    /// Where the event loops are pinned; see the module docs. Several nodes
    /// sharing a host must not all pin to CPU 0: give them disjoint lists or `[]`.
    #[serde(default)]
    pub cpus: Option<Vec<usize>>,
    /// Where to serve Prometheus metrics, if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The Raft clock's period.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Shortest election timeout, in ticks.
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ticks: u64,
    /// Longest election timeout, in ticks.
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ticks: u64,
    /// A leader's heartbeat interval, in ticks.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ticks: u64,
    /// Hand leadership to this node whenever it is caught up.
    #[serde(default)]
    pub preferred_leader: Option<u64>,
    /// Size of each log segment file.
    #[serde(default = "default_segment_mib")]
    pub segment_mib: u64,
    /// A producer session with no append for this long is forgotten.
    #[serde(default = "default_producer_expiry_secs")]
    pub producer_expiry_secs: u64,
    /// Producer sessions a group keeps.
    #[serde(default = "default_max_producers")]
    pub max_producers: usize,
    /// auto, uring or portable.
    #[serde(default)]
    pub backend: Option<String>,
    /// Largest frame accepted from a peer or client.
    #[serde(default = "default_max_frame_mib")]
    pub max_frame_mib: u64,
    /// The most payload one read answer carries (`get`, `read`, a
    /// subscription's batch; at least one entry), in MiB; capped at half of
    /// `max_frame_mib`, so an answer always fits in a frame.
    #[serde(default = "default_max_read_mib")]
    pub max_read_mib: u64,
    /// Client connections served at once (peers are not counted); one more
    /// is answered `TooManyConnections` and closed.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// A client connection with no request for this long (and nothing in
    /// flight) is closed; 0 keeps idle connections open.
    #[serde(default = "default_client_idle_timeout_secs")]
    pub client_idle_timeout_secs: u64,
    /// Largest write of a group's log: a group commit takes what arrived while
    /// the last write was syncing, up to this. Bigger writes amortize the sync
    /// (64 clients x 256-entry batches: 1.07M entries/s at 1 MiB, 1.15M at 4 MiB
    /// on the 2-core VM). Also bounds one entry. Capped at a quarter of a
    /// segment (see [`ServerConfig::batch_bytes`]).
    #[serde(default = "default_max_batch_kib")]
    pub max_batch_kib: usize,
    /// Per group: applied, durable entries kept in memory (see the module docs).
    #[serde(default = "default_log_memory_mib")]
    pub log_memory_mib: u64,
    /// Groups with a state machine: take a snapshot after this many applied
    /// entries (0: never), so that a restart replays at most that many.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_entries: u64,
    /// Groups with a state machine: also take a snapshot after this many MiB
    /// of payload applied since the last (0: never).
    #[serde(default)]
    pub snapshot_every_mib: u64,
    /// Groups with a state machine: snapshots kept (the newest ones).
    #[serde(default = "default_snapshots_kept")]
    pub snapshots_kept: usize,
    /// A file holding the cluster's shared secret (at least 16 bytes): with
    /// it, a peer must prove it holds the same secret before any of its
    /// messages is read (challenge and response, see `auth.rs`). Without it,
    /// peers are not authenticated: for loopback only (a warning otherwise).
    #[serde(default)]
    pub peer_secret_file: Option<PathBuf>,
    /// How much log each group keeps (off by default).
    #[serde(default)]
    pub retention: Retention,
    /// Every voter, this node included.
    pub peers: Vec<Peer>,
}

/// A configuration that cannot run, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The values do not make a working server (named).
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// A configuration with every default, for node `node_id` listening on
    /// `listen` with its data in `data_dir`, in a cluster of `peers` (this
    /// node included): the builder's starting point. Change fields, then
    /// [`validate`](ServerConfig::validate) (the server validates too).
    pub fn new(node_id: u64, listen: impl Into<String>, data_dir: impl Into<PathBuf>, peers: Vec<Peer>) -> Self {
        ServerConfig {
            node_id,
            cluster: default_cluster(),
            listen: listen.into(),
            data_dir: data_dir.into(),
            groups: default_groups(),
            cores: 0,
            cpus: None,
            metrics_listen: None,
            tick_ms: default_tick_ms(),
            election_timeout_min_ticks: default_election_min(),
            election_timeout_max_ticks: default_election_max(),
            heartbeat_ticks: default_heartbeat(),
            preferred_leader: None,
            segment_mib: default_segment_mib(),
            producer_expiry_secs: default_producer_expiry_secs(),
            max_producers: default_max_producers(),
            backend: None,
            max_frame_mib: default_max_frame_mib(),
            max_read_mib: default_max_read_mib(),
            max_client_connections: default_max_client_connections(),
            client_idle_timeout_secs: default_client_idle_timeout_secs(),
            max_batch_kib: default_max_batch_kib(),
            log_memory_mib: default_log_memory_mib(),
            snapshot_every_entries: default_snapshot_every(),
            snapshot_every_mib: 0,
            snapshots_kept: default_snapshots_kept(),
            peer_secret_file: None,
            retention: Retention::default(),
            peers,
        }
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            e => e,
        })
    }

    /// The most payload bytes one read answer carries: `max_read_mib`, at
    /// most half a frame.
    pub fn max_read_bytes(&self) -> usize {
        (self.max_read_mib.min(self.max_frame_mib / 2).max(1) << 20) as usize
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        let c: ServerConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.message().to_string() })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks that the values make a working server.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be at least 1".into());
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("peer ids must be unique".into());
        }
        if !ids.contains(&self.node_id) {
            return bad(format!("node_id {} is not among the peers {ids:?}", self.node_id));
        }
        if ids.contains(&0) {
            return bad("peer id 0 is reserved for clients".into());
        }
        for p in &self.peers {
            for a in std::iter::once(&p.address).chain(p.client_address.as_ref()) {
                if a.parse::<SocketAddr>().is_err() {
                    return bad(format!("peer {} address {a:?} is not ip:port", p.id));
                }
            }
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!("listen {:?} is not ip:port", self.listen));
        }
        if let Some(m) = &self.metrics_listen {
            if m.parse::<SocketAddr>().is_err() {
                return bad(format!("metrics_listen {m:?} is not ip:port"));
            }
        }
        if self.groups == 0 || self.groups > 4096 {
            return bad(format!("groups {} must be in 1..=4096", self.groups));
        }
        if self.tick_ms == 0 || self.heartbeat_ticks == 0 || self.election_timeout_min_ticks <= 2 * self.heartbeat_ticks
        {
            return bad("need tick_ms > 0 and election_timeout_min_ticks > 2 x heartbeat_ticks".into());
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return bad("election_timeout_max_ticks must exceed election_timeout_min_ticks".into());
        }
        if self.max_read_mib == 0 {
            return bad("max_read_mib must be at least 1".into());
        }
        if self.max_client_connections == 0 {
            return bad("max_client_connections must be at least 1".into());
        }
        if self.max_frame_mib < 2 {
            return bad(format!("max_frame_mib {} must be at least 2", self.max_frame_mib));
        }
        if let Some(cpus) = &self.cpus {
            // CPU ids, not a count: under `taskset 4-7` CPU 4 is valid on a 4-CPU budget.
            // Whether the CPU is online and allowed is checked when pinning (a warning).
            if let Some(c) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
                return bad(format!("cpus: CPU {c} is beyond the largest CPU id ({})", libc::CPU_SETSIZE - 1));
            }
        }
        if self.max_batch_kib < 8 || !self.max_batch_kib.is_multiple_of(4) || self.max_batch_kib > 8192 {
            return bad(format!("max_batch_kib {} must be a multiple of 4 in 8..=8192", self.max_batch_kib));
        }
        // The largest entry (almost a whole batch) must travel in one frame, with room.
        if (self.max_frame_mib as usize) << 20 < 2 * (self.max_batch_kib << 10) {
            return bad(format!(
                "max_frame_mib {} cannot carry the largest entry: make it at least twice max_batch_kib ({} KiB)",
                self.max_frame_mib, self.max_batch_kib
            ));
        }
        let r = &self.retention;
        let inverted = r.purge_below_free_percent > 0 && r.refuse_below_free_percent > r.purge_below_free_percent;
        if r.purge_below_free_percent > 90 || inverted {
            return bad(format!(
                "retention: need refuse_below_free_percent ({}) <= purge_below_free_percent ({}) <= 90",
                r.refuse_below_free_percent, r.purge_below_free_percent
            ));
        }
        if self.max_producers == 0 || self.producer_expiry_secs == 0 {
            return bad("max_producers and producer_expiry_secs must be at least 1".into());
        }
        // A full table travels in one log start message to a follower behind the start.
        let table_bytes = 20 + self.max_producers.saturating_mul(24 + dledger_raft::RETAINED_BATCHES * 36);
        if table_bytes > ((self.max_frame_mib as usize) << 20) / 2 {
            return bad(format!(
                "max_producers {} makes a full session table of {table_bytes} bytes, more than half of max_frame_mib",
                self.max_producers
            ));
        }
        if self.snapshots_kept == 0 {
            return bad("snapshots_kept must be at least 1".into());
        }
        if let Some(b) = &self.backend {
            b.parse::<dledger_engine::BackendChoice>().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The address clients should use for each node.
    pub fn addresses(&self) -> HashMap<u64, String> {
        self.peers.iter().map(|p| (p.id, p.client_address.clone().unwrap_or_else(|| p.address.clone()))).collect()
    }

    /// The ids of every voter.
    pub fn voters(&self) -> Vec<u64> {
        self.peers.iter().map(|p| p.id).collect()
    }

    /// The Raft core's settings: these timings, pre-vote and check-quorum on,
    /// and replication windows sized for a log (thousands of entries in flight).
    pub fn raft(&self) -> dledger_raft::Config {
        dledger_raft::Config {
            election_timeout_min_ticks: self.election_timeout_min_ticks,
            election_timeout_max_ticks: self.election_timeout_max_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            pre_vote: true,
            check_quorum: true,
            preferred_leader: self.preferred_leader,
            max_entries_per_append: 1024,
            max_log_memory_bytes: self.log_memory_mib.saturating_mul(1 << 20),
            max_inflight_entries: 16 * 1024,
            // A whole window must fit in one frame, or a follower would refuse it forever.
            max_inflight_bytes: ((self.max_frame_mib << 20).saturating_sub(64 << 10)).max(1 << 20),
            sessions: dledger_raft::SessionLimits {
                expiry_ms: self.producer_expiry_secs.saturating_mul(1000),
                max_producers: self.max_producers,
            },
            ..Default::default()
        }
    }

    /// The largest write (and entry) of a group's log in bytes: `max_batch_kib`,
    /// but at most a quarter of a segment (a segment holds a header block, whole
    /// batches and a seal block), and never below 8 KiB.
    pub fn batch_bytes(&self) -> usize {
        let quarter_segment = ((self.segment_mib << 20) / 4) as usize & !4095;
        (self.max_batch_kib << 10).min(quarter_segment).max(8 << 10)
    }

    /// The CPU event loop `core` is pinned to, if any.
    pub fn cpu_of(&self, core: usize) -> Option<usize> {
        match &self.cpus {
            None => Some(core % std::thread::available_parallelism().map_or(1, |n| n.get())),
            Some(list) if list.is_empty() => None,
            Some(list) => Some(list[core % list.len()]),
        }
    }

    /// Event loops to run (`cores`, or one per CPU).
    pub fn cores(&self) -> usize {
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.cores == 0 {
            all
        } else {
            self.cores
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
listen = "127.0.0.1:7001"
data_dir = "/tmp/x"
[[peers]]
id = 1
address = "127.0.0.1:7001"
[[peers]]
id = 2
address = "127.0.0.1:7002"
"#;

    #[test]
    fn defaults_fill_what_is_missing() {
        let c = ServerConfig::from_toml(GOOD).unwrap();
        assert_eq!((c.groups, c.tick_ms, c.election_timeout_min_ticks, c.heartbeat_ticks), (1, 10, 15, 3));
        assert_eq!(c.cluster, "dledger");
        assert_eq!(c.cpu_of(0), Some(0), "a node that owns its host pins loop i to CPU i");
        assert_eq!(c.batch_bytes(), 4 << 20);
        let small = ServerConfig::from_toml(&format!("segment_mib = 2\n{GOOD}")).unwrap();
        assert_eq!(small.batch_bytes(), 512 << 10, "a quarter of a 2 MiB segment");
    }

    #[test]
    fn the_builder_has_the_toml_defaults() {
        let toml = ServerConfig::from_toml(GOOD).unwrap();
        let built = ServerConfig::new(1, "127.0.0.1:7001", "/tmp/x", toml.peers.clone());
        assert_eq!(built, toml);
        built.validate().unwrap();
    }

    #[test]
    fn cpus_place_the_event_loops() {
        let c = ServerConfig::from_toml(&format!("cpus = [0]\n{GOOD}")).unwrap();
        assert_eq!((c.cpu_of(0), c.cpu_of(3)), (Some(0), Some(0)));
        let c = ServerConfig::from_toml(&format!("cpus = []\n{GOOD}")).unwrap();
        assert_eq!(c.cpu_of(0), None, "an empty list leaves placement to the kernel");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            (GOOD.replace("node_id = 1", "node_id = 3"), "not among the peers"),
            (GOOD.replace("node_id = 1\n", ""), "missing field `node_id`"),
            (GOOD.replace("127.0.0.1:7002", "nowhere"), "not ip:port"),
            (format!("{GOOD}\nbogus = 1\n"), "unknown field `bogus`"),
            (format!("groups = 0\n{GOOD}"), "groups 0"),
            (format!("heartbeat_ticks = 20\n{GOOD}"), "heartbeat_ticks"),
            (format!("cpus = [100000]\n{GOOD}"), "CPU 100000 is beyond the largest CPU id"),
            (format!("max_batch_kib = 6\n{GOOD}"), "max_batch_kib 6 must be a multiple of 4"),
            (format!("max_frame_mib = 4\n{GOOD}"), "max_frame_mib 4 cannot carry the largest entry"),
        ];
        for (text, want) in cases {
            let e = ServerConfig::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    /// Every numeric key a mutated config may set, with values at the edges.
    const KEYS: [&str; 14] = [
        "groups",
        "cores",
        "tick_ms",
        "election_timeout_min_ticks",
        "election_timeout_max_ticks",
        "heartbeat_ticks",
        "segment_mib",
        "max_batch_kib",
        "log_memory_mib",
        "max_frame_mib",
        "snapshot_every_entries",
        "snapshot_every_mib",
        "snapshots_kept",
        "node_id",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Any text, and any valid config with keys set to edge values or bytes
        /// flipped, parses to a config that validates or to a named error; the
        /// accessors of one that validates never panic.
        #[test]
        fn the_config_parser_never_panics(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            sets in proptest::collection::vec((0..14usize, proptest::prop_oneof![
                proptest::prelude::Just(0i64), proptest::prelude::Just(1i64), proptest::prelude::Just(-1i64),
                proptest::prelude::Just(i64::MAX), 0..100_000i64,
            ]), 0..4),
            flip in proptest::option::of((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>())),
        ) {
            let _ = ServerConfig::from_toml(&String::from_utf8_lossy(&noise));
            let mut text: String = sets.iter().map(|(k, v)| format!("{} = {v}\n", KEYS[*k])).collect();
            text.push_str(GOOD);
            let mut bytes = text.into_bytes();
            if let Some((at, x)) = flip {
                let k = at % bytes.len();
                bytes[k] ^= x;
            }
            if let Ok(c) = ServerConfig::from_toml(&String::from_utf8_lossy(&bytes)) {
                let _ = (c.batch_bytes(), c.cores(), c.raft(), c.voters(), c.addresses(), c.cpu_of(0));
            }
        }
    }
}
