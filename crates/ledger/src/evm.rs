//! The embedded EVM: revm over an in-memory state, driven by log entries.
//!
//! Execution context comes from the log, never the wall clock: `block.number` is the entry's
//! sequence number and `block.timestamp` its time. Gas costs nothing (price and base fee are
//! zero) but is metered and capped as on a real chain, so the same bytecode behaves the same on
//! anvil or any EVM chain.

use alloy_primitives::{Address, Bytes, U256};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{BlockEnv, ContextTr, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::database_interface::DatabaseRef;
use revm::primitives::TxKind;
use revm::primitives::hardfork::SpecId;
use revm::{Context, DatabaseCommit, ExecuteEvm, MainBuilder, MainContext, MainnetEvm};
use sha2::{Digest, Sha256};

use crate::entry::{Receipt, Tx};
use cohort_core::Hash32;

/// Gas cap of one transaction (EIP-7825).
pub const TX_GAS_CAP: u64 = 1 << 24;

/// The chain id the embedded EVM reports (`block.chainid`).
pub const EMBEDDED_CHAIN_ID: u64 = 31_337;

type Db = CacheDB<EmptyDB>;
type Evm = MainnetEvm<revm::handler::MainnetContext<Db>>;

/// Why a call did not execute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The contract reverted; `data` is the revert payload (a custom error, usually).
    #[error("call reverted (gas used {gas_used}, data 0x{})", hex::encode(data))]
    Reverted {
        /// Revert data.
        data: Bytes,
        /// Gas used.
        gas_used: u64,
    },
    /// Execution halted (out of gas, invalid opcode, ...).
    #[error("call halted: {reason} (gas used {gas_used})")]
    Halted {
        /// The halt reason.
        reason: String,
        /// Gas used.
        gas_used: u64,
    },
    /// The transaction is invalid before execution (nonce, gas cap, ...).
    #[error("invalid transaction: {0}")]
    Invalid(String),
}

/// An EVM whose state lives in memory and is rebuilt by replaying the log.
pub struct Executor {
    evm: Evm,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("accounts", &self.evm.ctx.db_ref().cache.accounts.len())
            .finish()
    }
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    /// A fresh EVM with empty state (Osaka rules, chain id [`EMBEDDED_CHAIN_ID`]).
    pub fn new() -> Self {
        let evm = Context::mainnet()
            .with_db(Db::default())
            .modify_cfg_chained(|cfg| {
                cfg.spec = SpecId::OSAKA;
                cfg.chain_id = EMBEDDED_CHAIN_ID;
            })
            .build_mainnet();
        Self { evm }
    }

    /// The account nonce of `addr` (the next nonce its author must sign).
    pub fn nonce(&self, addr: Address) -> u64 {
        self.evm
            .ctx
            .db_ref()
            .basic_ref(addr)
            .ok()
            .flatten()
            .map_or(0, |a| a.nonce)
    }

    /// Whether `addr` holds code.
    pub fn has_code(&self, addr: Address) -> bool {
        self.evm
            .ctx
            .db_ref()
            .basic_ref(addr)
            .ok()
            .flatten()
            .is_some_and(|a| !a.is_empty_code_hash())
    }

    fn set_block(&mut self, number: u64, time: u64) {
        self.evm.set_block(BlockEnv {
            number: U256::from(number),
            timestamp: U256::from(time),
            gas_limit: 60_000_000,
            basefee: 0,
            ..Default::default()
        });
    }

    fn tx_env(&self, caller: Address, tx: &Tx) -> Result<TxEnv, ExecError> {
        TxEnv::builder()
            .caller(caller)
            .kind(tx.to.map_or(TxKind::Create, TxKind::Call))
            .data(tx.data.clone())
            .value(tx.value)
            .gas_limit(tx.gas_limit)
            .gas_price(0)
            .nonce(tx.nonce)
            .chain_id(Some(EMBEDDED_CHAIN_ID))
            .build()
            .map_err(|e| ExecError::Invalid(format!("{e:?}")))
    }

    /// Executes `tx` from `caller` in block `number` at `time`. The state changes only if the
    /// call succeeds.
    pub fn execute(
        &mut self,
        number: u64,
        time: u64,
        caller: Address,
        tx: &Tx,
    ) -> Result<Receipt, ExecError> {
        self.set_block(number, time);
        let env = self.tx_env(caller, tx)?;
        let out = self
            .evm
            .transact(env)
            .map_err(|e| ExecError::Invalid(e.to_string()))?;
        let receipt = into_receipt(out.result)?;
        self.evm.ctx.db_mut().commit(out.state);
        Ok(receipt)
    }

    /// Runs a read-only call against the current state at block `number`, `time`.
    pub fn call(
        &mut self,
        number: u64,
        time: u64,
        from: Address,
        to: Address,
        data: Bytes,
    ) -> Result<Bytes, ExecError> {
        self.set_block(number, time);
        let tx = Tx {
            to: Some(to),
            value: U256::ZERO,
            data,
            gas_limit: TX_GAS_CAP,
            nonce: self.nonce(from),
            time,
        };
        let env = self.tx_env(from, &tx)?;
        let out = self
            .evm
            .transact(env)
            .map_err(|e| ExecError::Invalid(e.to_string()))?;
        Ok(into_receipt(out.result)?.output)
    }

    /// A digest of the whole state: every account (address, nonce, balance, code hash) and its
    /// non-zero storage, in address and slot order. Two replays of one log give one digest.
    pub fn state_root(&self) -> Hash32 {
        let cache = &self.evm.ctx.db_ref().cache;
        let mut accounts: Vec<_> = cache.accounts.iter().collect();
        accounts.sort_by_key(|(a, _)| **a);
        let mut h = Sha256::new();
        h.update(b"cohort/state/v1");
        for (addr, acc) in accounts {
            let Some(info) = acc.info() else { continue };
            h.update(addr.as_slice());
            h.update(info.nonce.to_be_bytes());
            h.update(info.balance.to_be_bytes::<32>());
            h.update(info.code_hash.as_slice());
            let mut slots: Vec<_> = acc.storage.iter().filter(|(_, v)| !v.is_zero()).collect();
            slots.sort_by_key(|(k, _)| **k);
            h.update((slots.len() as u64).to_be_bytes());
            for (k, v) in slots {
                h.update(k.to_be_bytes::<32>());
                h.update(v.to_be_bytes::<32>());
            }
        }
        Hash32(h.finalize().into())
    }
}

fn into_receipt(result: ExecutionResult) -> Result<Receipt, ExecError> {
    match result {
        ExecutionResult::Success {
            gas, logs, output, ..
        } => {
            let (output, created) = match output {
                Output::Call(b) => (b, None),
                Output::Create(b, a) => (b, a),
            };
            Ok(Receipt {
                gas_used: gas.tx_gas_used(),
                output,
                created,
                logs,
            })
        }
        ExecutionResult::Revert { gas, output, .. } => Err(ExecError::Reverted {
            data: output,
            gas_used: gas.tx_gas_used(),
        }),
        ExecutionResult::Halt { reason, gas, .. } => Err(ExecError::Halted {
            reason: format!("{reason:?}"),
            gas_used: gas.tx_gas_used(),
        }),
    }
}
