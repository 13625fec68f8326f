//! Block-aligned heap buffers for O_DIRECT I/O.
//!
//! Invariant: `ptr` is aligned to [`BLOCK_SIZE`], `len` is a multiple of it and
//! greater than zero, and the memory is zero-initialised at allocation, so the
//! buffer can be read as `&[u8]` at any time and handed to the kernel for DMA.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// The I/O unit: every O_DIRECT offset and length is a multiple of it.
pub const BLOCK_SIZE: usize = 4096;

/// Rounds `n` up to the next multiple of [`BLOCK_SIZE`].
pub const fn align_up(n: usize) -> usize {
    (n + BLOCK_SIZE - 1) & !(BLOCK_SIZE - 1)
}

/// Rounds `n` down to a multiple of [`BLOCK_SIZE`].
pub const fn align_down(n: usize) -> usize {
    n & !(BLOCK_SIZE - 1)
}

const _: () = assert!(BLOCK_SIZE.is_power_of_two());

/// An owned, zeroed, block-aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like a Box<[u8]>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes; `len` is rounded up to a block multiple.
    pub fn new(len: usize) -> AlignedBuf {
        let len = align_up(len.max(1));
        let layout = Layout::from_size_align(len, BLOCK_SIZE).expect("valid aligned layout");
        // SAFETY: the layout has a non-zero size (len >= BLOCK_SIZE).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (zeroed at allocation) for &self's life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// `len` bytes from `at`, without forming a reference to the rest of the
    /// buffer (which the kernel or an I/O thread may be reading).
    pub fn range_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        assert!(at.checked_add(len).is_some_and(|end| end <= self.len), "range {at}+{len} within {}", self.len);
        // SAFETY: at..at+len is inside the allocation (asserted), and &mut self makes this the
        // only Rust reference to those bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(at), len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BLOCK_SIZE).expect("valid aligned layout");
        // SAFETY: ptr was allocated in `new` with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_rounding() {
        let b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % BLOCK_SIZE, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_down(8191), 4096);
    }
}
