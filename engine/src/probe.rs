//! What a directory supports: io_uring, O_DIRECT, block size, memlock limit,
//! file system, and the measured latency of a small write plus data sync.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::aligned::{AlignedBuf, BLOCK_SIZE};
use crate::io::uring::UringBackend;
use crate::log::probe_direct;

/// The findings of [`probe`].
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub dir: PathBuf,
    /// `Ok` or why io_uring could not be set up.
    pub io_uring: Result<(), String>,
    pub o_direct: Result<(), String>,
    /// The file system's preferred I/O size (`st_blksize`).
    pub block_size_bytes: u64,
    pub file_system: String,
    /// RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited).
    pub memlock_bytes: Option<u64>,
    /// `/proc/sys/kernel/io_uring_disabled`, when the kernel has it.
    pub io_uring_disabled_sysctl: Option<String>,
    /// Median and max of 4 KiB write + fdatasync over `samples` tries, in microseconds.
    pub write_sync_us_p50: u64,
    pub write_sync_us_max: u64,
    pub samples: usize,
    /// The backend `BackendChoice::Auto` picks here.
    pub chosen_backend: &'static str,
}

fn fs_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x9123_683E => "btrfs".into(),
        0x6969 => "nfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6573_5546 => "fuse".into(),
        0x2FC1_2FC1 => "zfs".into(),
        m => format!("unknown (magic {m:#x})"),
    }
}

/// Probes `dir` (created if missing). Writes and removes one small file.
pub fn probe(dir: &Path) -> std::io::Result<ProbeReport> {
    std::fs::create_dir_all(dir)?;
    let o_direct = probe_direct(dir)?;
    let mut scratch = AlignedBuf::new(BLOCK_SIZE);
    // SAFETY: `scratch` outlives the backend, which is dropped at the end of this statement.
    let io_uring =
        unsafe { UringBackend::new(scratch.as_mut_ptr(), scratch.len(), Default::default(), Default::default()) }
            .map(drop)
            .map_err(|e| e.to_string());

    // SAFETY: statfs fills a zeroed struct we own; the path is a valid C string.
    let (file_system, block_size_bytes) = unsafe {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL in path");
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) == 0 {
            (fs_name(st.f_type as i64), st.f_bsize as u64)
        } else {
            ("unknown".into(), BLOCK_SIZE as u64)
        }
    };
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    let memlock_bytes =
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0 && rl.rlim_cur != libc::RLIM_INFINITY {
            Some(rl.rlim_cur)
        } else {
            None
        };
    let io_uring_disabled_sysctl =
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_string());

    // Latency of a 4 KiB write + fdatasync into a pre-filled file.
    let path = dir.join(".probe-latency");
    let _ = std::fs::remove_file(&path);
    let file = crate::segment::open_file(&path, true, o_direct.is_ok())?;
    let samples = 64usize;
    let block = AlignedBuf::new(BLOCK_SIZE);
    let file_size = (samples * BLOCK_SIZE) as u64;
    {
        use std::os::unix::fs::FileExt;
        let zeros = AlignedBuf::new(samples * BLOCK_SIZE);
        file.write_all_at(zeros.as_slice(), 0)?;
        file.sync_all()?;
        let mut lat = Vec::with_capacity(samples);
        for i in 0..samples {
            let t = Instant::now();
            file.write_all_at(block.as_slice(), (i * BLOCK_SIZE) as u64 % file_size)?;
            // SAFETY: plain syscall on an fd we own.
            if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lat.push(t.elapsed().as_micros() as u64);
        }
        lat.sort_unstable();
        let _ = std::fs::remove_file(&path);
        let chosen_backend = if io_uring.is_ok() && o_direct.is_ok() { "io_uring" } else { "portable" };
        Ok(ProbeReport {
            dir: dir.to_path_buf(),
            io_uring,
            o_direct,
            block_size_bytes,
            file_system,
            memlock_bytes,
            io_uring_disabled_sysctl,
            write_sync_us_p50: lat[samples / 2],
            write_sync_us_max: lat[samples - 1],
            samples,
            chosen_backend,
        })
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ok = |r: &Result<(), String>| match r {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("no ({e})"),
        };
        writeln!(f, "directory          {}", self.dir.display())?;
        writeln!(f, "file system        {}", self.file_system)?;
        writeln!(f, "io_uring           {}", ok(&self.io_uring))?;
        writeln!(f, "O_DIRECT           {}", ok(&self.o_direct))?;
        writeln!(f, "block size         {} bytes", self.block_size_bytes)?;
        match self.memlock_bytes {
            Some(b) => writeln!(f, "RLIMIT_MEMLOCK     {} KiB", b / 1024)?,
            None => writeln!(f, "RLIMIT_MEMLOCK     unlimited")?,
        }
        if let Some(s) = &self.io_uring_disabled_sysctl {
            writeln!(f, "io_uring_disabled  {s}")?;
        }
        writeln!(
            f,
            "4 KiB write+sync   p50 {} us, max {} us ({} samples)",
            self.write_sync_us_p50, self.write_sync_us_max, self.samples
        )?;
        write!(f, "backend (auto)     {}", self.chosen_backend)
    }
}
