//! A trivial state machine for `dledger server --state-machine checksum`:
//! it folds every applied payload into a running CRC32C and a count, so that
//! a benchmark can measure what feeding a state machine costs a node (the
//! apply thread, the channel, one output per entry) with almost nothing
//! spent in the state machine itself.

use std::io::{Read, Write};

use bytes::Bytes;
use dledger_server::{CommittedEntry, StateMachine, StateMachineError};

/// The running checksum of everything applied.
#[derive(Debug, Default)]
pub struct Checksum {
    crc: u32,
    entries: u64,
}

impl Checksum {
    fn state(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.crc.to_le_bytes());
        b[4..].copy_from_slice(&self.entries.to_le_bytes());
        b
    }
}

impl StateMachine for Checksum {
    fn apply(&mut self, entries: &[CommittedEntry], outputs: &mut Vec<Bytes>) -> Result<(), StateMachineError> {
        for e in entries {
            self.crc = crc32c::crc32c_append(self.crc, &e.payload);
            self.entries += 1;
            outputs.push(Bytes::new());
        }
        Ok(())
    }

    /// Answers 12 bytes: the CRC32C (u32) and the entry count (u64), little-endian.
    fn query(&mut self, _query: &[u8]) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::copy_from_slice(&self.state()))
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        out.write_all(&self.state())?;
        Ok(())
    }

    fn restore(&mut self, snapshot: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut b = [0u8; 12];
        snapshot.read_exact(&mut b)?;
        self.crc = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        self.entries = u64::from_le_bytes(b[4..].try_into().expect("8 bytes"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_folds_every_payload_and_restores_from_its_snapshot() {
        let mut c = Checksum::default();
        let e = |i, p: &'static [u8]| CommittedEntry { index: i, term: 1, payload: Bytes::from_static(p) };
        let mut out = Vec::new();
        c.apply(&[e(1, b"a"), e(2, b"b")], &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(c.crc, crc32c::crc32c(b"ab"));
        let mut snap = Vec::new();
        c.snapshot(&mut snap).unwrap();
        let mut back = Checksum::default();
        back.restore(&mut &snap[..]).unwrap();
        assert_eq!(back.query(b"").unwrap(), c.query(b"").unwrap());
    }
}
