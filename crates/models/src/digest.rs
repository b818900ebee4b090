//! SHA-256 digests as a value type, so checksums are compared as bytes and printed one way.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Displays as 64 lowercase hex digits, the form the manifest stores.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Reads `reader` to the end into memory while hashing it, refusing more than `max_bytes`.
///
/// Returns `Ok(None)` when the input is larger than `max_bytes`, so the caller can name what was too
/// large.
pub(crate) fn read_hashed(
    reader: &mut dyn Read,
    max_bytes: u64,
) -> io::Result<Option<(Vec<u8>, Sha256Digest)>> {
    let mut hasher = Sha256::new();
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if data.len() as u64 + read as u64 > max_bytes {
            return Ok(None);
        }
        hasher.update(&chunk[..read]);
        data.extend_from_slice(&chunk[..read]);
    }
    Ok(Some((data, Sha256Digest(hasher.finalize().into()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_round_trips_through_hex() {
        let digest = Sha256Digest::of(b"abc");
        let text = digest.to_string();
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::from_hex(&text.to_uppercase()), Some(digest));
    }

    #[test]
    fn malformed_hex_is_rejected() {
        assert_eq!(Sha256Digest::from_hex(""), None);
        assert_eq!(Sha256Digest::from_hex("abc"), None);
        assert_eq!(Sha256Digest::from_hex(&"g".repeat(64)), None);
        assert_eq!(Sha256Digest::from_hex(&"a".repeat(66)), None);
    }

    #[test]
    fn read_hashed_stops_at_the_cap() {
        let data = vec![7u8; 1000];
        let (read, digest) = read_hashed(&mut data.as_slice(), 1000).unwrap().unwrap();
        assert_eq!(read, data);
        assert_eq!(digest, Sha256Digest::of(&data));
        assert!(read_hashed(&mut data.as_slice(), 999).unwrap().is_none());
    }
}
