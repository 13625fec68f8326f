//! A group's saved producer-session table (the durable half of
//! `dledger_raft::Sessions`): what a restart folds the log's stamps onto.
//!
//! ```text
//! <data_dir>/group-<g>/SESSIONS   crc32c (4 bytes LE) + SessionTable encoding
//! ```
//!
//! The table is of a committed prefix (`as_of`); the stamps after it are
//! in the log, and a restart reads them back ([`stamped_entries`]). So the
//! file is written (whole, atomically, synced) only:
//! * before a purge reaches past its `as_of`: the stamps of purged entries
//!   survive only in it, which makes it the log start's session record;
//! * before a follower installs a leader's log start (with the leader's
//!   table, `Command::SaveSessions`);
//! * every [`CHECKPOINT_ENTRIES`] committed entries or [`CHECKPOINT_BYTES`]
//!   of payload appended (checked every few ticks), which bounds what a
//!   restart reads back to about that much plus the uncommitted tail.
//!
//! A missing file beside a log that has entries (a directory from before
//! sessions, or a lost file) and a damaged file are both rebuilt from the
//! log: exact if the log was never purged; otherwise the stamps below the
//! log start are gone, which weakens deduplication of retries older than
//! the start and nothing else (a warning says so). Deduplication is not
//! a safety property of the log: a lost table never loses or reorders an
//! entry.

use std::path::{Path, PathBuf};

use dledger_raft::{Entry, SessionTable};

/// The file's name, in the group's log directory (the engine ignores files
/// it does not name).
pub(crate) const SESSIONS_FILE: &str = "SESSIONS";

/// Committed entries between periodic saves.
pub(crate) const CHECKPOINT_ENTRIES: u64 = 1 << 16;

/// Payload bytes appended between periodic saves.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Bytes one read-back step takes from the files.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

/// The saved table, mirrored by what was written last.
#[derive(Debug)]
pub(crate) struct SessionsFile {
    path: PathBuf,
    /// `as_of` of the table last written.
    saved_as_of: u64,
}

impl SessionsFile {
    /// The table saved in `dir`, if any and whole (`Err` says why it is
    /// not, for the warning), and the file to write it to.
    pub(crate) fn load(dir: &Path) -> (SessionsFile, Result<Option<SessionTable>, String>) {
        let path = dir.join(SESSIONS_FILE);
        let table = match std::fs::read(&path) {
            Ok(b) => decode(&b).map(Some).ok_or_else(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        let saved_as_of = table.as_ref().ok().and_then(|t| t.as_ref().map(|t| t.as_of)).unwrap_or(0);
        (SessionsFile { path, saved_as_of }, table)
    }

    /// `as_of` of the table on disk.
    pub(crate) fn saved_as_of(&self) -> u64 {
        self.saved_as_of
    }

    /// Replaces the file with `table`, durably.
    pub(crate) fn save(&mut self, table: &SessionTable) -> std::io::Result<()> {
        let mut body = Vec::with_capacity(4 + table.encoded_len());
        body.extend_from_slice(&[0; 4]);
        table.encode_into(&mut body);
        let crc = crc32c::crc32c(&body[4..]);
        body[..4].copy_from_slice(&crc.to_le_bytes());
        crate::members::replace_file(&self.path, &body)?;
        self.saved_as_of = table.as_of;
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Option<SessionTable> {
    let (crc, body) = (bytes.get(..4)?, bytes.get(4..)?);
    (u32::from_le_bytes(crc.try_into().ok()?) == crc32c::crc32c(body)).then(|| SessionTable::decode(body)).flatten()
}

/// Entries read one at a time after a read that failed, before chunks again.
const SINGLE_STEPS_AFTER_ERROR: u64 = 1024;

/// The stamped entries of `log` after `as_of` (their payloads without the
/// kind byte), read back chunk by chunk, and how many entries could not be
/// read (damaged: their checksums fail; the node still starts and serves
/// the rest, and those entries' stamps, if any, are unknown here).
pub(crate) fn stamped_entries(
    log: &dledger_engine::Log,
    as_of: u64,
    decode_kind: impl Fn(u8) -> Option<dledger_raft::EntryKind>,
) -> (Vec<Entry>, u64) {
    let (mut from, hi) = ((as_of + 1).max(log.first_index()), log.last_index() + 1);
    let (mut out, mut unreadable, mut single_until) = (Vec::new(), 0, 0);
    let mut chunk = Vec::new();
    while from < hi {
        chunk.clear();
        let to = if from < single_until { from + 1 } else { hi };
        if log.read_range(from, to, SCAN_CHUNK_BYTES, &mut chunk).is_err() {
            unreadable += 1;
            from += 1;
            single_until = from + SINGLE_STEPS_AFTER_ERROR;
            continue;
        }
        let Some(last) = chunk.last() else { break };
        from = last.index + 1;
        for e in chunk.drain(..) {
            if let Some(kind @ dledger_raft::EntryKind::SessionCommand) =
                e.payload.first().copied().and_then(&decode_kind)
            {
                out.push(Entry { index: e.index, term: e.term, kind, payload: e.payload.slice(1..) });
            }
        }
    }
    (out, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, loaded) = SessionsFile::load(dir.path());
        assert_eq!(loaded, Ok(None));
        let mut sessions = dledger_raft::Sessions::default();
        let session = dledger_raft::ProducerSession { producer_id: 3, epoch: 1, seq: 0, time_ms: 10 };
        sessions.accept(&session, 1, 5, 2);
        sessions.commit_to(7);
        file.save(sessions.table()).unwrap();
        assert_eq!(file.saved_as_of(), 7);
        let (again, loaded) = SessionsFile::load(dir.path());
        assert_eq!(loaded.as_ref().ok().cloned().flatten().as_ref(), Some(sessions.table()));
        assert_eq!(again.saved_as_of(), 7);
        let path = dir.path().join(SESSIONS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(SessionsFile::load(dir.path()).1.is_err_and(|e| e.contains("damaged")));
    }
}
