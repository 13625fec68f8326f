//! The simulation's state machine and its snapshots: what a host with a
//! registered state machine does, small enough to check at every index.
//!
//! The state is a digest folded over every applied entry (index, term,
//! kind, payload), so two nodes' states at one index are equal exactly when
//! they applied the same entries; the `machine_state` checker compares them.
//! A snapshot's bytes are `applied index | applied term | digest | filler`
//! (the filler, derived from the digest, makes a snapshot span several
//! chunks), identified by a [`SnapshotId`] with the CRC32C of those bytes.
//!
//! Durable files live on the node's [`SimDisk`](super::storage::SimDisk):
//! complete snapshots (written atomically, the newest `SNAPSHOTS_KEPT`
//! kept) and the partial file of a fetch, whose crash model is in
//! `storage`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::snapshot_pull::{chunk_crc, SnapshotId, SnapshotMessage};
use crate::{Entry, LogIndex, Term};

/// Complete snapshots a node keeps.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Bytes per chunk of a fetch.
pub const CHUNK_BYTES: u32 = 48;

/// One node's state machine, in memory (lost on a crash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimMachine {
    /// Last index applied.
    pub applied: LogIndex,
    /// Its term.
    pub applied_term: Term,
    /// The fold of everything applied.
    pub digest: u64,
}

fn mix(mut h: u64, v: u64) -> u64 {
    // splitmix64 over the running value.
    h ^= v.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

impl SimMachine {
    /// Applies the next entry (the caller guarantees the order).
    pub fn apply(&mut self, entry: &Entry) {
        assert_eq!(entry.index, self.applied + 1, "a state machine applies entries in order, once");
        let mut h = mix(self.digest, entry.index);
        h = mix(h, entry.term);
        h = mix(h, entry.kind as u64);
        for chunk in entry.payload.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            h = mix(h, u64::from_le_bytes(b));
        }
        self.digest = mix(h, entry.payload.len() as u64);
        self.applied = entry.index;
        self.applied_term = entry.term;
    }

    /// The snapshot of this state: its identity and bytes.
    pub fn snapshot(&self) -> (SnapshotId, Bytes) {
        let mut b = BytesMut::new();
        b.put_u64_le(self.applied);
        b.put_u64_le(self.applied_term);
        b.put_u64_le(self.digest);
        let filler = (self.digest % 160) as usize;
        b.extend((0..filler).map(|k| (self.digest >> (k % 8 * 8)) as u8 ^ k as u8));
        let body = b.freeze();
        let id = SnapshotId {
            index: self.applied,
            term: self.applied_term,
            len: body.len() as u64,
            crc: crc32c::crc32c(&body),
        };
        (id, body)
    }

    /// The state a snapshot's bytes hold (they passed their checksum).
    pub fn restore(body: &[u8]) -> SimMachine {
        let u = |k: usize| u64::from_le_bytes(body[8 * k..8 * k + 8].try_into().expect("8 bytes"));
        SimMachine { applied: u(0), applied_term: u(1), digest: u(2) }
    }
}

/// A source's answer to a snapshot request, from its complete `snapshots`
/// (oldest first): the wanted file from `offset` if it still has it, else
/// its newest from byte 0 if that covers `min_index`, else `Unavailable`.
pub fn serve(snapshots: &[(SnapshotId, Bytes)], request: &SnapshotMessage) -> Option<SnapshotMessage> {
    let SnapshotMessage::Request { min_index, want, offset, max_bytes } = *request else { return None };
    let (id, body, offset) = match snapshots.iter().find(|(id, _)| Some(*id) == want) {
        Some((id, body)) if offset <= id.len => (*id, body, offset),
        _ => match snapshots.last() {
            Some((id, body)) if id.index >= min_index => (*id, body, 0),
            newest => {
                let newest = newest.map_or(0, |(id, _)| id.index);
                return Some(SnapshotMessage::Unavailable { min_index, newest });
            }
        },
    };
    let end = (offset + max_bytes as u64).min(id.len);
    let data = body.slice(offset as usize..end as usize);
    let crc = chunk_crc(offset, &data);
    Some(SnapshotMessage::Chunk { id, offset, data, crc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryKind;

    fn entry(index: u64, payload: &'static [u8]) -> Entry {
        Entry { index, term: 1, kind: EntryKind::Command, payload: Bytes::from_static(payload) }
    }

    #[test]
    fn equal_histories_equal_states_and_a_snapshot_restores_one() {
        let (mut a, mut b) = (SimMachine::default(), SimMachine::default());
        a.apply(&entry(1, b"x"));
        b.apply(&entry(1, b"y"));
        assert_ne!(a.digest, b.digest);
        let (id, body) = a.snapshot();
        assert_eq!((id.index, id.len), (1, body.len() as u64));
        assert_eq!(SimMachine::restore(&body), a);
    }

    #[test]
    fn a_source_serves_the_wanted_file_or_its_newest_from_the_start() {
        let mut m = SimMachine::default();
        m.apply(&entry(1, b"a"));
        let old = m.snapshot();
        m.apply(&entry(2, b"b"));
        let new = m.snapshot();
        let files = vec![old.clone(), new.clone()];
        let ask = |want, offset, min_index| SnapshotMessage::Request { min_index, want, offset, max_bytes: 10 };
        let Some(SnapshotMessage::Chunk { id, offset, data, .. }) = serve(&files, &ask(Some(old.0), 10, 1)) else {
            panic!()
        };
        assert_eq!((id, offset, &data[..]), (old.0, 10, &old.1[10..20]));
        let Some(SnapshotMessage::Chunk { id, offset, .. }) = serve(&files, &ask(None, 10, 1)) else { panic!() };
        assert_eq!((id, offset), (new.0, 0));
        assert_eq!(serve(&files, &ask(None, 0, 3)), Some(SnapshotMessage::Unavailable { min_index: 3, newest: 2 }));
    }
}
