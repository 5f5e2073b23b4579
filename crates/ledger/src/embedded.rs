//! The embedded ledger: a signed, hash-chained, Merkle-proved log in redb, executed by revm.
//!
//! A directory holds `ledger.redb` (entries and metadata, including the operator's public key)
//! and `operator.key` (the secret that signs checkpoints, needed only to append). Each commit
//! writes its entries and the new signed checkpoint in one redb transaction, so a crash leaves
//! either all of a batch or none of it. [`EmbeddedLedger`] is the writer: opening replays every
//! entry through the EVM and checks its link and receipt. Readers use
//! [`LedgerReader`](crate::LedgerReader), which never writes the directory and never needs the
//! secret; [`EmbeddedLedger::verify_dir`] and [`EmbeddedLedger::info`] are shorthands for it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, Bytes, Log, U256};
use cohort_core::{Hash32, Identity, PublicKey, address_of};
use ed25519_dalek::{Signature, VerifyingKey};
use rayon::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::backend::{Head, LedgerBackend, TxOutcome};
use crate::checkpoint::{Checkpoint, verifier_key};
use crate::entry::{Entry, Receipt, SignedTx, Tx};
use crate::evm::{Executor, TX_GAS_CAP};
use crate::merkle::{MerkleTree, leaf_hash, verify_inclusion};
use crate::published::Published;
use crate::reader::LedgerReader;
use crate::signer::{SignedCall, TxContext};
use crate::storage::redb_error;
use crate::{LedgerError, merkle};

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const FORMAT: &[u8] = b"cohort-ledger/1";
/// The database file in a ledger directory.
pub const DB_FILE: &str = "ledger.redb";
/// The operator's secret key file in a ledger directory (hex, mode 0600).
pub const KEY_FILE: &str = "operator.key";

/// How to create a ledger.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// The log's name in checkpoints, e.g. `cohort.local/demo`.
    pub origin: String,
    /// The operator identity that signs checkpoints.
    pub operator: Identity,
    /// Time of the first entry.
    pub start_time: u64,
    /// Where [`EmbeddedLedger::create`] writes the operator's secret key (mode 0600): `None`
    /// (the default) puts it in the ledger directory as `operator.key`; a writer that hands
    /// the ledger directory to others (an auditor) keeps it elsewhere, and reopens the ledger
    /// with [`EmbeddedLedger::open_as`].
    pub key_file: Option<PathBuf>,
}

impl LedgerConfig {
    /// A config with start time 0.
    pub fn new(origin: &str, operator: Identity) -> Self {
        Self {
            origin: origin.to_owned(),
            operator,
            start_time: 0,
            key_file: None,
        }
    }

    /// Writes the operator's secret key to `path` instead of `DIR/operator.key`.
    pub fn with_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Sets the time of the first entry.
    pub fn with_start_time(mut self, t: u64) -> Self {
        self.start_time = t;
        self
    }
}

/// A successfully appended entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Sequence number.
    pub seq: u64,
    /// Leaf hash.
    pub leaf: Hash32,
    /// Receipt.
    pub receipt: Receipt,
}

/// What [`EmbeddedLedger::verify_dir`] checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Merkle root over them (equal to the checkpoint's).
    pub root: Hash32,
    /// Digest of the EVM state after replay.
    pub state_root: Hash32,
    /// The verified checkpoint note.
    pub checkpoint: String,
    /// Seconds spent per stage (read, decode and hash, signatures, re-execution), for
    /// benchmarks; signatures and re-execution run at the same time.
    pub timings: VerifyTimings,
}

/// Where [`EmbeddedLedger::verify_dir`] spent its time, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyTimings {
    /// Reading entries from redb.
    pub read_s: f64,
    /// Decoding, leaf hashing and link checks.
    pub decode_s: f64,
    /// Batched signature verification (on the rayon pool).
    pub signatures_s: f64,
    /// Re-executing every entry in a fresh EVM (one thread).
    pub replay_s: f64,
    /// Rebuilding the Merkle tree and checking the checkpoint.
    pub tree_s: f64,
}

/// An inclusion proof of one entry, self-contained: the entry's bytes, the audit path and the
/// checkpoint it is proved against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The entry's sequence number.
    pub index: u64,
    /// Tree size of the checkpoint.
    pub size: u64,
    /// The entry's canonical bytes, hex.
    pub entry_hex: String,
    /// Audit path, leaf upwards, hex hashes.
    pub path: Vec<Hash32>,
    /// The signed checkpoint note.
    pub checkpoint: String,
    /// The operator's public key, hex.
    pub operator_key: String,
}

impl InclusionProof {
    /// Checks the proof: the checkpoint is signed by `operator_key` (or by the key inside the
    /// proof if none is given), and the entry is in its tree. Returns the decoded entry.
    pub fn check(&self, operator_key: Option<&PublicKey>) -> Result<Entry, LedgerError> {
        let key = match operator_key {
            Some(k) => *k,
            None => parse_key(&self.operator_key)?,
        };
        let origin = self
            .checkpoint
            .lines()
            .next()
            .ok_or_else(|| LedgerError::BadCheckpoint("empty checkpoint".into()))?;
        let cp = Checkpoint::verify_log(&self.checkpoint, origin, &key)?;
        if cp.size != self.size {
            return Err(LedgerError::Invalid {
                what: "proof",
                reason: format!(
                    "proof is for size {} but checkpoint has {}",
                    self.size, cp.size
                ),
            });
        }
        let bytes = hex::decode(&self.entry_hex).map_err(|e| LedgerError::Invalid {
            what: "proof entry hex",
            reason: e.to_string(),
        })?;
        let entry = Entry::decode(&bytes).map_err(|e| LedgerError::Invalid {
            what: "proof entry",
            reason: e.to_string(),
        })?;
        verify_inclusion(
            &leaf_hash(&bytes),
            self.index,
            self.size,
            &self.path,
            &cp.root,
        )?;
        Ok(entry)
    }

    /// Size of the audit path in bytes.
    pub fn path_bytes(&self) -> usize {
        self.path.len() * 32
    }
}

fn parse_key(hex_key: &str) -> Result<PublicKey, LedgerError> {
    let h: Hash32 = hex_key.parse().map_err(|_| LedgerError::Invalid {
        what: "operator public key",
        reason: "expected 64 hex characters".into(),
    })?;
    Ok(h.0)
}

/// The embedded ledger. One writer per directory (redb locks the file).
pub struct EmbeddedLedger {
    dir: PathBuf,
    db: Database,
    origin: String,
    operator: Identity,
    tree: MerkleTree,
    exec: Executor,
    last_time: u64,
    clock: u64,
    note: String,
    /// Events per entry, kept for `logs_since` (rebuilt on open).
    logs: Vec<Vec<Log>>,
    sync: SyncPolicy,
    /// Commits made since the last durable one (only under [`SyncPolicy::OnFlush`]).
    unsynced: bool,
    /// The entry count and checkpoint at the last durable commit, what
    /// [`EmbeddedLedger::discard_unflushed`] returns to.
    durable: (u64, String),
    /// The durable part, shared with in-process readers ([`EmbeddedLedger::published`]).
    published: Published,
}

/// When the embedded ledger's commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every commit (every `submit`, every batch) is durable when it returns: one `fsync`
    /// each. The default.
    #[default]
    EveryCommit,
    /// Commits are atomic and visible at once but reach the disk at the next
    /// [`EmbeddedLedger::flush`] (or when the ledger is dropped): one `fsync` per flush. A
    /// crash in between loses the commits since the last flush, never more: the file reopens
    /// at the last flushed state, consistent and verifiable (redb's guarantee). For a writer
    /// that has a natural unit of work, such as a federated round.
    OnFlush,
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger")
            .field("dir", &self.dir)
            .field("origin", &self.origin)
            .field("size", &self.tree.len())
            .finish_non_exhaustive()
    }
}

impl EmbeddedLedger {
    /// Creates a new ledger in `dir` (created if missing). Refuses, changing nothing, when
    /// `dir` already holds a ledger (or either of its files) or the origin is not a valid log
    /// name; a failure part way removes what it wrote.
    pub fn create(dir: impl AsRef<Path>, config: LedgerConfig) -> Result<Self, LedgerError> {
        let dir = dir.as_ref().to_path_buf();
        check_origin(&config.origin)?;
        let db_path = dir.join(DB_FILE);
        let key_path = config
            .key_file
            .clone()
            .unwrap_or_else(|| dir.join(KEY_FILE));
        if db_path.exists() || key_path.exists() {
            return Err(LedgerError::AlreadyExists(dir));
        }
        if dir.exists() && !dir.is_dir() {
            return Err(LedgerError::Invalid {
                what: "ledger directory",
                reason: format!("{} exists and is not a directory", dir.display()),
            });
        }
        fs::create_dir_all(&dir).map_err(LedgerError::io(&dir))?;
        write_secret(&key_path, &config.operator)?;
        match Self::create_db(&dir, &db_path, config) {
            Ok(l) => Ok(l),
            Err(e) => {
                // Leave nothing half-made behind: the next `create` would refuse it.
                let _ = fs::remove_file(&db_path);
                let _ = fs::remove_file(&key_path);
                Err(e)
            }
        }
    }

    fn create_db(dir: &Path, db_path: &Path, config: LedgerConfig) -> Result<Self, LedgerError> {
        let redb_err = |e: redb::Error| redb_error(db_path, e);
        // `create_new`: never take over a file that appeared since `create` looked.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(db_path)
            .map_err(LedgerError::io(db_path))?;
        let backend = redb::backends::FileBackend::new(file).map_err(|e| redb_err(e.into()))?;
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| redb_err(e.into()))?;
        let note = Checkpoint {
            origin: config.origin.clone(),
            size: 0,
            root: merkle::empty_root(),
        }
        .sign(&config.operator);
        let w = db.begin_write().map_err(|e| redb_err(e.into()))?;
        {
            w.open_table(ENTRIES).map_err(|e| redb_err(e.into()))?;
            let mut m = w.open_table(META).map_err(|e| redb_err(e.into()))?;
            let pk = config.operator.public_key();
            let start = config.start_time.to_be_bytes();
            let rows: [(&str, &[u8]); 5] = [
                ("format", FORMAT),
                ("origin", config.origin.as_bytes()),
                ("operator", &pk),
                ("start_time", &start),
                ("checkpoint", note.as_bytes()),
            ];
            for (k, v) in rows {
                m.insert(k, v).map_err(|e| redb_err(e.into()))?;
            }
        }
        w.commit().map_err(|e| redb_err(e.into()))?;
        let published = Published::new(
            &config.origin,
            config.operator.public_key(),
            config.start_time,
        );
        published.advance([], &note);
        Ok(Self {
            published,
            dir: dir.to_path_buf(),
            db,
            origin: config.origin,
            operator: config.operator,
            tree: MerkleTree::new(),
            exec: Executor::new(),
            last_time: config.start_time,
            clock: config.start_time,
            durable: (0, note.clone()),
            note,
            logs: Vec::new(),
            sync: SyncPolicy::EveryCommit,
            unsynced: false,
        })
    }

    /// Opens an existing ledger for appending and rebuilds its state by replaying every entry:
    /// links, times and receipts are checked as it goes (signatures are [`Self::verify`]'s
    /// job). Needs `operator.key`. The file is first checked as a reader checks it (every page
    /// against its checksum, in a private copy), so a damaged file is refused before the writer
    /// touches it; a file left by a crash is then recovered in place by redb.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let dir = dir.as_ref().to_path_buf();
        let key_path = dir.join(KEY_FILE);
        if !dir.join(DB_FILE).exists() {
            return Err(LedgerError::NotALedger {
                dir,
                reason: format!("no {DB_FILE}"),
            });
        }
        let secret = fs::read_to_string(&key_path).map_err(LedgerError::io(&key_path))?;
        let operator =
            Identity::from_secret_hex("operator", &secret).map_err(|e| LedgerError::Invalid {
                what: "operator.key",
                reason: e.to_string(),
            })?;
        Self::open_as(dir, operator)
    }

    /// Opens an existing ledger as [`Self::open`] does, signing with `operator` (whose key
    /// must be the one recorded in the ledger) instead of reading `DIR/operator.key`: for a
    /// ledger created with [`LedgerConfig::with_key_file`].
    pub fn open_as(dir: impl AsRef<Path>, operator: Identity) -> Result<Self, LedgerError> {
        let dir = dir.as_ref().to_path_buf();
        let db_path = dir.join(DB_FILE);
        let meta = LedgerReader::open(&dir)?.meta().clone();
        if operator.public_key() != meta.operator {
            return Err(LedgerError::Invalid {
                what: "operator.key",
                reason: "does not match the operator key recorded in the ledger".into(),
            });
        }
        let db = Database::open(&db_path).map_err(|e| redb_error(&db_path, e.into()))?;
        let mut led = Self {
            published: Published::new(&meta.origin, meta.operator, meta.start_time),
            dir,
            db,
            origin: meta.origin,
            operator,
            tree: MerkleTree::new(),
            exec: Executor::new(),
            last_time: meta.start_time,
            clock: meta.start_time,
            note: meta.checkpoint,
            logs: Vec::new(),
            sync: SyncPolicy::EveryCommit,
            unsynced: false,
            durable: (0, String::new()),
        };
        led.rebuild(meta.start_time)?;
        led.set_durable(led.tree.len(), led.note.clone())?;
        Ok(led)
    }

    /// Rebuilds the in-memory state (tree, EVM, events) by replaying what is on disk.
    fn rebuild(&mut self, start_time: u64) -> Result<(), LedgerError> {
        let raw = read_entries(&self.db, &self.db_path())?;
        self.tree = MerkleTree::new();
        self.exec = Executor::new();
        self.logs = Vec::with_capacity(raw.len());
        self.last_time = start_time;
        for (seq, bytes) in raw.iter().enumerate() {
            let e = decode_at(seq as u64, bytes)?;
            self.check_link(&e)?;
            let r = self
                .exec
                .execute(e.seq, e.time(), e.tx.sender(), &e.tx.tx)
                .map_err(|x| LedgerError::BadEntry {
                    seq: e.seq,
                    reason: format!("does not re-execute: {x}"),
                })?;
            if r != e.receipt {
                return Err(LedgerError::BadEntry {
                    seq: e.seq,
                    reason: "stored receipt differs from re-execution".into(),
                });
            }
            self.tree.push_hash(leaf_hash(bytes));
            self.last_time = e.time();
            self.logs.push(e.receipt.logs);
        }
        self.clock = self.last_time;
        self.note = read_meta(&self.db, &self.dir)?.checkpoint;
        let cp = Checkpoint::verify_log(&self.note, &self.origin, &self.operator.public_key())?;
        if cp.size != self.tree.len() || cp.root != self.tree.root() {
            return Err(LedgerError::BadCheckpoint(format!(
                "checkpoint says size {} root {}, entries give size {} root {}",
                cp.size,
                cp.root,
                self.tree.len(),
                self.tree.root()
            )));
        }
        Ok(())
    }

    fn check_link(&self, e: &Entry) -> Result<(), LedgerError> {
        let n = self.tree.len();
        let bad = |reason: String| LedgerError::BadEntry { seq: n, reason };
        if e.seq != n {
            return Err(bad(format!("carries seq {}", e.seq)));
        }
        let prev = self.tree.leaf(n.wrapping_sub(1)).unwrap_or(Hash32::ZERO);
        if e.prev != prev {
            return Err(bad(format!(
                "links to {} but entry before is {prev}",
                e.prev
            )));
        }
        if e.time() < self.last_time {
            return Err(bad(format!(
                "time {} before previous {}",
                e.time(),
                self.last_time
            )));
        }
        Ok(())
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The leaf hash of entry `seq`.
    pub fn leaf_hash(&self, seq: u64) -> Option<Hash32> {
        self.tree.leaf(seq)
    }

    /// The latest signed checkpoint note.
    pub fn checkpoint_note(&self) -> &str {
        &self.note
    }

    /// The operator's public key.
    pub fn operator_key(&self) -> PublicKey {
        self.operator.public_key()
    }

    /// The verifier key string clients configure to check checkpoints.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.origin, &self.operator.public_key())
    }

    /// Digest of the current EVM state.
    pub fn state_root(&self) -> Hash32 {
        self.exec.state_root()
    }

    /// The next nonce `addr` must sign.
    pub fn nonce(&self, addr: Address) -> u64 {
        self.exec.nonce(addr)
    }

    /// Builds and signs a call as `from` with its next nonce (offset by `ahead` for calls
    /// signed in advance of a batch).
    pub fn sign(&self, from: &Identity, to: Option<Address>, data: Bytes, ahead: u64) -> SignedTx {
        let tx = Tx {
            to,
            value: U256::ZERO,
            data,
            gas_limit: TX_GAS_CAP,
            nonce: self.exec.nonce(from.address()) + ahead,
            time: self.clock,
        };
        SignedTx::sign(&self.origin, from, tx)
    }

    /// What a party with address `author` signs its next transaction under: this log's
    /// origin, the author's next nonce and the clock (see [`crate::signer`]).
    pub fn context(&self, author: Address) -> TxContext {
        TxContext::Embedded {
            origin: self.origin.clone(),
            nonce: self.exec.nonce(author),
            time: self.clock,
        }
    }

    /// Relays calls their authors signed (see [`LedgerBackend::relay`]) in one durable commit:
    /// each is checked (origin, then signature, nonce and time as [`Self::submit_batch`]
    /// does) before anything executes, and
    /// gets its own result; the refused ones record nothing.
    pub fn relay_signed(
        &mut self,
        calls: Vec<SignedCall>,
    ) -> Result<Vec<Result<Applied, LedgerError>>, LedgerError> {
        let mut out: Vec<Option<Result<Applied, LedgerError>>> = Vec::with_capacity(calls.len());
        let mut admitted = Vec::with_capacity(calls.len());
        let mut slots = Vec::with_capacity(calls.len());
        for call in calls {
            match self.admit(call) {
                Ok(tx) => {
                    slots.push(out.len());
                    admitted.push(tx);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        for (slot, r) in slots.into_iter().zip(self.submit_batch(admitted)?) {
            out[slot] = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LedgerError::Storage("missing batch result".into()))))
            .collect())
    }

    /// The relay's own checks of a signed call before [`Self::submit_batch`]'s.
    fn admit(&self, call: SignedCall) -> Result<SignedTx, LedgerError> {
        match call {
            SignedCall::Embedded { origin, tx } => {
                if origin != self.origin {
                    return Err(LedgerError::WrongOrigin {
                        expected: self.origin.clone(),
                        got: origin,
                    });
                }
                Ok(tx)
            }
            SignedCall::Chain { from, .. } => Err(LedgerError::Invalid {
                what: "signed call",
                reason: format!(
                    "a chain transaction (from {from}) cannot be relayed to the embedded ledger {}",
                    self.origin
                ),
            }),
        }
    }

    /// Appends one signed transaction in its own durable commit.
    pub fn submit(&mut self, tx: SignedTx) -> Result<Applied, LedgerError> {
        let mut out = self.submit_batch(vec![tx])?;
        out.pop()
            .unwrap_or_else(|| Err(LedgerError::Storage("empty batch result".into())))
    }

    /// Verifies, executes and appends a batch in one durable commit with one new checkpoint.
    /// Each transaction gets its own result; the failed ones (bad signature, nonce, a time
    /// before the last entry or after the clock, revert) are
    /// left out and the rest still commit. The outer error means the commit itself failed, in
    /// which case nothing of the batch is kept.
    pub fn submit_batch(
        &mut self,
        txs: Vec<SignedTx>,
    ) -> Result<Vec<Result<Applied, LedgerError>>, LedgerError> {
        let sig_ok = verify_signatures(&self.origin, &txs);
        let mut results = Vec::with_capacity(txs.len());
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::with_capacity(txs.len());
        let mut new_logs = Vec::new();
        for (tx, ok) in txs.into_iter().zip(sig_ok) {
            if !ok {
                results.push(Err(LedgerError::BadSignature {
                    author: tx.sender(),
                }));
                continue;
            }
            let sender = tx.sender();
            let expected = self.exec.nonce(sender);
            if tx.tx.nonce != expected {
                results.push(Err(LedgerError::Nonce {
                    author: sender,
                    expected,
                    got: tx.tx.nonce,
                }));
                continue;
            }
            if tx.tx.time < self.last_time {
                results.push(Err(LedgerError::TimeWentBackwards {
                    last: self.last_time,
                    got: tx.tx.time,
                }));
                continue;
            }
            if tx.tx.time > self.clock {
                results.push(Err(LedgerError::TimeAhead {
                    author: sender,
                    clock: self.clock,
                    got: tx.tx.time,
                }));
                continue;
            }
            let seq = self.tree.len();
            let receipt = match self.exec.execute(seq, tx.tx.time, sender, &tx.tx) {
                Ok(r) => r,
                Err(e) => {
                    results.push(Err(e.into()));
                    continue;
                }
            };
            self.last_time = tx.tx.time;
            let entry = Entry {
                seq,
                prev: self.tree.leaf(seq.wrapping_sub(1)).unwrap_or(Hash32::ZERO),
                tx,
                receipt,
            };
            let bytes = entry.encode();
            let leaf = leaf_hash(&bytes);
            self.tree.push_hash(leaf);
            rows.push((seq, bytes));
            new_logs.push(entry.receipt.logs.clone());
            results.push(Ok(Applied {
                seq,
                leaf,
                receipt: entry.receipt,
            }));
        }
        if rows.is_empty() {
            return Ok(results);
        }
        let note = Checkpoint {
            origin: self.origin.clone(),
            size: self.tree.len(),
            root: self.tree.root(),
        }
        .sign(&self.operator);
        if let Err(e) = self.write(&rows, &note) {
            // The EVM state already holds the batch: rebuild it from what is on disk.
            let clock = self.clock;
            let start_time = read_meta(&self.db, &self.dir)?.start_time;
            self.rebuild(start_time)?;
            self.clock = clock.max(self.last_time);
            return Err(e);
        }
        self.note = note;
        self.logs.extend(new_logs);
        Ok(results)
    }

    /// Sets when commits reach the disk (see [`SyncPolicy`]); switching to
    /// [`SyncPolicy::EveryCommit`] flushes first.
    pub fn set_sync(&mut self, sync: SyncPolicy) -> Result<(), LedgerError> {
        if sync == SyncPolicy::EveryCommit {
            self.flush()?;
        }
        self.sync = sync;
        Ok(())
    }

    /// The current [`SyncPolicy`].
    pub fn sync_policy(&self) -> SyncPolicy {
        self.sync
    }

    /// Makes every commit so far durable (one `fsync`); a no-op when there is nothing new.
    pub fn flush(&mut self) -> Result<(), LedgerError> {
        if !self.unsynced {
            return Ok(());
        }
        let mut w = self.db.begin_write().map_err(LedgerError::storage)?;
        w.set_durability(redb::Durability::Immediate)
            .map_err(LedgerError::storage)?;
        w.commit().map_err(LedgerError::storage)?;
        self.unsynced = false;
        self.set_durable(self.tree.len(), self.note.clone())
    }

    /// The durable part of this ledger as a handle other threads of this process may read
    /// while it is written (see [`Published`]): it advances at every durable commit.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    /// Records a durable commit at `len` entries under `note`, and publishes the entries made
    /// durable by it.
    fn set_durable(&mut self, len: u64, note: String) -> Result<(), LedgerError> {
        let from = self.published.len();
        let new = if len > from {
            read_entry_range(&self.db, &self.db_path(), from, len)?
        } else {
            Vec::new()
        };
        self.published.advance(new, &note);
        self.durable = (len, note);
        Ok(())
    }

    /// Throws away the commits made since the last durable one (under
    /// [`SyncPolicy::OnFlush`], those since the last [`flush`](Self::flush)) and returns to
    /// that state, on disk and in memory, as a crash would have: for a writer that stops
    /// part-way through its unit of work and must not leave half of it behind (dropping the
    /// ledger would make it durable). Returns how many entries were dropped. The entries
    /// dropped were never durable; nothing that was is touched.
    pub fn discard_unflushed(&mut self) -> Result<u64, LedgerError> {
        let (keep, note) = self.durable.clone();
        let len = self.tree.len();
        if !self.unsynced && len == keep {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(LedgerError::storage)?;
        {
            let mut t = w.open_table(ENTRIES).map_err(LedgerError::storage)?;
            for seq in keep..len {
                t.remove(seq).map_err(LedgerError::storage)?;
            }
            let mut m = w.open_table(META).map_err(LedgerError::storage)?;
            m.insert("checkpoint", note.as_bytes())
                .map_err(LedgerError::storage)?;
        }
        w.commit().map_err(LedgerError::storage)?;
        self.unsynced = false;
        let start_time = read_meta(&self.db, &self.dir)?.start_time;
        let clock = self.clock;
        self.rebuild(start_time)?;
        self.clock = clock.max(self.last_time);
        Ok(len - keep)
    }

    fn write(&mut self, rows: &[(u64, Vec<u8>)], note: &str) -> Result<(), LedgerError> {
        let mut w = self.db.begin_write().map_err(LedgerError::storage)?;
        let deferred = self.sync == SyncPolicy::OnFlush;
        if deferred {
            w.set_durability(redb::Durability::None)
                .map_err(LedgerError::storage)?;
        }
        {
            let mut t = w.open_table(ENTRIES).map_err(LedgerError::storage)?;
            for (seq, bytes) in rows {
                t.insert(*seq, bytes.as_slice())
                    .map_err(LedgerError::storage)?;
            }
            let mut m = w.open_table(META).map_err(LedgerError::storage)?;
            m.insert("checkpoint", note.as_bytes())
                .map_err(LedgerError::storage)?;
        }
        w.commit().map_err(LedgerError::storage)?;
        self.unsynced |= deferred;
        if !deferred && !self.unsynced {
            self.set_durable(self.tree.len(), note.to_owned())?;
        }
        Ok(())
    }

    /// Reads entry `seq`.
    pub fn entry(&self, seq: u64) -> Result<Entry, LedgerError> {
        read_entry(&self.db, &self.db_path(), seq)
    }

    /// An inclusion proof of entry `index` against the current checkpoint.
    pub fn prove(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        let size = self.len();
        let entry = self.entry(index)?;
        Ok(InclusionProof {
            index,
            size,
            entry_hex: hex::encode(entry.encode()),
            path: self.tree.inclusion_proof(index, size)?,
            checkpoint: self.note.clone(),
            operator_key: hex::encode(self.operator.public_key()),
        })
    }

    /// Runs every check of [`Self::verify_dir`] on this ledger, through the writer's own
    /// handle (a reader cannot open the file while the writer holds it).
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        Ok(check_db(&self.db, &self.dir)?.report)
    }

    /// Re-checks a ledger directory from scratch, read-only and without the operator's key:
    /// `LedgerReader::open(dir)?.verify()` (see [`LedgerReader::verify`]).
    pub fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport, LedgerError> {
        LedgerReader::open(dir)?.verify()
    }

    /// Reads a ledger directory's origin, operator key and latest checkpoint, read-only and
    /// without the operator's key: `LedgerReader::open(dir)?.info()`.
    pub fn info(dir: impl AsRef<Path>) -> Result<LedgerInfo, LedgerError> {
        LedgerReader::open(dir)?.info()
    }

    fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }
}

/// What a ledger directory says about itself, read without replaying it.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerInfo {
    /// The log's origin line.
    pub origin: String,
    /// The operator's public key, hex.
    pub operator_key: String,
    /// The verifier key string clients configure.
    pub verifier_key: String,
    /// Size of the latest checkpoint.
    pub size: u64,
    /// Root of the latest checkpoint.
    pub root: Hash32,
    /// The latest signed checkpoint note.
    pub checkpoint: String,
}

/// The metadata row of a ledger database.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub origin: String,
    pub operator: PublicKey,
    pub start_time: u64,
    pub checkpoint: String,
}

/// A log origin must be a valid note key name with no control character (it is the first
/// line of every checkpoint and the name of the operator's key).
pub(crate) fn check_origin(origin: &str) -> Result<(), LedgerError> {
    if crate::note::is_valid_name(origin) && !origin.contains(char::is_control) {
        return Ok(());
    }
    Err(LedgerError::Invalid {
        what: "origin",
        reason: format!(
            "{origin:?} must be non-empty, without spaces, '+' or control characters \
             (e.g. example.com/log)"
        ),
    })
}

pub(crate) fn read_meta(db: &impl ReadableDatabase, dir: &Path) -> Result<Meta, LedgerError> {
    let path = dir.join(DB_FILE);
    let not = |reason: String| LedgerError::NotALedger {
        dir: dir.to_path_buf(),
        reason,
    };
    let r = db.begin_read().map_err(|e| redb_error(&path, e.into()))?;
    let m = r.open_table(META).map_err(|e| match e {
        redb::TableError::TableDoesNotExist(_) | redb::TableError::TableTypeMismatch { .. } => {
            not(format!("{DB_FILE} has no cohort metadata table"))
        }
        e => redb_error(&path, e.into()),
    })?;
    let get = |k: &str| -> Result<Vec<u8>, LedgerError> {
        Ok(m.get(k)
            .map_err(|e| redb_error(&path, e.into()))?
            .ok_or_else(|| not(format!("metadata has no `{k}`")))?
            .value()
            .to_vec())
    };
    if get("format")? != FORMAT {
        return Err(not("unknown format version".into()));
    }
    let origin =
        String::from_utf8(get("origin")?).map_err(|_| not("origin is not UTF-8".into()))?;
    let operator: PublicKey = get("operator")?
        .try_into()
        .map_err(|_| not("operator key is not 32 bytes".into()))?;
    let start_time = u64::from_be_bytes(
        get("start_time")?
            .try_into()
            .map_err(|_| not("start_time is not 8 bytes".into()))?,
    );
    let checkpoint = String::from_utf8(get("checkpoint")?)
        .map_err(|_| LedgerError::BadCheckpoint("not UTF-8".into()))?;
    Ok(Meta {
        origin,
        operator,
        start_time,
        checkpoint,
    })
}

fn entries_table_error(path: &Path, e: redb::TableError) -> LedgerError {
    match e {
        redb::TableError::TableDoesNotExist(_) | redb::TableError::TableTypeMismatch { .. } => {
            LedgerError::Damaged {
                path: path.to_path_buf(),
                reason: "it has cohort metadata but no entries table".into(),
            }
        }
        e => redb_error(path, e.into()),
    }
}

pub(crate) fn read_entries(
    db: &impl ReadableDatabase,
    path: &Path,
) -> Result<Vec<Vec<u8>>, LedgerError> {
    let redb_err = |e: redb::Error| redb_error(path, e);
    let r = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let t = r
        .open_table(ENTRIES)
        .map_err(|e| entries_table_error(path, e))?;
    let n = t.len().map_err(|e| redb_err(e.into()))?;
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(1 << 24));
    for (i, row) in t.iter().map_err(|e| redb_err(e.into()))?.enumerate() {
        let (k, v) = row.map_err(|e| match redb_err(e.into()) {
            e @ (LedgerError::Damaged { .. } | LedgerError::Io { .. }) => e,
            e => LedgerError::BadEntry {
                seq: i as u64,
                reason: format!("unreadable: {e}"),
            },
        })?;
        if k.value() != i as u64 {
            return Err(LedgerError::BadEntry {
                seq: i as u64,
                reason: format!("missing (next stored key is {})", k.value()),
            });
        }
        out.push(v.value().to_vec());
    }
    Ok(out)
}

/// Reads and decodes entry `seq`.
/// The stored bytes of entries `from..to`.
fn read_entry_range(
    db: &impl ReadableDatabase,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<Vec<Vec<u8>>, LedgerError> {
    let redb_err = |e: redb::Error| redb_error(path, e);
    let r = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let t = r
        .open_table(ENTRIES)
        .map_err(|e| entries_table_error(path, e))?;
    (from..to)
        .map(|seq| match t.get(seq).map_err(|e| redb_err(e.into()))? {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(LedgerError::BadEntry {
                seq,
                reason: "missing".into(),
            }),
        })
        .collect()
}

pub(crate) fn read_entry(
    db: &impl ReadableDatabase,
    path: &Path,
    seq: u64,
) -> Result<Entry, LedgerError> {
    let redb_err = |e: redb::Error| redb_error(path, e);
    let r = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let t = r
        .open_table(ENTRIES)
        .map_err(|e| entries_table_error(path, e))?;
    match t.get(seq).map_err(|e| redb_err(e.into()))? {
        Some(v) => decode_at(seq, v.value()),
        None => Err(LedgerError::Invalid {
            what: "entry index",
            reason: format!(
                "{seq} is past the end ({} entries)",
                t.len().map_err(|e| redb_err(e.into()))?
            ),
        }),
    }
}

fn decode_at(seq: u64, bytes: &[u8]) -> Result<Entry, LedgerError> {
    Entry::decode(bytes).map_err(|e| LedgerError::BadEntry {
        seq,
        reason: e.to_string(),
    })
}

/// Checks signatures in parallel, batched; returns one flag per transaction.
fn verify_signatures<T: std::borrow::Borrow<SignedTx> + Sync>(
    origin: &str,
    txs: &[T],
) -> Vec<bool> {
    const CHUNK: usize = 1024;
    txs.par_chunks(CHUNK)
        .flat_map_iter(|chunk| {
            let mut keys: HashMap<PublicKey, Option<VerifyingKey>> = HashMap::new();
            let chunk: Vec<&SignedTx> = chunk.iter().map(Borrow::borrow).collect();
            let msgs: Vec<Vec<u8>> = chunk
                .iter()
                .map(|t| SignedTx::signing_message(origin, &t.author, &t.tx))
                .collect();
            let vks: Vec<Option<VerifyingKey>> = chunk
                .iter()
                .map(|t| {
                    *keys
                        .entry(t.author)
                        .or_insert_with(|| VerifyingKey::from_bytes(&t.author).ok())
                })
                .collect();
            let sigs: Vec<Signature> = chunk
                .iter()
                .map(|t| Signature::from_bytes(&t.signature))
                .collect();
            let all_keys: Option<Vec<VerifyingKey>> = vks.iter().copied().collect();
            let batch_ok = all_keys.is_some_and(|k| {
                let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
                ed25519_dalek::verify_batch(&refs, &sigs, &k).is_ok()
            });
            let flags: Vec<bool> = if batch_ok {
                vec![true; chunk.len()]
            } else {
                (0..chunk.len())
                    .map(|i| vks[i].is_some_and(|k| k.verify_strict(&msgs[i], &sigs[i]).is_ok()))
                    .collect()
            };
            flags.into_iter()
        })
        .collect()
}

/// Everything a full check of a ledger database produced.
pub(crate) struct Checked {
    pub meta: Meta,
    pub report: VerifyReport,
    pub entries: Vec<Entry>,
    pub exec: Executor,
    pub tree: MerkleTree,
}

/// The full check behind [`LedgerReader::verify`] and [`EmbeddedLedger::verify`].
pub(crate) fn check_db(db: &impl ReadableDatabase, dir: &Path) -> Result<Checked, LedgerError> {
    let clock = std::time::Instant::now();
    let meta = read_meta(db, dir)?;
    let raw = read_entries(db, &dir.join(DB_FILE))?;
    let timings = VerifyTimings {
        read_s: clock.elapsed().as_secs_f64(),
        ..VerifyTimings::default()
    };
    check_raw(meta, &raw, timings)
}

/// Everything [`check_db`] checks, over a log's metadata and its entries' stored bytes
/// however they were read (a file, or a coordinator over the network).
pub(crate) fn check_raw(
    meta: Meta,
    raw: &[Vec<u8>],
    mut timings: VerifyTimings,
) -> Result<Checked, LedgerError> {
    let clock = std::time::Instant::now();
    // Every check runs over the longest prefix that decodes; the error reported is the one at
    // the lowest sequence number. Each entry's own fields are covered by its own checks
    // (signature over the transaction and its time, link to the entry before, re-executed
    // receipt), so the entry named is the entry that was altered.
    let decoded: Vec<Result<Entry, LedgerError>> = raw
        .par_iter()
        .enumerate()
        .map(|(i, b)| decode_at(i as u64, b))
        .collect();
    let mut errors: Vec<LedgerError> = Vec::new();
    let mut entries: Vec<Entry> = Vec::with_capacity(decoded.len());
    for d in decoded {
        match d {
            Ok(e) => entries.push(e),
            Err(e) => {
                errors.push(e);
                break;
            }
        }
    }
    let leaves: Vec<Hash32> = raw.par_iter().map(|b| leaf_hash(b)).collect();
    let mut last_time = meta.start_time;
    for (i, e) in entries.iter().enumerate() {
        let bad = |reason: String| LedgerError::BadEntry {
            seq: i as u64,
            reason,
        };
        let prev = if i == 0 { Hash32::ZERO } else { leaves[i - 1] };
        let err = if e.seq != i as u64 {
            Some(bad(format!("carries seq {}", e.seq)))
        } else if e.prev != prev {
            Some(bad("hash link to the previous entry is broken".into()))
        } else if e.time() < last_time {
            Some(bad(format!(
                "time {} before previous {last_time}",
                e.time()
            )))
        } else {
            None
        };
        if let Some(err) = err {
            errors.push(err);
            break;
        }
        last_time = e.time();
    }
    timings.decode_s = clock.elapsed().as_secs_f64();
    let txs: Vec<&SignedTx> = entries.iter().map(|e| &e.tx).collect();
    // Signatures on the rayon pool (from a helper thread) while this thread replays: the EVM
    // state stays on the thread that built it.
    let ((sigs, sig_s), (replay, replay_s)) = std::thread::scope(|s| {
        let sig_thread = s.spawn(|| {
            let t = std::time::Instant::now();
            (
                verify_signatures(&meta.origin, &txs),
                t.elapsed().as_secs_f64(),
            )
        });
        let t = std::time::Instant::now();
        let replay = (replay_entries(&entries), t.elapsed().as_secs_f64());
        let sigs = sig_thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (sigs, replay)
    });
    timings.signatures_s = sig_s;
    timings.replay_s = replay_s;
    let clock = std::time::Instant::now();
    if let Some(i) = sigs.iter().position(|ok| !ok) {
        errors.push(LedgerError::BadEntry {
            seq: i as u64,
            reason: format!("signature by {} does not verify", entries[i].tx.sender()),
        });
    }
    let exec = match replay {
        Ok(x) => Some(x),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if let Some(first) = errors.into_iter().min_by_key(|e| match e {
        LedgerError::BadEntry { seq, .. } => *seq,
        _ => u64::MAX,
    }) {
        return Err(first);
    }
    let exec = exec.ok_or_else(|| LedgerError::Storage("replay gave no state".into()))?;
    let mut tree = MerkleTree::new();
    for l in &leaves {
        tree.push_hash(*l);
    }
    let cp = Checkpoint::verify_log(&meta.checkpoint, &meta.origin, &meta.operator)?;
    if cp.size != tree.len() || cp.root != tree.root() {
        return Err(LedgerError::BadCheckpoint(format!(
            "signed checkpoint says size {} root {}, entries give size {} root {}",
            cp.size,
            cp.root,
            tree.len(),
            tree.root()
        )));
    }
    let report = VerifyReport {
        entries: tree.len(),
        root: tree.root(),
        state_root: exec.state_root(),
        checkpoint: meta.checkpoint.clone(),
        timings: VerifyTimings {
            tree_s: clock.elapsed().as_secs_f64(),
            ..timings
        },
    };
    Ok(Checked {
        meta,
        report,
        entries,
        exec,
        tree,
    })
}

/// Re-executes every entry in a fresh EVM, comparing receipts; returns the EVM.
fn replay_entries(entries: &[Entry]) -> Result<Executor, LedgerError> {
    let mut exec = Executor::new();
    for e in entries {
        let r = exec
            .execute(e.seq, e.time(), address_of(&e.tx.author), &e.tx.tx)
            .map_err(|x| LedgerError::BadEntry {
                seq: e.seq,
                reason: format!("does not re-execute: {x}"),
            })?;
        if r != e.receipt {
            return Err(LedgerError::BadEntry {
                seq: e.seq,
                reason: "stored receipt differs from re-execution".into(),
            });
        }
    }
    Ok(exec)
}

fn write_secret(path: &Path, id: &Identity) -> Result<(), LedgerError> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(LedgerError::io(path))?;
    writeln!(f, "{}", hex::encode(id.secret_bytes())).map_err(LedgerError::io(path))?;
    f.sync_all().map_err(LedgerError::io(path))
}

impl Drop for EmbeddedLedger {
    fn drop(&mut self) {
        // Best effort: a failure here leaves the file at its last flushed state.
        let _ = self.flush();
    }
}

fn outcome(a: Applied) -> TxOutcome {
    TxOutcome {
        position: a.seq,
        id: a.leaf,
        gas_used: a.receipt.gas_used,
        output: a.receipt.output,
        created: a.receipt.created,
        logs: a.receipt.logs,
    }
}

impl LedgerBackend for EmbeddedLedger {
    fn published(&self) -> Option<Published> {
        Some(self.published.clone())
    }

    fn flush(&mut self) -> Result<(), LedgerError> {
        EmbeddedLedger::flush(self)
    }

    fn discard_unflushed(&mut self) -> Result<u64, LedgerError> {
        EmbeddedLedger::discard_unflushed(self)
    }

    fn transact(
        &mut self,
        from: &Identity,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        let tx = self.sign(from, to, data, 0);
        self.submit(tx).map(outcome)
    }

    fn transact_batch(
        &mut self,
        calls: Vec<(&Identity, Option<Address>, Bytes)>,
    ) -> Result<Vec<crate::backend::OutcomeOr>, LedgerError> {
        // Each author's calls take consecutive nonces. A call that fails leaves a gap that
        // makes that author's later calls in the batch fail too (as on any chain).
        let mut ahead: HashMap<Address, u64> = HashMap::new();
        let txs = calls
            .into_iter()
            .map(|(id, to, data)| {
                let k = ahead.entry(id.address()).or_insert(0);
                let tx = self.sign(id, to, data, *k);
                *k += 1;
                tx
            })
            .collect();
        Ok(self
            .submit_batch(txs)?
            .into_iter()
            .map(|r| r.map(outcome))
            .collect())
    }

    fn context_for(&self, author: Address) -> Result<TxContext, LedgerError> {
        Ok(self.context(author))
    }

    fn relay(&mut self, call: SignedCall) -> Result<TxOutcome, LedgerError> {
        let mut out = self.relay_batch(vec![call])?;
        out.pop()
            .unwrap_or_else(|| Err(LedgerError::Storage("empty batch result".into())))
    }

    fn relay_batch(
        &mut self,
        calls: Vec<SignedCall>,
    ) -> Result<Vec<crate::backend::OutcomeOr>, LedgerError> {
        Ok(self
            .relay_signed(calls)?
            .into_iter()
            .map(|r| r.map(outcome))
            .collect())
    }

    fn call(&mut self, from: Address, to: Address, data: Bytes) -> Result<Bytes, LedgerError> {
        Ok(self.exec.call(self.len(), self.clock, from, to, data)?)
    }

    fn logs_since(&self, cursor: u64) -> Result<(Vec<(u64, Log)>, u64), LedgerError> {
        let from = (cursor as usize).min(self.logs.len());
        let out = self.logs[from..]
            .iter()
            .enumerate()
            .flat_map(|(i, ls)| ls.iter().map(move |l| ((from + i) as u64, l.clone())))
            .collect();
        Ok((out, self.logs.len() as u64))
    }

    fn head(&self) -> Result<Head, LedgerError> {
        Ok(Head {
            size: self.len(),
            root: self.tree.root(),
            time: self.clock,
        })
    }

    fn set_time(&mut self, time: u64) -> Result<(), LedgerError> {
        if time < self.last_time {
            return Err(LedgerError::TimeWentBackwards {
                last: self.last_time,
                got: time,
            });
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
