//! Primitive field codecs shared by the message modules. Every getter checks
//! that the bytes are there and fails with [`WireError::Malformed`] naming
//! what was being read; nothing panics on input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::WireError;

pub(crate) fn need(p: &Bytes, n: usize, what: &'static str) -> Result<(), WireError> {
    if p.remaining() < n {
        Err(WireError::Malformed(what))
    } else {
        Ok(())
    }
}

pub(crate) fn get_u8(p: &mut Bytes, what: &'static str) -> Result<u8, WireError> {
    need(p, 1, what)?;
    Ok(p.get_u8())
}

pub(crate) fn get_u32(p: &mut Bytes, what: &'static str) -> Result<u32, WireError> {
    need(p, 4, what)?;
    Ok(p.get_u32_le())
}

pub(crate) fn get_u64(p: &mut Bytes, what: &'static str) -> Result<u64, WireError> {
    need(p, 8, what)?;
    Ok(p.get_u64_le())
}

pub(crate) fn get_bytes(p: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    let n = get_u32(p, what)? as usize;
    need(p, n, what)?;
    Ok(p.split_to(n))
}

pub(crate) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(crate) fn get_str(p: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    let b = get_bytes(p, what)?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed(what))
}

pub(crate) fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    out.put_u8(v.is_some() as u8);
    out.put_u64_le(v.unwrap_or(0));
}

pub(crate) fn get_opt_u64(p: &mut Bytes, what: &'static str) -> Result<Option<u64>, WireError> {
    let some = get_u8(p, what)?;
    let v = get_u64(p, what)?;
    match some {
        0 => Ok(None),
        1 => Ok(Some(v)),
        _ => Err(WireError::Malformed(what)),
    }
}

/// A count read from the wire, bounded by what the remaining bytes could hold.
pub(crate) fn get_count(p: &mut Bytes, min_item_bytes: usize, what: &'static str) -> Result<usize, WireError> {
    let n = get_u32(p, what)? as usize;
    if n.saturating_mul(min_item_bytes) > p.remaining() {
        return Err(WireError::Malformed(what));
    }
    Ok(n)
}

pub(crate) fn get_bool(p: &mut Bytes, what: &'static str) -> Result<bool, WireError> {
    match get_u8(p, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Malformed(what)),
    }
}
