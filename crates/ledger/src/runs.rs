//! Per-run governance and the data market on the protocol contract (`contracts/src/CohortRuns.sol`;
//! docs/economics.md): the typed calls of [`Protocol`] for them.
//!
//! A run is named by its coordinator's address. Its members bond tokens to its governance and
//! decide by proposals (admit a client or a dataset, approve an unlearning request, record new
//! hyperparameters); dataset owners list their datasets at a price per round with an allowlist of
//! training recipes, and the rounds that train on them pay royalties from the run's fund.

use alloy_primitives::{Address, B256, U256};
use cohort_core::Identity;

use crate::backend::LedgerBackend;
use crate::protocol::{
    CohortRuns, GovParams, Listing, MarketFees, Proposal, Protocol, ProtocolError, Sent,
};

/// What a proposal does, as the contract numbers it.
pub mod kind {
    /// New hyperparameters, by the SHA-256 of their file (applied from the run's next round).
    pub const HYPERPARAMS: u8 = 1;
    /// Admit a client to the run (its coordinator may then add it to the roster).
    pub const ADMIT_CLIENT: u8 = 2;
    /// Admit a dataset (the run's updates may then name it).
    pub const ADMIT_DATASET: u8 = 3;
    /// Approve an unlearning request (its execution may then be recorded).
    pub const APPROVE_UNLEARNING: u8 = 4;

    /// The kind's name as `cohort gov` spells it.
    pub fn name_of(kind: u8) -> &'static str {
        match kind {
            HYPERPARAMS => "hyperparams",
            ADMIT_CLIENT => "admit-client",
            ADMIT_DATASET => "admit-dataset",
            APPROVE_UNLEARNING => "approve-unlearning",
            _ => "unknown",
        }
    }
}

/// The target word of a proposal that names an address.
pub fn address_target(a: Address) -> B256 {
    B256::left_padding_from(a.as_slice())
}

/// The target word of a proposal that names an unlearning request.
pub fn request_target(request: u64) -> B256 {
    B256::from(U256::from(request))
}

impl<B: LedgerBackend> Protocol<B> {
    /// The coordinator enables its run's governance, admitting `datasets` as founding datasets.
    pub fn enable_run_governance(
        &mut self,
        coordinator: &Identity,
        params: GovParams,
        datasets: &[B256],
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            coordinator,
            CohortRuns::enableRunGovernanceCall {
                p: params,
                datasets: datasets.to_vec(),
            },
        )
    }

    /// A run's governance parameters (all zero without governance).
    pub fn run_governance(&mut self, run: Address) -> Result<GovParams, ProtocolError> {
        self.view(CohortRuns::runGovernanceCall { run })
    }

    /// A member bonds `amount` of its balance to `run`'s governance.
    pub fn gov_bond(
        &mut self,
        member: &Identity,
        run: Address,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(member, CohortRuns::govBondCall { run, amount })
    }

    /// A member takes `amount` of its bond back (once its votes have ended).
    pub fn gov_unbond(
        &mut self,
        member: &Identity,
        run: Address,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(member, CohortRuns::govUnbondCall { run, amount })
    }

    /// `member`'s bond in `run`, the run's bonded total and until when the bond is locked.
    pub fn gov_bond_of(
        &mut self,
        run: Address,
        member: Address,
    ) -> Result<(U256, U256, u64), ProtocolError> {
        let r = self.view(CohortRuns::govBondOfCall { run, member })?;
        Ok((r.bond, r.total, r.lockedUntil))
    }

    /// A bonded member proposes; returns the proposal's id.
    pub fn propose(
        &mut self,
        member: &Identity,
        run: Address,
        kind: u8,
        target: B256,
        payload: B256,
    ) -> Result<Sent<u64>, ProtocolError> {
        self.send(
            member,
            CohortRuns::proposeCall {
                run,
                kind,
                target,
                payloadHash: payload,
            },
        )
    }

    /// A bonded member votes on a proposal with its whole bond.
    pub fn vote(
        &mut self,
        member: &Identity,
        run: Address,
        proposal: u64,
        support: bool,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            member,
            CohortRuns::voteCall {
                run,
                proposalId: proposal,
                support,
            },
        )
    }

    /// Executes a passed proposal after its timelock (anyone may call).
    pub fn execute_proposal(
        &mut self,
        caller: &Identity,
        run: Address,
        proposal: u64,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            caller,
            CohortRuns::executeCall {
                run,
                proposalId: proposal,
            },
        )
    }

    /// A proposal (its proposer is zero when unknown) and whether its votes pass so far.
    pub fn proposal(
        &mut self,
        run: Address,
        proposal: u64,
    ) -> Result<(Proposal, bool), ProtocolError> {
        let r = self.view(CohortRuns::proposalCall {
            run,
            proposalId: proposal,
        })?;
        Ok((r.p, r.passing))
    }

    /// How many proposals `run` has had.
    pub fn proposal_count(&mut self, run: Address) -> Result<u64, ProtocolError> {
        self.view(CohortRuns::proposalCountCall { run })
    }

    /// The owner lists its dataset at `price` base units per round of use, allowing `recipes`.
    pub fn list_dataset(
        &mut self,
        owner: &Identity,
        dataset: B256,
        price: U256,
        recipes: &[B256],
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            owner,
            CohortRuns::listDatasetCall {
                datasetId: dataset,
                pricePerRound: price,
                recipes: recipes.to_vec(),
            },
        )
    }

    /// The owner withdraws its listing.
    pub fn delist_dataset(
        &mut self,
        owner: &Identity,
        dataset: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(owner, CohortRuns::delistDatasetCall { datasetId: dataset })
    }

    /// The owner allows (or disallows) a recipe on its listed dataset.
    pub fn allow_recipe(
        &mut self,
        owner: &Identity,
        dataset: B256,
        recipe: B256,
        allowed: bool,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            owner,
            CohortRuns::allowRecipeCall {
                datasetId: dataset,
                recipe,
                allowed,
            },
        )
    }

    /// A dataset's listing and whether `recipe` may train on it.
    pub fn listing(
        &mut self,
        dataset: B256,
        recipe: B256,
    ) -> Result<(Listing, bool), ProtocolError> {
        let r = self.view(CohortRuns::listingCall {
            datasetId: dataset,
            recipe,
        })?;
        Ok((r.l, r.allowed))
    }

    /// The coordinator sets its run's royalty split (before its first round).
    pub fn set_market_fees(
        &mut self,
        coordinator: &Identity,
        coordinator_bps: u16,
        treasury_bps: u16,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            coordinator,
            CohortRuns::setMarketFeesCall {
                coordinatorBps: coordinator_bps,
                treasuryBps: treasury_bps,
            },
        )
    }

    /// A run's fee split and royalty fund.
    pub fn market_of(&mut self, run: Address) -> Result<(MarketFees, U256), ProtocolError> {
        let r = self.view(CohortRuns::marketOfCall { run })?;
        Ok((r.fees, r.fund))
    }

    /// The round's coordinator records the recipe the round trains with.
    pub fn set_round_recipe(
        &mut self,
        coordinator: &Identity,
        round: u64,
        recipe: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            coordinator,
            CohortRuns::setRoundRecipeCall {
                roundId: round,
                recipe,
            },
        )
    }

    /// A round's recipe (zero when none was set).
    pub fn round_recipe(&mut self, round: u64) -> Result<B256, ProtocolError> {
        self.view(CohortRuns::roundRecipeCall { roundId: round })
    }

    /// A dataset's owner records that it sits out a round whose recipe it does not allow.
    pub fn refuse_round(
        &mut self,
        owner: &Identity,
        round: u64,
        dataset: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            owner,
            CohortRuns::refuseRoundCall {
                roundId: round,
                datasetId: dataset,
            },
        )
    }

    /// A sponsor adds to `run`'s royalty fund.
    pub fn fund_royalties(
        &mut self,
        sponsor: &Identity,
        run: Address,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(sponsor, CohortRuns::fundRoyaltiesCall { run, amount })
    }

    /// Pays the royalty of the dataset update `index` of `round` trained on (anyone may call).
    pub fn pay_royalty(
        &mut self,
        caller: &Identity,
        round: u64,
        index: u32,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            caller,
            CohortRuns::payRoyaltyCall {
                roundId: round,
                index,
            },
        )
    }

    /// Whether `round`'s royalty for `dataset` was paid, and the dataset's royalties so far.
    pub fn royalty(&mut self, round: u64, dataset: B256) -> Result<(bool, U256), ProtocolError> {
        let r = self.view(CohortRuns::royaltyCall {
            roundId: round,
            datasetId: dataset,
        })?;
        Ok((r.paid, r.total))
    }
}
