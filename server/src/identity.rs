//! Which node owns a data directory, and whether it may start on it.
//!
//! ```text
//! <data_dir>/IDENTITY:
//!   cluster=<name>
//!   node=<id>
//!   incarnation=<16 hex digits, random, never reused>
//!   groups=<groups created so far>
//!   mode=join            (only on a node created to join a running cluster)
//! ```
//!
//! A data directory is created once, by an explicit bootstrap (`dledger
//! init`, `dledger server --bootstrap`, [`ServerBuilder::bootstrap`](crate::ServerBuilder::bootstrap)),
//! never implicitly: a server refuses to start on a missing or empty
//! directory otherwise. The reason is Raft's safety: a node that lost its
//! directory has forgotten its votes and the entries it acknowledged; coming
//! back as the same voter it can vote twice in one term and let the cluster
//! lose committed entries (a held-back fault test lost 28,246 acknowledged
//! appends exactly so). Likewise a group directory that was created once and
//! is now missing is refused, and the engine refuses a group whose metadata
//! record is lost (`dledger_engine::Error::MetaLost`).
//!
//! The incarnation tells a directory from a later one made for the same node
//! id; membership changes will use it to admit a replaced node as new.

use std::path::{Path, PathBuf};

use crate::config::ServerConfig;
use crate::runtime::StartError;

/// The file naming a data directory's owner.
pub const IDENTITY_FILE: &str = "IDENTITY";

/// A data directory's owner, as its `IDENTITY` file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's name.
    pub cluster: String,
    /// The node id.
    pub node: u64,
    /// Random, chosen when the directory was created; 0 for a directory made
    /// before incarnations were recorded.
    pub incarnation: u64,
    /// How many groups (`0..groups`) have been created in it; `None` for an
    /// older directory that did not record it.
    pub groups: Option<u64>,
    /// Created to join a running cluster (`--join`): its groups learn their
    /// configuration from a leader, never from the config file's peers.
    pub joined: bool,
}

/// How a start may create a missing or empty data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// It may not: the directory must exist.
    Never,
    /// As a member of a new cluster (`--bootstrap`, `dledger init`).
    Bootstrap,
    /// As a new node of a running cluster (`--join`), added by an operator.
    Join,
}

impl Identity {
    fn render(&self) -> String {
        let mut s = format!("cluster={}\nnode={}\nincarnation={:016x}\n", self.cluster, self.node, self.incarnation);
        if let Some(g) = self.groups {
            s += &format!("groups={g}\n");
        }
        if self.joined {
            s += "mode=join\n";
        }
        s
    }

    fn parse(text: &str) -> Option<Identity> {
        let (mut cluster, mut node, mut incarnation, mut groups, mut joined) = (None, None, 0, None, false);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=')?;
            match k {
                "cluster" => cluster = Some(v.to_string()),
                "node" => node = Some(v.parse().ok()?),
                "incarnation" => incarnation = u64::from_str_radix(v, 16).ok()?,
                "groups" => groups = Some(v.parse().ok()?),
                "mode" if v == "join" => joined = true,
                _ => return None,
            }
        }
        Some(Identity { cluster: cluster?, node: node?, incarnation, groups, joined })
    }

    fn write(&self, dir: &Path) -> Result<(), StartError> {
        let err = |e: std::io::Error| StartError::DataDir { dir: dir.into(), message: e.to_string() };
        let tmp = dir.join("IDENTITY.tmp");
        std::fs::write(&tmp, self.render()).map_err(err)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, dir.join(IDENTITY_FILE)).map_err(err)?;
        std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(err)?;
        Ok(())
    }
}

fn fresh_incarnation() -> u64 {
    // Never 0 (the legacy marker).
    rand::random::<u64>() | 1
}

fn is_empty_or_missing(dir: &Path) -> Result<bool, StartError> {
    match std::fs::read_dir(dir) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StartError::DataDir { dir: dir.into(), message: e.to_string() }),
    }
}

/// Creates the data directory of `cfg`'s node for a new cluster (the
/// bootstrap step); refuses a directory that is not empty.
pub fn init(cfg: &ServerConfig) -> Result<Identity, StartError> {
    create(cfg, false)
}

fn create(cfg: &ServerConfig, joined: bool) -> Result<Identity, StartError> {
    let dir = &cfg.data_dir;
    if !is_empty_or_missing(dir)? {
        return Err(StartError::DataDir {
            dir: dir.clone(),
            message: "not empty: already initialized (or not a dledger data directory); nothing was changed".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir { dir: dir.clone(), message: e.to_string() })?;
    let id = Identity {
        cluster: cfg.cluster.clone(),
        node: cfg.node_id,
        incarnation: fresh_incarnation(),
        groups: Some(0),
        joined,
    };
    id.write(dir)?;
    tracing::info!(dir = %dir.display(), node = id.node, incarnation = %format!("{:016x}", id.incarnation), "data directory initialized");
    Ok(id)
}

/// Checks that `cfg`'s node owns its data directory and may start on it:
/// created by a bootstrap (or now, when `bootstrap` and the directory is
/// empty), of this node and cluster, with every group it created still there.
/// Nothing is written unless the directory is new or the record gains fields.
pub(crate) fn check(cfg: &ServerConfig, creation: Creation) -> Result<Identity, StartError> {
    let dir = &cfg.data_dir;
    let path = dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !is_empty_or_missing(dir)? {
                return Err(StartError::DataDir {
                    dir: dir.clone(),
                    message: "not empty and has no IDENTITY file (not a dledger data directory?)".into(),
                });
            }
            return match creation {
                Creation::Never => Err(StartError::NotInitialized { dir: dir.clone() }),
                Creation::Bootstrap => create(cfg, false),
                Creation::Join => create(cfg, true),
            };
        }
        Err(e) => return Err(StartError::DataDir { dir: dir.clone(), message: e.to_string() }),
    };
    let found = || text.trim().replace('\n', ", ");
    let Some(mut id) = Identity::parse(&text) else {
        return Err(StartError::DataDir {
            dir: dir.clone(),
            message: format!("unreadable IDENTITY file: {:?}", found()),
        });
    };
    if id.cluster != cfg.cluster || id.node != cfg.node_id {
        return Err(StartError::ForeignDataDir {
            dir: dir.clone(),
            found: found(),
            node: cfg.node_id,
            cluster: cfg.cluster.clone(),
        });
    }
    if let Some(created) = id.groups {
        for g in 0..created.min(cfg.groups) {
            // Its metadata file is made when the group is first opened: a group
            // directory without it (gone, emptied, a fresh volume) lost its state.
            if !group_dir(dir, g).join(dledger_engine::META_FILE).exists() {
                return Err(StartError::GroupLost { group: g, dir: group_dir(dir, g) });
            }
        }
    }
    if id.incarnation == 0 {
        // A directory from before incarnations: it gets one now (it is the same directory).
        id.incarnation = fresh_incarnation();
        id.write(dir)?;
    }
    Ok(id)
}

/// Records that groups `0..groups` now exist (after they were opened).
pub(crate) fn record_groups(cfg: &ServerConfig, mut id: Identity) -> Result<(), StartError> {
    if id.groups.is_some_and(|g| g >= cfg.groups) {
        return Ok(());
    }
    id.groups = Some(cfg.groups);
    id.write(&cfg.data_dir)
}

/// Where group `g`'s log lives.
pub(crate) fn group_dir(data_dir: &Path, g: u64) -> PathBuf {
    data_dir.join(format!("group-{g}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Peer;

    fn cfg(dir: &Path) -> ServerConfig {
        let peers = vec![Peer { id: 1, address: "127.0.0.1:1".into(), client_address: None }];
        ServerConfig::new(1, "127.0.0.1:1", dir, peers)
    }

    #[test]
    fn a_directory_is_made_only_by_a_bootstrap_and_a_lost_group_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(&tmp.path().join("d"));
        assert!(matches!(check(&c, Creation::Never), Err(StartError::NotInitialized { .. })));
        assert!(!c.data_dir.exists(), "nothing created without a bootstrap");
        let id = check(&c, Creation::Bootstrap).unwrap();
        assert_ne!(id.incarnation, 0);
        std::fs::create_dir(group_dir(&c.data_dir, 0)).unwrap();
        std::fs::write(group_dir(&c.data_dir, 0).join(dledger_engine::META_FILE), b"").unwrap();
        record_groups(&c, id.clone()).unwrap();
        let again = check(&c, Creation::Never).unwrap();
        assert_eq!((again.incarnation, again.groups), (id.incarnation, Some(1)));
        // A bootstrap of an initialized directory changes nothing.
        assert_eq!(check(&c, Creation::Bootstrap).unwrap(), again);
        // A group directory that was created and is emptied, or gone: refused.
        std::fs::remove_file(group_dir(&c.data_dir, 0).join(dledger_engine::META_FILE)).unwrap();
        assert!(matches!(check(&c, Creation::Never), Err(StartError::GroupLost { group: 0, .. })));
        std::fs::remove_dir(group_dir(&c.data_dir, 0)).unwrap();
        assert!(matches!(check(&c, Creation::Never), Err(StartError::GroupLost { group: 0, .. })));
        // A wiped directory: refused, even though the config is the old one.
        std::fs::remove_dir_all(&c.data_dir).unwrap();
        assert!(matches!(check(&c, Creation::Never), Err(StartError::NotInitialized { .. })));
        // `init` refuses what is not empty.
        init(&c).unwrap();
        assert!(init(&c).is_err());
    }

    #[test]
    fn an_older_identity_is_accepted_and_gets_an_incarnation() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        std::fs::write(tmp.path().join(IDENTITY_FILE), "cluster=dledger\nnode=1\n").unwrap();
        let id = check(&c, Creation::Never).unwrap();
        assert!(id.incarnation != 0 && id.groups.is_none());
        assert_eq!(check(&c, Creation::Never).unwrap().incarnation, id.incarnation, "written once");
    }
}
