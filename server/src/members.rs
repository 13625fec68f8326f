//! What a node keeps on disk about membership: each group's configuration
//! records (the side file of `dledger_raft::Membership`'s docs), and the
//! incarnation of every peer it has met.
//!
//! ```text
//! <data_dir>/group-<g>/CONFIGS   crc32c (4 bytes LE) + ConfigHistory encoding
//! <data_dir>/PEERS               one "<node id> <incarnation, 16 hex digits>" per line
//! ```
//!
//! Both are tiny and rewritten whole: written to a temporary file, synced,
//! renamed over the old one, and the directory synced, so a crash leaves
//! the old file or the new one. They change only on a membership change, a
//! truncation over one, or a peer's first connection.
//!
//! **Why incarnations.** A node whose directory was wiped has forgotten its
//! votes and the entries it acknowledged. Started again with its old id
//! (told to join), it would receive the configuration naming it a voter and
//! vote, with an empty log, in terms it may have voted in before: the
//! 28,246 lost appends of the membership issue. Every data directory has a
//! random incarnation (`IDENTITY`); a node records the incarnation of each
//! peer the first time the peer proves itself, and refuses a later one
//! under the same id, with a message that says to replace the node. Ids are
//! never reused, so a replacement is a new id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dledger_raft::{ConfigHistory, ConfigRecord, NodeId};

/// Writes `bytes` to `path` atomically and durably.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One group's configuration records, mirrored in memory.
#[derive(Debug)]
pub(crate) struct ConfigFile {
    path: PathBuf,
    records: ConfigHistory,
}

/// The name of a group's configuration file, in its log directory (the
/// engine ignores files it does not name).
pub(crate) const CONFIGS_FILE: &str = "CONFIGS";

impl ConfigFile {
    /// The file in `dir`: `None` if there is none yet, an error if it is
    /// damaged (a node must not guess its configuration).
    pub(crate) fn load(dir: &Path) -> Result<Option<ConfigFile>, String> {
        let path = dir.join(CONFIGS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let damaged = || format!("{} is damaged: the node cannot know its configuration", path.display());
        if bytes.len() < 4 {
            return Err(damaged());
        }
        let crc = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[4..]) != crc {
            return Err(damaged());
        }
        let records = ConfigHistory::decode(&bytes[4..]).ok_or_else(damaged)?;
        Ok(Some(ConfigFile { path, records }))
    }

    /// A file in `dir` holding `records` (written now).
    pub(crate) fn create(dir: &Path, records: ConfigHistory) -> std::io::Result<ConfigFile> {
        let file = ConfigFile { path: dir.join(CONFIGS_FILE), records };
        file.store()?;
        Ok(file)
    }

    /// The records, in the order written.
    pub(crate) fn records(&self) -> &[ConfigRecord] {
        self.records.records()
    }

    fn store(&self) -> std::io::Result<()> {
        let body = self.records.encode();
        let mut bytes = crc32c::crc32c(&body).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        replace_file(&self.path, &bytes)
    }

    /// Replaces the records (at start: with what the core restored).
    pub(crate) fn rewrite(&mut self, records: ConfigHistory) -> std::io::Result<()> {
        self.records = records;
        self.store()
    }

    /// Adds a record (before the entry it describes is persisted).
    pub(crate) fn append(&mut self, record: ConfigRecord, compact_upto: u64) -> std::io::Result<()> {
        self.records.append_written(record);
        self.records.compact(compact_upto);
        self.store()
    }

    /// After a durable truncation from `from`: drops what the core no longer holds.
    pub(crate) fn truncated(&mut self, from: u64, core: &ConfigHistory) -> std::io::Result<()> {
        let before = self.records.records().len();
        self.records.drop_truncated(from, core);
        if self.records.records().len() == before {
            return Ok(());
        }
        self.store()
    }

    /// After a durable log-start install: only the start's record remains.
    pub(crate) fn reset(&mut self) -> std::io::Result<()> {
        let Some(last) = self.records.latest_record().cloned() else { return Ok(()) };
        self.records.reset(last);
        self.store()
    }
}

/// The incarnation of every peer this node has met (`PEERS`).
#[derive(Debug)]
pub(crate) struct PeerIncarnations {
    path: PathBuf,
    known: std::sync::Mutex<BTreeMap<NodeId, u64>>,
}

/// What a peer's hello said about its data directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incarnation {
    /// Met before with this incarnation, or met now for the first time.
    Known,
    /// Met before with another: its directory was replaced.
    Replaced {
        /// The incarnation on record.
        was: u64,
    },
}

impl PeerIncarnations {
    /// The table in `data_dir` (empty if there is none yet).
    pub(crate) fn load(data_dir: &Path) -> Result<PeerIncarnations, String> {
        let path = data_dir.join("PEERS");
        let mut known = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let parsed = line.split_once(' ').and_then(|(id, inc)| {
                        Some((id.trim().parse::<u64>().ok()?, u64::from_str_radix(inc.trim(), 16).ok()?))
                    });
                    let (id, inc) = parsed.ok_or_else(|| format!("{} is damaged at {line:?}", path.display()))?;
                    known.insert(id, inc);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        Ok(PeerIncarnations { path, known: std::sync::Mutex::new(known) })
    }

    /// Checks peer `id`'s `incarnation` (0: a node from before incarnations,
    /// taken as it comes), recording it durably the first time.
    pub(crate) fn check(&self, id: NodeId, incarnation: u64) -> std::io::Result<Incarnation> {
        if incarnation == 0 {
            return Ok(Incarnation::Known);
        }
        let mut known = self.known.lock().expect("peer table");
        match known.get(&id) {
            Some(&was) if was == incarnation => Ok(Incarnation::Known),
            Some(&was) => Ok(Incarnation::Replaced { was }),
            None => {
                known.insert(id, incarnation);
                let text: String = known.iter().map(|(id, inc)| format!("{id} {inc:016x}\n")).collect();
                replace_file(&self.path, text.as_bytes())?;
                Ok(Incarnation::Known)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dledger_raft::Membership;

    #[test]
    fn the_config_file_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ConfigFile::load(dir.path()).unwrap().is_none());
        let m = Membership::bootstrap([(1, "a:1".to_string()), (2, "b:2".to_string())]);
        let record = ConfigRecord { index: 0, term: 0, membership: m.clone() };
        let mut f = ConfigFile::create(dir.path(), ConfigHistory::from_records(vec![record.clone()])).unwrap();
        let later = ConfigRecord { index: 7, term: 2, membership: Membership { version: 1, ..m } };
        f.append(later.clone(), 0).unwrap();
        let again = ConfigFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(again.records(), &[record, later][..]);
        let path = dir.path().join(CONFIGS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(ConfigFile::load(dir.path()).unwrap_err().contains("damaged"));
    }

    #[test]
    fn a_peer_met_once_cannot_come_back_with_another_directory() {
        let dir = tempfile::tempdir().unwrap();
        let t = PeerIncarnations::load(dir.path()).unwrap();
        assert_eq!(t.check(3, 0xaa).unwrap(), Incarnation::Known);
        assert_eq!(t.check(3, 0xaa).unwrap(), Incarnation::Known);
        assert_eq!(t.check(3, 0xbb).unwrap(), Incarnation::Replaced { was: 0xaa });
        let reloaded = PeerIncarnations::load(dir.path()).unwrap();
        assert_eq!(reloaded.check(3, 0xbb).unwrap(), Incarnation::Replaced { was: 0xaa }, "recorded durably");
        assert_eq!(reloaded.check(4, 0xcc).unwrap(), Incarnation::Known);
    }
}
