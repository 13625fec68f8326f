//! Recovery against arbitrary damage (proptest, a fixed number of cases; a
//! failing case is shrunk and saved under `proptest-regressions/`, replayed
//! first on every run). A log of a few segments is written once; each case
//! copies it, overwrites bytes anywhere in a segment, its summary or the
//! metadata (or cuts a file short), and opens it. What must hold: the open
//! never panics (it succeeds or names the damage), and an open log answers
//! every read in its range with an entry or an error, never a panic; an
//! entry it returns is the one written at that index.

use std::path::{Path, PathBuf};

use dledger_engine::{BackendChoice, Log, LogConfig};
use proptest::prelude::*;

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.backend = BackendChoice::Portable;
    c.segment_size_bytes = 64 * 1024;
    c.max_batch_bytes = 16 * 1024;
    c.ring_size_bytes = 64 * 1024;
    c
}

fn payload(i: u64) -> Vec<u8> {
    (0..(i * 13 % 300) as usize).map(|j| (i as usize * 7 + j) as u8).collect()
}

/// The pristine log, written once per test process: its directory and last index.
fn pristine() -> &'static (tempfile::TempDir, u64) {
    static LOG: std::sync::OnceLock<(tempfile::TempDir, u64)> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(config(dir.path())).unwrap();
        for i in 1..400 {
            let term = if i < 200 { 1 } else { 2 };
            loop {
                match log.append(term, &payload(i)) {
                    Err(dledger_engine::Error::Backpressure { .. }) => {
                        log.wait_durable(log.durable_index() + 1).unwrap()
                    }
                    r => break assert_eq!(r.unwrap(), i),
                }
            }
        }
        log.wait_durable(399).unwrap();
        drop(log);
        (dir, 399)
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("LOCK"))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn an_open_of_a_damaged_log_never_panics_and_never_returns_a_wrong_entry(
        target in any::<usize>(),
        writes in proptest::collection::vec((any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64)), 1..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let (src, last) = pristine();
        let dir = tempfile::tempdir().unwrap();
        for f in files(src.path()) {
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let all = files(dir.path());
        let victim = &all[target % all.len()];
        let mut img = std::fs::read(victim).unwrap();
        for (at, bytes) in &writes {
            if img.is_empty() {
                break;
            }
            let at = at % img.len();
            let n = bytes.len().min(img.len() - at);
            img[at..at + n].copy_from_slice(&bytes[..n]);
        }
        if let Some(c) = cut {
            img.truncate(c % (img.len() + 1));
        }
        std::fs::write(victim, &img).unwrap();
        if let Ok(log) = Log::open(config(dir.path())) {
            for i in log.first_index()..=log.last_index().min(*last) {
                if let Ok(e) = log.read(i) {
                    prop_assert_eq!(e.index, i);
                    prop_assert_eq!(&e.payload[..], &payload(i)[..], "entry {} read back wrong", i);
                }
            }
        }
    }
}
