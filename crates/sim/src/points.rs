//! Points: the gamified incentive of 0xDeCA10B, in Rust ([`PointsRules`], the contract's
//! reference) and on chain ([`EvmPoints`], the `Points` contract in revm).
//!
//! No money: anyone adds a sample for free (the model trains on it), and the submitter earns
//! one point per contribution the model still agrees with more than `refund_wait` after it
//! was added (the Deposit-Refund-Take refund check, without a deposit). Nothing can be
//! taken. A contribution the model disagrees with can be claimed again later.

use alloy_primitives::{Address, Bytes};
use alloy_sol_types::SolConstructor;

use crate::chain::bindings::Points;
use crate::chain::{Chain, ChainStats, Revert, contribution_id, pack, participant};
use crate::drt::Reject;
use crate::model::{ChainModel, hand_over};
use crate::{Classifier, SimError};

/// One contribution's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointsContribution {
    /// The submitting participant.
    pub sender: usize,
    /// When it was added.
    pub added_at: u64,
    /// The submitted label.
    pub label: u8,
    /// Whether its point was claimed.
    pub claimed: bool,
}

/// The Points rules in Rust: the reference the contract is checked against.
#[derive(Debug, Clone)]
pub struct PointsRules<M> {
    /// Seconds before a point can be claimed (strictly more is needed).
    pub refund_wait: u64,
    /// The classifier trained with every contribution.
    pub model: M,
    /// Points per participant.
    pub points: Vec<u64>,
    /// Points of everyone.
    pub total_points: u64,
    /// Every contribution, by id.
    pub contributions: Vec<PointsContribution>,
}

impl<M: Classifier> PointsRules<M> {
    /// The mechanism around `model`.
    pub fn new(refund_wait: u64, model: M) -> Self {
        Self {
            refund_wait,
            model,
            points: Vec::new(),
            total_points: 0,
            contributions: Vec::new(),
        }
    }

    /// Points of `who`.
    pub fn points(&self, who: usize) -> u64 {
        self.points.get(who).copied().unwrap_or(0)
    }

    /// `who` adds a sample (free); returns its id.
    pub fn add_data(&mut self, now: u64, who: usize, features: &[u32], label: u8) -> usize {
        let id = self.contributions.len();
        self.contributions.push(PointsContribution {
            sender: who,
            added_at: now,
            label,
            claimed: false,
        });
        self.model.update(features, label);
        id
    }

    /// The submitter claims the point of contribution `id`; returns its points after it.
    pub fn refund(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        features: &[u32],
    ) -> Result<u64, Reject> {
        let c = &self.contributions[id];
        if c.sender != who {
            return Err(Reject::NotSubmitter);
        }
        if c.claimed {
            return Err(Reject::AlreadyClaimed);
        }
        if now - c.added_at <= self.refund_wait {
            return Err(Reject::TooEarly);
        }
        if self.model.predict(features) != c.label {
            return Err(Reject::ModelDisagrees);
        }
        self.contributions[id].claimed = true;
        if self.points.len() <= who {
            self.points.resize(who + 1, 0);
        }
        self.points[who] += 1;
        self.total_points += 1;
        Ok(self.points[who])
    }
}

/// The Points mechanism on chain.
#[derive(Debug)]
pub struct EvmPoints {
    /// The EVM.
    pub chain: Chain,
    /// Deployer.
    pub operator: Address,
    /// The model contract.
    pub model: Address,
    /// The mechanism contract.
    pub points: Address,
}

impl EvmPoints {
    /// Deploys `model` and the mechanism at `now` and hands the model to the mechanism.
    pub fn deploy<M: ChainModel>(refund_wait: u64, model: &M, now: u64) -> Result<Self, SimError> {
        let mut chain = Chain::new();
        let operator = participant(usize::MAX);
        let model_addr = model.deploy(&mut chain, operator, now)?;
        let ctor = Points::constructorCall {
            model_: model_addr,
            refundWait_: refund_wait,
        };
        let code = [Points::BYTECODE.as_ref(), &ctor.abi_encode()].concat();
        let points = chain.deploy(now, operator, Bytes::from(code))?;
        hand_over(&mut chain, now, operator, model_addr, points)?;
        Ok(Self {
            chain,
            operator,
            model: model_addr,
            points,
        })
    }

    /// What the EVM has executed so far.
    pub fn stats(&self) -> ChainStats {
        self.chain.stats
    }

    /// `addData` from participant `who`.
    pub fn add_data(
        &mut self,
        now: u64,
        who: usize,
        features: &[u32],
        label: u8,
    ) -> Result<Result<usize, Revert>, SimError> {
        let call = Points::addDataCall {
            features: pack(features),
            label,
        };
        match self.chain.send(now, participant(who), self.points, &call)? {
            Ok(s) => Ok(Ok(contribution_id(s.value)?)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `refund` (claim a point) from participant `who`.
    pub fn refund(
        &mut self,
        now: u64,
        who: usize,
        id: usize,
        features: &[u32],
    ) -> Result<Result<u64, Revert>, SimError> {
        let call = Points::refundCall {
            id: alloy_primitives::U256::from(id),
            features: pack(features),
        };
        Ok(self
            .chain
            .send(now, participant(who), self.points, &call)?
            .map(|s| s.value))
    }

    /// Points of participant `who` on chain.
    pub fn points_of(&mut self, now: u64, who: usize) -> Result<u64, SimError> {
        self.chain
            .view(now, self.points, &Points::pointsOfCall(participant(who)))
    }

    /// `totalPoints` on chain.
    pub fn total_points(&mut self, now: u64) -> Result<u64, SimError> {
        self.chain
            .view(now, self.points, &Points::totalPointsCall {})
    }
}
