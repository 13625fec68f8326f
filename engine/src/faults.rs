//! Named fail points for tests (STYLE 12): each arms an errno that the next
//! matching operation returns instead of doing its I/O. All are inert unless
//! armed; the check is one relaxed atomic load per batch, not per entry.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Points {
    write: AtomicI32,
    sync: AtomicI32,
    prefill: AtomicI32,
}

/// Shared handle to the fail points of one log; clones arm the same points.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Points>);

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// The next batch write fails.
    Write,
    /// The next data sync fails (the write itself succeeded).
    Sync,
    /// The next segment preparation (fallocate and fill) fails.
    Prefill,
}

impl Faults {
    fn slot(&self, p: FailPoint) -> &AtomicI32 {
        match p {
            FailPoint::Write => &self.0.write,
            FailPoint::Sync => &self.0.sync,
            FailPoint::Prefill => &self.0.prefill,
        }
    }

    /// Arms `p` to fail once with `errno` (for example `libc::EIO`).
    pub fn arm(&self, p: FailPoint, errno: i32) {
        self.slot(p).store(errno, Ordering::SeqCst);
    }

    /// Returns the armed error once, disarming the point.
    pub(crate) fn take(&self, p: FailPoint) -> Option<std::io::Error> {
        let slot = self.slot(p);
        if slot.load(Ordering::Relaxed) == 0 {
            return None;
        }
        match slot.swap(0, Ordering::SeqCst) {
            0 => None,
            errno => Some(std::io::Error::from_raw_os_error(errno)),
        }
    }
}
