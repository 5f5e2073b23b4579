//! Checking a coordinator's ledger from the outside.
//!
//! A coordinator serves what it has made durable on its ledger to anyone who asks (the
//! `LedgerHead` and `LedgerEntries` calls, no session needed; [`crate::server::Hub::publish`]):
//! its latest checkpoint, signed by the ledger's operator key, with a consistency proof from
//! any earlier size, and its entries.
//!
//! - Parties keep a [`Watch`]: the operator key and origin of the first checkpoint they see
//!   (trust on first use, as SSH does with host keys) and the last checkpoint they verified.
//!   Before a party acts on a request it asks for the latest checkpoint and checks that it is
//!   signed by the same key and extends the last one (RFC 9162 consistency proof). A
//!   coordinator that rewrites history (a split view: another history shown to this party
//!   than before, or a log rolled back and written again) fails the check, and the party stops
//!   with [`NetError::SplitView`] instead of signing anything on top of it.
//! - An auditor fetches the whole log ([`fetch_ledger`]) and re-checks it with
//!   `cohort_ledger::LedgerState::check`, as `cohort ledger verify --remote URL` does.

use std::time::{Duration, Instant};

use cohort_core::{Hash32, PublicKey};
use cohort_ledger::merkle::verify_consistency;
use cohort_ledger::{Checkpoint, PublishedHead};
use tonic::transport::Channel;

use crate::NetError;
use crate::party::{Dial, endpoint};
use crate::pb::{self, federation_client::FederationClient};

/// The most entries one `LedgerEntries` call returns.
pub const MAX_ENTRIES_PER_CALL: u64 = 4096;

/// What a party trusts of its coordinator's ledger (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    trusted: Option<Trusted>,
    /// The ledger the coordinator said the run records on, from its first `Welcome`: `Some(None)`
    /// its embedded ledger, `Some(Some(id))` the EVM chain with that id; `None` before the first
    /// session.
    pub chain: Option<Option<u64>>,
}

#[derive(Debug, Clone)]
struct Trusted {
    origin: String,
    operator: PublicKey,
    size: u64,
    root: Hash32,
}

impl Watch {
    /// A watch that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The size of the last checkpoint verified (0 before the first).
    pub fn size(&self) -> u64 {
        self.trusted.as_ref().map_or(0, |t| t.size)
    }

    /// Checks `head` and its consistency `proof` from [`Watch::size`] entries: the
    /// checkpoint's signature by `head.operator`, the same origin and operator key as every
    /// checkpoint before, and a log that extends the last one verified. Keeps it on success.
    ///
    /// # Errors
    /// [`NetError::SplitView`] naming what does not hold; the watch is unchanged.
    pub fn check(
        &mut self,
        head: &PublishedHead,
        proof: &[Hash32],
    ) -> Result<Checkpoint, NetError> {
        let split = |why: String| NetError::SplitView(why);
        let cp = Checkpoint::verify_log(&head.checkpoint, &head.origin, &head.operator)
            .map_err(|e| split(format!("its checkpoint does not verify: {e}")))?;
        if let Some(t) = &self.trusted {
            if head.operator != t.operator || head.origin != t.origin {
                return Err(split(format!(
                    "its ledger is now {:?} signed by {}, before it was {:?} signed by {}",
                    head.origin,
                    hex::encode(head.operator),
                    t.origin,
                    hex::encode(t.operator)
                )));
            }
            if cp.size < t.size {
                return Err(split(format!(
                    "its ledger shrank from {} entries (root {}) to {} (root {})",
                    t.size, t.root, cp.size, cp.root
                )));
            }
            verify_consistency(t.size, cp.size, &t.root, &cp.root, proof).map_err(|e| {
                split(format!(
                    "its ledger of {} entries (root {}) does not extend the {} entries (root \
                     {}) it showed before: {e}",
                    cp.size, cp.root, t.size, t.root
                ))
            })?;
        }
        self.trusted = Some(Trusted {
            origin: head.origin.clone(),
            operator: head.operator,
            size: cp.size,
            root: cp.root,
        });
        Ok(cp)
    }
}

/// The head and proof a `LedgerHead` reply carries, its checkpoint's signature checked
/// against the key the reply names (whether that key and history are the trusted ones is
/// [`Watch::check`]'s question).
pub fn head_of(reply: pb::LedgerHeadReply) -> Result<(PublishedHead, Vec<Hash32>), NetError> {
    let operator: PublicKey = reply.operator_key.as_slice().try_into().map_err(|_| {
        NetError::Protocol(format!(
            "a ledger head whose operator key has {} bytes, not 32",
            reply.operator_key.len()
        ))
    })?;
    let proof = reply
        .proof
        .iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice()).map(Hash32).map_err(|_| {
                NetError::Protocol("a consistency proof hash that is not 32 bytes".into())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let size = Checkpoint::verify_log(&reply.checkpoint, &reply.origin, &operator)
        .map(|c| c.size)
        .map_err(|e| {
            NetError::Protocol(format!(
                "a ledger head whose checkpoint does not verify: {e}"
            ))
        })?;
    Ok((
        PublishedHead {
            origin: reply.origin,
            operator,
            start_time: reply.start_time,
            checkpoint: reply.checkpoint,
            size,
        },
        proof,
    ))
}

/// Asks the coordinator for its latest checkpoint and a consistency proof from `old` entries.
pub async fn ledger_head(
    client: &mut FederationClient<Channel>,
    old: u64,
) -> Result<(PublishedHead, Vec<Hash32>), NetError> {
    let reply = client
        .ledger_head(pb::LedgerQuery { old_size: old })
        .await
        .map_err(|s| NetError::Status {
            what: "ledger head".into(),
            status: Box::new(s),
        })?
        .into_inner();
    head_of(reply)
}

/// A coordinator's whole durable ledger: its head and every entry it covers, fetched in
/// calls of [`MAX_ENTRIES_PER_CALL`], with the seconds it took. Nothing is checked but the
/// shape; check it with `cohort_ledger::LedgerState::check`.
pub fn fetch_ledger(dial: &Dial) -> Result<(PublishedHead, Vec<Vec<u8>>, f64), NetError> {
    crate::tls::check_dial(&dial.url, dial.tls.is_some())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Connect {
            what: "start the network runtime".into(),
            source: Box::new(e),
        })?;
    let started = Instant::now();
    rt.block_on(async {
        let channel = endpoint(&dial.url, dial.tls.as_ref())
            .map_err(|e| NetError::Connect {
                what: format!("dial {}", dial.url),
                source: Box::new(e),
            })?
            .connect()
            .await
            .map_err(|e| NetError::Connect {
                what: format!("connect to {}", dial.url),
                source: Box::new(e),
            })?;
        let mut client =
            FederationClient::new(channel).max_decoding_message_size(crate::MAX_MESSAGE * 2);
        let (head, _) = ledger_head(&mut client, 0).await?;
        let mut entries: Vec<Vec<u8>> = Vec::new();
        while (entries.len() as u64) < head.size {
            let from = entries.len() as u64;
            let max = (head.size - from).min(MAX_ENTRIES_PER_CALL);
            let mut stream = client
                .ledger_entries(pb::EntryRange { from, max })
                .await
                .map_err(|s| NetError::Status {
                    what: format!("ledger entries from {from}"),
                    status: Box::new(s),
                })?
                .into_inner();
            let before = entries.len();
            while let Some(e) = stream.message().await.map_err(|s| NetError::Status {
                what: format!("ledger entries from {from}"),
                status: Box::new(s),
            })? {
                if e.seq != entries.len() as u64 {
                    return Err(NetError::Protocol(format!(
                        "entry {} sent where entry {} was due",
                        e.seq,
                        entries.len()
                    )));
                }
                entries.push(e.bytes);
                if entries.len() as u64 > head.size {
                    return Err(NetError::Protocol(format!(
                        "more entries than the checkpoint's {}",
                        head.size
                    )));
                }
            }
            if entries.len() == before {
                return Err(NetError::Protocol(format!(
                    "the coordinator sent no entry from {from} though its checkpoint has {}",
                    head.size
                )));
            }
            tokio::time::sleep(Duration::ZERO).await;
        }
        Ok((head, entries, started.elapsed().as_secs_f64()))
    })
}
