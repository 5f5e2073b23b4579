//! A party's own way onto a chain: `cohort client|validator --chain-rpc URL`.
//!
//! On an EVM chain a party signs its own transactions (see [`crate::signer`]) and hands them to
//! the coordinator, which relays them. With a [`ChainSubmit`] of its own the party also
//! broadcasts them itself, through a node it chose, so that a coordinator that drops them
//! cannot keep them off the chain; the coordinator's relay then finds them on chain and records
//! them from their receipts (relaying is idempotent). The implementation is
//! `rpc::ChainSubmitter` (cargo feature `evm-rpc`).

use std::future::Future;
use std::pin::Pin;

use alloy_primitives::B256;

use crate::LedgerError;
use crate::signer::SignedCall;

/// What [`ChainSubmit::submit`] returns: the transaction's hash and block, once included.
pub type SubmitFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Submitted, LedgerError>> + Send + 'a>>;

/// A transaction a party broadcast itself and saw included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Its hash.
    pub tx_hash: B256,
    /// The block it was included in.
    pub block: u64,
    /// Whether the node had it already (broadcast earlier, or relayed by the coordinator).
    pub known: bool,
}

/// Broadcasts a party's own signed chain transactions.
pub trait ChainSubmit: Send + Sync + std::fmt::Debug {
    /// The node's endpoint, for messages.
    fn url(&self) -> &str;
    /// The chain id the node reported when connected.
    fn chain_id(&self) -> u64;
    /// Simulates `call` on the node's pending state and, unless it reverts, broadcasts it and
    /// waits for its receipt. A transaction the node knows already (sent before a lost reply,
    /// or relayed by the coordinator) is waited for, not sent again. Refuses a call signed for
    /// another chain or for an embedded ledger, a simulation that reverts (nothing is sent:
    /// `LedgerError::Exec`) and a receipt with status 0.
    fn submit<'a>(&'a self, call: &'a SignedCall) -> SubmitFuture<'a>;
}
