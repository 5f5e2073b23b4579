//! The simulator's EVM: the deployable contracts executed in revm, in memory.
//!
//! The simulator does not write the signed redb log of `cohort-ledger`: a simulation makes
//! hundreds of thousands of calls that nobody needs to verify later, and signing, hashing and
//! fsyncing them would cost far more than executing them. It runs the very bytecode of
//! `contracts/out/*.json` in the same [`Executor`] (Osaka rules, 2^24 gas cap per
//! transaction), with `block.timestamp` set to the simulated clock.

use alloy_primitives::{Address, Bytes, Log, U256, keccak256};
use alloy_sol_types::{SolCall, SolInterface};
use cohort_ledger::evm::TX_GAS_CAP;
use cohort_ledger::{ExecError, Executor, Tx};

use crate::SimError;

/// Bindings generated from the committed artifacts.
pub mod bindings {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        SparsePerceptron,
        "../../contracts/out/SparsePerceptron.json"
    );
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        DepositRefundTake,
        "../../contracts/out/DepositRefundTake.json"
    );
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        NaiveBayes,
        "../../contracts/out/NaiveBayes.json"
    );
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        NearestCentroid,
        "../../contracts/out/NearestCentroid.json"
    );
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        Points,
        "../../contracts/out/Points.json"
    );
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        PredictionMarket,
        "../../contracts/out/PredictionMarket.json"
    );
}

use bindings::DepositRefundTake::DepositRefundTakeErrors;
use bindings::NaiveBayes::NaiveBayesErrors;
use bindings::NearestCentroid::NearestCentroidErrors;
use bindings::Points::PointsErrors;
use bindings::PredictionMarket::PredictionMarketErrors;
use bindings::SparsePerceptron::SparsePerceptronErrors;

/// What a state-changing call returned.
#[derive(Debug, Clone)]
pub struct Sent<R> {
    /// The decoded return value.
    pub value: R,
    /// Gas used.
    pub gas_used: u64,
}

/// What a state-changing call returned, with the events it emitted.
#[derive(Debug, Clone)]
pub struct Logged<R> {
    /// The decoded return value.
    pub value: R,
    /// Gas used.
    pub gas_used: u64,
    /// The events, in order.
    pub logs: Vec<Log>,
}

/// A call that the contract refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    /// The Solidity error's name (`TooEarly`, `BadFeature`, ...), or `0x...` if the data is not
    /// one of the simulator contracts' errors.
    pub name: String,
    /// The decoded error, for messages.
    pub detail: String,
}

/// Counters of what the EVM did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChainStats {
    /// Transactions executed successfully (deployments and setup included).
    pub transactions: u64,
    /// Transactions that reverted (their state changes discarded).
    pub reverted: u64,
    /// Gas used by successful and reverted transactions.
    pub gas_used: u64,
    /// Read-only calls.
    pub views: u64,
}

/// An in-memory EVM with a block counter.
#[derive(Debug, Default)]
pub struct Chain {
    exec: Executor,
    block: u64,
    /// What has been executed.
    pub stats: ChainStats,
}

/// A deterministic account address for simulator participant `i`.
pub fn participant(i: usize) -> Address {
    let h = keccak256(
        [
            b"cohort/sim/participant/".as_slice(),
            &(i as u64).to_be_bytes(),
        ]
        .concat(),
    );
    Address::from_slice(&h[12..])
}

/// A sample's features as the contracts take them: big-endian uint16s, 2 bytes each
/// ([`crate::data::Dataset::load`] refuses `num_words` above 65,536).
pub fn pack(features: &[u32]) -> Bytes {
    features
        .iter()
        .flat_map(|&f| (f as u16).to_be_bytes())
        .collect::<Vec<u8>>()
        .into()
}

impl Chain {
    /// A fresh, empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    fn tx(
        &mut self,
        time: u64,
        from: Address,
        to: Option<Address>,
        data: Bytes,
    ) -> Result<cohort_ledger::Receipt, ExecError> {
        let tx = Tx {
            to,
            value: U256::ZERO,
            data,
            gas_limit: TX_GAS_CAP,
            nonce: self.exec.nonce(from),
            time,
        };
        self.block += 1;
        let r = self.exec.execute(self.block, time, from, &tx);
        match &r {
            Ok(rc) => {
                self.stats.transactions += 1;
                self.stats.gas_used += rc.gas_used;
            }
            Err(ExecError::Reverted { gas_used, .. }) | Err(ExecError::Halted { gas_used, .. }) => {
                self.stats.reverted += 1;
                self.stats.gas_used += gas_used;
            }
            Err(ExecError::Invalid(_)) => {}
        }
        r
    }

    /// Deploys `init_code` from `from` at `time`.
    pub fn deploy(
        &mut self,
        time: u64,
        from: Address,
        init_code: Bytes,
    ) -> Result<Address, SimError> {
        let r = self
            .tx(time, from, None, init_code)
            .map_err(|e| SimError::Chain(format!("deployment failed: {}", describe(&e))))?;
        r.created
            .ok_or_else(|| SimError::Chain("deployment returned no address".into()))
    }

    /// Sends `call` to `to`. `Ok(Err(revert))` when the contract refused it (nothing changed);
    /// `Err` when the EVM could not run it at all or the result did not decode.
    pub fn send<C: SolCall>(
        &mut self,
        time: u64,
        from: Address,
        to: Address,
        call: &C,
    ) -> Result<Result<Sent<C::Return>, Revert>, SimError> {
        match self.tx(time, from, Some(to), Bytes::from(call.abi_encode())) {
            Ok(r) => {
                let value = C::abi_decode_returns(&r.output).map_err(|e| {
                    SimError::Chain(format!("decoding the return of {}: {e}", C::SIGNATURE))
                })?;
                Ok(Ok(Sent {
                    value,
                    gas_used: r.gas_used,
                }))
            }
            Err(ExecError::Reverted { data, .. }) => Ok(Err(decode_revert(&data))),
            Err(e) => Err(SimError::Chain(format!(
                "{}: {}",
                C::SIGNATURE,
                describe(&e)
            ))),
        }
    }

    /// [`Chain::send`], with the events the call emitted (in order) when it succeeds: for
    /// comparing a run with another node's receipts.
    pub fn send_logged<C: SolCall>(
        &mut self,
        time: u64,
        from: Address,
        to: Address,
        call: &C,
    ) -> Result<Result<Logged<C::Return>, Revert>, SimError> {
        match self.tx(time, from, Some(to), Bytes::from(call.abi_encode())) {
            Ok(r) => {
                let value = C::abi_decode_returns(&r.output).map_err(|e| {
                    SimError::Chain(format!("decoding the return of {}: {e}", C::SIGNATURE))
                })?;
                Ok(Ok(Logged {
                    value,
                    gas_used: r.gas_used,
                    logs: r.logs,
                }))
            }
            Err(ExecError::Reverted { data, .. }) => Ok(Err(decode_revert(&data))),
            Err(e) => Err(SimError::Chain(format!(
                "{}: {}",
                C::SIGNATURE,
                describe(&e)
            ))),
        }
    }

    /// Sends `call` and fails unless it succeeds.
    pub fn must_send<C: SolCall>(
        &mut self,
        time: u64,
        from: Address,
        to: Address,
        call: &C,
    ) -> Result<Sent<C::Return>, SimError> {
        self.send(time, from, to, call)?
            .map_err(|r| SimError::Chain(format!("{} reverted: {}", C::SIGNATURE, r.detail)))
    }

    /// Runs a view of `to` at `time`.
    pub fn view<C: SolCall>(
        &mut self,
        time: u64,
        to: Address,
        call: &C,
    ) -> Result<C::Return, SimError> {
        self.stats.views += 1;
        let out = self
            .exec
            .call(
                self.block,
                time,
                Address::ZERO,
                to,
                Bytes::from(call.abi_encode()),
            )
            .map_err(|e| SimError::Chain(format!("{}: {}", C::SIGNATURE, describe(&e))))?;
        C::abi_decode_returns(&out)
            .map_err(|e| SimError::Chain(format!("decoding the return of {}: {e}", C::SIGNATURE)))
    }
}

fn describe(e: &ExecError) -> String {
    match e {
        ExecError::Reverted { data, .. } => format!("reverted: {}", decode_revert(data).detail),
        e => e.to_string(),
    }
}

/// Names the custom error in revert data of the simulator's contracts.
pub fn decode_revert(data: &[u8]) -> Revert {
    let detail = if let Ok(e) = DepositRefundTakeErrors::abi_decode(data) {
        format!("{e:?}")
    } else if let Ok(e) = SparsePerceptronErrors::abi_decode(data) {
        format!("{e:?}")
    } else if let Ok(e) = NaiveBayesErrors::abi_decode(data) {
        format!("{e:?}")
    } else if let Ok(e) = NearestCentroidErrors::abi_decode(data) {
        format!("{e:?}")
    } else if let Ok(e) = PointsErrors::abi_decode(data) {
        format!("{e:?}")
    } else if let Ok(e) = PredictionMarketErrors::abi_decode(data) {
        format!("{e:?}")
    } else if data.is_empty() {
        return Revert {
            name: "0x".into(),
            detail: "empty revert data: a call inside ran out of gas (the per-transaction cap is 2^24), or a bare revert".into(),
        };
    } else {
        return Revert {
            name: format!("0x{}", hex::encode(data)),
            detail: format!("undecodable revert data 0x{}", hex::encode(data)),
        };
    };
    let name = detail.split('(').next().unwrap_or_default().to_string();
    Revert { name, detail }
}

/// A token amount a contract returned, as `u128` (every balance in the simulator fits).
pub(crate) fn amount(v: U256) -> Result<u128, SimError> {
    u128::try_from(v).map_err(|_| SimError::Chain(format!("amount {v} does not fit in u128")))
}

/// A contribution id a contract returned, as an index.
pub(crate) fn contribution_id(v: U256) -> Result<usize, SimError> {
    usize::try_from(v).map_err(|_| SimError::Chain(format!("contribution id {v} overflows")))
}
