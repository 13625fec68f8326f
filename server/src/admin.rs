//! Operators' commands that every replica's host carries out: replicated
//! as [`EntryKind::Admin`](dledger_raft::EntryKind::Admin) entries, so
//! that every replica acts on the same command at the same log index, and
//! never handed to a state machine or shown to readers (a read returns an
//! admin entry with an empty payload, as a leader's no-op).
//!
//! ```text
//! payload = tag u8 | fields
//! tag 1   PurgeTo   index u64   (entries up to `index` may go)
//! ```
//!
//! A replica that does not know a tag (a newer leader's command) logs it
//! and goes on: an admin command is never needed for safety.

use bytes::{BufMut, Bytes, BytesMut};

/// A command for every replica's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminCommand {
    /// Purge whole sealed segments holding only entries up to `index`, as
    /// far as this replica's own limits allow (committed, applied, durable,
    /// and for a state machine snapshotted), holds for followers aside: a
    /// follower left behind is sent the log start, or a snapshot.
    PurgeTo(u64),
}

impl AdminCommand {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(9);
        match self {
            AdminCommand::PurgeTo(index) => {
                b.put_u8(1);
                b.put_u64_le(*index);
            }
        }
        b.freeze()
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<AdminCommand, String> {
        match payload.split_first() {
            Some((1, rest)) if rest.len() == 8 => {
                Ok(AdminCommand::PurgeTo(u64::from_le_bytes(rest.try_into().expect("8 bytes"))))
            }
            Some((tag, _)) => Err(format!("unknown admin command {tag} ({} bytes)", payload.len())),
            None => Err("empty admin command".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_round_trips_and_anything_else_is_named() {
        let c = AdminCommand::PurgeTo(1 << 40);
        assert_eq!(AdminCommand::decode(&c.encode()), Ok(c));
        assert!(AdminCommand::decode(&[1, 2, 3]).unwrap_err().contains("unknown admin command 1"));
        assert!(AdminCommand::decode(&[9]).unwrap_err().contains("unknown admin command 9"));
        assert!(AdminCommand::decode(&[]).is_err());
    }
}
