//! The port every ledger implements, and the values it returns.

use alloy_primitives::{Address, Bytes, Log};
use cohort_core::{Hash32, Identity};
use serde::Serialize;

use crate::LedgerError;
use crate::signer::{SignedCall, TxContext};

/// What a successful transaction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOutcome {
    /// Where it landed: the entry's sequence number (embedded) or the block number (chain).
    pub position: u64,
    /// The entry's leaf hash (embedded) or the transaction hash (chain).
    pub id: Hash32,
    /// Gas used.
    pub gas_used: u64,
    /// Return data.
    pub output: Bytes,
    /// The deployed contract's address, for a deployment.
    pub created: Option<Address>,
    /// Events, in order.
    pub logs: Vec<Log>,
}

/// One call's result within a batch.
pub type OutcomeOr = Result<TxOutcome, LedgerError>;

/// The ledger's current head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    /// Number of entries (embedded) or of this client's recorded transactions (chain).
    pub size: u64,
    /// Merkle root over them.
    pub root: Hash32,
    /// The time the next transaction will see.
    pub time: u64,
}

/// A place where signed calls to the protocol execute and are recorded.
///
/// Implementations: [`crate::EmbeddedLedger`] (revm + redb, the default) and, with the
/// `evm-rpc` feature, [`crate::EvmRpcLedger`] (any EVM chain). Calls are synchronous; the
/// chain backend blocks on its own runtime. A call that reverts records nothing and returns
/// [`LedgerError::Exec`].
pub trait LedgerBackend {
    /// The durable part of the log as an in-process handle others may read while this backend
    /// writes ([`crate::Published`]): the embedded ledger's; `None` for a chain, which its
    /// readers ask directly.
    fn published(&self) -> Option<crate::Published> {
        None
    }

    /// Signs and executes a call (`to = None` deploys `data`) as `from`; records it on success.
    fn transact(
        &mut self,
        from: &Identity,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<TxOutcome, LedgerError>;

    /// Signs and executes several calls in order; each gets its own result, and a failed one
    /// does not stop the others. The embedded ledger records them in one durable commit; the
    /// default sends them one by one.
    fn transact_batch(
        &mut self,
        calls: Vec<(&Identity, Option<Address>, Bytes)>,
    ) -> Result<Vec<OutcomeOr>, LedgerError> {
        Ok(calls
            .into_iter()
            .map(|(id, to, data)| self.transact(id, to, data))
            .collect())
    }

    /// What a party with address `author` (its [`address_of`](Self::address_of)) needs to
    /// sign its next transaction for this ledger with [`SignedCall::sign`]: the embedded log's
    /// origin, the author's next nonce and the clock; a chain's id, the author's next nonce
    /// (pending), a gas limit and current fees. On a dev chain with a funder this also tops the
    /// author's account up.
    fn context_for(&self, author: Address) -> Result<TxContext, LedgerError>;

    /// Relays a call a party signed itself (see [`crate::signer`]); records it on success with
    /// its author as `msg.sender`. The backend checks, before executing anything, that the
    /// call is for this ledger (origin, chain id), that the signature is the claimed
    /// author's, the nonce is the author's next one and the time is neither before the last
    /// entry nor after the clock; a refused call records nothing and names the problem
    /// ([`LedgerError::WrongOrigin`], [`LedgerError::BadSignature`], [`LedgerError::Nonce`],
    /// ...).
    fn relay(&mut self, call: SignedCall) -> Result<TxOutcome, LedgerError>;

    /// Relays several signed calls in order, each with its own result (a refused one does not
    /// stop the others). The embedded ledger records them in one durable commit; the default
    /// relays them one by one.
    fn relay_batch(&mut self, calls: Vec<SignedCall>) -> Result<Vec<OutcomeOr>, LedgerError> {
        Ok(calls.into_iter().map(|c| self.relay(c)).collect())
    }

    /// Runs a read-only call against the current state.
    fn call(&mut self, from: Address, to: Address, data: Bytes) -> Result<Bytes, LedgerError>;

    /// Events recorded at positions `>= cursor`, with their positions, and the next cursor.
    fn logs_since(&self, cursor: u64) -> Result<(Vec<(u64, Log)>, u64), LedgerError>;

    /// Every event `address` emitted, with its position, as far as this ledger knows: the
    /// embedded ledger's whole log (the default: [`logs_since`](Self::logs_since)`(0)`
    /// filtered); on a chain, the chain's own logs (`eth_getLogs` from its first block), not
    /// only those of this client's transactions. For a process that comes to a contract others
    /// wrote to (who registered a key, which stage servers there are).
    fn contract_logs(&self, address: Address) -> Result<Vec<(u64, Log)>, LedgerError> {
        let (logs, _) = self.logs_since(0)?;
        Ok(logs
            .into_iter()
            .filter(|(_, l)| l.address == address)
            .collect())
    }

    /// Size, root and clock.
    fn head(&self) -> Result<Head, LedgerError>;

    /// Sets the time the next transactions execute at (`block.timestamp`). It may not go back.
    fn set_time(&mut self, time: u64) -> Result<(), LedgerError>;

    /// Inclusion proof of entry `index` in the tree of the first `size` entries.
    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, LedgerError>;

    /// Consistency proof between the trees of the first `old` and `new` entries.
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash32>, LedgerError>;

    /// Makes everything recorded so far durable; a no-op where every call already is (the
    /// default, and a chain's). See [`crate::SyncPolicy`].
    fn flush(&mut self) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Throws away what [`flush`](Self::flush) has not made durable, as a crash would, and
    /// returns how many entries that was: for a writer that stops part-way through a unit of
    /// work (a federated round) and must leave the record at the last whole one. A backend
    /// whose every call is final (a chain; the default) cannot and returns 0.
    fn discard_unflushed(&mut self) -> Result<u64, LedgerError> {
        Ok(0)
    }

    /// The address `id`'s transactions come from on this backend (`msg.sender`): its
    /// ed25519-derived [`Identity::address`] on the embedded ledger, the address of its derived
    /// secp256k1 key on a chain.
    fn address_of(&self, id: &Identity) -> Address {
        id.address()
    }

    /// The EVM chain this backend records on (its chain id), `None` for the embedded ledger.
    fn chain_id(&self) -> Option<u64> {
        None
    }
}

/// A boxed backend is one: for commands that choose the embedded ledger or a chain at run time.
impl<B: LedgerBackend + ?Sized> LedgerBackend for Box<B> {
    fn published(&self) -> Option<crate::Published> {
        (**self).published()
    }
    fn transact(
        &mut self,
        from: &Identity,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        (**self).transact(from, to, data)
    }
    fn transact_batch(
        &mut self,
        calls: Vec<(&Identity, Option<Address>, Bytes)>,
    ) -> Result<Vec<OutcomeOr>, LedgerError> {
        (**self).transact_batch(calls)
    }
    fn context_for(&self, author: Address) -> Result<TxContext, LedgerError> {
        (**self).context_for(author)
    }
    fn relay(&mut self, call: SignedCall) -> Result<TxOutcome, LedgerError> {
        (**self).relay(call)
    }
    fn relay_batch(&mut self, calls: Vec<SignedCall>) -> Result<Vec<OutcomeOr>, LedgerError> {
        (**self).relay_batch(calls)
    }
    fn call(&mut self, from: Address, to: Address, data: Bytes) -> Result<Bytes, LedgerError> {
        (**self).call(from, to, data)
    }
    fn logs_since(&self, cursor: u64) -> Result<(Vec<(u64, Log)>, u64), LedgerError> {
        (**self).logs_since(cursor)
    }
    fn contract_logs(&self, address: Address) -> Result<Vec<(u64, Log)>, LedgerError> {
        (**self).contract_logs(address)
    }
    fn head(&self) -> Result<Head, LedgerError> {
        (**self).head()
    }
    fn set_time(&mut self, time: u64) -> Result<(), LedgerError> {
        (**self).set_time(time)
    }
    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, LedgerError> {
        (**self).inclusion_proof(index, size)
    }
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash32>, LedgerError> {
        (**self).consistency_proof(old, new)
    }
    fn flush(&mut self) -> Result<(), LedgerError> {
        (**self).flush()
    }
    fn discard_unflushed(&mut self) -> Result<u64, LedgerError> {
        (**self).discard_unflushed()
    }
    fn address_of(&self, id: &Identity) -> Address {
        (**self).address_of(id)
    }
    fn chain_id(&self) -> Option<u64> {
        (**self).chain_id()
    }
}
