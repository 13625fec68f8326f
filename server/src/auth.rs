//! Peer authentication over a shared cluster secret: challenge and response.
//!
//! ```text
//!  peer A (connects)                     node B (accepts)
//!  Hello{node: A, cluster}  ───────────▶  A must be a configured voter
//!                           ◀───────────  Challenge{nonce: 32 random bytes}
//!  Auth{mac}                ───────────▶  mac == HMAC-SHA256(secret, "dledger-peer-v1" | cluster | A | B | nonce)?
//!  Raft frames …            ───────────▶  only now stepped by B's groups
//! ```
//!
//! The nonce is fresh per connection, so a recorded handshake cannot be
//! replayed, and the MAC names both ends, so it cannot be reflected to
//! another node. Comparison is constant-time (`hmac`'s `verify_slice`).
//! Without TLS the frames after the handshake are not protected against an
//! attacker on the path (who could inject into the TCP stream); the
//! handshake keeps out everyone who can merely reach the port, such as the
//! 48-byte forged heartbeat that once froze a cluster.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The cluster's shared secret (at least 16 bytes).
#[derive(Clone)]
pub(crate) struct PeerSecret(Vec<u8>);

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

/// The fewest bytes a secret may have.
pub(crate) const MIN_SECRET_BYTES: usize = 16;

impl PeerSecret {
    /// Reads a secret file: its bytes, surrounding ASCII whitespace trimmed
    /// (a binary secret is used as it is).
    pub(crate) fn load(path: &std::path::Path) -> Result<PeerSecret, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read peer secret {}: {e}", path.display()))?;
        let secret = bytes.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "peer secret {} has {} bytes; at least {MIN_SECRET_BYTES} are needed",
                path.display(),
                secret.len()
            ));
        }
        Ok(PeerSecret(secret))
    }

    fn mac(&self, cluster: &str, from: u64, to: u64, nonce: &[u8; 32]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(b"dledger-peer-v1");
        m.update(&(cluster.len() as u64).to_le_bytes());
        m.update(cluster.as_bytes());
        m.update(&from.to_le_bytes());
        m.update(&to.to_le_bytes());
        m.update(nonce);
        m
    }

    /// The answer `from` gives `to`'s challenge.
    pub(crate) fn answer(&self, cluster: &str, from: u64, to: u64, nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(cluster, from, to, nonce).finalize().into_bytes().into()
    }

    /// Whether `mac` is `from`'s right answer to `to`'s challenge (constant time).
    pub(crate) fn verify(&self, cluster: &str, from: u64, to: u64, nonce: &[u8; 32], mac: &[u8; 32]) -> bool {
        self.mac(cluster, from, to, nonce).verify_slice(mac).is_ok()
    }
}

/// A fresh challenge nonce (from the thread's CSPRNG, seeded by the OS).
pub(crate) fn nonce() -> [u8; 32] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_for_these_two_nodes_and_this_nonce_verifies() {
        let s = PeerSecret(b"0123456789abcdef0123".to_vec());
        let n = nonce();
        let mac = s.answer("c", 2, 1, &n);
        assert!(s.verify("c", 2, 1, &n, &mac));
        assert!(!s.verify("c", 3, 1, &n, &mac), "another sender");
        assert!(!s.verify("c", 2, 3, &n, &mac), "reflected to another node");
        assert!(!s.verify("d", 2, 1, &n, &mac), "another cluster");
        assert!(!s.verify("c", 2, 1, &nonce(), &mac), "replayed on a new nonce");
        assert!(!PeerSecret(b"another secret, long".to_vec()).verify("c", 2, 1, &n, &mac));
    }

    #[test]
    fn a_short_or_missing_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        assert!(PeerSecret::load(&p).unwrap_err().contains("cannot read"));
        std::fs::write(&p, "short\n").unwrap();
        assert!(PeerSecret::load(&p).unwrap_err().contains("at least 16"));
        std::fs::write(&p, "  0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(PeerSecret::load(&p).is_ok());
    }
}
