//! On-disk framing of batches and entries.
//!
//! A batch starts at a block boundary of its segment and is padded with zeros to
//! the next one:
//!
//! ```text
//! +-------------------- batch header, 32 bytes ---------------------+
//! | magic u32 | header_crc u32 | first_index u64 | entry_count u32  |
//! | body_len u32 | flags u32 | reserved u32 (zero)                 |
//! +-------------------- entry, 24 + len bytes (repeated) -----------+
//! | crc u32 | len u32 | index u64 | term u64 | payload [len]        |
//! +-------------------- zero padding to the block boundary ---------+
//! ```
//!
//! All integers are little-endian. Every checksum is CRC32C seeded with the
//! segment's random salt, so bytes left over from an earlier life of the file
//! (or zero fill) never verify: `header_crc` covers bytes 8..32 of the header,
//! an entry's `crc` covers bytes 4..24 of its header and its payload.
//!
//! Flags: [`FLAG_SEAL`] marks the last batch of a segment (no entries): the
//! segment ends there, whatever bytes follow (a recycled file's old contents).
//!
//! Invariants checked on decode: entry indexes run `first_index,
//! first_index+1, …` with no gap; `body_len` is exactly the sum of the entry
//! sizes; a batch never extends past its segment.

/// `b"DLB1"` read as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"DLB1");
pub const BATCH_HEADER_SIZE: usize = 32;
pub const ENTRY_HEADER_SIZE: usize = 24;
/// The batch ends its segment; it carries no entries.
pub const FLAG_SEAL: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_SEAL;

/// Starts a CRC32C that is specific to one segment.
pub fn salted(salt: u64) -> u32 {
    crc32c::crc32c(&salt.to_le_bytes())
}

/// The decoded header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub first_index: u64,
    pub entry_count: u32,
    pub body_len: u32,
    pub flags: u32,
}

impl BatchHeader {
    pub fn is_seal(&self) -> bool {
        self.flags & FLAG_SEAL != 0
    }

    /// Writes the header, checksum included, into `out[..BATCH_HEADER_SIZE]`.
    pub fn encode(&self, salt: u64, out: &mut [u8]) {
        out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_index.to_le_bytes());
        out[16..20].copy_from_slice(&self.entry_count.to_le_bytes());
        out[20..24].copy_from_slice(&self.body_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.flags.to_le_bytes());
        out[28..32].fill(0);
        let crc = crc32c::crc32c_append(salted(salt), &out[8..32]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and verifies a header; `None` when magic or checksum do not match.
    pub fn decode(salt: u64, bytes: &[u8]) -> Option<BatchHeader> {
        if bytes.len() < BATCH_HEADER_SIZE || read_u32(bytes, 0) != BATCH_MAGIC {
            return None;
        }
        let crc = crc32c::crc32c_append(salted(salt), &bytes[8..32]);
        if crc != read_u32(bytes, 4) {
            return None;
        }
        let h = BatchHeader {
            first_index: read_u64(bytes, 8),
            entry_count: read_u32(bytes, 16),
            body_len: read_u32(bytes, 20),
            flags: read_u32(bytes, 24),
        };
        let sane = h.flags & !KNOWN_FLAGS == 0 && (!h.is_seal() || h.entry_count == 0);
        sane.then_some(h)
    }

    /// Bytes from the header's start to the end of its last entry (no padding).
    pub fn unpadded_len(&self) -> usize {
        BATCH_HEADER_SIZE + self.body_len as usize
    }
}

/// Writes one entry (header and payload) into `out`, which must be exactly
/// `ENTRY_HEADER_SIZE` plus the parts' total length; the payload is the
/// concatenation of `parts`.
pub fn encode_entry(salt: u64, index: u64, term: u64, parts: &[&[u8]], out: &mut [u8]) {
    let payload_len = out.len() - ENTRY_HEADER_SIZE;
    debug_assert_eq!(payload_len, parts.iter().map(|p| p.len()).sum::<usize>());
    let len = u32::try_from(payload_len).expect("entry length checked by caller");
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&index.to_le_bytes());
    out[16..24].copy_from_slice(&term.to_le_bytes());
    let mut crc = crc32c::crc32c_append(salted(salt), &out[4..24]);
    let mut at = ENTRY_HEADER_SIZE;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        crc = crc32c::crc32c_append(crc, part);
        at += part.len();
    }
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// A verified entry inside a buffer: where its payload lies and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryView {
    pub index: u64,
    pub term: u64,
    /// Offset of the payload from the start of the slice given to [`decode_entry`].
    pub payload_offset: usize,
    pub payload_len: usize,
}

impl EntryView {
    pub fn encoded_len(&self) -> usize {
        ENTRY_HEADER_SIZE + self.payload_len
    }
}

/// Decodes and verifies the entry at the start of `bytes`.
pub fn decode_entry(salt: u64, bytes: &[u8]) -> Option<EntryView> {
    if bytes.len() < ENTRY_HEADER_SIZE {
        return None;
    }
    let len = read_u32(bytes, 4) as usize;
    let end = ENTRY_HEADER_SIZE.checked_add(len)?;
    if end > bytes.len() {
        return None;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(salted(salt), &bytes[4..24]), &bytes[ENTRY_HEADER_SIZE..end]);
    if crc != read_u32(bytes, 0) {
        return None;
    }
    Some(EntryView {
        index: read_u64(bytes, 8),
        term: read_u64(bytes, 16),
        payload_offset: ENTRY_HEADER_SIZE,
        payload_len: len,
    })
}

/// Verifies a whole batch body; returns its entries' views (offsets relative to
/// the batch start) or `None` if any entry fails or the indexes are not contiguous.
pub fn decode_body(salt: u64, header: &BatchHeader, batch: &[u8], out: &mut Vec<EntryView>) -> bool {
    out.clear();
    let end = header.unpadded_len();
    if end > batch.len() {
        return false;
    }
    let mut pos = BATCH_HEADER_SIZE;
    for i in 0..header.entry_count as u64 {
        let Some(mut view) = decode_entry(salt, &batch[pos..end]) else {
            return false;
        };
        if view.index != header.first_index + i {
            return false;
        }
        view.payload_offset += pos;
        pos += view.encoded_len();
        out.push(view);
    }
    pos == end
}

pub fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(salt: u64, first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let body: usize = payloads.iter().map(|p| ENTRY_HEADER_SIZE + p.len()).sum();
        let mut out = vec![0u8; BATCH_HEADER_SIZE + body];
        let mut pos = BATCH_HEADER_SIZE;
        for (i, p) in payloads.iter().enumerate() {
            let n = ENTRY_HEADER_SIZE + p.len();
            encode_entry(salt, first + i as u64, 7, &[p], &mut out[pos..pos + n]);
            pos += n;
        }
        let h = BatchHeader { first_index: first, entry_count: payloads.len() as u32, body_len: body as u32, flags: 0 };
        h.encode(salt, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let b = batch(42, 10, &[b"a", b"", b"hello"]);
        let h = BatchHeader::decode(42, &b).expect("header");
        assert_eq!(h.first_index, 10);
        let mut views = Vec::new();
        assert!(decode_body(42, &h, &b, &mut views));
        assert_eq!(views.len(), 3);
        let v = views[2];
        assert_eq!((v.index, v.term), (12, 7));
        assert_eq!(&b[v.payload_offset..v.payload_offset + v.payload_len], b"hello");
    }

    #[test]
    fn wrong_salt_never_verifies() {
        let b = batch(1, 1, &[b"x"]);
        assert!(BatchHeader::decode(2, &b).is_none());
        assert!(decode_entry(2, &b[BATCH_HEADER_SIZE..]).is_none());
    }

    #[test]
    fn zeros_never_verify() {
        assert!(BatchHeader::decode(0, &[0u8; 64]).is_none());
        assert!(decode_entry(0, &[0u8; 64]).is_none());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let b = batch(9, 5, &[b"abc", b"defgh"]);
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                let ok = BatchHeader::decode(9, &c).is_some_and(|h| {
                    let mut v = Vec::new();
                    decode_body(9, &h, &c, &mut v)
                });
                assert!(!ok, "flip of byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn gap_in_indexes_is_rejected() {
        let mut b = batch(3, 1, &[b"a", b"b"]);
        let h = BatchHeader::decode(3, &b).unwrap();
        // Re-encode the second entry with a skipped index.
        let at = BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE + 1;
        encode_entry(3, 9, 7, &[b"b"], &mut b[at..at + ENTRY_HEADER_SIZE + 1]);
        let mut v = Vec::new();
        assert!(!decode_body(3, &h, &b, &mut v));
    }
}
