use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::CoreError;

/// A 32-byte SHA-256 digest: the content address of blobs, log entries and Merkle nodes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The all-zero hash, used as the `prev` link of the first log entry.
    pub const ZERO: Self = Self([0; 32]);

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex without prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// SHA-256 of one byte string.
pub fn sha256(data: &[u8]) -> Hash32 {
    Hash32(Sha256::digest(data).into())
}

/// SHA-256 of the concatenation of several byte strings, without copying them together.
pub fn sha256_parts(parts: &[&[u8]]) -> Hash32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    Hash32(h.finalize().into())
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_hex())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Hash32 {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        let v = hex::decode(s).map_err(|e| CoreError::BadHex {
            what: "hash",
            reason: e.to_string(),
        })?;
        let arr: [u8; 32] = v.try_into().map_err(|v: Vec<u8>| CoreError::BadHex {
            what: "hash",
            reason: format!("expected 32 bytes, got {}", v.len()),
        })?;
        Ok(Self(arr))
    }
}

impl From<Hash32> for alloy_primitives::B256 {
    fn from(h: Hash32) -> Self {
        alloy_primitives::B256::from(h.0)
    }
}

impl From<alloy_primitives::B256> for Hash32 {
    fn from(h: alloy_primitives::B256) -> Self {
        Self(h.0)
    }
}

impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_parts(&[b"a", b"bc"]), sha256(b"abc"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = sha256(b"x");
        assert_eq!(h.to_hex().parse::<Hash32>().unwrap(), h);
        assert!("abcd".parse::<Hash32>().is_err());
        assert!("zz".parse::<Hash32>().is_err());
    }
}
