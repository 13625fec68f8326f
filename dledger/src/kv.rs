//! A small key-value store for `dledger server --state-machine kv`: a
//! replicated map whose state, and so whose snapshot, grows with what is
//! written (unlike `checksum`), for trying and testing snapshots.
//!
//! An entry `key=value` sets `key` (the bytes before the first `=`; an
//! entry without one sets the whole entry as a key with an empty value).
//! A query `key` answers its value (empty when unset); the empty query
//! answers the state's digest: the CRC32C of every (key, value) in key
//! order, then the number of keys, 12 bytes little-endian, so two replicas
//! can be compared.
//!
//! ```text
//! snapshot = count u64 | (key_len u32 | key | value_len u32 | value)*, in key order
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::Bytes;
use dledger_server::{CommittedEntry, StateMachine, StateMachineError};

/// The map.
#[derive(Debug, Default)]
pub struct Kv {
    map: BTreeMap<Bytes, Bytes>,
}

fn split(payload: &Bytes) -> (Bytes, Bytes) {
    match payload.iter().position(|&b| b == b'=') {
        Some(k) => (payload.slice(..k), payload.slice(k + 1..)),
        None => (payload.clone(), Bytes::new()),
    }
}

impl Kv {
    /// CRC32C over every (key, value) in key order, and the number of keys.
    pub fn digest(&self) -> [u8; 12] {
        let mut crc = 0;
        for (k, v) in &self.map {
            crc = crc32c::crc32c_append(crc, &(k.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, k);
            crc = crc32c::crc32c_append(crc, &(v.len() as u32).to_le_bytes());
            crc = crc32c::crc32c_append(crc, v);
        }
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&crc.to_le_bytes());
        b[4..].copy_from_slice(&(self.map.len() as u64).to_le_bytes());
        b
    }
}

impl StateMachine for Kv {
    fn apply(&mut self, entries: &[CommittedEntry], outputs: &mut Vec<Bytes>) -> Result<(), StateMachineError> {
        for e in entries {
            let (k, v) = split(&e.payload);
            self.map.insert(k, v);
            outputs.push(Bytes::new());
        }
        Ok(())
    }

    fn query(&mut self, query: &[u8]) -> Result<Bytes, StateMachineError> {
        if query.is_empty() {
            return Ok(Bytes::copy_from_slice(&self.digest()));
        }
        Ok(self.map.get(query).cloned().unwrap_or_default())
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<(), StateMachineError> {
        out.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (k, v) in &self.map {
            out.write_all(&(k.len() as u32).to_le_bytes())?;
            out.write_all(k)?;
            out.write_all(&(v.len() as u32).to_le_bytes())?;
            out.write_all(v)?;
        }
        Ok(())
    }

    fn restore(&mut self, snapshot: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut n = [0u8; 8];
        snapshot.read_exact(&mut n)?;
        let mut map = BTreeMap::new();
        let field = |r: &mut dyn Read| -> Result<Bytes, StateMachineError> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
            r.read_exact(&mut b)?;
            Ok(Bytes::from(b))
        };
        for _ in 0..u64::from_le_bytes(n) {
            let k = field(snapshot)?;
            let v = field(snapshot)?;
            map.insert(k, v);
        }
        self.map = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_sets_keys_answers_them_and_restores_from_its_snapshot() {
        let mut kv = Kv::default();
        let e = |i, p: &'static [u8]| CommittedEntry { index: i, term: 1, payload: Bytes::from_static(p) };
        let mut out = Vec::new();
        kv.apply(&[e(1, b"a=1"), e(2, b"b=2=two"), e(3, b"a=3"), e(4, b"bare")], &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(kv.query(b"a").unwrap(), Bytes::from_static(b"3"));
        assert_eq!(kv.query(b"b").unwrap(), Bytes::from_static(b"2=two"));
        assert_eq!(kv.query(b"bare").unwrap(), Bytes::new());
        assert_eq!(kv.query(b"none").unwrap(), Bytes::new());
        let mut snap = Vec::new();
        kv.snapshot(&mut snap).unwrap();
        let mut back = Kv::default();
        back.restore(&mut &snap[..]).unwrap();
        assert_eq!(back.query(b"").unwrap(), kv.query(b"").unwrap());
        assert_eq!(back.map, kv.map);
        // A truncated snapshot is an error, not a half state.
        let mut cut = Kv::default();
        assert!(cut.restore(&mut &snap[..snap.len() - 1]).is_err());
    }
}
