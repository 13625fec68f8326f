//! Real file-system faults on a small ext4 image mounted through a loop device:
//! a full disk and a read-only mount. Needs root, `mkfs.ext4` and loop devices;
//! without them each test prints why it skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use dledger_engine::{BackendChoice, Error, Log, LogConfig};

/// A mounted ext4 image, unmounted on drop.
struct LoopFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl LoopFs {
    fn new(size_mib: u64) -> Result<LoopFs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&img).and_then(|f| f.set_len(size_mib << 20)).map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", "-m", "0", img.to_str().unwrap()])?;
        run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()])?;
        Ok(LoopFs { _dir: dir, mnt })
    }

    /// Remounts, polling with a deadline: an io_uring instance releases its
    /// registered files asynchronously after it is closed, and until then the
    /// file system counts them as open for writing.
    fn remount(&self, mode: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match run("mount", &["-o", &format!("remount,{mode}"), self.mnt.to_str().unwrap()]) {
                Ok(()) => return,
                Err(e) if std::time::Instant::now() > deadline => panic!("remount {mode}: {e}"),
                Err(_) => std::thread::yield_now(),
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Lazy: an io_uring instance may still hold a file for a moment after close.
        let _ = run("umount", &["-l", self.mnt.to_str().unwrap()]);
    }
}

fn config(dir: &Path, backend: BackendChoice) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.backend = backend;
    c.segment_size_bytes = 1 << 20;
    c.max_batch_bytes = 64 * 1024;
    c.ring_size_bytes = 1 << 20;
    c
}

fn full_disk(backend: BackendChoice) {
    let fs = match LoopFs::new(24) {
        Ok(fs) => fs,
        Err(why) => return println!("SKIP: no loop-mounted ext4 here: {why}"),
    };
    let dir = fs.mnt.join("log");
    let mut log = Log::open(config(&dir, backend)).unwrap();
    let payload = vec![3u8; 8000];
    let mut appended = 0u64;
    let err = loop {
        match log.append(1, &payload) {
            Ok(i) => {
                appended = i;
                if i % 8 == 0 {
                    log.wait_durable(i).unwrap();
                }
            }
            Err(Error::Backpressure { .. }) => log.wait_durable(log.durable_index() + 1).unwrap(),
            Err(e) => break e,
        }
        assert!(appended < 100_000, "the disk never filled");
    };
    assert!(matches!(err, Error::NoSpace { .. }), "expected NoSpace, got {err}");
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("no space left"), "{err}");
    // Everything appended before the error is intact and durable.
    log.sync_all().unwrap();
    let last = log.last_index();
    assert!(last + 1 >= appended && last > 100);
    for i in [1, last / 2, last] {
        assert_eq!(log.read(i).unwrap().payload.len(), payload.len());
    }
    // Free space (retention) and the log goes on.
    let first = log.purge_prefix(last / 2).unwrap();
    assert!(first > 1);
    let next = log.append(1, &payload).unwrap();
    log.wait_durable(next).unwrap();
    drop(log);
    let log = Log::open(config(&dir, backend)).unwrap();
    assert_eq!(log.last_index(), next);
}

fn read_only_mount(backend: BackendChoice) {
    let fs = match LoopFs::new(24) {
        Ok(fs) => fs,
        Err(why) => return println!("SKIP: no loop-mounted ext4 here: {why}"),
    };
    let dir = fs.mnt.join("log");
    let mut log = Log::open(config(&dir, backend)).unwrap();
    for i in 1..=20u64 {
        log.append(1, &i.to_le_bytes()).unwrap();
    }
    log.wait_durable(20).unwrap();
    drop(log);
    fs.remount("ro");
    let err = Log::open(config(&dir, backend)).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "expected ReadOnly, got {err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    // Opened for reading, the log on the read-only file system serves every entry.
    let mut ro = config(&dir, backend);
    ro.read_only = true;
    let mut log = Log::open(ro).unwrap();
    assert_eq!(log.last_index(), 20);
    assert_eq!(&log.read(20).unwrap().payload[..], &20u64.to_le_bytes());
    let err = log.append(1, b"x").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    drop(log);
    fs.remount("rw");
    let log = Log::open(config(&dir, backend)).unwrap();
    assert_eq!(log.last_index(), 20, "nothing was lost or changed");
    assert_eq!(&log.read(7).unwrap().payload[..], &7u64.to_le_bytes());
}

#[test]
fn full_disk_uring() {
    full_disk(BackendChoice::Uring)
}

#[test]
fn full_disk_portable() {
    full_disk(BackendChoice::Portable)
}

#[test]
fn read_only_mount_uring() {
    read_only_mount(BackendChoice::Uring)
}

#[test]
fn read_only_mount_portable() {
    read_only_mount(BackendChoice::Portable)
}
