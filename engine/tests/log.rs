//! Behaviour of `Log` through its public API, run once per backend (STYLE 13).
//! Every test is generated for `uring` and `portable`; when io_uring cannot be
//! set up here the uring variant prints why and skips.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dledger_engine::{BackendChoice, Error, FailPoint, Log, LogConfig, Meta, RetentionPolicy, BLOCK_SIZE};

fn config(dir: &Path, backend: BackendChoice) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.backend = backend;
    c.segment_size_bytes = 64 * 1024;
    c.max_batch_bytes = 16 * 1024;
    c.ring_size_bytes = 64 * 1024;
    c
}

fn open(dir: &Path, backend: BackendChoice) -> Option<Log> {
    match Log::open(config(dir, backend)) {
        Ok(l) => Some(l),
        Err(Error::BackendUnavailable { reason, .. }) => {
            println!("SKIP: io_uring backend unavailable here: {reason}");
            None
        }
        Err(e) => panic!("open failed: {e}"),
    }
}

fn reopen(dir: &Path, backend: BackendChoice) -> Result<Log, Error> {
    Log::open(config(dir, backend))
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 700) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn append_durable(log: &mut Log, term: u64, range: std::ops::Range<u64>) {
    for i in range {
        let got = loop {
            match log.append(term, &payload(i)) {
                Err(Error::Backpressure { .. }) => log.wait_durable(log.durable_index() + 1).unwrap(),
                r => break r,
            }
        };
        assert_eq!(got.unwrap(), i);
    }
    log.wait_durable(log.last_index()).unwrap();
}

fn check_entries(log: &Log, range: std::ops::Range<u64>, term: u64) {
    for i in range {
        let e = log.read(i).unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!((e.index, e.term), (i, term), "entry {i}");
        assert_eq!(&e.payload[..], &payload(i)[..], "payload of {i}");
    }
}

/// Waits on the eventfd (poll(2) with a deadline), then reaps.
fn wait_completion(log: &mut Log) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(d) = log.poll_completions().unwrap() {
            return d;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no completion within 20 s");
        let mut pfd = libc::pollfd { fd: log.eventfd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
    }
}

fn segment_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn last_segment(log: &Log) -> PathBuf {
    log.segment_paths().last().unwrap().clone()
}

macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name(dledger_engine::BackendChoice::Uring) } )*
        }
        mod portable {
            $( #[test] fn $name() { super::$name(dledger_engine::BackendChoice::Portable) } )*
        }
    };
}

per_backend!(
    append_read_reopen_across_segments,
    completions_arrive_on_the_eventfd,
    group_commit_batches_what_arrives_meanwhile,
    torn_last_block_at_every_sector,
    crash_at_every_byte_of_the_last_batch,
    corruption_mid_log_refuses_and_truncates_nothing,
    corruption_in_sealed_segment_refuses_a_scan_and_fails_the_read,
    sealed_segments_open_from_their_summaries,
    a_truncation_on_a_full_disk_is_not_fatal,
    stale_bytes_never_parse,
    truncate_suffix_within_and_across_segments,
    truncate_then_reopen_without_new_entries,
    purge_prefix_drops_whole_sealed_segments,
    retention_by_size_respects_floor,
    failed_sync_makes_log_fatal_and_reopen_recovers,
    failed_write_makes_log_fatal,
    no_space_for_segment_is_not_fatal,
    backpressure_when_ring_is_full,
    metadata_survives_reopen,
    bad_arguments_are_errors,
    empty_trailing_segment_is_removed,
    crash_after_truncating_into_a_sealed_segment,
    torn_bytes_left_behind_never_break_a_sealed_segment,
    batch_that_skips_an_index_refuses,
    zero_block_before_valid_batches_refuses,
    second_open_of_a_directory_is_refused,
    purged_segments_are_recycled_and_their_old_bytes_ignored,
    read_only_open_changes_nothing,
    append_parts_stores_the_concatenation,
    purge_with_a_seal_batch_queued_or_in_flight_is_safe,
    a_crash_between_the_start_record_and_the_deletion_loses_nothing,
    reset_to_a_leaders_start_drops_the_log_and_survives_reopen,
);

fn purge_with_a_seal_batch_queued_or_in_flight_is_safe(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    // Two rolls: the first segment's seal becomes durable, the second's is queued.
    let mut rolls = 0;
    let mut i = 1;
    while rolls < 2 {
        let segments = log.segment_paths().len();
        if i > 1 {
            log.wait_durable(i - 1).unwrap();
        }
        log.append(1, &payload(i)).unwrap();
        if i > 1 && log.segment_paths().len() > segments {
            rolls += 1;
        }
        i += 1;
    }
    let last = i - 1;
    // Entry `last` opened segment 3; segment 2's entries are durable, its seal is queued.
    assert_eq!(log.durable_index(), last - 1);
    let first = log.purge_prefix(last - 1).unwrap();
    let segments_left = log.segment_paths().len();
    assert_eq!(segments_left, 2, "only the first segment may go while the second's seal is queued");
    // Submit: the seal is now in flight (the uring backend writes from the ring buffer).
    log.flush().unwrap();
    assert_eq!(log.purge_prefix(last - 1).unwrap(), first, "nothing more goes with the seal in flight");
    log.wait_durable(last).unwrap();
    let first = log.purge_prefix(last - 1).unwrap();
    assert_eq!((first, log.segment_paths().len()), (last, 1), "once durable, the sealed segment goes");
    check_entries(&log, last..last + 1, 1);
    append_durable(&mut log, 1, last + 1..last + 20);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.start()), (last, last + 19, (last - 1, 1)));
    check_entries(&log, last..last + 20, 1);
}

fn a_crash_between_the_start_record_and_the_deletion_loses_nothing(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..400);
    let before: Vec<(PathBuf, Vec<u8>)> = log.segment_paths().iter().map(|p| (p.clone(), segment_bytes(p))).collect();
    let first = log.purge_prefix(250).unwrap();
    assert!(first > 1);
    assert_eq!(log.start(), (first - 1, 1));
    drop(log);
    // The deletions "did not happen": the purged files are back, as after a crash.
    for (path, bytes) in &before {
        if !path.exists() {
            std::fs::write(path, bytes).unwrap();
        }
    }
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.start()), (first, 399, (first - 1, 1)));
    assert!(matches!(log.read(first - 1), Err(Error::OutOfRange { first_index, .. }) if first_index == first));
    check_entries(&log, first..400, 1);
    assert!(before.iter().filter(|(p, _)| !log.segment_paths().contains(p)).all(|(p, _)| !p.exists()));
    drop(log);
    // A start record above the first segment (a segment missing) is refused, not skipped over.
    let first_segment = reopen(dir.path(), b).unwrap().segment_paths()[0].clone();
    std::fs::remove_file(&first_segment).unwrap();
    let e = reopen(dir.path(), b).unwrap_err();
    assert!(e.to_string().contains("begins after its start record"), "{e}");
}

fn reset_to_a_leaders_start_drops_the_log_and_survives_reopen(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..300);
    log.append(1, b"not yet durable").unwrap();
    log.save_meta(&Meta { current_term: 3, voted_for: Some(2), ..Meta::default() }).unwrap();
    log.reset_to(1000, 2).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.durable_index()), (1001, 1000, 1000));
    assert_eq!((log.term_at(1000), log.term_at(5), log.start()), (Some(2), None, (1000, 2)));
    assert!(log.segment_paths().is_empty());
    assert!(log.reset_to(999, 2).is_err(), "a start never moves back");
    drop(log);
    let mut log = reopen(dir.path(), b).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.term_at(1000)), (1001, 1000, Some(2)));
    assert_eq!((log.meta().current_term, log.meta().voted_for), (3, Some(2)), "the vote is kept");
    append_durable(&mut log, 3, 1001..1200);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.term_runs()), (1001, 1199, &[(1001, 3)][..]));
    check_entries(&log, 1001..1200, 3);
}

fn append_parts_stores_the_concatenation(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    let i = log.append_parts(1, &[b"\x01", b"hello", b"", b" world"]).unwrap();
    log.wait_durable(i).unwrap();
    assert_eq!(&log.read(i).unwrap().payload[..], b"\x01hello world");
    drop(log);
    assert_eq!(&reopen(dir.path(), b).unwrap().read(i).unwrap().payload[..], b"\x01hello world");
}

fn read_only_open_changes_nothing(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..100);
    let mut ro = config(dir.path(), b);
    ro.read_only = true;
    assert!(matches!(Log::open(ro.clone()), Err(Error::Locked { .. })), "a writer holds the directory");
    let path = last_segment(&log);
    drop(log);
    // A torn tail: skipped in memory, left on disk.
    let mut img = segment_bytes(&path);
    let end = *batch_offsets(&img).last().unwrap() + BLOCK_SIZE;
    img[end..end + 100].fill(0x77);
    std::fs::write(&path, &img).unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let files = listing(dir.path());
    let mut log = Log::open(ro).unwrap();
    assert_eq!(log.last_index(), 99);
    check_entries(&log, 1..100, 1);
    assert!(matches!(log.append(1, b"x"), Err(Error::ReadOnly { .. })));
    assert!(matches!(log.truncate_suffix(50), Err(Error::ReadOnly { .. })));
    assert!(matches!(log.purge_prefix(50), Err(Error::ReadOnly { .. })));
    drop(log);
    assert_eq!(segment_bytes(&path), img, "the torn tail is still there");
    assert_eq!(listing(dir.path()), files, "no file created or removed");
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

fn purged_segments_are_recycled_and_their_old_bytes_ignored(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..400);
    let before: Vec<(PathBuf, u64)> = log.segment_paths().iter().map(|p| (p.clone(), inode(p))).collect();
    let first = log.purge_prefix(250).unwrap();
    let purged: Vec<u64> =
        before.iter().filter(|(p, _)| !log.segment_paths().contains(p)).map(|&(_, ino)| ino).collect();
    assert!(!purged.is_empty(), "purged {purged:?}");
    append_durable(&mut log, 2, 400..1200);
    let reused = log.segment_paths().iter().filter(|p| purged.contains(&inode(p))).count();
    assert!(reused >= 1, "a purged segment file came back as a new segment");
    check_entries(&log, first..400, 1);
    check_entries(&log, 400..1200, 2);
    drop(log);
    let mut log = reopen(dir.path(), b).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (first, 1199));
    check_entries(&log, first..400, 1);
    check_entries(&log, 400..1200, 2);
    // Purge and append again, so recycled segments get sealed and recycled once more.
    log.purge_prefix(1000).unwrap();
    append_durable(&mut log, 3, 1200..2000);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    check_entries(&log, 1200..2000, 3);
}

/// A closed log of three batches of one entry each; its segment's path and image.
fn three_single_entry_batches(dir: &Path, b: BackendChoice) -> Option<(PathBuf, Vec<u8>)> {
    let mut log = open(dir, b)?;
    for i in 1..=3u64 {
        append_durable(&mut log, 1, i..i + 1);
    }
    let path = last_segment(&log);
    drop(log);
    let img = segment_bytes(&path);
    Some((path, img))
}

/// Offsets of the batch headers in a segment image (by magic), in order.
fn batch_offsets(img: &[u8]) -> Vec<usize> {
    (BLOCK_SIZE..img.len()).step_by(BLOCK_SIZE).filter(|&p| img[p..p + 4] == *b"DLB1").collect()
}

fn empty_trailing_segment_is_removed(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..300);
    let segs = log.segment_paths();
    let last = segs.last().unwrap().clone();
    let first_of_last = log.read(log.last_index()).unwrap().index;
    drop(log);
    // As if the last segment was named but its first batch was torn: nothing in it is valid.
    let mut img = segment_bytes(&last);
    img[BLOCK_SIZE..].iter_mut().for_each(|x| *x = 0);
    std::fs::write(&last, &img).unwrap();
    let mut log = reopen(dir.path(), b).unwrap();
    assert!(!last.exists(), "the empty trailing segment is removed");
    assert_eq!(log.segment_paths().len(), segs.len() - 1);
    assert!(log.last_index() < first_of_last);
    let l = log.last_index();
    check_entries(&log, 1..l + 1, 1);
    append_durable(&mut log, 1, l + 1..l + 200);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    check_entries(&log, 1..l + 200, 1);
}

fn crash_after_truncating_into_a_sealed_segment(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..300);
    let first_seg_end = {
        let segs = log.segment_paths();
        let second = segs[1].file_name().unwrap().to_string_lossy().into_owned();
        second.trim_end_matches(".seg").parse::<u64>().unwrap()
    };
    assert!(first_seg_end > 21);
    log.truncate_suffix(20).unwrap();
    append_durable(&mut log, 2, 20..25);
    let c = last_segment(&log);
    assert!(c.ends_with(format!("{:020}.seg", 20)), "a new segment named for the cut: {c:?}");
    drop(log);
    // Crash before C's first batch reached the disk.
    let mut img = segment_bytes(&c);
    img[BLOCK_SIZE..2 * BLOCK_SIZE].iter_mut().for_each(|x| *x = 0xEE);
    std::fs::write(&c, &img).unwrap();
    let mut log = reopen(dir.path(), b).unwrap();
    // The truncation was not durable: the first segment's entries are back, whole.
    assert_eq!(log.last_index(), first_seg_end - 1);
    check_entries(&log, 1..first_seg_end, 1);
    let l = log.last_index();
    append_durable(&mut log, 3, l + 1..l + 10);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    check_entries(&log, 1..first_seg_end, 1);
    check_entries(&log, l + 1..l + 10, 3);
}

fn torn_bytes_left_behind_never_break_a_sealed_segment(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..10);
    let a = last_segment(&log);
    drop(log);
    // A large batch torn after its first blocks: garbage over most of the segment.
    let mut img = segment_bytes(&a);
    let end = *batch_offsets(&img).last().unwrap() + BLOCK_SIZE;
    let stop = img.len() - BLOCK_SIZE;
    img[end..stop].iter_mut().enumerate().for_each(|(k, x)| *x = (k % 251) as u8 | 1);
    std::fs::write(&a, &img).unwrap();
    let mut log = reopen(dir.path(), b).unwrap();
    assert!(log.recovery_report().cut_torn_tail);
    // Small batches fill part of the garbage, then a roll seals the segment.
    append_durable(&mut log, 1, 10..20);
    let big = vec![1u8; 12 * 1024];
    let mut i = 20;
    while log.segment_paths().len() < 3 {
        assert_eq!(log.append(1, &big).unwrap(), i);
        log.wait_durable(i).unwrap();
        i += 1;
    }
    drop(log);
    let log = reopen(dir.path(), b).unwrap_or_else(|e| panic!("reopen with old garbage after a seal: {e}"));
    assert_eq!(log.last_index(), i - 1);
    check_entries(&log, 1..20, 1);
}

fn batch_that_skips_an_index_refuses(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, mut img)) = three_single_entry_batches(dir.path(), b) else { return };
    let offs = batch_offsets(&img);
    // Put batch 3 where batch 2 was: the log would jump from 1 to 3.
    let third = img[offs[2]..offs[2] + BLOCK_SIZE].to_vec();
    img[offs[1]..offs[1] + BLOCK_SIZE].copy_from_slice(&third);
    std::fs::write(&path, &img).unwrap();
    let err = reopen(dir.path(), b).unwrap_err();
    assert!(err.to_string().contains("does not continue"), "{err}");
    assert_eq!(segment_bytes(&path), img, "nothing truncated");
}

fn zero_block_before_valid_batches_refuses(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, mut img)) = three_single_entry_batches(dir.path(), b) else { return };
    let offs = batch_offsets(&img);
    img[offs[1]..offs[1] + BLOCK_SIZE].iter_mut().for_each(|x| *x = 0);
    std::fs::write(&path, &img).unwrap();
    let err = reopen(dir.path(), b).unwrap_err();
    assert!(err.to_string().contains("unwritten block followed by valid batches"), "{err}");
}

fn second_open_of_a_directory_is_refused(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(log) = open(dir.path(), b) else { return };
    let err = reopen(dir.path(), b).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(log);
    reopen(dir.path(), b).unwrap();
}

fn append_read_reopen_across_segments(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    assert_eq!((log.first_index(), log.last_index(), log.durable_index()), (1, 0, 0));
    append_durable(&mut log, 1, 1..400);
    append_durable(&mut log, 2, 400..800);
    assert!(log.segment_paths().len() > 3, "entries span several segments");
    check_entries(&log, 1..400, 1);
    check_entries(&log, 400..800, 2);
    let mut range = Vec::new();
    log.read_range(10, 700, 0, &mut range).unwrap();
    assert_eq!(range.len(), 690);
    assert!(range.iter().enumerate().all(|(k, e)| e.index == 10 + k as u64 && e.payload[..] == payload(e.index)[..]));
    let mut limited = Vec::new();
    log.read_range(10, 700, 2000, &mut limited).unwrap();
    assert!(!limited.is_empty() && limited.len() < 690);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.durable_index()), (1, 799, 799));
    assert!(!log.recovery_report().cut_torn_tail);
    check_entries(&log, 1..400, 1);
    check_entries(&log, 400..800, 2);
    assert_eq!(log.term_at(399), Some(1));
    assert_eq!(log.term_at(400), Some(2));
    assert_eq!(log.term_at(800), None);
    assert_eq!(log.term_runs(), &[(1, 1), (400, 2)], "a reopened log knows its terms without reading entries");
}

fn completions_arrive_on_the_eventfd(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    for round in 0..20u64 {
        let idx = log.append(1, &payload(round)).unwrap();
        assert!(log.durable_index() < idx);
        log.flush().unwrap();
        let mut durable = 0;
        while durable < idx {
            durable = wait_completion(&mut log);
        }
        assert_eq!(log.durable_index(), idx);
    }
}

fn group_commit_batches_what_arrives_meanwhile(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    log.append(1, b"first").unwrap();
    log.flush().unwrap();
    // These arrive while the first batch is in flight: they must form one batch.
    for _ in 2..=50 {
        log.append(1, b"small").unwrap();
    }
    let mut completions = 0;
    while log.durable_index() < 50 {
        wait_completion(&mut log);
        completions += 1;
    }
    assert_eq!(completions, 2, "one completion for the first entry, one for the 49 that waited");
}

/// Writes batch A (durable), then batch B (durable), and returns the segment image
/// before and after B and B's byte range in the file.
/// A segment image before and after batch B, and B's byte range.
type TwoBatches = (PathBuf, Vec<u8>, Vec<u8>, usize, usize);

fn two_batches(dir: &Path, b: BackendChoice) -> Option<TwoBatches> {
    let mut log = open(dir, b)?;
    append_durable(&mut log, 1, 1..6);
    let path = last_segment(&log);
    let before = segment_bytes(&path);
    append_durable(&mut log, 1, 6..12);
    drop(log);
    let after = segment_bytes(&path);
    let start = (0..after.len()).find(|&i| before[i] != after[i]).unwrap();
    let end = (0..after.len()).rev().find(|&i| before[i] != after[i]).unwrap() + 1;
    assert_eq!(start % BLOCK_SIZE, 0, "batch B starts on a block boundary");
    Some((path, before, after, start, end))
}

fn torn_last_block_at_every_sector(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, before, after, start, end)) = two_batches(dir.path(), b) else { return };
    let last_block = (end - 1) / BLOCK_SIZE * BLOCK_SIZE;
    for cut in (last_block..=last_block + BLOCK_SIZE).step_by(512) {
        // Sectors of B below `cut` reached the disk; the rest of the last block did not.
        let mut img = after.clone();
        img[cut.max(start)..last_block + BLOCK_SIZE].copy_from_slice(&before[cut.max(start)..last_block + BLOCK_SIZE]);
        std::fs::write(&path, &img).unwrap();
        let log = reopen(dir.path(), b).unwrap_or_else(|e| panic!("reopen after tear at {cut}: {e}"));
        check_entries(&log, 1..6, 1);
        let complete = cut >= end;
        assert_eq!(log.last_index(), if complete { 11 } else { 5 }, "tear at byte {cut} (batch ends at {end})");
        if complete {
            check_entries(&log, 6..12, 1);
        }
    }
}

fn crash_at_every_byte_of_the_last_batch(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, before, after, start, end)) = two_batches(dir.path(), b) else { return };
    for cut in start..end {
        for mode in ["zeros", "garbage", "file cut"] {
            let mut img = after.clone();
            match mode {
                "zeros" => img[cut..].copy_from_slice(&before[cut..]),
                "garbage" => {
                    img[cut..end].iter_mut().enumerate().for_each(|(k, x)| *x = (k as u8).wrapping_mul(151) ^ 0x5a)
                }
                _ => img.truncate(cut),
            }
            std::fs::write(&path, &img).unwrap();
            let log = reopen(dir.path(), b).unwrap_or_else(|e| panic!("reopen after {mode} at {cut}: {e}"));
            assert_eq!(log.last_index(), 5, "{mode} from byte {cut}: nothing after the tear is returned");
            check_entries(&log, 1..6, 1);
            drop(log);
            std::fs::write(&path, &after).unwrap();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(after.len() as u64).unwrap();
        }
    }
    // The intact image still reads whole.
    let log = reopen(dir.path(), b).unwrap();
    check_entries(&log, 1..12, 1);
}

fn corruption_mid_log_refuses_and_truncates_nothing(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some((path, mut img)) = three_single_entry_batches(dir.path(), b) else { return };
    // Flip a payload byte of the first batch (index 1), which is followed by valid batches.
    img[BLOCK_SIZE + 32 + 24] ^= 0xff;
    std::fs::write(&path, &img).unwrap();
    let err = reopen(dir.path(), b).unwrap_err();
    match &err {
        Error::Corrupt { segment, offset, entry_index, .. } => {
            assert_eq!(segment, &path);
            assert_eq!(*offset, BLOCK_SIZE as u64);
            assert_eq!(*entry_index, 1);
        }
        e => panic!("expected Corrupt, got {e}"),
    }
    assert!(err.to_string().contains("followed by valid batches"), "{err}");
    assert_eq!(segment_bytes(&path), img, "nothing was truncated or rewritten");
}

fn remove_summaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".idx") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

/// Without a summary, a sealed segment is scanned and damage in it refuses
/// the open; with one, it is not read at open, and the damaged entry fails
/// its own checksum when read.
fn corruption_in_sealed_segment_refuses_a_scan_and_fails_the_read(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..300);
    let segs = log.segment_paths();
    assert!(segs.len() >= 2);
    drop(log);
    let original = segment_bytes(&segs[0]);
    let offs = batch_offsets(&original);
    // The sealed segment ends with its seal batch; the one before it carries entries.
    let (last_data, seal) = (offs[offs.len() - 2], offs[offs.len() - 1]);
    for (at, want) in
        [(last_data + 40, "bad checksum followed by valid batches"), (seal + 8, "bad checksum in a sealed segment")]
    {
        let mut img = original.clone();
        img[at] ^= 1;
        std::fs::write(&segs[0], &img).unwrap();
        remove_summaries(dir.path());
        let err = reopen(dir.path(), b).unwrap_err();
        assert!(matches!(err, Error::Corrupt { ref segment, .. } if segment == &segs[0]), "{err}");
        assert!(err.to_string().contains(want), "flip at {at}: {err}");
        assert_eq!(segment_bytes(&segs[0]), img, "nothing truncated");
    }
    // Summarized (the intact segment scanned once writes its summary), then damaged.
    std::fs::write(&segs[0], &original).unwrap();
    drop(reopen(dir.path(), b).unwrap());
    let mut img = original.clone();
    img[last_data + 40] ^= 1;
    std::fs::write(&segs[0], &img).unwrap();
    let log = reopen(dir.path(), b).unwrap();
    assert!(log.recovery_report().summarized >= 1);
    let bad = (1..300).find(|&i| log.read(i).is_err()).expect("the damaged entry fails its read");
    assert!(matches!(log.read(bad), Err(Error::Corrupt { .. })));
    assert!((1..300).filter(|&i| log.read(i).is_err()).count() <= 8, "only the damaged batch's entries");
}

/// Sealed segments open from their summaries, with the same entries and
/// terms as a scan gives; a missing or damaged summary falls back to the
/// scan and is written again.
fn sealed_segments_open_from_their_summaries(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..200);
    append_durable(&mut log, 3, 200..700);
    let segs = log.segment_paths();
    assert!(segs.len() >= 4, "{segs:?}");
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.recovery_report().summarized, segs.len() - 1, "every sealed segment from its summary");
    check_entries(&log, 1..200, 1);
    check_entries(&log, 200..700, 3);
    assert_eq!((log.term_at(199), log.term_at(200), log.last_index()), (Some(1), Some(3), 699));
    drop(log);
    // One summary gone, one damaged: those two are scanned, and summarized again.
    std::fs::remove_file(format!("{}.idx", segs[0].display())).unwrap();
    let damaged = format!("{}.idx", segs[1].display());
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[20] ^= 4;
    std::fs::write(&damaged, &bytes).unwrap();
    let mut log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.recovery_report().summarized, segs.len() - 3);
    check_entries(&log, 1..200, 1);
    check_entries(&log, 200..700, 3);
    // A truncation into a summarized sealed segment holds across an open.
    log.truncate_suffix(150).unwrap();
    append_durable(&mut log, 4, 150..160);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert!(log.recovery_report().summarized >= 1);
    assert_eq!(log.last_index(), 159);
    check_entries(&log, 1..150, 1);
    check_entries(&log, 150..160, 4);
    // A purge takes the summaries with the segments.
    drop(log);
    let mut log = reopen(dir.path(), b).unwrap();
    log.purge_prefix(120).unwrap();
    let kept: Vec<_> = log.segment_paths();
    drop(log);
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = e.path().display().to_string();
        if let Some(seg) = name.strip_suffix(".idx") {
            assert!(kept.iter().any(|k| k.display().to_string() == seg), "a summary without its segment: {name}");
        }
    }
}

fn stale_bytes_never_parse(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..300);
    let segs = log.segment_paths();
    let old = segment_bytes(&segs[0]);
    let active = segs.last().unwrap().clone();
    let last = log.last_index();
    drop(log);
    // Copy a whole earlier segment's batches over the unused part of the active one,
    // as if its blocks were reused from a deleted file.
    let mut img = segment_bytes(&active);
    let used =
        (BLOCK_SIZE..img.len()).step_by(BLOCK_SIZE).find(|&p| img[p..p + BLOCK_SIZE].iter().all(|&x| x == 0)).unwrap();
    img[used..].copy_from_slice(&old[used..]);
    std::fs::write(&active, &img).unwrap();
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.last_index(), last, "no stale entry parsed as live");
    assert!(log.recovery_report().cut_torn_tail, "the stale bytes are treated as a torn tail");
}

fn truncate_suffix_within_and_across_segments(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..300);
    // Within the active segment.
    let cut = log.last_index() - 3;
    log.truncate_suffix(cut).unwrap();
    assert_eq!(log.last_index(), cut - 1);
    assert_eq!(log.term_at(cut), None);
    append_durable(&mut log, 2, cut..cut + 10);
    // Across segments: back into the first (sealed) segment.
    log.truncate_suffix(20).unwrap();
    assert_eq!(log.last_index(), 19);
    append_durable(&mut log, 3, 20..60);
    check_entries(&log, 1..20, 1);
    check_entries(&log, 20..60, 3);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.last_index(), 59);
    check_entries(&log, 1..20, 1);
    check_entries(&log, 20..60, 3);
}

fn truncate_then_reopen_without_new_entries(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..50);
    log.truncate_suffix(30).unwrap();
    log.sync_all().unwrap();
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.last_index(), 29, "the truncation was made durable by a marker batch");
    check_entries(&log, 1..30, 1);
}

fn purge_prefix_drops_whole_sealed_segments(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..400);
    let before = log.segment_paths().len();
    let first = log.purge_prefix(200).unwrap();
    assert!(first > 1 && first <= 201, "first index {first}");
    assert!(log.segment_paths().len() < before);
    assert!(matches!(log.read(first - 1), Err(Error::OutOfRange { .. })));
    check_entries(&log, first..400, 1);
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.first_index(), first);
    check_entries(&log, first..400, 1);
}

fn retention_by_size_respects_floor(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..600);
    let tiny = RetentionPolicy { max_age: None, max_total_bytes: Some(1) };
    // Floor at 1: nothing may go.
    assert_eq!(log.apply_retention(&tiny, 1).unwrap(), 1);
    let first = log.apply_retention(&tiny, 300).unwrap();
    assert!(first > 1 && first <= 300, "first {first}");
    check_entries(&log, first..600, 1);
    // Age: nothing is older than an hour, until the oldest segment is made to look two hours old.
    let hour = RetentionPolicy { max_age: Some(Duration::from_secs(3600)), max_total_bytes: None };
    assert_eq!(log.apply_retention(&hour, 600).unwrap(), first);
    let oldest = log.segment_paths()[0].clone();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&oldest).unwrap().set_modified(two_hours_ago).unwrap();
    let after = log.apply_retention(&hour, 600).unwrap();
    assert!(after > first, "the old segment went: first {first} -> {after}");
    assert!(!oldest.exists());
    check_entries(&log, after..600, 1);
}

fn failed_sync_makes_log_fatal_and_reopen_recovers(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..10);
    log.config().faults.arm(FailPoint::Sync, libc::EIO);
    log.append(1, &payload(10)).unwrap();
    let err = log.wait_durable(10).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    assert!(log.append(1, b"more").unwrap_err().is_fatal(), "no retry as if nothing happened");
    assert_eq!(log.last_index(), 9, "nothing undurable is readable");
    check_entries(&log, 1..10, 1);
    drop(log);
    let mut log = reopen(dir.path(), b).unwrap();
    check_entries(&log, 1..10, 1);
    assert!(log.last_index() >= 9);
    let next = log.last_index() + 1;
    append_durable(&mut log, 1, next..next + 5);
}

fn failed_write_makes_log_fatal(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..5);
    log.config().faults.arm(FailPoint::Write, libc::EROFS);
    log.append(1, &payload(5)).unwrap();
    let err = log.wait_durable(5).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("Read-only file system"), "{err}");
    check_entries(&log, 1..5, 1);
}

/// Appends (term 1, flushing each) from index `i` until an append fails;
/// returns the index that failed and the error.
fn append_until_an_error(log: &mut Log, mut i: u64) -> (u64, Error) {
    loop {
        match log.append(1, &payload(i)) {
            Ok(_) => {
                i += 1;
                log.flush().unwrap();
            }
            Err(Error::Backpressure { .. }) => log.wait_durable(log.durable_index() + 1).unwrap(),
            Err(e) => return (i, e),
        }
        assert!(i < 10_000, "the failure never surfaced");
    }
}

/// Appends `payload(i)` in `term`, waiting out backpressure.
fn append_waiting(log: &mut Log, term: u64, i: u64) -> Result<u64, Error> {
    loop {
        match log.append(term, &payload(i)) {
            Err(Error::Backpressure { .. }) => log.wait_durable(log.durable_index() + 1).unwrap(),
            r => return r,
        }
    }
}

fn no_space_for_segment_is_not_fatal(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    let faults = log.config().faults.clone();
    // The first spare is already made; the next preparation fails.
    faults.arm(FailPoint::Prefill, libc::ENOSPC);
    let (i, err) = append_until_an_error(&mut log, 1);
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(!err.is_fatal());
    // Space "returns": the next append gets a fresh spare.
    let got = append_waiting(&mut log, 1, i).unwrap();
    assert_eq!(got, i);
    log.wait_durable(i).unwrap();
    check_entries(&log, 1..i + 1, 1);
}

fn backpressure_when_ring_is_full(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    let big = vec![7u8; 12 * 1024];
    let mut n = 0u64;
    let err = loop {
        match log.append(1, &big) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "no backpressure");
    };
    assert!(matches!(err, Error::Backpressure { .. }), "{err}");
    log.wait_durable(n).unwrap();
    assert_eq!(log.append(1, &big).unwrap(), n + 1);
    log.wait_durable(n + 1).unwrap();
    for i in 1..=n + 1 {
        assert_eq!(log.read(i).unwrap().payload.len(), big.len());
    }
}

fn metadata_survives_reopen(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    assert_eq!(log.meta(), &Meta::default());
    let m = Meta { current_term: 9, voted_for: Some(3), blob: b"conf".to_vec(), ..Meta::default() };
    log.save_meta(&m).unwrap();
    drop(log);
    assert_eq!(reopen(dir.path(), b).unwrap().meta(), &m);
}

fn bad_arguments_are_errors(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    let max = log.config().max_entry_bytes();
    assert!(matches!(log.append(1, &vec![0; max + 1]), Err(Error::EntryTooLarge { .. })));
    assert!(log.append(1, &vec![0; max]).is_ok());
    assert!(matches!(log.append(0, b"x"), Err(Error::InvalidArgument(_))), "terms never decrease");
    assert!(matches!(log.read(99), Err(Error::OutOfRange { .. })));
    assert!(matches!(log.truncate_suffix(99), Err(Error::InvalidArgument(_))));
    let mut c = config(dir.path(), b);
    c.segment_size_bytes = 5000;
    assert!(matches!(Log::open(c), Err(Error::InvalidArgument(_))));
}

#[test]
fn uring_forced_on_tmpfs_is_refused_and_auto_falls_back() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("SKIP: no /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    if dledger_engine::probe(dir.path()).unwrap().o_direct.is_ok() {
        println!("SKIP: this tmpfs accepts O_DIRECT");
        return;
    }
    let err = Log::open(config(dir.path(), BackendChoice::Uring)).unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err}");
    let mut log = Log::open(config(dir.path(), BackendChoice::Auto)).unwrap();
    assert_eq!(log.backend(), dledger_engine::BackendKind::Portable);
    append_durable(&mut log, 1, 1..20);
    check_entries(&log, 1..20, 1);
}

#[test]
fn probe_reports_this_directory() {
    let dir = tempfile::tempdir().unwrap();
    let r = dledger_engine::probe(dir.path()).unwrap();
    assert!(r.block_size_bytes >= 512);
    assert!(r.write_sync_us_max >= r.write_sync_us_p50);
    let text = r.to_string();
    assert!(text.contains("io_uring") && text.contains("O_DIRECT"), "{text}");
}

/// A full disk (no spare segment could be made), then a truncation into a
/// sealed segment, whose next append needs a new segment: the append fails
/// with `NoSpace`, not fatally, and once space returns the log goes on.
fn a_truncation_on_a_full_disk_is_not_fatal(b: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut log) = open(dir.path(), b) else { return };
    append_durable(&mut log, 1, 1..600);
    assert!(log.segment_paths().len() >= 3);
    let faults = log.config().faults.clone();
    faults.arm(FailPoint::Prefill, libc::ENOSPC);
    let (_, err) = append_until_an_error(&mut log, 600);
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    log.wait_durable(log.last_index()).unwrap();
    // Still full: the next segment preparation fails too. A leader's truncation into
    // the first (sealed) segment, whose record needs a new segment.
    faults.arm(FailPoint::Prefill, libc::ENOSPC);
    log.truncate_suffix(30).unwrap_or_else(|e| panic!("truncate on a full disk: {e}"));
    log.flush().unwrap_or_else(|e| panic!("a flush with the truncation pending on a full disk: {e}"));
    faults.arm(FailPoint::Prefill, libc::ENOSPC);
    log.truncate_suffix(20).unwrap_or_else(|e| panic!("a second truncation on a full disk: {e}"));
    let e = log.sync_all().unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }) && !e.is_fatal(), "{e}");
    assert_eq!(log.last_index(), 19);
    let got = append_waiting(&mut log, 2, 20);
    match got {
        Ok(20) => {}
        Err(e) => assert!(matches!(e, Error::NoSpace { .. }) && !e.is_fatal(), "{e}"),
        Ok(other) => panic!("appended at {other}"),
    }
    // Space returns: the append goes through, and the log reopens as written.
    if log.last_index() < 20 {
        assert_eq!(append_waiting(&mut log, 2, 20).unwrap(), 20);
    }
    log.wait_durable(20).unwrap();
    drop(log);
    let log = reopen(dir.path(), b).unwrap();
    assert_eq!(log.last_index(), 20);
    check_entries(&log, 1..20, 1);
    assert_eq!(log.read(20).unwrap().term, 2);
}
