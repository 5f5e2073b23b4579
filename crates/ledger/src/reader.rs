//! Reading a ledger directory: never writing it, never needing the operator's secret.
//!
//! [`LedgerReader`] is the only way cohort's read-only commands (`ledger show`, `verify`,
//! `prove`) open a ledger. It has no method that appends, and it cannot write the directory at
//! all: `ledger.redb` is opened with `File::open` (read-only) under a shared lock, and redb runs
//! on a private in-memory shadow of it (see the `storage` module), so every file of the
//! directory stays byte-identical. `operator.key` is never opened: the operator's public key
//! is in the database, which is all a reader needs.
//!
//! Opening checks every page of the database against its checksum, so a damaged file is an
//! error ([`LedgerError::Damaged`]), never a panic. A file left by a crashed or killed writer
//! is recovered in the private copy, as of its last complete commit, and
//! [`LedgerReader::recovered`] says so; the file itself is repaired only when a writer
//! ([`EmbeddedLedger::open`](crate::EmbeddedLedger::open)) next opens it. A ledger being
//! written by another process is [`LedgerError::Busy`].

use std::path::{Path, PathBuf};

use alloy_primitives::{Address, Bytes, Log};
use cohort_core::{Hash32, Identity, PublicKey};

use crate::LedgerError;
use crate::backend::{Head, LedgerBackend, OutcomeOr, TxOutcome};
use crate::checkpoint::{Checkpoint, verifier_key};
use crate::embedded::{
    Checked, DB_FILE, InclusionProof, LedgerInfo, Meta, VerifyReport, VerifyTimings, check_db,
    check_origin, check_raw, read_entries, read_entry, read_meta,
};
use crate::entry::Entry;
use crate::evm::Executor;
use crate::merkle::{MerkleTree, leaf_hash};
use crate::published::PublishedHead;
use crate::storage::{Snapshot, open_snapshot};

/// A read-only view of a ledger directory (see the module docs).
#[derive(Debug)]
pub struct LedgerReader {
    dir: PathBuf,
    snapshot: Snapshot,
    meta: Meta,
}

impl LedgerReader {
    /// Opens the ledger in `dir` for reading. Errors: [`LedgerError::NotALedger`] when there is
    /// no ledger there, [`LedgerError::Busy`] when a writer has it open,
    /// [`LedgerError::Damaged`] when the database fails its checksums, [`LedgerError::Io`] when
    /// it cannot be read.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(DB_FILE);
        let not = |reason: String| LedgerError::NotALedger {
            dir: dir.clone(),
            reason,
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(not(format!("{DB_FILE} is not a file"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not(if dir.is_dir() {
                    format!("there is no {DB_FILE} in it")
                } else {
                    "no such directory".into()
                }));
            }
            Err(error) => return Err(LedgerError::Io { path, error }),
        }
        let snapshot = open_snapshot(&path)?;
        let meta = read_meta(&snapshot.db, &dir)?;
        Ok(Self {
            dir,
            snapshot,
            meta,
        })
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.meta.origin
    }

    /// The operator's public key, as recorded in the database.
    pub fn operator_key(&self) -> PublicKey {
        self.meta.operator
    }

    /// The verifier key string clients configure to check checkpoints.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.meta.origin, &self.meta.operator)
    }

    /// The latest checkpoint note as stored (not yet checked: see [`Self::info`]).
    pub fn checkpoint_note(&self) -> &str {
        &self.meta.checkpoint
    }

    /// Whether the file was left by a writer that did not close it (a crash or a kill), so
    /// that it was read as of its last complete commit, recovered in a private copy. The file
    /// is unchanged; the next writer to open it repairs it in place.
    pub fn recovered(&self) -> bool {
        self.snapshot.recovered
    }

    /// Origin, operator key and latest checkpoint, with the checkpoint's signature checked
    /// (entries are not read: see [`Self::verify`]).
    pub fn info(&self) -> Result<LedgerInfo, LedgerError> {
        let m = &self.meta;
        let cp = Checkpoint::verify_log(&m.checkpoint, &m.origin, &m.operator)?;
        Ok(LedgerInfo {
            verifier_key: self.verifier_key(),
            operator_key: hex::encode(m.operator),
            origin: m.origin.clone(),
            size: cp.size,
            root: cp.root,
            checkpoint: m.checkpoint.clone(),
        })
    }

    /// Re-checks the ledger from scratch: every entry decodes, carries its sequence number,
    /// links to the one before and keeps time order; every signature verifies (batched, on all
    /// cores); re-executing every entry reproduces its receipt; the Merkle root equals the
    /// signed checkpoint's. The error names the first bad entry.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        Ok(check_db(&self.snapshot.db, &self.dir)?.report)
    }

    /// Everything [`Self::verify`] checks, keeping what it rebuilt: the entries, the EVM state
    /// after them and the Merkle tree, as a read-only [`LedgerBackend`] to query.
    pub fn replay(&self) -> Result<LedgerState, LedgerError> {
        let Checked {
            meta,
            report,
            entries,
            exec,
            tree,
        } = check_db(&self.snapshot.db, &self.dir)?;
        let clock = entries.last().map_or(meta.start_time, Entry::time);
        Ok(LedgerState {
            meta,
            report,
            entries,
            exec,
            tree,
            clock,
        })
    }

    /// Entry `seq`, decoded (not checked against anything: see [`Self::verify`]).
    pub fn entry(&self, seq: u64) -> Result<Entry, LedgerError> {
        read_entry(&self.snapshot.db, &self.dir.join(DB_FILE), seq)
    }

    /// The Merkle tree of the stored entries, checked against the signed checkpoint (its
    /// signature, size and root), with the entries' bytes. Signatures inside entries and
    /// receipts are not re-checked: the operator signed this tree.
    fn checked_tree(&self) -> Result<(MerkleTree, Vec<Vec<u8>>, Checkpoint), LedgerError> {
        let m = &self.meta;
        let cp = Checkpoint::verify_log(&m.checkpoint, &m.origin, &m.operator)?;
        let raw = read_entries(&self.snapshot.db, &self.dir.join(DB_FILE))?;
        let mut tree = MerkleTree::new();
        for b in &raw {
            tree.push_hash(leaf_hash(b));
        }
        if cp.size != tree.len() || cp.root != tree.root() {
            return Err(LedgerError::BadCheckpoint(format!(
                "signed checkpoint says size {} root {}, entries give size {} root {}",
                cp.size,
                cp.root,
                tree.len(),
                tree.root()
            )));
        }
        Ok((tree, raw, cp))
    }

    /// An inclusion proof of entry `index` against the latest signed checkpoint, after checking
    /// that the stored entries give that checkpoint's root. An index past the end is
    /// [`LedgerError::Invalid`].
    pub fn prove(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        let (tree, raw, cp) = self.checked_tree()?;
        let bytes = usize::try_from(index)
            .ok()
            .and_then(|i| raw.get(i))
            .ok_or_else(|| LedgerError::Invalid {
                what: "entry index",
                reason: format!(
                    "{index} is past the end: the ledger has {} entries (0 to {})",
                    cp.size,
                    cp.size.saturating_sub(1)
                ),
            })?;
        Ok(InclusionProof {
            index,
            size: cp.size,
            entry_hex: hex::encode(bytes),
            path: tree.inclusion_proof(index, cp.size)?,
            checkpoint: self.meta.checkpoint.clone(),
            operator_key: hex::encode(self.meta.operator),
        })
    }

    /// A consistency proof from the tree of the first `old` entries to the latest signed
    /// checkpoint's tree, after checking the stored entries against that checkpoint. Returns
    /// the proof and the checkpoint.
    pub fn consistency_proof(&self, old: u64) -> Result<(Vec<Hash32>, Checkpoint), LedgerError> {
        let (tree, _, cp) = self.checked_tree()?;
        Ok((tree.consistency_proof(old, cp.size)?, cp))
    }
}

/// A ledger as a full check ([`LedgerReader::replay`]) rebuilt it: its entries, its EVM state
/// and its Merkle tree, in memory. It answers queries through [`LedgerBackend`] (so
/// [`Protocol::at`](crate::Protocol::at) works on it) and refuses every transaction with
/// [`LedgerError::ReadOnly`]; nothing it does reaches the directory.
#[derive(Debug)]
pub struct LedgerState {
    meta: Meta,
    report: VerifyReport,
    entries: Vec<Entry>,
    exec: Executor,
    tree: MerkleTree,
    clock: u64,
}

impl LedgerState {
    /// Checks a log that was not read from a directory (a coordinator's published log fetched
    /// over the network: `cohort ledger verify --remote`) exactly as [`LedgerReader::replay`]
    /// checks one that was: every entry decodes and links to the one before, every signature
    /// verifies, re-execution reproduces every receipt, and the Merkle root equals the
    /// checkpoint `head` carries, signed by `head.operator`. `read_s` is how long fetching
    /// took, for the report's timings.
    pub fn check(
        head: &PublishedHead,
        entries: &[Vec<u8>],
        read_s: f64,
    ) -> Result<Self, LedgerError> {
        check_origin(&head.origin)?;
        let meta = Meta {
            origin: head.origin.clone(),
            operator: head.operator,
            start_time: head.start_time,
            checkpoint: head.checkpoint.clone(),
        };
        let timings = VerifyTimings {
            read_s,
            ..VerifyTimings::default()
        };
        let Checked {
            meta,
            report,
            entries,
            exec,
            tree,
        } = check_raw(meta, entries, timings)?;
        let clock = entries.last().map_or(meta.start_time, Entry::time);
        Ok(Self {
            meta,
            report,
            entries,
            exec,
            tree,
            clock,
        })
    }

    /// What the check found.
    pub fn report(&self) -> &VerifyReport {
        &self.report
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.meta.origin
    }

    /// The latest signed checkpoint note (verified).
    pub fn checkpoint_note(&self) -> &str {
        &self.meta.checkpoint
    }

    /// The operator's public key.
    pub fn operator_key(&self) -> PublicKey {
        self.meta.operator
    }

    /// The verifier key string clients configure to check checkpoints.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.meta.origin, &self.meta.operator)
    }

    /// Digest of the EVM state after the last entry.
    pub fn state_root(&self) -> Hash32 {
        self.exec.state_root()
    }
}

impl LedgerBackend for LedgerState {
    fn transact(
        &mut self,
        _from: &Identity,
        _to: Option<Address>,
        _data: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        Err(LedgerError::ReadOnly("appending a transaction"))
    }

    fn transact_batch(
        &mut self,
        _calls: Vec<(&Identity, Option<Address>, Bytes)>,
    ) -> Result<Vec<OutcomeOr>, LedgerError> {
        Err(LedgerError::ReadOnly("appending transactions"))
    }

    /// The context a party would sign under if the writer's clock were this view's.
    fn context_for(&self, author: Address) -> Result<crate::TxContext, LedgerError> {
        Ok(crate::TxContext::Embedded {
            origin: self.meta.origin.clone(),
            nonce: self.exec.nonce(author),
            time: self.clock,
        })
    }

    fn relay(&mut self, _call: crate::SignedCall) -> Result<TxOutcome, LedgerError> {
        Err(LedgerError::ReadOnly("relaying a signed transaction"))
    }

    fn call(&mut self, from: Address, to: Address, data: Bytes) -> Result<Bytes, LedgerError> {
        Ok(self
            .exec
            .call(self.tree.len(), self.clock, from, to, data)?)
    }

    fn logs_since(&self, cursor: u64) -> Result<(Vec<(u64, Log)>, u64), LedgerError> {
        let from = usize::try_from(cursor)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        let out = self.entries[from..]
            .iter()
            .flat_map(|e| e.receipt.logs.iter().map(move |l| (e.seq, l.clone())))
            .collect();
        Ok((out, self.entries.len() as u64))
    }

    fn head(&self) -> Result<Head, LedgerError> {
        Ok(Head {
            size: self.tree.len(),
            root: self.tree.root(),
            time: self.clock,
        })
    }

    /// Moves the clock that queries see (in memory only); it may not go back before the last
    /// entry.
    fn set_time(&mut self, time: u64) -> Result<(), LedgerError> {
        let last = self
            .entries
            .last()
            .map_or(self.meta.start_time, Entry::time);
        if time < last {
            return Err(LedgerError::TimeWentBackwards { last, got: time });
        }
        self.clock = time;
        Ok(())
    }

    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, LedgerError> {
        Ok(self.tree.inclusion_proof(index, size)?)
    }

    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash32>, LedgerError> {
        Ok(self.tree.consistency_proof(old, new)?)
    }
}
