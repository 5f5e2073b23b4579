//! The durable part of an embedded ledger, shared with readers in the writer's process.
//!
//! A federation's coordinator holds its ledger open for writing, so nobody else may open the
//! file (redb locks it); yet its parties and any auditor must be able to check what it records.
//! [`Published`] is a cheap, cloneable handle ([`EmbeddedLedger::published`]) that the ledger
//! advances at every durable commit, and only then: it holds the log's origin, the operator's
//! public key, the start time, the signed checkpoint of the last durable commit, every entry up
//! to it (the bytes the checkpoint's root covers) and their Merkle tree. What was relayed of an
//! unfinished round, never made durable, is never shown, so a coordinator that crashes and
//! resumes shows a log that extends everything it showed before.
//!
//! From it a server answers, without touching the writer: the latest checkpoint with a
//! consistency proof from any earlier size ([`Published::consistency`]), and the entries
//! ([`Published::entries`]), which an auditor re-checks with [`LedgerState::check`]
//! exactly as `cohort ledger verify` checks a directory.
//!
//! [`EmbeddedLedger::published`]: crate::EmbeddedLedger::published
//! [`LedgerState::check`]: crate::LedgerState::check

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cohort_core::{Hash32, PublicKey};

use crate::LedgerError;
use crate::merkle::{MerkleTree, leaf_hash};

/// A handle on the durable part of an embedded ledger (see the module docs).
#[derive(Debug, Clone)]
pub struct Published(Arc<RwLock<Log>>);

#[derive(Debug)]
struct Log {
    head: PublishedHead,
    entries: Vec<Vec<u8>>,
    tree: MerkleTree,
}

/// What identifies a published log and its latest durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedHead {
    /// The log's origin line.
    pub origin: String,
    /// The operator's ed25519 public key (the checkpoint's signer).
    pub operator: PublicKey,
    /// The ledger's start time (the first entry's time is not before it).
    pub start_time: u64,
    /// The signed checkpoint note of the last durable commit.
    pub checkpoint: String,
    /// The number of entries it covers.
    pub size: u64,
}

/// The latest checkpoint and the proof that it extends an earlier size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consistency {
    /// The latest durable state.
    pub head: PublishedHead,
    /// The consistency proof from the size asked for to `head.size` (RFC 9162; empty when the
    /// sizes are equal or the earlier one is 0).
    pub proof: Vec<Hash32>,
}

impl Published {
    pub(crate) fn new(origin: &str, operator: PublicKey, start_time: u64) -> Self {
        Self(Arc::new(RwLock::new(Log {
            head: PublishedHead {
                origin: origin.to_owned(),
                operator,
                start_time,
                checkpoint: String::new(),
                size: 0,
            },
            entries: Vec::new(),
            tree: MerkleTree::new(),
        })))
    }

    // A writer that panicked mid-update cannot leave a torn log: `advance` pushes entries and
    // then the checkpoint, and a reader checks the two against each other; so a poisoned lock
    // is used as it is.
    fn read(&self) -> RwLockReadGuard<'_, Log> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Log> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of entries published so far.
    pub fn len(&self) -> u64 {
        self.read().head.size
    }

    /// Whether nothing is published yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes a new durable state: the entries after the ones already published (so that
    /// `len() + new.len()` entries are covered) and the checkpoint signed over them.
    pub(crate) fn advance(&self, new: impl IntoIterator<Item = Vec<u8>>, checkpoint: &str) {
        let mut log = self.write();
        for bytes in new {
            log.tree.push_hash(leaf_hash(&bytes));
            log.entries.push(bytes);
        }
        log.head.size = log.tree.len();
        log.head.checkpoint = checkpoint.to_owned();
    }

    /// The latest durable state.
    pub fn head(&self) -> PublishedHead {
        self.read().head.clone()
    }

    /// The latest durable state and a consistency proof to it from the first `old` entries.
    /// Errors when `old` is past the published size (an auditor who saw more than this log
    /// ever published was shown another log).
    pub fn consistency(&self, old: u64) -> Result<Consistency, LedgerError> {
        let log = self.read();
        let proof = log.tree.consistency_proof(old, log.head.size)?;
        Ok(Consistency {
            head: log.head.clone(),
            proof,
        })
    }

    /// Up to `max` entries from `from` (fewer at the end; none past it), as stored.
    pub fn entries(&self, from: u64, max: usize) -> Vec<Vec<u8>> {
        let log = self.read();
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(log.entries.len());
        let end = start.saturating_add(max).min(log.entries.len());
        log.entries[start..end].to_vec()
    }
}
