//! Shared vocabulary of cohort: content hashes, ed25519 identities bound to EVM addresses,
//! token amounts, fixed-point scores and the random streams ([`rand`]).
//!
//! Everything here is deterministic: identities derive from seeds, hashes from bytes, and no
//! function reads the clock or a global random source.

pub mod amount;
mod hash;
mod identity;
pub mod keyfile;
pub mod rand;

pub use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
pub use amount::{Score, TOKEN, to_tokens_f64, tokens};
pub use hash::{Hash32, sha256, sha256_parts};
pub use identity::{Identity, PublicKey, address_of, key_hash};
pub use rand::{ChaCha8, Rng, SplitMix64, sample_cohort};

/// Errors of the core types.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A hex string that does not decode to the expected number of bytes.
    #[error("invalid hex for {what}: {reason}")]
    BadHex {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// Bytes that are not a valid ed25519 public key.
    #[error("invalid ed25519 public key {0}")]
    BadPublicKey(String),
}
