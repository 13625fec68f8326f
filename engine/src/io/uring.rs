//! The io_uring backend: O_DIRECT writes from the registered batch ring,
//! linked to an `fdatasync` (or a single `RWF_DSYNC` write).
//!
//! The whole batch ring is registered as buffer 0 when RLIMIT_MEMLOCK (or
//! CAP_IPC_LOCK) allows, so writes are `WriteFixed` and the kernel skips
//! pinning pages per I/O; otherwise plain `Write` is used and this is logged.
//! The segment being written is registered as file 0 and updated on roll.
//! Completions raise the ring's registered eventfd.

use std::io;
use std::os::unix::io::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::{drain_eventfd, new_eventfd, signal_eventfd, Backend, BackendKind, Completion, WriteReq};
use crate::config::SyncMode;
use crate::faults::{FailPoint, Faults};

const WRITE_TAG: u64 = 0;
const SYNC_TAG: u64 = 1;

#[derive(Debug)]
struct InFlight {
    token: u64,
    len: usize,
    cqes_left: u32,
    error: Option<(&'static str, io::Error)>,
}

pub struct UringBackend {
    ring: IoUring,
    eventfd: RawFd,
    /// Start and length of the registered buffer, if registration succeeded.
    registered: Option<(usize, usize)>,
    registered_fd: Option<RawFd>,
    sync_mode: SyncMode,
    faults: Faults,
    in_flight: Option<InFlight>,
    injected: Option<Completion>,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend").field("registered", &self.registered).finish()
    }
}

impl UringBackend {
    /// Sets up a ring and tries to register `buf..buf+len` as buffer 0.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid for the life of the backend.
    pub unsafe fn new(buf: *mut u8, len: usize, sync_mode: SyncMode, faults: Faults) -> io::Result<UringBackend> {
        let ring = IoUring::new(8)?;
        let eventfd = new_eventfd()?;
        if let Err(e) = ring.submitter().register_eventfd(eventfd) {
            // SAFETY: we own this fd and close it once.
            unsafe { libc::close(eventfd) };
            return Err(e);
        }
        let iov = libc::iovec { iov_base: buf.cast(), iov_len: len };
        // SAFETY: the caller keeps the buffer alive for the backend's life, which
        // outlives the ring's registration (the ring is dropped with the backend).
        let registered = match unsafe { ring.submitter().register_buffers(&[iov]) } {
            Ok(()) => Some((buf as usize, len)),
            Err(e) => {
                tracing::warn!(error = %e, size_bytes = len, "io_uring buffer registration refused (RLIMIT_MEMLOCK?); using unregistered writes");
                None
            }
        };
        Ok(UringBackend {
            ring,
            eventfd,
            registered,
            registered_fd: None,
            sync_mode,
            faults,
            in_flight: None,
            injected: None,
        })
    }

    fn reap(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let Some(f) = self.in_flight.as_mut() else {
                panic!("completion {} with nothing in flight", cqe.user_data());
            };
            assert_eq!(cqe.user_data() >> 1, f.token, "completion for a request not in flight");
            f.cqes_left -= 1;
            let res = cqe.result();
            let op = if cqe.user_data() & 1 == WRITE_TAG { "write" } else { "fdatasync" };
            if f.error.is_none() {
                if res < 0 {
                    f.error = Some((op, io::Error::from_raw_os_error(-res)));
                } else if op == "write" && res as usize != f.len {
                    f.error = Some((
                        "write",
                        io::Error::new(io::ErrorKind::WriteZero, format!("short write: {res} of {} bytes", f.len)),
                    ));
                } else if op == "fdatasync" || self.sync_mode == SyncMode::Dsync {
                    if let Some(e) = self.faults.take(FailPoint::Sync) {
                        f.error = Some(("fdatasync", e));
                    }
                }
            }
        }
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    /// # Safety
    /// As [`Backend::submit`]: the buffer and fd outlive the request.
    unsafe fn submit(&mut self, req: WriteReq) -> io::Result<()> {
        assert!(self.in_flight.is_none() && self.injected.is_none(), "one write in flight at a time");
        if let Some(e) = self.faults.take(FailPoint::Write) {
            self.injected = Some(Completion { token: req.token, result: Err(("write", e)) });
            signal_eventfd(self.eventfd);
            return Ok(());
        }
        if self.registered_fd != Some(req.fd) {
            if self.registered_fd.is_none() {
                self.ring.submitter().register_files(&[req.fd])?;
            } else {
                self.ring.submitter().register_files_update(0, &[req.fd])?;
            }
            self.registered_fd = Some(req.fd);
        }
        let file = types::Fixed(0);
        let len = u32::try_from(req.len).expect("batch fits in u32");
        let rw_flags = if self.sync_mode == SyncMode::Dsync { libc::RWF_DSYNC } else { 0 };
        let write = match self.registered {
            Some((start, rlen)) if (req.buf as usize) >= start && req.buf as usize + req.len <= start + rlen => {
                opcode::WriteFixed::new(file, req.buf, len, 0).offset(req.offset).rw_flags(rw_flags).build()
            }
            _ => opcode::Write::new(file, req.buf, len).offset(req.offset).rw_flags(rw_flags).build(),
        };
        let write = write.user_data(req.token << 1 | WRITE_TAG);
        let mut cqes_left = 1;
        let mut sq = self.ring.submission();
        // SAFETY: the caller guarantees the buffer and fd outlive the request (see `Backend::submit`).
        unsafe {
            match self.sync_mode {
                SyncMode::Dsync => sq.push(&write).expect("ring has room for one request"),
                SyncMode::LinkedFdatasync => {
                    let sync = opcode::Fsync::new(file)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(req.token << 1 | SYNC_TAG);
                    sq.push(&write.flags(squeue::Flags::IO_LINK)).expect("ring has room");
                    sq.push(&sync).expect("ring has room");
                    cqes_left = 2;
                }
            }
        }
        drop(sq);
        self.in_flight = Some(InFlight { token: req.token, len: req.len, cqes_left, error: None });
        loop {
            match self.ring.submit() {
                // The kernel may take fewer entries than queued; submit the rest.
                Ok(_) if !self.ring.submission().is_empty() => continue,
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    self.in_flight = None;
                    return Err(e);
                }
            }
        }
    }

    fn poll(&mut self) -> Option<Completion> {
        if let Some(c) = self.injected.take() {
            drain_eventfd(self.eventfd);
            return Some(c);
        }
        drain_eventfd(self.eventfd);
        self.in_flight.as_ref()?;
        self.reap();
        if self.in_flight.as_ref().is_some_and(|f| f.cqes_left == 0) {
            let f = self.in_flight.take().expect("checked");
            return Some(Completion { token: f.token, result: f.error.map_or(Ok(()), Err) });
        }
        None
    }

    fn wait(&mut self) -> Completion {
        loop {
            if let Some(c) = self.poll() {
                return c;
            }
            assert!(self.in_flight.is_some(), "wait with nothing in flight");
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring_enter failed while waiting: {e}"),
            }
        }
    }

    fn eventfd(&self) -> RawFd {
        self.eventfd
    }

    fn forget_file(&mut self, fd: RawFd) -> io::Result<()> {
        if self.registered_fd == Some(fd) {
            assert!(self.in_flight.is_none(), "the file of the write in flight is never closed");
            self.ring.submitter().register_files_update(0, &[-1])?;
            self.registered_fd = Some(-1);
        }
        Ok(())
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Never free the buffer under the kernel: finish what is in flight first.
        if self.in_flight.is_some() {
            let _ = self.wait();
        }
        // SAFETY: we own this fd and close it once.
        unsafe { libc::close(self.eventfd) };
    }
}
