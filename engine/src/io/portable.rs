//! The portable backend: `pwrite` + `fdatasync` on a worker thread.
//!
//! Used where io_uring cannot be set up or the file system refuses O_DIRECT.
//! The worker keeps the caller's loop non-blocking: `submit` hands the request
//! over a channel, the worker does the I/O, sends the result back and raises
//! the eventfd.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::mpsc;
use std::thread;

use super::{drain_eventfd, new_eventfd, signal_eventfd, Backend, BackendKind, Completion, WriteReq};
use crate::faults::{FailPoint, Faults};

/// A request as sent to the worker: the pointer travels as an address.
struct Job {
    token: u64,
    fd: RawFd,
    addr: usize,
    len: usize,
    offset: u64,
}

pub struct PortableBackend {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Completion>,
    worker: Option<thread::JoinHandle<()>>,
    eventfd: RawFd,
    in_flight: bool,
}

impl std::fmt::Debug for PortableBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortableBackend").field("in_flight", &self.in_flight).finish()
    }
}

fn run(job: &Job, faults: &Faults) -> Result<(), (&'static str, io::Error)> {
    if let Some(e) = faults.take(FailPoint::Write) {
        return Err(("write", e));
    }
    let mut done = 0usize;
    while done < job.len {
        // SAFETY: `submit`'s contract keeps addr..addr+len valid and unmodified and fd open
        // until this job's completion is reaped.
        let n = unsafe {
            libc::pwrite(
                job.fd,
                (job.addr + done) as *const libc::c_void,
                job.len - done,
                (job.offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(("write", e));
        }
        if n == 0 {
            return Err(("write", io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing")));
        }
        done += n as usize;
    }
    if let Some(e) = faults.take(FailPoint::Sync) {
        return Err(("fdatasync", e));
    }
    // SAFETY: plain syscall on an fd the caller keeps open.
    if unsafe { libc::fdatasync(job.fd) } != 0 {
        return Err(("fdatasync", io::Error::last_os_error()));
    }
    Ok(())
}

impl PortableBackend {
    pub fn new(faults: Faults) -> io::Result<PortableBackend> {
        let eventfd = new_eventfd()?;
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel();
        let worker = thread::Builder::new().name("dledger-io".into()).spawn(move || {
            for job in job_rx {
                let result = run(&job, &faults);
                if done_tx.send(Completion { token: job.token, result }).is_err() {
                    break;
                }
                signal_eventfd(eventfd);
            }
        })?;
        Ok(PortableBackend { jobs: Some(job_tx), done: done_rx, worker: Some(worker), eventfd, in_flight: false })
    }
}

impl Backend for PortableBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Portable
    }

    /// # Safety
    /// As [`Backend::submit`]: the buffer and fd outlive the request.
    unsafe fn submit(&mut self, req: WriteReq) -> io::Result<()> {
        assert!(!self.in_flight, "one write in flight at a time");
        let job = Job { token: req.token, fd: req.fd, addr: req.buf as usize, len: req.len, offset: req.offset };
        self.jobs
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| io::Error::other("portable I/O worker stopped"))?;
        self.in_flight = true;
        Ok(())
    }

    fn poll(&mut self) -> Option<Completion> {
        drain_eventfd(self.eventfd);
        let c = self.done.try_recv().ok()?;
        self.in_flight = false;
        Some(c)
    }

    fn wait(&mut self) -> Completion {
        assert!(self.in_flight, "wait with nothing in flight");
        let c = self.done.recv().expect("portable I/O worker alive while a job is in flight");
        drain_eventfd(self.eventfd);
        self.in_flight = false;
        c
    }

    fn eventfd(&self) -> RawFd {
        self.eventfd
    }

    fn forget_file(&mut self, _fd: RawFd) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PortableBackend {
    fn drop(&mut self) {
        if self.in_flight {
            let _ = self.wait();
        }
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        // SAFETY: we own this fd and close it once, after the worker (its other user) exited.
        unsafe { libc::close(self.eventfd) };
    }
}
