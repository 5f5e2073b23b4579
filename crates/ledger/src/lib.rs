//! cohort's verifiable ledger.
//!
//! The incentive rules live once, in Solidity (`contracts/`). This crate runs that bytecode
//! either **embedded** — revm over an append-only log in redb in which every entry is an
//! ed25519-signed call, hash-linked to the one before, with its receipt, under an RFC 6962
//! Merkle tree and signed C2SP checkpoints — or on **any EVM chain** over JSON-RPC (cargo
//! feature `evm-rpc`). Both sit behind [`LedgerBackend`]; [`Protocol`] is the typed facade the
//! rest of cohort uses.
//!
//! ```no_run
//! use cohort_core::{Identity, tokens};
//! use cohort_ledger::{EmbeddedLedger, LedgerConfig, Protocol};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gov = Identity::from_seed(1, "governance");
//! let ledger = EmbeddedLedger::create("ledger-dir", LedgerConfig::new("cohort.local/demo", gov.clone()))?;
//! let mut p = Protocol::deploy(ledger, &gov)?;
//! p.mint(&gov, gov.address(), tokens(1_000))?;
//! p.backend().verify()?;
//! # Ok(()) }
//! ```

pub mod backend;
pub mod checkpoint;
pub mod demo;
pub mod embedded;
pub mod entry;
pub mod evm;
pub mod merkle;
pub mod note;
pub mod protocol;
pub mod published;
pub mod reader;
#[cfg(feature = "evm-rpc")]
pub mod rpc;
pub mod runs;
pub mod signer;
mod storage;
pub mod submit;

pub use backend::{Head, LedgerBackend, TxOutcome};
pub use checkpoint::{Checkpoint, CheckpointError};
pub use embedded::{
    Applied, EmbeddedLedger, InclusionProof, LedgerConfig, LedgerInfo, SyncPolicy, VerifyReport,
    VerifyTimings,
};
pub use entry::{Entry, Receipt, SignedTx, Tx};
pub use evm::{ExecError, Executor};
pub use merkle::{MerkleTree, ProofError};
pub use protocol::{Protocol, ProtocolError, bindings};
pub use published::{Consistency, Published, PublishedHead};
pub use reader::{LedgerReader, LedgerState};
#[cfg(feature = "evm-rpc")]
pub use rpc::ChainSubmitter;
#[cfg(feature = "evm-rpc")]
pub use rpc::EvmRpcLedger;
pub use signer::{SignedCall, TxContext};
pub use submit::{ChainSubmit, Submitted};

/// Whether this build can sign and send EVM chain transactions (the `evm-rpc` feature): a party
/// of a build without it cannot take part in a run on a chain, and says so when it learns the
/// run is on one.
pub const CHAIN_SUPPORT: bool = cfg!(feature = "evm-rpc");

use std::path::PathBuf;

use alloy_primitives::Address;

/// Everything that can go wrong in the ledger. Variants carry the facts a caller needs; the
/// ones about stored data name the entry.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error (part of this error's message, so not also its `source`).
        error: std::io::Error,
    },
    /// The storage engine failed for a reason other than a damaged file.
    #[error("storage: {0}")]
    Storage(String),
    /// The database file is damaged: it fails redb's checksums or structure checks, or is not a
    /// redb file. Nothing in it is trusted.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another process has the ledger open for writing.
    #[error("{0}: the ledger is open for writing in another process; try again when it is done")]
    Busy(PathBuf),
    /// An append or other change asked of a read-only view ([`LedgerState`]).
    #[error(
        "this is a read-only view of the ledger: {0} needs `EmbeddedLedger::open` and the operator key"
    )]
    ReadOnly(&'static str),
    /// The directory holds no ledger, or one this version cannot read.
    #[error("{dir}: not a cohort ledger: {reason}")]
    NotALedger {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// `create` on a directory that already holds a ledger.
    #[error("{0} already holds a ledger (ledger.redb or operator.key); nothing was changed")]
    AlreadyExists(PathBuf),
    /// A stored entry fails a check.
    #[error("entry {seq}: {reason}")]
    BadEntry {
        /// Its sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored checkpoint does not match the entries or its signature.
    #[error("checkpoint: {0}")]
    BadCheckpoint(String),
    /// A submitted transaction is not signed by its author.
    #[error("bad signature from {author}: not signed by that key, or altered since it was signed")]
    BadSignature {
        /// The claimed author.
        author: Address,
    },
    /// A submitted transaction reuses or skips a nonce.
    #[error("nonce {got} from {author}: expected {expected} (replayed or out of order)")]
    Nonce {
        /// The author.
        author: Address,
        /// The nonce the ledger expects.
        expected: u64,
        /// The nonce in the transaction.
        got: u64,
    },
    /// A signed call made for another log (its origin is under the signature).
    #[error("signed for the log {got:?}, but this ledger is {expected:?}")]
    WrongOrigin {
        /// This ledger's origin.
        expected: String,
        /// The origin the call was signed for.
        got: String,
    },
    /// A signed chain transaction for another chain (EIP-155 chain id).
    #[error("signed for chain id {got}, but this chain is {expected}")]
    WrongChain {
        /// This chain's id.
        expected: u64,
        /// The chain id in the transaction.
        got: u64,
    },
    /// A relayed call signed with a time after the ledger's clock: a party may not move the
    /// log's time forward.
    #[error("time {got} from {author} is after the ledger's clock {clock}")]
    TimeAhead {
        /// The author.
        author: Address,
        /// The ledger's clock (what [`LedgerBackend::context_for`] hands out).
        clock: u64,
        /// The time in the transaction.
        got: u64,
    },
    /// Time set before the last entry's time.
    #[error("time {got} is before the last entry's time {last}")]
    TimeWentBackwards {
        /// Time of the last entry.
        last: u64,
        /// The time asked for.
        got: u64,
    },
    /// The EVM did not execute the call (reverted, halted, invalid); nothing was recorded.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A proof is out of range or does not verify.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A checkpoint did not parse or verify.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A JSON-RPC chain answered with an error or not at all.
    #[error("chain rpc: {0}")]
    Rpc(String),
    /// A malformed input that is not an entry (a proof file, a key file, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl LedgerError {
    pub(crate) fn storage(e: impl Into<redb::Error>) -> Self {
        Self::Storage(e.into().to_string())
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| Self::Io { path, error }
    }

    /// Whether this error says the ledger's content is wrong (tampered or damaged: a bad entry,
    /// checkpoint or proof, a damaged file) rather than that it could not be read (an I/O
    /// error, a busy or missing ledger, a bad argument). Commands exit 1 for the first kind and
    /// 2 for the second.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Self::Damaged { .. }
                | Self::BadEntry { .. }
                | Self::BadCheckpoint(_)
                | Self::Checkpoint(_)
                | Self::Proof(_)
        )
    }
}
