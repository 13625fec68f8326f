//! Free ports for local clusters (the quick start, the tests).
//!
//! "Bind port 0, note the port, release it" is racy on a busy machine: the
//! released port is in the kernel's ephemeral range, where the next outgoing
//! connection may take it before the node binds it. These ports come from
//! below that range (where outgoing connections never land), from a
//! per-process counter started at a random offset, each checked free by a
//! bind.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const LOWEST: u32 = 10_000;

fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `n` distinct ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let top = ephemeral_start().max(LOWEST + 1000);
    let span = top - LOWEST;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = std::process::id()
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(0, 1 + seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        let port = (LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    if out.len() < n {
        return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free ports below the ephemeral range"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct_and_below_the_ephemeral_range() {
        let a = super::free_ports(5).unwrap();
        let b = super::free_ports(5).unwrap();
        let mut all: Vec<u16> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|&p| (p as u32) < super::ephemeral_start().max(11_000)));
    }
}
