//! `dledger`: see `dledger::cli`.

// A node keeps a moving window of entries in memory, allocated on its core
// threads. glibc's per-thread arenas grew and shrank that with an `mprotect`
// per step (about a third of the leader's syscalls under 64 clients) and
// zeroed fresh pages (a third of all CPU with batched appends). jemalloc
// keeps the memory it has: 64 clients 26k -> 32k entries/s, batches of 256
// 0.7M -> 1.0M entries/s on the 2-core VM (see the README). mimalloc was
// tried too: as fast for batches, but the leader's single-entry latency
// rose tenfold (5k entries/s at 64 clients).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    dledger::cli::main()
}
