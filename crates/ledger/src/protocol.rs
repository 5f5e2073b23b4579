//! The typed facade over the `Cohort` contract, for any [`LedgerBackend`].
//!
//! Every state-changing method signs a call as the given identity and returns a [`Sent`]: the
//! decoded return value, the decoded events and the gas used. A revert comes back as
//! [`ProtocolError::Reverted`] with the contract's custom error decoded, and nothing is
//! recorded.

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_sol_types::{SolCall, SolEventInterface, SolInterface};
use cohort_core::{Identity, Score};

use crate::backend::{LedgerBackend, TxOutcome};
use crate::signer::{SignedCall, TxContext};
use crate::{ExecError, LedgerError};

/// Bindings generated from the committed artifact `contracts/out/Cohort.json`.
// The constructor alloy generates for an event has one argument per field
// (`StageFraudAttested` has eight).
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        Cohort,
        "../../contracts/out/Cohort.json"
    );
}

/// Bindings of the stage-server functions (`contracts/out/CohortStages.json`). `Cohort` runs
/// them by delegatecall from its fallback, so they are called at the protocol contract's
/// address like its own; their events and errors are in `Cohort`'s ABI (declared in
/// `CohortBase`) and decode as [`Cohort::CohortEvents`] and [`Cohort::CohortErrors`].
#[allow(clippy::too_many_arguments)]
pub mod stage_bindings {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        CohortStages,
        "../../contracts/out/CohortStages.json"
    );
}

/// Bindings of per-run governance and the data market (`contracts/out/CohortRuns.json`),
/// which `CohortStages`' fallback runs by delegatecall in turn: called at the protocol
/// contract's address too; their events and errors decode as [`Cohort::CohortEvents`] and
/// [`Cohort::CohortErrors`].
#[allow(clippy::too_many_arguments)]
pub mod runs_bindings {
    alloy_sol_types::sol!(
        #[sol(all_derives)]
        CohortRuns,
        "../../contracts/out/CohortRuns.json"
    );
}

pub use bindings::Cohort;
use bindings::Cohort::{CohortErrors, CohortEvents};
pub use bindings::CohortBase::{Params, UnlearningEvidence};
pub use runs_bindings::CohortBase::{GovParams, Listing, MarketFees, Proposal};
pub use runs_bindings::CohortRuns;
pub use stage_bindings::CohortBase::{StageEscrow, StageParams, StageServer};
pub use stage_bindings::CohortStages;

/// Role bits of `register`.
pub mod roles {
    /// May open and finalize rounds (needs governance approval first).
    pub const COORDINATOR: u8 = 1;
    /// Submits model updates.
    pub const CLIENT: u8 = 2;
    /// Scores updates.
    pub const VALIDATOR: u8 = 4;
    /// Commits datasets.
    pub const DATA_OWNER: u8 = 8;
}

/// Unlearning methods as the contract numbers them (governance may add more).
pub mod unlearning {
    /// The federation rerun without the client: exact.
    pub const RETRAIN: u8 = 1;
    /// Only the forgotten client's shard retrained: exact.
    pub const SHARDS: u8 = 2;
    /// FedEraser's calibration from stored updates: approximate.
    pub const FED_ERASER: u8 = 3;
    /// Gradient ascent on the forget set through a LoRA adapter: approximate.
    pub const LORA_GA: u8 = 4;
    /// NPO on the forget set through a LoRA adapter: approximate.
    pub const LORA_NPO: u8 = 5;

    /// The method's name as `cohort unlearn --method` spells it (`method N` for a number
    /// governance added).
    pub fn name_of(method: u8) -> std::borrow::Cow<'static, str> {
        match method {
            RETRAIN => "retrain".into(),
            SHARDS => "shards".into(),
            FED_ERASER => "fed-eraser".into(),
            LORA_GA => "lora-ga".into(),
            LORA_NPO => "lora-npo".into(),
            n => format!("method {n}").into(),
        }
    }

    /// Request phases.
    pub mod phase {
        /// Filed (or reopened by a rejected execution).
        pub const REQUESTED: u8 = 1;
        /// Executed, waiting for a verifier.
        pub const EXECUTED: u8 = 2;
        /// Verified.
        pub const VERIFIED: u8 = 3;
    }
}

/// Round phases as the contract numbers them.
pub mod phase {
    /// Accepting updates.
    pub const SUBMIT: u8 = 1;
    /// Accepting score commitments.
    pub const COMMIT: u8 = 2;
    /// Accepting reveals.
    pub const REVEAL: u8 = 3;
    /// Consensus computed for every update.
    pub const TALLIED: u8 = 4;
    /// Aggregate recorded.
    pub const FINALIZED: u8 = 5;
    /// Every payout and slash applied.
    pub const SETTLED: u8 = 6;
}

/// A protocol call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The contract reverted with one of its custom errors.
    #[error("{call} reverted: {error:?}")]
    Reverted {
        /// The function called.
        call: &'static str,
        /// The decoded custom error.
        error: CohortErrors,
    },
    /// The contract reverted with data that is not one of its errors.
    #[error("{call} reverted with undecodable data 0x{}", hex::encode(data))]
    RevertedRaw {
        /// The function called.
        call: &'static str,
        /// The revert data.
        data: Bytes,
    },
    /// The ledger failed (storage, signature, nonce, chain).
    #[error(transparent)]
    Ledger(LedgerError),
    /// A relayed call is not the call the relay was asked to carry (another contract or
    /// function); nothing was relayed.
    #[error("relaying {call}: {reason}")]
    WrongCall {
        /// The function the relay expected.
        call: &'static str,
        /// What the signed call is instead.
        reason: String,
    },
    /// A return value or event did not decode.
    #[error("decoding {what}: {reason}")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl ProtocolError {
    /// The decoded custom error, if this is a revert.
    pub fn revert(&self) -> Option<&CohortErrors> {
        match self {
            Self::Reverted { error, .. } => Some(error),
            _ => None,
        }
    }

    fn from_ledger(call: &'static str, e: LedgerError) -> Self {
        match e {
            LedgerError::Exec(ExecError::Reverted { data, .. }) => {
                match CohortErrors::abi_decode(&data) {
                    Ok(error) => Self::Reverted { call, error },
                    Err(_) => Self::RevertedRaw { call, data },
                }
            }
            e => Self::Ledger(e),
        }
    }
}

impl From<LedgerError> for ProtocolError {
    fn from(e: LedgerError) -> Self {
        Self::Ledger(e)
    }
}

/// The result of a state-changing call.
#[derive(Debug, Clone)]
pub struct Sent<R> {
    /// The function's decoded return value.
    pub value: R,
    /// Decoded events, in order.
    pub events: Vec<CohortEvents>,
    /// Gas used.
    pub gas_used: u64,
    /// Position in the ledger (entry or block).
    pub position: u64,
}

/// One call's result within a batch.
pub type SentOr<R> = Result<Sent<R>, ProtocolError>;

/// Token supply split by where it sits; `minted = balances + staked + escrowed + pools +
/// treasury + burned` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Supply {
    /// Ever minted.
    pub minted: U256,
    /// Sum of free balances.
    pub balances: U256,
    /// Active and unbonding stake.
    pub staked: U256,
    /// Update deposits held by open rounds, and stage servers' pay held in escrow.
    pub escrowed: U256,
    /// Reward pools not yet paid.
    pub pools: U256,
    /// Treasury.
    pub treasury: U256,
    /// Burned.
    pub burned: U256,
}

impl Supply {
    /// Whether the conservation invariant holds.
    pub fn conserved(&self) -> bool {
        self.minted
            == self.balances
                + self.staked
                + self.escrowed
                + self.pools
                + self.treasury
                + self.burned
    }
}

/// `keccak256(abi.encode(roundId, validator, int64[] scores, salt))`, the commitment a
/// validator posts before revealing.
pub fn score_commitment(round: u64, validator: Address, scores: &[Score], salt: B256) -> B256 {
    use alloy_sol_types::SolValue;
    let s: Vec<i64> = scores.iter().map(|s| s.0).collect();
    alloy_primitives::keccak256((round, validator, s, salt).abi_encode_params())
}

/// The accepted-set hash the contract computes: `h = 0; for i in accepted (ascending):
/// h = keccak256(abi.encode(h, uint32(i)))`.
pub fn accepted_set_hash(accepted: &[u32]) -> B256 {
    use alloy_sol_types::SolValue;
    accepted.iter().fold(B256::ZERO, |h, &i| {
        alloy_primitives::keccak256((h, i).abi_encode_params())
    })
}

/// The id of a stage fraud claim: `keccak256(abi.encode(server, callDigest, committedRow,
/// recomputedRow))`. Attestations of the same id count towards one quorum.
pub fn stage_claim_id(server: Address, call: B256, committed: B256, recomputed: B256) -> B256 {
    use alloy_sol_types::SolValue;
    alloy_primitives::keccak256((server, call, committed, recomputed).abi_encode_params())
}

/// The protocol contract on a backend.
#[derive(Debug)]
pub struct Protocol<B> {
    backend: B,
    address: Address,
}

impl<B: LedgerBackend> Protocol<B> {
    /// Deploys the contract as `governance` (who becomes its governance address).
    pub fn deploy(mut backend: B, governance: &Identity) -> Result<Self, ProtocolError> {
        let out = backend
            .transact(governance, None, Cohort::BYTECODE.clone())
            .map_err(|e| ProtocolError::from_ledger("deploy", e))?;
        let address = out.created.ok_or_else(|| ProtocolError::Decode {
            what: "deploy",
            reason: "no contract address in receipt".into(),
        })?;
        Ok(Self { backend, address })
    }

    /// Attaches to a contract already deployed at `address`.
    pub fn at(backend: B, address: Address) -> Self {
        Self { backend, address }
    }

    /// The contract address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (to set the time, say).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Gives the backend back.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Signs and sends any call of the contract.
    pub fn send<C: SolCall>(
        &mut self,
        from: &Identity,
        call: C,
    ) -> Result<Sent<C::Return>, ProtocolError> {
        let out: TxOutcome = self
            .backend
            .transact(from, Some(self.address), Bytes::from(call.abi_encode()))
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        let value = C::abi_decode_returns(&out.output).map_err(|e| ProtocolError::Decode {
            what: C::SIGNATURE,
            reason: e.to_string(),
        })?;
        let events = decode_events(self.address, &out.logs);
        Ok(Sent {
            value,
            events,
            gas_used: out.gas_used,
            position: out.position,
        })
    }

    /// Signs and sends several calls of one function as a batch (one durable commit on the
    /// embedded ledger); each gets its own result.
    pub fn send_batch<C: SolCall>(
        &mut self,
        calls: Vec<(&Identity, C)>,
    ) -> Result<Vec<SentOr<C::Return>>, ProtocolError> {
        let address = self.address;
        let encoded = calls
            .into_iter()
            .map(|(id, c)| (id, Some(address), Bytes::from(c.abi_encode())))
            .collect();
        let outs = self
            .backend
            .transact_batch(encoded)
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        Ok(outs
            .into_iter()
            .map(|r| {
                let out = r.map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
                let value =
                    C::abi_decode_returns(&out.output).map_err(|e| ProtocolError::Decode {
                        what: C::SIGNATURE,
                        reason: e.to_string(),
                    })?;
                Ok(Sent {
                    value,
                    events: decode_events(address, &out.logs),
                    gas_used: out.gas_used,
                    position: out.position,
                })
            })
            .collect())
    }

    /// What the party at `who` (its [`LedgerBackend::address_of`]) signs its next call
    /// under; the relay hands it out, the party signs with [`SignedCall::sign_sol`].
    pub fn context_for(&self, who: Address) -> Result<TxContext, ProtocolError> {
        Ok(self.backend.context_for(who)?)
    }

    /// Relays a call of function `C` of this contract that a party signed itself (see
    /// [`crate::signer`]), and decodes its result and events as [`Self::send`] does. Refuses,
    /// relaying nothing, a signed call to another contract or function
    /// ([`ProtocolError::WrongCall`]); the ledger refuses a forged or altered one.
    pub fn relay<C: SolCall>(
        &mut self,
        signed: SignedCall,
    ) -> Result<Sent<C::Return>, ProtocolError> {
        self.check_call::<C>(&signed)?;
        let out = self
            .backend
            .relay(signed)
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        self.decode_sent::<C>(out)
    }

    /// Relays several signed calls of function `C` as a batch (one durable commit on the
    /// embedded ledger); each gets its own result, and a refused one does not stop the others.
    pub fn relay_batch<C: SolCall>(
        &mut self,
        signed: Vec<SignedCall>,
    ) -> Result<Vec<SentOr<C::Return>>, ProtocolError> {
        let mut out: Vec<Option<SentOr<C::Return>>> = Vec::with_capacity(signed.len());
        let mut pass = Vec::with_capacity(signed.len());
        let mut slots = Vec::with_capacity(signed.len());
        for s in signed {
            match self.check_call::<C>(&s) {
                Ok(()) => {
                    slots.push(out.len());
                    pass.push(s);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let results = self
            .backend
            .relay_batch(pass)
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        for (slot, r) in slots.into_iter().zip(results) {
            out[slot] = Some(
                r.map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))
                    .and_then(|o| self.decode_sent::<C>(o)),
            );
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ProtocolError::Ledger(LedgerError::Storage(
                        "missing batch result".into(),
                    )))
                })
            })
            .collect())
    }

    /// That `signed` calls function `C` of this contract.
    fn check_call<C: SolCall>(&self, signed: &SignedCall) -> Result<(), ProtocolError> {
        let (to, input) = signed
            .target_and_input()
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        let wrong = |reason: String| ProtocolError::WrongCall {
            call: C::SIGNATURE,
            reason,
        };
        if to != Some(self.address) {
            return Err(wrong(match to {
                Some(a) => format!("it calls {a}, not the protocol contract {}", self.address),
                None => "it deploys a contract".into(),
            }));
        }
        if input.get(..4) != Some(C::SELECTOR.as_slice()) {
            return Err(wrong(format!(
                "it calls selector 0x{}",
                hex::encode(input.get(..4).unwrap_or(&input))
            )));
        }
        Ok(())
    }

    fn decode_sent<C: SolCall>(&self, out: TxOutcome) -> Result<Sent<C::Return>, ProtocolError> {
        let value = C::abi_decode_returns(&out.output).map_err(|e| ProtocolError::Decode {
            what: C::SIGNATURE,
            reason: e.to_string(),
        })?;
        Ok(Sent {
            value,
            events: decode_events(self.address, &out.logs),
            gas_used: out.gas_used,
            position: out.position,
        })
    }

    /// [`Self::send`] for a call that returns nothing.
    pub fn send_unit<C: SolCall>(
        &mut self,
        from: &Identity,
        call: C,
    ) -> Result<Sent<()>, ProtocolError> {
        let s = self.send(from, call)?;
        Ok(Sent {
            value: (),
            events: s.events,
            gas_used: s.gas_used,
            position: s.position,
        })
    }

    /// Runs `call` as `from` against the current state without recording anything (a dry
    /// run): what [`Self::send`] would return, or the revert it would meet. Events and gas are
    /// not reported.
    pub fn simulate<C: SolCall>(
        &mut self,
        from: Address,
        call: C,
    ) -> Result<C::Return, ProtocolError> {
        let out = self
            .backend
            .call(from, self.address, Bytes::from(call.abi_encode()))
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        C::abi_decode_returns(&out).map_err(|e| ProtocolError::Decode {
            what: C::SIGNATURE,
            reason: e.to_string(),
        })
    }

    /// Runs a view of the contract.
    pub fn view<C: SolCall>(&mut self, call: C) -> Result<C::Return, ProtocolError> {
        let out = self
            .backend
            .call(Address::ZERO, self.address, Bytes::from(call.abi_encode()))
            .map_err(|e| ProtocolError::from_ledger(C::SIGNATURE, e))?;
        C::abi_decode_returns(&out).map_err(|e| ProtocolError::Decode {
            what: C::SIGNATURE,
            reason: e.to_string(),
        })
    }

    // ---- token and governance ----

    /// Governance mints `amount` to `to`.
    pub fn mint(
        &mut self,
        gov: &Identity,
        to: Address,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(gov, Cohort::mintCall { to, amount })
    }

    /// Transfers free balance.
    pub fn transfer(
        &mut self,
        from: &Identity,
        to: Address,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(from, Cohort::transferCall { to, amount })
    }

    /// Moves own balance into the treasury.
    pub fn fund_treasury(
        &mut self,
        from: &Identity,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(from, Cohort::fundTreasuryCall { amount })
    }

    /// Governance approves an address to register as coordinator.
    pub fn approve_coordinator(
        &mut self,
        gov: &Identity,
        who: Address,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(gov, Cohort::approveCoordinatorCall { who })
    }

    /// Governance replaces the protocol parameters.
    pub fn set_params(&mut self, gov: &Identity, p: Params) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(gov, Cohort::setParamsCall { p })
    }

    /// Current parameters.
    pub fn params(&mut self) -> Result<Params, ProtocolError> {
        self.view(Cohort::paramsCall {})
    }

    /// Free balance of `who`.
    pub fn balance_of(&mut self, who: Address) -> Result<U256, ProtocolError> {
        self.view(Cohort::balanceOfCall { who })
    }

    /// Where every token sits.
    pub fn supply(&mut self) -> Result<Supply, ProtocolError> {
        let r = self.view(Cohort::supplyBreakdownCall {})?;
        Ok(Supply {
            minted: r.minted,
            balances: r.balances,
            staked: r.staked,
            escrowed: r.escrowed,
            pools: r.pools,
            treasury: r.treasury_,
            burned: r.burned,
        })
    }

    // ---- registry, staking, datasets ----

    /// Registers `who` with a role bitmask (see [`roles`]), binding its ed25519 key hash.
    pub fn register(&mut self, who: &Identity, roles: u8) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            who,
            Cohort::registerCall {
                roles,
                keyHash: who.key_hash(),
            },
        )
    }

    /// Stakes from free balance.
    pub fn stake(&mut self, who: &Identity, amount: U256) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(who, Cohort::stakeCall { amount })
    }

    /// Starts unbonding `amount` of active stake.
    pub fn request_unstake(
        &mut self,
        who: &Identity,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(who, Cohort::requestUnstakeCall { amount })
    }

    /// Withdraws unbonded stake.
    pub fn withdraw(&mut self, who: &Identity) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(who, Cohort::withdrawCall {})
    }

    /// Active stake, unbonding stake and unlock time of `who`.
    pub fn stake_of(&mut self, who: Address) -> Result<(U256, U256, u64), ProtocolError> {
        let r = self.view(Cohort::stakeOfCall { who })?;
        Ok((r.active, r.unbonding, r.unlockAt))
    }

    /// Commits a dataset: Merkle root over shard hashes, manifest hash, size. Returns its id.
    pub fn commit_dataset(
        &mut self,
        owner: &Identity,
        merkle_root: B256,
        manifest_hash: B256,
        size: u64,
    ) -> Result<Sent<B256>, ProtocolError> {
        self.send(
            owner,
            Cohort::commitDatasetCall {
                merkleRoot: merkle_root,
                manifestHash: manifest_hash,
                size,
            },
        )
    }

    // ---- rounds ----

    /// Most clients one [`Protocol::extend_roster`] call takes: a batch stays well under the
    /// embedded ledger's gas cap (each client costs a storage write and a hash).
    pub const ROSTER_BATCH: usize = 256;

    /// Appends `clients` to `coordinator`'s roster (the clients its rounds sample from, roster
    /// index = position), in batches of [`Self::ROSTER_BATCH`]; only before its first round.
    /// Returns the roster's size and beacon after the last batch.
    pub fn extend_roster(
        &mut self,
        coordinator: &Identity,
        clients: &[Address],
    ) -> Result<(u32, B256), ProtocolError> {
        for batch in clients.chunks(Self::ROSTER_BATCH) {
            self.send_unit(
                coordinator,
                Cohort::extendRosterCall {
                    clients: batch.to_vec(),
                },
            )?;
        }
        let r = self.roster(self.backend.address_of(coordinator))?;
        Ok((r.size, r.beacon))
    }

    /// The roster of `coordinator`: its size, whether it is fixed and its beacon.
    pub fn roster(&mut self, coordinator: Address) -> Result<Cohort::rosterReturn, ProtocolError> {
        self.view(Cohort::rosterCall { coordinator })
    }

    /// The seed and the roster indices (ascending) of a round's cohort.
    pub fn round_cohort(&mut self, round: u64) -> Result<(B256, Vec<u32>), ProtocolError> {
        let c = self.view(Cohort::roundCohortCall { roundId: round })?;
        Ok((c.seed, c.indices))
    }

    /// Opens a round on `global_model` with a reward pool from the caller (or the treasury),
    /// for `cohort_size` clients of the caller's roster sampled from its beacon
    /// ([`cohort_core::sample_cohort`]).
    pub fn open_round(
        &mut self,
        coordinator: &Identity,
        global_model: B256,
        reward_pool: U256,
        from_treasury: bool,
        cohort_size: u32,
    ) -> Result<Sent<u64>, ProtocolError> {
        self.send(
            coordinator,
            Cohort::openRoundCall {
                globalModelHash: global_model,
                rewardPool: reward_pool,
                fromTreasury: from_treasury,
                cohortSize: cohort_size,
            },
        )
    }

    /// Submits an update commitment; escrows the update deposit. Returns its index.
    pub fn submit_update(
        &mut self,
        client: &Identity,
        round: u64,
        blob_hash: B256,
        dataset: B256,
        num_samples: u64,
    ) -> Result<Sent<u32>, ProtocolError> {
        self.send(
            client,
            Cohort::submitUpdateCall {
                roundId: round,
                blobHash: blob_hash,
                datasetId: dataset,
                numSamples: num_samples,
            },
        )
    }

    /// Coordinator closes submissions.
    pub fn close_submissions(
        &mut self,
        coordinator: &Identity,
        round: u64,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(coordinator, Cohort::closeSubmissionsCall { roundId: round })
    }

    /// Validator commits to its score vector (see [`score_commitment`]).
    pub fn commit_scores(
        &mut self,
        validator: &Identity,
        round: u64,
        scores: &[Score],
        salt: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        let commitment = score_commitment(round, self.backend.address_of(validator), scores, salt);
        self.send_unit(
            validator,
            Cohort::commitScoresCall {
                roundId: round,
                commitment,
            },
        )
    }

    /// Coordinator closes commitments.
    pub fn close_commits(
        &mut self,
        coordinator: &Identity,
        round: u64,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(coordinator, Cohort::closeCommitsCall { roundId: round })
    }

    /// Validator reveals its scores and salt.
    pub fn reveal_scores(
        &mut self,
        validator: &Identity,
        round: u64,
        scores: &[Score],
        salt: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        let scores = scores.iter().map(|s| s.0).collect();
        self.send_unit(
            validator,
            Cohort::revealScoresCall {
                roundId: round,
                scores,
                salt,
            },
        )
    }

    /// Computes consensus for up to `max_updates` more updates (anyone may call).
    pub fn tally(
        &mut self,
        caller: &Identity,
        round: u64,
        max_updates: u32,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            caller,
            Cohort::tallyCall {
                roundId: round,
                maxUpdates: max_updates,
            },
        )
    }

    /// Tallies in batches of `batch` until the round is tallied; returns every event and the
    /// total gas.
    pub fn tally_all(
        &mut self,
        caller: &Identity,
        round: u64,
        batch: u32,
    ) -> Result<Sent<()>, ProtocolError> {
        let mut all = Sent {
            value: (),
            events: Vec::new(),
            gas_used: 0,
            position: 0,
        };
        while self.round(round)?.phase < phase::TALLIED {
            let s = self.tally(caller, round, batch)?;
            all.events.extend(s.events);
            all.gas_used += s.gas_used;
            all.position = s.position;
        }
        Ok(all)
    }

    /// Coordinator records the aggregate and the accepted set it used.
    pub fn finalize(
        &mut self,
        coordinator: &Identity,
        round: u64,
        aggregate: B256,
        accepted_set: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            coordinator,
            Cohort::finalizeCall {
                roundId: round,
                aggregateHash: aggregate,
                acceptedSetHash: accepted_set,
            },
        )
    }

    /// Applies up to `max_items` more payouts and slashes (anyone may call).
    pub fn settle(
        &mut self,
        caller: &Identity,
        round: u64,
        max_items: u32,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            caller,
            Cohort::settleCall {
                roundId: round,
                maxItems: max_items,
            },
        )
    }

    /// Settles in batches of `batch` until the round is settled; returns every event and the
    /// total gas.
    pub fn settle_all(
        &mut self,
        caller: &Identity,
        round: u64,
        batch: u32,
    ) -> Result<Sent<()>, ProtocolError> {
        let mut all = Sent {
            value: (),
            events: Vec::new(),
            gas_used: 0,
            position: 0,
        };
        while self.round(round)?.phase < phase::SETTLED {
            let s = self.settle(caller, round, batch)?;
            all.events.extend(s.events);
            all.gas_used += s.gas_used;
            all.position = s.position;
        }
        Ok(all)
    }

    /// A round's state.
    pub fn round(&mut self, round: u64) -> Result<Cohort::roundReturn, ProtocolError> {
        self.view(Cohort::roundCall { roundId: round })
    }

    /// An update's state.
    pub fn update(
        &mut self,
        round: u64,
        index: u32,
    ) -> Result<Cohort::updateReturn, ProtocolError> {
        self.view(Cohort::updateCall {
            roundId: round,
            index,
        })
    }

    // ---- unlearning and anchoring ----

    /// The dataset owner (or governance) asks for a dataset to be forgotten, committing to
    /// the forget set it will disclose to the verifier (`forget_set`, its hash).
    pub fn request_unlearning(
        &mut self,
        who: &Identity,
        dataset: B256,
        reason: B256,
        forget_set: B256,
    ) -> Result<Sent<u64>, ProtocolError> {
        self.send(
            who,
            Cohort::requestUnlearningCall {
                datasetId: dataset,
                reasonHash: reason,
                forgetSetHash: forget_set,
            },
        )
    }

    /// A coordinator records the execution by `method` (see [`unlearning`]): the unlearned
    /// model's hash and the executor's evidence blob's; the contract claws back the dataset's
    /// rewards.
    pub fn record_unlearning(
        &mut self,
        coordinator: &Identity,
        request: u64,
        method: u8,
        result_model: B256,
        evidence: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            coordinator,
            Cohort::recordUnlearningCall {
                requestId: request,
                method,
                resultModelHash: result_model,
                evidenceHash: evidence,
            },
        )
    }

    /// A validator other than the executor gives its verdict on an execution: accepted (its
    /// evidence blob must be the executor's) or rejected, with why (`reason`, a hash), which
    /// reopens the request.
    pub fn verify_unlearning(
        &mut self,
        verifier: &Identity,
        request: u64,
        accepted: bool,
        evidence_hash: B256,
        evidence: UnlearningEvidence,
        reason: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            verifier,
            Cohort::verifyUnlearningCall {
                requestId: request,
                accepted,
                evidenceHash: evidence_hash,
                evidence,
                reasonHash: reason,
            },
        )
    }

    /// Records that the forgotten client's blobs were deleted (`manifest`: the hash of the
    /// list of their hashes). The executor or governance, after verification.
    pub fn record_blob_deletion(
        &mut self,
        who: &Identity,
        request: u64,
        manifest: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            who,
            Cohort::recordBlobDeletionCall {
                requestId: request,
                manifestHash: manifest,
            },
        )
    }

    /// An unlearning request's record.
    pub fn unlearning_request(
        &mut self,
        request: u64,
    ) -> Result<bindings::CohortBase::UnlearningRequest, ProtocolError> {
        self.view(Cohort::unlearningRequestCall { requestId: request })
    }

    // ---- stage servers ----

    /// Governance replaces the stage servers' parameters.
    pub fn set_stage_params(
        &mut self,
        gov: &Identity,
        p: StageParams,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(gov, CohortStages::setStageParamsCall { p })
    }

    /// The stage servers' parameters in force.
    pub fn stage_params(&mut self) -> Result<StageParams, ProtocolError> {
        self.view(CohortStages::stageParamsCall {})
    }

    /// `server` declares itself a stage server of `model` (the SHA-256 of its files) holding
    /// `layers` (end exclusive); it must be registered and staked (`minStageStake`).
    pub fn register_stage(
        &mut self,
        server: &Identity,
        model: B256,
        layers: std::ops::Range<u32>,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            server,
            CohortStages::registerStageCall {
                modelHash: model,
                firstLayer: layers.start,
                endLayer: layers.end,
            },
        )
    }

    /// A stage server's record (all zero when unknown).
    pub fn stage_server(&mut self, server: Address) -> Result<StageServer, ProtocolError> {
        self.view(CohortStages::stageServerCall { server })
    }

    /// Whether `server` is a stage server that was never slashed.
    pub fn stage_active(&mut self, server: Address) -> Result<bool, ProtocolError> {
        self.view(CohortStages::stageActiveCall { server })
    }

    /// `payer` escrows `amount` of its balance as pay to `server` for `period`, for `tokens`
    /// model tokens; released to the server no sooner than the challenge window after.
    pub fn pay_stage(
        &mut self,
        payer: &Identity,
        server: Address,
        period: u64,
        tokens: u64,
        amount: U256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            payer,
            CohortStages::payStageCall {
                server,
                period,
                tokens,
                amount,
            },
        )
    }

    /// Pays `period`'s escrow to `server` once its window has passed (anyone may call).
    pub fn release_stage(
        &mut self,
        caller: &Identity,
        server: Address,
        period: u64,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(caller, CohortStages::releaseStageCall { server, period })
    }

    /// Gives `payer` back its unreleased pay to a slashed `server` for `period` (anyone may
    /// call; the tokens go to the payer).
    pub fn refund_stage(
        &mut self,
        caller: &Identity,
        server: Address,
        period: u64,
        payer: Address,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(
            caller,
            CohortStages::refundStageCall {
                server,
                period,
                payer,
            },
        )
    }

    /// A period's escrow for `server`.
    pub fn stage_escrow(
        &mut self,
        server: Address,
        period: u64,
    ) -> Result<StageEscrow, ProtocolError> {
        self.view(CohortStages::stageEscrowCall { server, period })
    }

    /// What `payer` holds in `server`'s escrow for `period`.
    pub fn stage_paid(
        &mut self,
        server: Address,
        period: u64,
        payer: Address,
    ) -> Result<U256, ProtocolError> {
        self.view(CohortStages::stagePaidCall {
            server,
            period,
            payer,
        })
    }

    /// `verifier` (a stage server of the same model and layers) attests that `server`
    /// committed `committed` for a row of the call `call` whose recomputation gives
    /// `recomputed`. Returns the claim's attestations so far (see [`stage_claim_id`]); the one
    /// reaching the quorum slashes the server.
    pub fn attest_stage_fraud(
        &mut self,
        verifier: &Identity,
        server: Address,
        period: u64,
        call: B256,
        committed: B256,
        recomputed: B256,
    ) -> Result<Sent<U256>, ProtocolError> {
        self.send(
            verifier,
            CohortStages::attestStageFraudCall {
                server,
                period,
                callDigest: call,
                committedRow: committed,
                recomputedRow: recomputed,
            },
        )
    }

    /// The attesters of a claim, in order.
    pub fn stage_claim(&mut self, claim: B256) -> Result<Vec<Address>, ProtocolError> {
        self.view(CohortStages::stageClaimCall { claimId: claim })
    }

    /// Anchors a checkpoint of the embedded log (size, root) on this chain.
    pub fn anchor(
        &mut self,
        who: &Identity,
        size: u64,
        root: B256,
    ) -> Result<Sent<()>, ProtocolError> {
        self.send_unit(who, Cohort::anchorCall { size, root })
    }
}

/// Decodes the logs emitted by the contract at `address`; others are skipped.
pub fn decode_events(address: Address, logs: &[alloy_primitives::Log]) -> Vec<CohortEvents> {
    logs.iter()
        .filter(|l| l.address == address)
        .filter_map(|l| CohortEvents::decode_raw_log(l.data.topics(), &l.data.data).ok())
        .collect()
}
