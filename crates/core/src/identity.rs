use std::fmt;

use alloy_primitives::{Address, B256, keccak256};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{CoreError, sha256_parts};

/// A 32-byte ed25519 public key.
pub type PublicKey = [u8; 32];

/// The hash that binds an ed25519 key to an address: `keccak256(public_key)`.
pub fn key_hash(pk: &PublicKey) -> B256 {
    keccak256(pk)
}

/// The EVM address of an ed25519 key: the last 20 bytes of `keccak256(public_key)`.
pub fn address_of(pk: &PublicKey) -> Address {
    Address::from_slice(&key_hash(pk)[12..])
}

/// A participant's signing identity: an ed25519 key and the EVM address derived from it.
#[derive(Clone)]
pub struct Identity {
    name: String,
    key: SigningKey,
    address: Address,
}

impl Identity {
    /// Derives an identity deterministically from a seed and a name
    /// (`secret = sha256("cohort-identity-v1" || seed || name)`), so a run replays from its seed.
    pub fn from_seed(seed: u64, name: &str) -> Self {
        let secret = sha256_parts(&[b"cohort-identity-v1", &seed.to_be_bytes(), name.as_bytes()]);
        Self::from_secret(name, secret.0)
    }

    /// An identity from raw 32 secret bytes.
    pub fn from_secret(name: &str, secret: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&secret);
        let address = address_of(&key.verifying_key().to_bytes());
        Self {
            name: name.to_owned(),
            key,
            address,
        }
    }

    /// Parses a 64-character hex secret.
    pub fn from_secret_hex(name: &str, hex_secret: &str) -> Result<Self, CoreError> {
        let h: crate::Hash32 = hex_secret.trim().parse().map_err(|_| CoreError::BadHex {
            what: "ed25519 secret key",
            reason: "expected 64 hex characters".into(),
        })?;
        Ok(Self::from_secret(name, h.0))
    }

    /// The secret key bytes (handle with care).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The human name this identity was made with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.verifying_key().to_bytes()
    }

    /// The EVM address bound to the key.
    pub fn address(&self) -> Address {
        self.address
    }

    /// `keccak256(public_key)`, the value registered on chain.
    pub fn key_hash(&self) -> B256 {
        key_hash(&self.public_key())
    }

    /// Signs a message.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Verifies one signature by `pk` over `msg`.
    pub fn verify(pk: &PublicKey, msg: &[u8], sig: &[u8; 64]) -> Result<(), CoreError> {
        let vk =
            VerifyingKey::from_bytes(pk).map_err(|_| CoreError::BadPublicKey(hex::encode(pk)))?;
        vk.verify_strict(msg, &Signature::from_bytes(sig))
            .map_err(|e| CoreError::BadPublicKey(format!("signature check failed: {e}")))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_deterministic_and_distinct() {
        let a = Identity::from_seed(7, "alice");
        assert_eq!(a.address(), Identity::from_seed(7, "alice").address());
        assert_ne!(a.address(), Identity::from_seed(8, "alice").address());
        assert_ne!(a.address(), Identity::from_seed(7, "bob").address());
        assert_eq!(a.address(), address_of(&a.public_key()));
    }

    #[test]
    fn sign_and_verify() {
        let a = Identity::from_seed(1, "a");
        let sig = a.sign(b"msg");
        assert!(Identity::verify(&a.public_key(), b"msg", &sig).is_ok());
        assert!(Identity::verify(&a.public_key(), b"msh", &sig).is_err());
    }
}
