//! V2 session tokens, stateless: `hex(nonce ‖ expiry ‖ HMAC-SHA256(key, nonce ‖ expiry)[..16])`.
//!
//! Why HMAC rather than Firecracker's AES-GCM: the guest only needs an unforgeable,
//! expiring bearer token, not secrecy of the expiry, so a MAC over the expiry is enough;
//! it keeps no per-token state (a guest minting tokens in a loop costs no memory), needs
//! only `sha2` (already in the tree), and a per-VM random key means tokens from one VM
//! (or one flint process: the key is not snapshotted) are worthless in another. Expiry
//! is in milliseconds of a monotonic clock since the authority was created.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Shortest token lifetime a guest may ask for, in seconds (Firecracker's bound).
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
/// Longest token lifetime a guest may ask for, in seconds (six hours, as EC2 and Firecracker).
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;
/// Where the guest `PUT`s to obtain a token.
pub const PATH_TO_TOKEN: &str = "/latest/api/token";

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const RAW_LEN: usize = 8 + 8 + TAG_LEN;
/// Length of every token string; anything else is rejected before hashing.
pub const TOKEN_LEN: usize = RAW_LEN * 2;

/// Why a token cannot be minted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// TTL outside 1..=21600 (guest gets 400 with this text, as Firecracker).
    #[error("Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}.")]
    InvalidTtlValue(u32),
}

/// Mints and checks tokens under one random per-VM key.
pub struct TokenAuthority {
    key: [u8; KEY_LEN],
    epoch: Instant,
    counter: u64,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority").finish_non_exhaustive() // never print the key
    }
}

impl Default for TokenAuthority {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenAuthority {
    /// A new authority with a key from the OS random source.
    pub fn new() -> Self {
        let mut key = [0u8; KEY_LEN];
        if getrandom::fill(&mut key).is_err() {
            // Not expected on Linux >= 3.17; std's hasher seeds are still per-process random.
            log::error!("mmds: getrandom failed, deriving the token key from std's random seeds");
            key = fallback_key();
        }
        TokenAuthority {
            key,
            epoch: Instant::now(),
            counter: 0,
        }
    }

    /// A token valid from `now` for `ttl_seconds`.
    pub fn generate(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtlValue(ttl_seconds));
        }
        let since = now.saturating_duration_since(self.epoch);
        let expiry = since + Duration::from_secs(u64::from(ttl_seconds));
        let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
        self.counter = self.counter.wrapping_add(1);
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&self.counter.to_be_bytes());
        raw[8..16].copy_from_slice(&expiry_ms.to_be_bytes());
        let tag = self.tag(&raw[..16]);
        raw[16..].copy_from_slice(&tag);
        Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether `token` carries this authority's tag and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        let Some(raw) = decode_hex(token) else {
            return false;
        };
        let tag = self.tag(&raw[..16]);
        // Constant-time comparison: a guest must not learn the tag byte by byte.
        let diff = tag
            .iter()
            .zip(&raw[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return false;
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&raw[8..16]);
        let expiry_ms = u64::from_be_bytes(exp);
        let since = now.saturating_duration_since(self.epoch).as_millis();
        since < u128::from(expiry_ms)
    }

    fn tag(&self, msg: &[u8]) -> [u8; TAG_LEN] {
        // HMAC (RFC 2104) with SHA-256, 64-byte block.
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&outer[..TAG_LEN]);
        tag
    }
}

fn decode_hex(s: &str) -> Option<[u8; RAW_LEN]> {
    let b = s.as_bytes();
    if b.len() != TOKEN_LEN {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; RAW_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

fn fallback_key() -> [u8; KEY_LEN] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = Sha256::new();
    for _ in 0..4 {
        let mut s = std::collections::hash_map::RandomState::new().build_hasher();
        s.write_u128(Instant::now().elapsed().as_nanos());
        h.update(s.finish().to_le_bytes());
    }
    h.update(std::process::id().to_le_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_are_bound_to_the_key() {
        let mut a = TokenAuthority::new();
        let t0 = Instant::now();
        let tok = a.generate(2, t0).unwrap();
        assert_eq!(tok.len(), TOKEN_LEN);
        assert!(a.is_valid(&tok, t0));
        assert!(a.is_valid(&tok, t0 + Duration::from_millis(1999)));
        assert!(!a.is_valid(&tok, t0 + Duration::from_secs(2)));
        assert_ne!(a.generate(2, t0).unwrap(), tok, "tokens are unique");
        let b = TokenAuthority::new();
        assert!(!b.is_valid(&tok, t0), "another VM's key refuses it");
        let mut forged = tok.clone().into_bytes();
        forged[20] = if forged[20] == b'f' { b'e' } else { b'f' }; // move the expiry
        assert!(!a.is_valid(std::str::from_utf8(&forged).unwrap(), t0));
        assert!(!a.is_valid("", t0));
        assert!(!a.is_valid(&"Z".repeat(TOKEN_LEN), t0));
        assert!(!a.is_valid(&"é".repeat(TOKEN_LEN / 2), t0));
        assert_eq!(a.generate(0, t0), Err(TokenError::InvalidTtlValue(0)));
        assert_eq!(
            a.generate(21_601, t0),
            Err(TokenError::InvalidTtlValue(21_601))
        );
        assert!(a.generate(21_600, t0).is_ok());
    }
}
