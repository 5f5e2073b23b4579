//! Log entries: signed transactions, their receipts, and the canonical binary encoding that
//! the hash chain and the Merkle tree commit to.
//!
//! An entry is `version(1) || seq || prev || author || signature || tx || receipt`,
//! big-endian integers, byte strings prefixed by a `u32` length. The author signs
//! `"cohort/tx/v1" || origin || author || tx`, the transaction including its time, so a
//! signature is bound to one log and one moment and cannot be replayed elsewhere; the operator
//! places it at `seq` after `prev`. Every field of an entry is therefore checked by the entry
//! itself (signature, link, re-executed receipt), so a verifier names the entry that is wrong.

use alloy_primitives::{Address, B256, Bytes, Log, LogData, U256};
use cohort_core::{Hash32, Identity, PublicKey, address_of};

use crate::merkle::leaf_hash;

/// Encoding version of entries written by this code.
pub const ENTRY_VERSION: u8 = 1;
const TX_DOMAIN: &[u8] = b"cohort/tx/v1";

/// A call as its author means it: to whom, with what data, under which nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tx {
    /// Target contract; `None` deploys `data` as init code.
    pub to: Option<Address>,
    /// Native value (the protocol uses its own token; this is normally zero).
    pub value: U256,
    /// Calldata or init code.
    pub data: Bytes,
    /// Gas limit (at most 2^24 under the Osaka rules).
    pub gas_limit: u64,
    /// The author's account nonce: each nonce is used once, in order.
    pub nonce: u64,
    /// When it executes (`block.timestamp`), seconds; never before the previous entry's time.
    pub time: u64,
}

/// A transaction with its author's key and ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// The author's ed25519 public key; its EVM address is [`address_of`] it.
    pub author: PublicKey,
    /// The call.
    pub tx: Tx,
    /// Signature over [`SignedTx::signing_message`].
    pub signature: [u8; 64],
}

impl SignedTx {
    /// Signs `tx` as `id` for the log named `origin`.
    pub fn sign(origin: &str, id: &Identity, tx: Tx) -> Self {
        let author = id.public_key();
        let signature = id.sign(&Self::signing_message(origin, &author, &tx));
        Self {
            author,
            tx,
            signature,
        }
    }

    /// The bytes the author signs.
    pub fn signing_message(origin: &str, author: &PublicKey, tx: &Tx) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(128 + tx.data.len()));
        w.bytes(TX_DOMAIN);
        w.bytes(origin.as_bytes());
        w.raw(author);
        write_tx(&mut w, tx);
        w.0
    }

    /// The author's EVM address.
    pub fn sender(&self) -> Address {
        address_of(&self.author)
    }
}

/// What executing an entry produced. Only successful calls enter the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipt {
    /// Gas the transaction used.
    pub gas_used: u64,
    /// Return data.
    pub output: Bytes,
    /// Address of the deployed contract, for a deployment.
    pub created: Option<Address>,
    /// Events emitted, in order.
    pub logs: Vec<Log>,
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Leaf hash of the previous entry (zero for the first).
    pub prev: Hash32,
    /// The signed call.
    pub tx: SignedTx,
    /// Its receipt.
    pub receipt: Receipt,
}

impl Entry {
    /// Canonical bytes (the Merkle leaf).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256 + self.tx.tx.data.len()));
        w.u8(ENTRY_VERSION);
        w.u64(self.seq);
        w.raw(&self.prev.0);
        w.raw(&self.tx.author);
        w.raw(&self.tx.signature);
        write_tx(&mut w, &self.tx.tx);
        w.u64(self.receipt.gas_used);
        w.bytes(&self.receipt.output);
        w.opt_address(self.receipt.created);
        w.u32(self.receipt.logs.len() as u32);
        for log in &self.receipt.logs {
            w.raw(log.address.as_slice());
            w.u8(log.data.topics().len() as u8);
            for t in log.data.topics() {
                w.raw(t.as_slice());
            }
            w.bytes(&log.data.data);
        }
        w.0
    }

    /// Parses canonical bytes; the error names the field that is wrong.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(DecodeError::new(
                "version",
                r.pos,
                format!("unknown {version}"),
            ));
        }
        let seq = r.u64("seq")?;
        let prev = Hash32(r.array("prev")?);
        let author = r.array("author")?;
        let signature = r.array("signature")?;
        let tx = read_tx(&mut r)?;
        let gas_used = r.u64("receipt.gas_used")?;
        let output = Bytes::from(r.bytes("receipt.output")?.to_vec());
        let created = r.opt_address("receipt.created")?;
        let n_logs = r.u32("receipt.logs")? as usize;
        let mut logs = Vec::with_capacity(n_logs.min(1024));
        for _ in 0..n_logs {
            let address = Address::from(r.array::<20>("log.address")?);
            let n_topics = r.u8("log.topics")?;
            if n_topics > 4 {
                return Err(DecodeError::new(
                    "log.topics",
                    r.pos,
                    format!("{n_topics} > 4"),
                ));
            }
            let topics = (0..n_topics)
                .map(|_| r.array::<32>("log.topic").map(B256::from))
                .collect::<Result<Vec<_>, _>>()?;
            let data = Bytes::from(r.bytes("log.data")?.to_vec());
            logs.push(Log {
                address,
                data: LogData::new_unchecked(topics, data),
            });
        }
        if r.pos != buf.len() {
            return Err(DecodeError::new(
                "end",
                r.pos,
                format!("{} trailing bytes", buf.len() - r.pos),
            ));
        }
        Ok(Self {
            seq,
            prev,
            tx: SignedTx {
                author,
                tx,
                signature,
            },
            receipt: Receipt {
                gas_used,
                output,
                created,
                logs,
            },
        })
    }

    /// The entry's time (`block.timestamp`).
    pub fn time(&self) -> u64 {
        self.tx.tx.time
    }

    /// RFC 6962 leaf hash of the canonical bytes.
    pub fn leaf_hash(&self) -> Hash32 {
        leaf_hash(&self.encode())
    }
}

/// A malformed entry: which field, at which byte offset, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed entry: field `{field}` at byte {offset}: {reason}")]
pub struct DecodeError {
    /// The field being read.
    pub field: &'static str,
    /// Byte offset where reading failed.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn new(field: &'static str, offset: usize, reason: String) -> Self {
        Self {
            field,
            offset,
            reason,
        }
    }
}

pub(crate) fn write_tx(w: &mut Writer, tx: &Tx) {
    w.opt_address(tx.to);
    w.raw(&tx.value.to_be_bytes::<32>());
    w.u64(tx.gas_limit);
    w.u64(tx.nonce);
    w.u64(tx.time);
    w.bytes(&tx.data);
}

pub(crate) fn read_tx(r: &mut Reader<'_>) -> Result<Tx, DecodeError> {
    let to = r.opt_address("tx.to")?;
    let value = U256::from_be_bytes(r.array::<32>("tx.value")?);
    let gas_limit = r.u64("tx.gas_limit")?;
    let nonce = r.u64("tx.nonce")?;
    let time = r.u64("tx.time")?;
    let data = Bytes::from(r.bytes("tx.data")?.to_vec());
    Ok(Tx {
        to,
        value,
        data,
        gas_limit,
        nonce,
        time,
    })
}

pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.raw(b);
    }
    pub(crate) fn opt_address(&mut self, a: Option<Address>) {
        match a {
            None => self.u8(0),
            Some(a) => {
                self.u8(1);
                self.raw(a.as_slice());
            }
        }
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::new(
                field,
                self.pos,
                format!("needs {n} bytes, {} left", self.buf.len() - self.pos),
            ));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let s = self.take(field, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(field, 1)?[0])
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)? as usize;
        self.take(field, n)
    }
    pub(crate) fn opt_address(
        &mut self,
        field: &'static str,
    ) -> Result<Option<Address>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(Address::from(self.array::<20>(field)?))),
            t => Err(DecodeError::new(
                field,
                self.pos - 1,
                format!("bad tag {t}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(seq: u64) -> Entry {
        let id = Identity::from_seed(1, "alice");
        let tx = Tx {
            to: Some(Address::repeat_byte(7)),
            value: U256::ZERO,
            data: Bytes::from(vec![1, 2, 3]),
            gas_limit: 1_000_000,
            nonce: seq,
            time: 1000 + seq,
        };
        Entry {
            seq,
            prev: Hash32([seq as u8; 32]),
            tx: SignedTx::sign("test", &id, tx),
            receipt: Receipt {
                gas_used: 21_000,
                output: Bytes::from(vec![9; 32]),
                created: None,
                logs: vec![Log {
                    address: Address::repeat_byte(7),
                    data: LogData::new_unchecked(vec![B256::repeat_byte(1)], Bytes::from(vec![5])),
                }],
            },
        }
    }

    #[test]
    fn round_trip() {
        let e = sample(3);
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn truncation_and_trailing_bytes_are_named() {
        let bytes = sample(1).encode();
        for cut in [0, 1, 10, 50, bytes.len() - 1] {
            let err = Entry::decode(&bytes[..cut]).unwrap_err();
            assert!(err.offset <= cut, "{err}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Entry::decode(&long).unwrap_err().field, "end");
    }
}
