//! The two ways a batch reaches the disk, behind one small interface.
//!
//! A backend accepts one write-plus-data-sync at a time (the log never has two
//! batches in flight: see the crate docs on why that keeps recovery sound) and
//! reports its completion through [`Backend::poll`] without blocking, through
//! [`Backend::wait`] blocking, and by making its eventfd readable, so that a
//! single-threaded event loop can sleep on the fd.

use std::io;
use std::os::unix::io::RawFd;

pub mod portable;
pub mod uring;

/// Which backend a log runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Uring,
    Portable,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Portable => "portable",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One batch write followed by a data sync.
#[derive(Debug, Clone, Copy)]
pub struct WriteReq {
    pub token: u64,
    pub fd: RawFd,
    pub buf: *const u8,
    pub len: usize,
    pub offset: u64,
}

/// The outcome of a [`WriteReq`]; `op` names the failed step.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: Result<(), (&'static str, io::Error)>,
}

pub trait Backend: Send {
    fn kind(&self) -> BackendKind;

    /// Starts a write and its data sync.
    ///
    /// # Safety
    /// `req.buf..req.buf + req.len` must stay valid and unmodified, and `req.fd`
    /// open, until the completion for `req.token` has been returned by `poll`
    /// or `wait`. Only one request may be in flight.
    unsafe fn submit(&mut self, req: WriteReq) -> io::Result<()>;

    /// Returns the completion of the request in flight if it has finished.
    fn poll(&mut self) -> Option<Completion>;

    /// Blocks until the request in flight completes. Panics if none is.
    fn wait(&mut self) -> Completion;

    /// An fd that becomes readable when a completion may be ready.
    fn eventfd(&self) -> RawFd;

    /// Drops any reference the backend keeps to `fd`, which is about to be closed
    /// (a deleted segment's space is freed only when no reference is left).
    fn forget_file(&mut self, fd: RawFd) -> io::Result<()>;
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> io::Result<RawFd> {
    // SAFETY: plain syscall, no memory passed.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Resets an eventfd's counter so it stops being readable.
pub(crate) fn drain_eventfd(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64; the fd is non-blocking.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

pub(crate) fn signal_eventfd(fd: RawFd) {
    let v = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
}
