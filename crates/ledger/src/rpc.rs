//! The protocol on any EVM chain over JSON-RPC (cargo feature `evm-rpc`).
//!
//! [`EvmRpcLedger`] implements [`LedgerBackend`] against a node's HTTP endpoint (anvil, geth
//! `--dev`, a testnet behind a plain-HTTP gateway) with alloy, on a single-threaded tokio
//! runtime it owns; every method blocks on it, so the backend is as synchronous as the
//! embedded one.
//!
//! # Keys and addresses
//!
//! A chain cannot check ed25519 signatures, so each [`Identity`] signs its transactions with a
//! secp256k1 key derived from its secret: `k = keccak256("cohort/evm-key/v1" || secret)`,
//! re-hashed (`k = keccak256(k)`) in the negligible case that `k` is not a valid scalar (zero
//! or at least the group order). The derivation is deterministic, so a participant has the
//! same chain address in every session; [`EvmRpcLedger::chain_address`] (and
//! [`LedgerBackend::address_of`]) gives it. On chain `msg.sender` is that address, not the
//! ed25519-derived [`Identity::address`]; the protocol binds the ed25519 key through
//! `register`'s key hash.
//!
//! # Gas
//!
//! On a dev chain the derived accounts hold no ether. With a funder
//! ([`EvmRpcLedger::with_funder`], e.g. anvil's first default key) the backend checks the
//! sender's balance before each transaction it signs, and before handing a party its
//! [`TxContext`] ([`LedgerBackend::context_for`]), against the most that transaction can cost
//! (gas limit × fee cap; for a context, the protocol's gas cap × the fee cap, as
//! [`TxContext::max_cost`]). Below that, or below [`MIN_BALANCE`], the funder tops it up to
//! twice that (by at least [`FUND_AMOUNT`]) in an ordinary value transfer (so it works on any
//! dev chain, not only on anvil's `anvil_setBalance`), so a chain with a high base fee is paid
//! for as well as a quiet one. Funding transfers are not protocol transactions and are not
//! recorded. Fees are EIP-1559 (`eth_feeHistory`); the chain must
//! support it.
//!
//! # Transactions
//!
//! [`LedgerBackend::transact`] simulates the call with `eth_call` against the pending block
//! (its return data becomes [`TxOutcome::output`]; a revert comes back as
//! [`ExecError::Reverted`] with the revert data and nothing is sent), estimates gas with a 25 %
//! margin capped at [`TX_GAS_CAP`], signs an EIP-1559 transaction with the nonce the chain
//! reports, sends it and polls for the receipt. Simulating before sending is exact on a chain
//! with a single writer (a dev chain); where others write concurrently the state can move
//! between the simulation and inclusion, and a receipt with status 0 is reported as
//! [`ExecError::Reverted`] (with the revert data replayed at the parent block, if the node
//! gives it).
//!
//! # Time
//!
//! [`LedgerBackend::set_time`] uses `evm_setNextBlockTimestamp` (anvil, hardhat) and then pins
//! every later block this backend causes to that time, as the embedded ledger runs every
//! entry after a `set_time` at the same clock. A chain without the method answers
//! `LedgerError::Rpc("this chain does not allow setting time ...")`.
//!
//! # What the proofs cover
//!
//! Every successful transaction is recorded as a [`RecordedTx`] in an in-memory RFC 6962
//! [`MerkleTree`], so [`LedgerBackend::head`], `inclusion_proof` and `consistency_proof` work
//! as on the embedded ledger, but over **this client's own transaction log** in this session
//! (leaf = [`RecordedTx::encode`]). A chain's own receipts trie, checked against block headers,
//! is the stronger proof of what happened on chain; `Protocol::anchor` goes the other way and
//! puts an embedded log's checkpoint on chain. [`LedgerBackend::logs_since`] likewise reads
//! the logs of the recorded transactions, with block numbers as positions;
//! [`LedgerBackend::contract_logs`] reads a contract's logs from the chain itself
//! (`eth_getLogs` from the first block), whoever sent the transactions.
//!
//! ```no_run
//! use cohort_core::Identity;
//! use cohort_ledger::rpc::PrivateKeySigner;
//! use cohort_ledger::{EvmRpcLedger, Protocol, demo};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // anvil's first default account pays for the derived accounts' gas.
//! let funder: PrivateKeySigner =
//!     "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80".parse()?;
//! let chain = EvmRpcLedger::connect("http://127.0.0.1:8545", Some(funder))?;
//! let (p, report) = demo::run(chain, 1)?;
//! println!("{} accepted, contract {}", report.accepted.len(), p.address());
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip1559::Eip1559Estimation;
use alloy::eips::eip2718::Encodable2718;
use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes, Keccak256, Log, TxKind, U256, keccak256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{TransactionInput, TransactionReceipt, TransactionRequest};
use alloy::transports::http::reqwest;
use alloy::transports::{RpcError, TransportError};
use cohort_core::{Hash32, Identity};

/// The secp256k1 signer type of funders and derived keys, re-exported for callers without a
/// direct alloy dependency.
pub use alloy::signers::local::PrivateKeySigner;

use crate::LedgerError;
use crate::backend::{Head, LedgerBackend, TxOutcome};
use crate::evm::{ExecError, TX_GAS_CAP};
use crate::merkle::MerkleTree;
use crate::signer::MIN_CHAIN_GAS;
use crate::signer::{SignedCall, TxContext};

/// Domain of the secp256k1 key derivation.
pub const EVM_KEY_DOMAIN: &[u8] = b"cohort/evm-key/v1";

/// Domain prefix of a recorded transaction's leaf bytes.
pub const RECORD_DOMAIN: &[u8] = b"cohort/rpc-tx/v1";

/// Below this balance (wei) a derived account is topped up by the funder: 0.1 ether.
pub const MIN_BALANCE: U256 = U256::from_limbs([100_000_000_000_000_000, 0, 0, 0]);

/// What the funder sends to an account below [`MIN_BALANCE`]: 1 ether.
pub const FUND_AMOUNT: U256 = U256::from_limbs([1_000_000_000_000_000_000, 0, 0, 0]);

/// How long connecting (TCP) may take before the endpoint counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a sent transaction's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The secp256k1 key an identity signs chain transactions with (see the module docs).
pub fn evm_signer(id: &Identity) -> PrivateKeySigner {
    let mut h = Keccak256::new();
    h.update(EVM_KEY_DOMAIN);
    h.update(id.secret_bytes());
    let mut k = h.finalize();
    loop {
        if let Ok(s) = PrivateKeySigner::from_bytes(&k) {
            return s;
        }
        k = keccak256(k);
    }
}

/// One transaction this client sent and saw succeed: the leaf of its local log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTx {
    /// Transaction hash.
    pub tx_hash: B256,
    /// Block it was included in.
    pub block: u64,
    /// Gas used (from the receipt).
    pub gas_used: u64,
    /// Events, in order.
    pub logs: Vec<Log>,
    /// The call's target (`None`: a deployment). Not in the leaf: the hash commits to it.
    pub to: Option<Address>,
    /// The calldata or init code. Not in the leaf: the hash commits to it.
    pub input: Bytes,
}

impl RecordedTx {
    /// Canonical bytes: `"cohort/rpc-tx/v1" || chain_id || tx_hash || block || gas_used ||
    /// u32 #logs || for each log (address || u32 #topics || topics || u32 len || data)`,
    /// big-endian integers. The Merkle leaf is `SHA-256(0x00 || these bytes)`.
    pub fn encode(&self, chain_id: u64) -> Vec<u8> {
        let mut w = Vec::with_capacity(96 + self.logs.len() * 128);
        w.extend_from_slice(RECORD_DOMAIN);
        w.extend_from_slice(&chain_id.to_be_bytes());
        w.extend_from_slice(self.tx_hash.as_slice());
        w.extend_from_slice(&self.block.to_be_bytes());
        w.extend_from_slice(&self.gas_used.to_be_bytes());
        w.extend_from_slice(&(self.logs.len() as u32).to_be_bytes());
        for l in &self.logs {
            w.extend_from_slice(l.address.as_slice());
            let topics = l.data.topics();
            w.extend_from_slice(&(topics.len() as u32).to_be_bytes());
            for t in topics {
                w.extend_from_slice(t.as_slice());
            }
            w.extend_from_slice(&(l.data.data.len() as u32).to_be_bytes());
            w.extend_from_slice(&l.data.data);
        }
        w
    }
}

/// The protocol's ledger on an EVM chain over JSON-RPC. See the module docs.
pub struct EvmRpcLedger {
    url: String,
    rt: tokio::runtime::Runtime,
    provider: RootProvider,
    chain_id: u64,
    funder: Option<PrivateKeySigner>,
    tree: MerkleTree,
    records: Vec<RecordedTx>,
    /// The time set by `set_time`, which every later block this backend causes gets.
    clock: Option<u64>,
    /// The hashes of `records`: a transaction is recorded once.
    seen: std::collections::HashSet<B256>,
}

impl fmt::Debug for EvmRpcLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvmRpcLedger")
            .field("url", &self.url)
            .field("chain_id", &self.chain_id)
            .field("funder", &self.funder.as_ref().map(|s| s.address()))
            .field("recorded", &self.records.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl EvmRpcLedger {
    /// Connects to the node at `url` (`http://host:port`) and reads its chain id. An endpoint
    /// that does not answer fails within a few seconds with
    /// `LedgerError::Rpc("cannot reach <url>: ...")`. `funder`, if given, tops up derived
    /// accounts (see [`Self::with_funder`]).
    pub fn connect(url: &str, funder: Option<PrivateKeySigner>) -> Result<Self, LedgerError> {
        let provider = http_provider(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Rpc(format!("cannot start the async runtime: {e}")))?;
        let chain_id = rt.block_on(read_chain_id(&provider, url))?;
        tracing::debug!(url, chain_id, "connected to EVM chain");
        Ok(Self {
            url: url.to_owned(),
            rt,
            provider,
            chain_id,
            funder,
            tree: MerkleTree::new(),
            records: Vec::new(),
            clock: None,
            seen: std::collections::HashSet::new(),
        })
    }

    /// Tops up each derived account from `funder` before its transactions and before handing
    /// it a [`TxContext`], so it can pay the most they cost (see the module docs; for dev
    /// chains, where the derived accounts start empty).
    pub fn with_funder(mut self, funder: PrivateKeySigner) -> Self {
        self.funder = Some(funder);
        self
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The chain id the node reported.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The address `id` sends from on this chain (its derived secp256k1 key's address).
    pub fn chain_address(&self, id: &Identity) -> Address {
        evm_signer(id).address()
    }

    /// Every transaction recorded so far, in order: the leaves of [`LedgerBackend::head`]'s
    /// tree.
    pub fn recorded(&self) -> &[RecordedTx] {
        &self.records
    }

    /// The provider, for reads this type does not wrap.
    pub fn provider(&self) -> &RootProvider {
        &self.provider
    }

    fn err(&self, what: &str, e: &TransportError) -> LedgerError {
        rpc_error(&self.url, what, e)
    }

    /// Pins the next block to the clock, if `set_time` set one. Where others' transactions
    /// (parties that submit their own, `--chain-rpc`) moved the chain's time past the clock
    /// since, the next block is pinned to the latest block's time instead: a chain's time
    /// never goes back.
    async fn pin_time(&self) -> Result<(), LedgerError> {
        let Some(t) = self.clock else {
            return Ok(());
        };
        let set = |t: u64| {
            self.provider
                .raw_request::<_, serde_json::Value>("evm_setNextBlockTimestamp".into(), (t,))
        };
        if let Err(e) = set(t).await {
            let (_, latest) = self.latest_block().await?;
            if latest <= t {
                return Err(self.err("evm_setNextBlockTimestamp", &e));
            }
            set(latest)
                .await
                .map_err(|e| self.err("evm_setNextBlockTimestamp", &e))?;
        }
        Ok(())
    }

    /// Whether the node knows transaction `hash` (pending or included).
    async fn known(&self, hash: B256) -> Result<bool, LedgerError> {
        Ok(self
            .provider
            .get_transaction_by_hash(hash)
            .await
            .map_err(|e| self.err("eth_getTransactionByHash", &e))?
            .is_some())
    }

    async fn latest_block(&self) -> Result<(u64, u64), LedgerError> {
        let b = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(|e| self.err("eth_getBlockByNumber", &e))?
            .ok_or_else(|| {
                LedgerError::Rpc(format!("{}: the node has no latest block", self.url))
            })?;
        Ok((b.header.number, b.header.timestamp))
    }

    /// Current EIP-1559 fees.
    async fn fees(&self) -> Result<Eip1559Estimation, LedgerError> {
        self.provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| self.err("eth_feeHistory", &e))
    }

    /// Signs a transaction as `signer` with the given gas limit and fees and its pending
    /// nonce, sends it and waits for the receipt. Funds nothing: the sender must be able to pay.
    async fn sign_send_wait(
        &self,
        signer: &PrivateKeySigner,
        to: TxKind,
        value: U256,
        input: Bytes,
        gas_limit: u64,
        fees: Eip1559Estimation,
    ) -> Result<TransactionReceipt, LedgerError> {
        let from = signer.address();
        let nonce = self
            .provider
            .get_transaction_count(from)
            .pending()
            .await
            .map_err(|e| self.err("eth_getTransactionCount", &e))?;
        let mut tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to,
            value,
            access_list: Default::default(),
            input,
        };
        let sig = signer
            .sign_transaction_sync(&mut tx)
            .map_err(|e| LedgerError::Rpc(format!("signing as {from}: {e}")))?;
        let raw = TxEnvelope::from(tx.into_signed(sig)).encoded_2718();
        self.pin_time().await?;
        let pending = self
            .provider
            .send_raw_transaction(&raw)
            .await
            .map_err(|e| self.err("eth_sendRawTransaction", &e))?;
        let hash = *pending.tx_hash();
        self.wait_receipt(hash).await
    }

    async fn wait_receipt(&self, hash: B256) -> Result<TransactionReceipt, LedgerError> {
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(2);
        loop {
            let r = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| self.err("eth_getTransactionReceipt", &e))?;
            if let Some(r) = r
                && r.block_number.is_some()
            {
                return Ok(r);
            }
            if start.elapsed() > RECEIPT_TIMEOUT {
                return Err(LedgerError::Rpc(format!(
                    "{}: transaction {hash} not included within {RECEIPT_TIMEOUT:?}",
                    self.url
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// With a funder, makes sure `addr` can pay `need` wei (the most a transaction can cost:
    /// gas limit × fee cap): below `target = max(need, MIN_BALANCE)` it is sent
    /// `max(FUND_AMOUNT, 2 × target − balance)`, which leaves room for the next call at the same
    /// fees.
    async fn ensure_funded(&self, addr: Address, need: U256) -> Result<(), LedgerError> {
        let Some(funder) = &self.funder else {
            return Ok(());
        };
        if funder.address() == addr {
            return Ok(());
        }
        let balance = self
            .provider
            .get_balance(addr)
            .pending()
            .await
            .map_err(|e| self.err("eth_getBalance", &e))?;
        let target = need.max(MIN_BALANCE);
        if balance >= target {
            return Ok(());
        }
        let amount = FUND_AMOUNT.max(target.saturating_mul(U256::from(2)) - balance);
        tracing::debug!(%addr, funder = %funder.address(), %amount, "funding derived account");
        let fees = self.fees().await?;
        let r = self
            .sign_send_wait(
                funder,
                TxKind::Call(addr),
                amount,
                Bytes::new(),
                MIN_CHAIN_GAS,
                fees,
            )
            .await?;
        if !r.status() {
            return Err(LedgerError::Rpc(format!(
                "{}: funding {addr} with {amount} wei from {} failed (tx {})",
                self.url,
                funder.address(),
                r.transaction_hash
            )));
        }
        Ok(())
    }

    async fn transact_async(
        &self,
        signer: &PrivateKeySigner,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<(RecordedTx, Bytes, Option<Address>), LedgerError> {
        let from = signer.address();
        // Pin the clock before simulating: the pending block then has the time the
        // transaction will execute at.
        self.pin_time().await?;
        let kind = to.map_or(TxKind::Create, TxKind::Call);
        let req = TransactionRequest {
            from: Some(from),
            to: Some(kind),
            input: TransactionInput::new(data.clone()),
            ..Default::default()
        };
        let output = self
            .provider
            .call(req.clone())
            .await
            .map_err(|e| self.exec_error("eth_call", e))?;
        let estimate = self
            .provider
            .estimate_gas(req.clone())
            .await
            .map_err(|e| self.exec_error("eth_estimateGas", e))?;
        if estimate > TX_GAS_CAP {
            return Err(ExecError::Invalid(format!(
                "needs {estimate} gas, above the cap {TX_GAS_CAP}"
            ))
            .into());
        }
        let gas_limit = (estimate + estimate / 4).min(TX_GAS_CAP);
        let fees = self.fees().await?;
        self.ensure_funded(from, max_cost(gas_limit, fees.max_fee_per_gas))
            .await?;
        let receipt = self
            .sign_send_wait(signer, kind, U256::ZERO, data.clone(), gas_limit, fees)
            .await?;
        self.finish(req, receipt, to, data, output).await
    }

    /// Turns a receipt into the recorded transaction, or a status-0 receipt into
    /// [`ExecError::Reverted`] (with the revert data replayed at the parent block, if the node
    /// gives it).
    async fn finish(
        &self,
        req: TransactionRequest,
        receipt: TransactionReceipt,
        to: Option<Address>,
        data: Bytes,
        output: Bytes,
    ) -> Result<(RecordedTx, Bytes, Option<Address>), LedgerError> {
        let block = receipt.block_number.unwrap_or_default();
        if !receipt.status() {
            // Replay at the parent block for the revert data, if the node gives it.
            let data = match self
                .provider
                .call(req)
                .block(BlockId::number(block.saturating_sub(1)))
                .await
            {
                Err(e) => revert_data(&e).unwrap_or_default(),
                Ok(_) => Bytes::new(),
            };
            return Err(ExecError::Reverted {
                data,
                gas_used: receipt.gas_used,
            }
            .into());
        }
        let record = RecordedTx {
            tx_hash: receipt.transaction_hash,
            block,
            gas_used: receipt.gas_used,
            logs: receipt.logs().iter().map(|l| l.inner.clone()).collect(),
            to,
            input: data,
        };
        Ok((record, output, receipt.contract_address))
    }

    /// The context `author` signs its next transaction under (see [`crate::signer`]): the
    /// chain id, its pending nonce, the protocol's gas cap and current EIP-1559 fees. With a
    /// funder, first makes sure `author` can pay the most a call under it can cost
    /// ([`TxContext::max_cost`]).
    async fn context_async(&self, author: Address) -> Result<TxContext, LedgerError> {
        let fees = self.fees().await?;
        self.ensure_funded(author, max_cost(TX_GAS_CAP, fees.max_fee_per_gas))
            .await?;
        let nonce = self
            .provider
            .get_transaction_count(author)
            .pending()
            .await
            .map_err(|e| self.err("eth_getTransactionCount", &e))?;
        Ok(TxContext::Chain {
            chain_id: self.chain_id,
            nonce,
            gas_limit: TX_GAS_CAP,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        })
    }

    /// Relays a raw transaction `from` signed: checks it decodes as an EIP-1559 transaction
    /// within the protocol's gas cap, recovers to `from`, is for this chain and carries
    /// `from`'s next nonce, simulates it with its value and gas limit (a revert sends nothing),
    /// sends it and waits for the receipt.
    async fn relay_async(
        &self,
        from: Address,
        raw: &[u8],
    ) -> Result<(RecordedTx, Bytes, Option<Address>), LedgerError> {
        use alloy::consensus::Transaction;
        let env = crate::signer::decode_chain(raw)?;
        let invalid = |reason: String| LedgerError::Invalid {
            what: "signed chain transaction",
            reason,
        };
        // What `SignedCall::sign` makes: anything else (a legacy transaction, replayable on
        // every chain if it has no chain id; blob or set-code transactions) is not relayed.
        if !matches!(env, TxEnvelope::Eip1559(_)) {
            return Err(invalid(format!(
                "a {} transaction from {from}; the relay carries EIP-1559 (type 2) transactions only",
                env.tx_type()
            )));
        }
        if env.gas_limit() > TX_GAS_CAP {
            return Err(invalid(format!(
                "gas limit {} from {from} is above the protocol's cap {TX_GAS_CAP}",
                env.gas_limit()
            )));
        }
        match env
            .signature()
            .recover_address_from_prehash(&env.signature_hash())
        {
            Ok(signer) if signer == from => {}
            _ => return Err(LedgerError::BadSignature { author: from }),
        }
        if env.chain_id() != Some(self.chain_id) {
            return Err(LedgerError::WrongChain {
                expected: self.chain_id,
                got: env.chain_id().unwrap_or(0),
            });
        }
        let hash = *env.tx_hash();
        let kind = env.kind();
        let to = kind.to().copied();
        let data = env.input().clone();
        let req = TransactionRequest {
            from: Some(from),
            to: Some(kind),
            input: TransactionInput::new(data.clone()),
            gas: Some(env.gas_limit()),
            value: Some(env.value()),
            ..Default::default()
        };
        // Broadcast already by its author (`cohort client --chain-rpc`), or sent before: it is
        // recorded from its receipt, not sent again. Its return data is not in the receipt;
        // what the protocol's callers read of it comes from its events.
        if self.known(hash).await? {
            let receipt = self.wait_receipt(hash).await?;
            let output = output_from_logs(&data, to, receipt.logs());
            return self.finish(req, receipt, to, data, output).await;
        }
        let expected = self
            .provider
            .get_transaction_count(from)
            .pending()
            .await
            .map_err(|e| self.err("eth_getTransactionCount", &e))?;
        if env.nonce() != expected {
            return Err(LedgerError::Nonce {
                author: from,
                expected,
                got: env.nonce(),
            });
        }
        self.pin_time().await?;
        let output = self
            .provider
            .call(req.clone())
            .await
            .map_err(|e| self.exec_error("eth_call", e))?;
        self.pin_time().await?;
        match self.provider.send_raw_transaction(raw).await {
            Ok(_) => {}
            // Its author broadcast it meanwhile.
            Err(_) if self.known(hash).await? => {}
            Err(e) => {
                return Err(match &e {
                    RpcError::ErrorResp(p) => LedgerError::Rpc(format!(
                        "{}: the node refused the transaction from {from}: {}",
                        self.url, p.message
                    )),
                    _ => self.err("eth_sendRawTransaction", &e),
                });
            }
        }
        let receipt = self.wait_receipt(hash).await?;
        self.finish(req, receipt, to, data, output).await
    }

    fn push_record(
        &mut self,
        record: RecordedTx,
        output: Bytes,
        created: Option<Address>,
    ) -> TxOutcome {
        self.tree
            .push_hash(crate::merkle::leaf_hash(&record.encode(self.chain_id)));
        let out = TxOutcome {
            position: record.block,
            id: Hash32(record.tx_hash.0),
            gas_used: record.gas_used,
            output,
            created,
            logs: record.logs.clone(),
        };
        self.seen.insert(record.tx_hash);
        self.records.push(record);
        out
    }

    /// A revert in a simulation becomes [`ExecError::Reverted`] (gas 0: nothing ran on chain);
    /// anything else is an RPC error.
    fn exec_error(&self, what: &str, e: TransportError) -> LedgerError {
        if let Some(data) = revert_data(&e) {
            return ExecError::Reverted { data, gas_used: 0 }.into();
        }
        if let RpcError::ErrorResp(p) = &e
            && p.message.contains("revert")
        {
            return ExecError::Reverted {
                data: Bytes::new(),
                gas_used: 0,
            }
            .into();
        }
        self.err(what, &e)
    }
}

/// The most a transaction with this gas limit and fee cap can cost, wei.
fn max_cost(gas_limit: u64, max_fee_per_gas: u128) -> U256 {
    U256::from(gas_limit).saturating_mul(U256::from(max_fee_per_gas))
}

/// A provider for the node at `url` (`http://` only), with cohort's timeouts. No I/O.
fn http_provider(url: &str) -> Result<RootProvider, LedgerError> {
    let parsed: reqwest::Url = url
        .parse()
        .map_err(|e| LedgerError::Rpc(format!("{url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "http" {
        return Err(LedgerError::Rpc(format!(
            "{url}: only http:// endpoints are supported (this build has no TLS; put a node \
             or a TLS-terminating proxy on a local http:// address)"
        )));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| LedgerError::Rpc(format!("cannot build an HTTP client: {e}")))?;
    Ok(RootProvider::new(RpcClient::new_http_with_client(
        client, parsed,
    )))
}

/// The chain id of the node behind `provider`; an endpoint that does not answer fails within
/// a few seconds with `cannot reach <url>: ...`.
async fn read_chain_id(provider: &RootProvider, url: &str) -> Result<u64, LedgerError> {
    let limit = CONNECT_TIMEOUT + Duration::from_secs(1);
    tokio::time::timeout(limit, provider.get_chain_id())
        .await
        .map_err(|_| LedgerError::Rpc(format!("cannot reach {url}: no answer within {limit:?}")))?
        .map_err(|e| match e {
            RpcError::ErrorResp(_) => rpc_error(url, "eth_chainId", &e),
            e => LedgerError::Rpc(format!("cannot reach {url}: {}", error_chain(&e))),
        })
}

/// The return data of a protocol call that is included but was not simulated here (its author
/// broadcast it): the receipt has no return data, so the values callers read come from the
/// call's events: `submitUpdate`'s update index (`UpdateSubmitted`) and `commitDataset`'s id
/// (`DatasetCommitted`). Empty for every other call (they return nothing the protocol reads).
fn output_from_logs(input: &[u8], to: Option<Address>, logs: &[alloy::rpc::types::Log]) -> Bytes {
    use alloy_sol_types::SolCall;

    use crate::protocol::Cohort::{self, CohortEvents};
    let Some(to) = to else {
        return Bytes::new();
    };
    let logs: Vec<Log> = logs.iter().map(|l| l.inner.clone()).collect();
    let events = crate::protocol::decode_events(to, &logs);
    let selector = input.get(..4);
    let encoded = if selector == Some(&Cohort::submitUpdateCall::SELECTOR[..]) {
        events.iter().find_map(|e| match e {
            CohortEvents::UpdateSubmitted(u) => {
                Some(Cohort::submitUpdateCall::abi_encode_returns(&u.index))
            }
            _ => None,
        })
    } else if selector == Some(&Cohort::commitDatasetCall::SELECTOR[..]) {
        events.iter().find_map(|e| match e {
            CohortEvents::DatasetCommitted(d) => {
                Some(Cohort::commitDatasetCall::abi_encode_returns(&d.id))
            }
            _ => None,
        })
    } else {
        None
    };
    encoded.map(Bytes::from).unwrap_or_default()
}

/// Revert data in a JSON-RPC error: the `data` of an error that says "revert" or has code 3.
fn revert_data(e: &TransportError) -> Option<Bytes> {
    let RpcError::ErrorResp(p) = e else {
        return None;
    };
    p.as_revert_data().or_else(|| {
        (p.code == 3)
            .then(|| p.try_data_as::<Bytes>().and_then(Result::ok))
            .flatten()
    })
}

fn rpc_error(url: &str, what: &str, e: &TransportError) -> LedgerError {
    LedgerError::Rpc(format!("{url}: {what}: {}", error_chain(e)))
}

/// An error and its sources, `: `-separated (reqwest hides "connection refused" in a source).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl LedgerBackend for EvmRpcLedger {
    fn transact(
        &mut self,
        from: &Identity,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<TxOutcome, LedgerError> {
        let signer = evm_signer(from);
        let (record, output, created) = self.rt.block_on(self.transact_async(&signer, to, data))?;
        Ok(self.push_record(record, output, created))
    }

    fn context_for(&self, author: Address) -> Result<TxContext, LedgerError> {
        self.rt.block_on(self.context_async(author))
    }

    fn relay(&mut self, call: SignedCall) -> Result<TxOutcome, LedgerError> {
        let (from, raw) = match call {
            SignedCall::Chain { from, raw } => (from, raw),
            SignedCall::Embedded { origin, tx } => {
                return Err(LedgerError::Invalid {
                    what: "signed call",
                    reason: format!(
                        "an embedded-ledger call (from {}, signed for the log {origin}) cannot \
                         be relayed to a chain",
                        tx.sender()
                    ),
                });
            }
        };
        // Recorded once: the same signed transaction relayed again (a replayed message) is
        // refused, not counted twice.
        if let Ok(env) = crate::signer::decode_chain(&raw)
            && self.seen.contains(env.tx_hash())
        {
            return Err(LedgerError::Invalid {
                what: "signed chain transaction",
                reason: format!(
                    "transaction {} from {from} is recorded already",
                    env.tx_hash()
                ),
            });
        }
        let (record, output, created) = self.rt.block_on(self.relay_async(from, &raw))?;
        Ok(self.push_record(record, output, created))
    }

    fn call(&mut self, from: Address, to: Address, data: Bytes) -> Result<Bytes, LedgerError> {
        let req = TransactionRequest {
            from: Some(from),
            to: Some(TxKind::Call(to)),
            input: TransactionInput::new(data),
            ..Default::default()
        };
        self.rt
            .block_on(async { self.provider.call(req).await })
            .map_err(|e| self.exec_error("eth_call", e))
    }

    fn logs_since(&self, cursor: u64) -> Result<(Vec<(u64, Log)>, u64), LedgerError> {
        let out = self
            .records
            .iter()
            .filter(|r| r.block >= cursor)
            .flat_map(|r| r.logs.iter().map(|l| (r.block, l.clone())))
            .collect();
        let next = self
            .records
            .last()
            .map_or(cursor, |r| cursor.max(r.block + 1));
        Ok((out, next))
    }

    fn contract_logs(&self, address: Address) -> Result<Vec<(u64, Log)>, LedgerError> {
        let filter = alloy::rpc::types::Filter::new()
            .address(address)
            .from_block(BlockNumberOrTag::Earliest)
            .to_block(BlockNumberOrTag::Latest);
        let logs = self
            .rt
            .block_on(self.provider.get_logs(&filter))
            .map_err(|e| self.err("eth_getLogs", &e))?;
        logs.into_iter()
            .map(|l| match l.block_number {
                Some(b) => Ok((b, l.inner)),
                None => Err(LedgerError::Rpc(format!(
                    "{}: eth_getLogs answered a log of {address} without its block",
                    self.url
                ))),
            })
            .collect()
    }

    fn head(&self) -> Result<Head, LedgerError> {
        let time = match self.clock {
            Some(t) => t,
            None => self.rt.block_on(self.latest_block())?.1,
        };
        Ok(Head {
            size: self.tree.len(),
            root: self.tree.root(),
            time,
        })
    }

    fn set_time(&mut self, time: u64) -> Result<(), LedgerError> {
        let (_, latest) = self.rt.block_on(self.latest_block())?;
        let own = self.clock.unwrap_or(latest);
        if time < own {
            return Err(LedgerError::TimeWentBackwards {
                last: own,
                got: time,
            });
        }
        // Blocks others caused (parties that submit their own transactions) may have moved the
        // chain's time past the clock: it follows the chain (`head().time` says where). One
        // may land between reading the latest block and setting the time: read it again.
        let mut time = time.max(latest);
        let mut tries = 0;
        loop {
            let set =
                self.rt
                    .block_on(self.provider.raw_request::<_, serde_json::Value>(
                        "evm_setNextBlockTimestamp".into(),
                        (time,),
                    ));
            match set {
                Ok(_) => break,
                Err(RpcError::ErrorResp(p))
                    if p.code == -32601 || p.message.contains("not found") =>
                {
                    return Err(LedgerError::Rpc(format!(
                        "{}: this chain does not allow setting time (evm_setNextBlockTimestamp: {})",
                        self.url, p.message
                    )));
                }
                Err(e) => {
                    let (_, latest) = self.rt.block_on(self.latest_block())?;
                    if tries == 3 || latest <= time {
                        return Err(self.err("evm_setNextBlockTimestamp", &e));
                    }
                    tries += 1;
                    time = latest;
                }
            }
        }
        self.clock = Some(time);
        Ok(())
    }

    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, LedgerError> {
        Ok(self.tree.inclusion_proof(index, size)?)
    }

    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash32>, LedgerError> {
        Ok(self.tree.consistency_proof(old, new)?)
    }

    fn address_of(&self, id: &Identity) -> Address {
        self.chain_address(id)
    }

    fn chain_id(&self) -> Option<u64> {
        Some(self.chain_id)
    }
}

/// A party's own connection to a chain (`cohort client|validator --chain-rpc URL`): it
/// broadcasts the transactions the party signed itself (see [`crate::submit`]). Its requests
/// run on a small runtime it owns, so it can be used from any other.
pub struct ChainSubmitter {
    url: String,
    chain_id: u64,
    provider: RootProvider,
    rt: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for ChainSubmitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainSubmitter")
            .field("url", &self.url)
            .field("chain_id", &self.chain_id)
            .finish_non_exhaustive()
    }
}

impl ChainSubmitter {
    /// Connects to the node at `url` (`http://host:port`) and reads its chain id, failing
    /// within a few seconds on an endpoint that does not answer (as [`EvmRpcLedger::connect`]).
    pub fn connect(url: &str) -> Result<Self, LedgerError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cohort-chain")
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Rpc(format!("cannot start the async runtime: {e}")))?;
        // The connection (and its pool) lives on this runtime.
        let provider = http_provider(url)?;
        let chain_id = rt.block_on(read_chain_id(&provider, url))?;
        Ok(Self {
            url: url.to_owned(),
            chain_id,
            provider,
            rt: Some(rt),
        })
    }

    /// [`ChainSubmit::submit`] for callers outside any runtime.
    pub fn submit_blocking(&self, call: &SignedCall) -> Result<crate::Submitted, LedgerError> {
        match &self.rt {
            Some(rt) => rt.block_on(crate::ChainSubmit::submit(self, call)),
            None => Err(LedgerError::Rpc("the chain submitter is shut down".into())),
        }
    }
}

impl Drop for ChainSubmitter {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; this one may go wherever its last
        // user is.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl crate::ChainSubmit for ChainSubmitter {
    fn url(&self) -> &str {
        &self.url
    }

    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn submit<'a>(&'a self, call: &'a SignedCall) -> crate::submit::SubmitFuture<'a> {
        let provider = self.provider.clone();
        let (url, chain_id) = (self.url.clone(), self.chain_id);
        let call = call.clone();
        let task = self
            .rt
            .as_ref()
            .map(|rt| rt.spawn(submit_own(provider, url, chain_id, call)));
        Box::pin(async move {
            match task {
                Some(t) => t
                    .await
                    .map_err(|e| LedgerError::Rpc(format!("the chain submitter stopped: {e}")))?,
                None => Err(LedgerError::Rpc("the chain submitter is shut down".into())),
            }
        })
    }
}

/// [`ChainSubmit::submit`](crate::ChainSubmit::submit) of `call` through `provider`.
async fn submit_own(
    provider: RootProvider,
    url: String,
    chain_id: u64,
    call: SignedCall,
) -> Result<crate::Submitted, LedgerError> {
    use alloy::consensus::Transaction;
    let err = |what: &str, e: &TransportError| rpc_error(&url, what, e);
    let (from, raw) = match call {
        SignedCall::Chain { from, raw } => (from, raw),
        SignedCall::Embedded { origin, .. } => {
            return Err(LedgerError::Invalid {
                what: "signed call",
                reason: format!(
                    "a call signed for the embedded ledger {origin} cannot go to the chain at {url}"
                ),
            });
        }
    };
    let env = crate::signer::decode_chain(&raw)?;
    if env.chain_id() != Some(chain_id) {
        return Err(LedgerError::WrongChain {
            expected: chain_id,
            got: env.chain_id().unwrap_or(0),
        });
    }
    let hash = *env.tx_hash();
    let wait = async |known: bool| -> Result<crate::Submitted, LedgerError> {
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(2);
        loop {
            let r = provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| err("eth_getTransactionReceipt", &e))?;
            if let Some(r) = r
                && let Some(block) = r.block_number
            {
                if !r.status() {
                    return Err(ExecError::Reverted {
                        data: Bytes::new(),
                        gas_used: r.gas_used,
                    }
                    .into());
                }
                return Ok(crate::Submitted {
                    tx_hash: hash,
                    block,
                    known,
                });
            }
            if start.elapsed() > RECEIPT_TIMEOUT {
                return Err(LedgerError::Rpc(format!(
                    "{url}: transaction {hash} not included within {RECEIPT_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    };
    let known = async || -> Result<bool, LedgerError> {
        Ok(provider
            .get_transaction_by_hash(hash)
            .await
            .map_err(|e| err("eth_getTransactionByHash", &e))?
            .is_some())
    };
    if known().await? {
        return wait(true).await;
    }
    let kind = env.kind();
    let req = TransactionRequest {
        from: Some(from),
        to: Some(kind),
        input: TransactionInput::new(env.input().clone()),
        gas: Some(env.gas_limit()),
        value: Some(env.value()),
        ..Default::default()
    };
    if let Err(e) = provider.call(req).block(BlockId::pending()).await {
        if let Some(data) = revert_data(&e) {
            return Err(ExecError::Reverted { data, gas_used: 0 }.into());
        }
        if let RpcError::ErrorResp(p) = &e
            && p.message.contains("revert")
        {
            return Err(ExecError::Reverted {
                data: Bytes::new(),
                gas_used: 0,
            }
            .into());
        }
        return Err(err("eth_call", &e));
    }
    match provider.send_raw_transaction(&raw).await {
        Ok(_) => wait(false).await,
        // Relayed by the coordinator meanwhile.
        Err(_) if known().await? => wait(true).await,
        Err(e) => Err(match &e {
            RpcError::ErrorResp(p) => LedgerError::Rpc(format!(
                "{url}: the node refused the transaction from {from}: {}",
                p.message
            )),
            _ => err("eth_sendRawTransaction", &e),
        }),
    }
}
