//! The authenticated migration channel: a challenge-response handshake on a
//! pre-shared key, then frames that each carry an HMAC under a session key.
//!
//! Handshake (fixed sizes, so the listener reads exactly these bytes from an
//! unknown peer and nothing more):
//!
//! 1. source → destination: `MAGIC | nonce_s` (8 + 32 bytes)
//! 2. destination → source: `nonce_d | HMAC(K, "dst" | nonce_s | nonce_d)`
//! 3. source → destination: `HMAC(K, "src" | nonce_s | nonce_d)`
//!
//! Each side checks the other's proof, so both know the peer holds the key
//! and neither proof can be replayed (fresh nonces from both). The session
//! key is `HMAC(K, "session" | nonce_s | nonce_d)`.
//!
//! Frames: `tag: u8 | length: u64 LE | payload | HMAC(S, dir | seq | tag |
//! length | payload)`, where `dir` says which side sent it and `seq` counts
//! that side's frames, so frames cannot be forged, reordered, replayed or
//! reflected. The key authenticates; it does not encrypt.

use std::io::{Read, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::MigrationError;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;
/// Bytes of each side's nonce.
const NONCE_LEN: usize = 32;
/// Opens the handshake and names the protocol: a peer speaking something
/// else is refused after 8 bytes.
const MAGIC: &[u8; 8] = b"FLNTMIG3";
/// The shortest key file accepted (after trailing whitespace is trimmed).
pub const MIN_KEY_LEN: usize = 32;

/// A pre-shared migration key, as read from the key file.
#[derive(Clone)]
pub struct MigrationKey(Vec<u8>);

impl std::fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigrationKey(..)")
    }
}

impl MigrationKey {
    /// Reads a key file: its bytes without trailing whitespace (so a key
    /// written by `head -c 48 /dev/urandom | base64 > key` works), at least
    /// [`MIN_KEY_LEN`] of them.
    pub fn from_file(path: &Path) -> Result<Self, MigrationError> {
        let bytes = std::fs::read(path).map_err(|e| {
            MigrationError::Key(format!("reading key file {}: {e}", path.display()))
        })?;
        Self::from_bytes(&bytes)
            .map_err(|e| MigrationError::Key(format!("{}: {e}", path.display())))
    }

    /// A key from raw bytes (trailing whitespace trimmed), refusing short ones.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        if end < MIN_KEY_LEN {
            return Err(format!(
                "the migration key has {end} bytes; use at least {MIN_KEY_LEN} random bytes"
            ));
        }
        Ok(Self(bytes[..end].to_vec()))
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
        mac_with(&self.0, label, parts)
    }
}

fn mac_with(key: &[u8], label: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(label);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two tags.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn nonce() -> Result<[u8; NONCE_LEN], MigrationError> {
    let mut n = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < n.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `n`,
        // which lives across the call; getrandom only writes there.
        let got = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), n.len() - filled, 0) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        filled += got as usize;
    }
    Ok(n)
}

/// Which end of the channel this is; frames are bound to their direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The flint sending the VM.
    Source,
    /// The flint receiving it.
    Destination,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Source => b'S',
            Self::Destination => b'D',
        }
    }

    fn peer(self) -> Self {
        match self {
            Self::Source => Self::Destination,
            Self::Destination => Self::Source,
        }
    }
}

/// An authenticated, framed migration stream.
pub struct Channel<S> {
    stream: S,
    session: [u8; MAC_LEN],
    role: Role,
    sent: u64,
    received: u64,
    max_message: u64,
}

impl<S: Read + Write> Channel<S> {
    /// The source's side of the handshake: proves it holds `key` and checks
    /// that the destination does too.
    pub fn connect(
        mut stream: S,
        key: &MigrationKey,
        max_message: u64,
    ) -> Result<Self, MigrationError> {
        let nonce_s = nonce()?;
        let mut hello = Vec::with_capacity(MAGIC.len() + NONCE_LEN);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&nonce_s);
        stream.write_all(&hello)?;
        let mut answer = [0u8; NONCE_LEN + MAC_LEN];
        stream.read_exact(&mut answer)?;
        let (nonce_d, proof_d) = answer.split_at(NONCE_LEN);
        if !tags_equal(proof_d, &key.mac(b"dst", &[&nonce_s, nonce_d])) {
            return Err(MigrationError::Auth(
                "the destination does not hold the migration key".into(),
            ));
        }
        stream.write_all(&key.mac(b"src", &[&nonce_s, nonce_d]))?;
        Ok(Self::new(
            stream,
            key,
            &nonce_s,
            nonce_d,
            Role::Source,
            max_message,
        ))
    }

    /// The destination's side of the handshake: reads exactly the handshake
    /// bytes from the peer and refuses it unless it proves it holds `key`.
    pub fn accept(
        mut stream: S,
        key: &MigrationKey,
        max_message: u64,
    ) -> Result<Self, MigrationError> {
        let mut hello = [0u8; 8 + NONCE_LEN];
        stream.read_exact(&mut hello)?;
        if &hello[..8] != MAGIC {
            return Err(MigrationError::Auth(
                "the peer does not speak flint's migration protocol (version 3)".into(),
            ));
        }
        let nonce_s = &hello[8..];
        let nonce_d = nonce()?;
        let mut answer = Vec::with_capacity(NONCE_LEN + MAC_LEN);
        answer.extend_from_slice(&nonce_d);
        answer.extend_from_slice(&key.mac(b"dst", &[nonce_s, &nonce_d]));
        stream.write_all(&answer)?;
        let mut proof = [0u8; MAC_LEN];
        stream.read_exact(&mut proof)?;
        if !tags_equal(&proof, &key.mac(b"src", &[nonce_s, &nonce_d])) {
            return Err(MigrationError::Auth(
                "the source does not hold the migration key".into(),
            ));
        }
        Ok(Self::new(
            stream,
            key,
            nonce_s,
            &nonce_d,
            Role::Destination,
            max_message,
        ))
    }

    fn new(
        stream: S,
        key: &MigrationKey,
        nonce_s: &[u8],
        nonce_d: &[u8],
        role: Role,
        max_message: u64,
    ) -> Self {
        Self {
            stream,
            session: key.mac(b"session", &[nonce_s, nonce_d]),
            role,
            sent: 0,
            received: 0,
            max_message,
        }
    }

    fn frame_mac(&self, from: Role, seq: u64, header: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let prefix = [&[from.byte()][..], &seq.to_le_bytes(), header];
        let all: Vec<&[u8]> = prefix
            .iter()
            .copied()
            .chain(parts.iter().copied())
            .collect();
        mac_with(&self.session, b"frame", &all)
    }

    /// Sends one frame.
    pub fn send(&mut self, tag: u8, parts: &[&[u8]]) -> Result<(), MigrationError> {
        let (header, mac) = self.seal(tag, parts);
        self.stream.write_all(&header)?;
        for p in parts {
            self.stream.write_all(p)?;
        }
        self.stream.write_all(&mac)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends an empty frame in one `write`, and says on failure whether any
    /// of it was handed to the kernel (`true`: the peer may receive it). The
    /// two-phase hand-off needs that to know whether COMMIT left.
    pub fn send_whole(&mut self, tag: u8) -> Result<(), (MigrationError, bool)> {
        let (header, mac) = self.seal(tag, &[]);
        let mut frame = Vec::with_capacity(header.len() + mac.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&mac);
        let written = loop {
            match self.stream.write(&frame) {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err((e.into(), false));
                }
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((e.into(), false)),
            }
        };
        self.stream
            .write_all(&frame[written..])
            .and_then(|()| self.stream.flush())
            .map_err(|e| (e.into(), true))
    }

    /// The header and tag of this side's next frame (and counts it).
    fn seal(&mut self, tag: u8, parts: &[&[u8]]) -> ([u8; 9], [u8; MAC_LEN]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut header = [0u8; 9];
        header[0] = tag;
        header[1..].copy_from_slice(&(len as u64).to_le_bytes());
        let mac = self.frame_mac(self.role, self.sent, &header, parts);
        self.sent += 1;
        (header, mac)
    }

    /// Receives one frame and checks its tag before returning it. The
    /// payload buffer grows only as bytes arrive, so a forged length cannot
    /// make this allocate more than the peer actually sends.
    pub fn receive(&mut self) -> Result<(u8, Vec<u8>), MigrationError> {
        let mut header = [0u8; 9];
        self.stream.read_exact(&mut header)?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[1..]);
        let len = u64::from_le_bytes(len);
        if len > self.max_message {
            return Err(MigrationError::Protocol(format!(
                "message of {len} bytes is too large"
            )));
        }
        let mut payload = Vec::new();
        (&mut self.stream).take(len).read_to_end(&mut payload)?;
        if payload.len() as u64 != len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let mut mac = [0u8; MAC_LEN];
        self.stream.read_exact(&mut mac)?;
        let expected = self.frame_mac(self.role.peer(), self.received, &header, &[&payload]);
        if !tags_equal(&mac, &expected) {
            return Err(MigrationError::Auth(format!(
                "frame {} fails authentication",
                self.received
            )));
        }
        self.received += 1;
        Ok((header[0], payload))
    }

    /// The underlying stream (for timeouts).
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn key(b: u8) -> MigrationKey {
        MigrationKey::from_bytes(&[b; 40]).unwrap()
    }

    #[test]
    fn short_keys_are_refused_and_whitespace_trimmed() {
        assert!(MigrationKey::from_bytes(b"short\n").is_err());
        assert!(MigrationKey::from_bytes(&[b' '; 64]).is_err());
        let mut k = vec![b'a'; 32];
        k.extend_from_slice(b"\n\n");
        assert_eq!(MigrationKey::from_bytes(&k).unwrap().0.len(), 32);
    }

    #[test]
    fn same_key_talks_both_ways() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut d = Channel::accept(b, &key(1), 1 << 20).unwrap();
            let (tag, p) = d.receive().unwrap();
            d.send(tag + 1, &[&p, b"!"]).unwrap();
        });
        let mut s = Channel::connect(a, &key(1), 1 << 20).unwrap();
        s.send(7, &[b"hi"]).unwrap();
        assert_eq!(s.receive().unwrap(), (8, b"hi!".to_vec()));
        t.join().unwrap();
    }

    #[test]
    fn wrong_key_is_refused_both_ways() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || Channel::accept(b, &key(1), 1 << 20).err());
        let err = Channel::connect(a, &key(2), 1 << 20).err().unwrap();
        assert!(err.to_string().contains("does not hold"), "{err}");
        // The source gave up before proving anything: the destination sees
        // the stream end, never a valid proof.
        assert!(t.join().unwrap().is_some());
    }

    #[test]
    fn a_forged_source_proof_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || Channel::accept(b, &key(1), 1 << 20).err());
        a.write_all(MAGIC).unwrap();
        a.write_all(&[0; NONCE_LEN]).unwrap();
        let mut answer = [0u8; NONCE_LEN + MAC_LEN];
        a.read_exact(&mut answer).unwrap();
        a.write_all(&[0; MAC_LEN]).unwrap();
        // Then state the destination must never read.
        let _ = a.write_all(&[3; 100]);
        let err = t.join().unwrap().unwrap().to_string();
        assert!(err.contains("source does not hold"), "{err}");
    }

    #[test]
    fn tampered_or_replayed_frames_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut d = Channel::accept(b, &key(1), 1 << 20).unwrap();
            d.receive().unwrap();
            d.receive().err()
        });
        let mut s = Channel::connect(a, &key(1), 1 << 20).unwrap();
        s.send(2, &[b"one"]).unwrap();
        // Replay frame 0's exact bytes as frame 1: the sequence differs.
        s.sent = 0;
        s.send(2, &[b"one"]).unwrap();
        let err = t.join().unwrap().unwrap().to_string();
        assert!(err.contains("authentication"), "{err}");
    }
}
