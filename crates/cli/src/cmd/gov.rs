//! `cohort gov ...`: per-run governance on the ledger (docs/economics.md, "Governance").
//!
//! A run is named by its coordinator (`--run ADDR|KEY`). The coordinator enables governance
//! once (`enable`), after enrolling the founding clients; the run's members bond tokens to it
//! (`bond`, `unbond`) and decide by proposals (`propose`): a vote weighted by bond (`vote`),
//! then a timelock, then anyone executes a passed proposal (`execute`). Executed, a proposal
//! admits a client (the coordinator may then add it to the roster), admits a dataset (the run's
//! updates may name it), approves an unlearning request (its execution may then be recorded),
//! or records new hyperparameters by the SHA-256 of their file. `show` reads it all, read-only.
//!
//! Every writing command signs with the party's own key (`--key`) on the embedded ledger
//! (`--ledger DIR`) or an EVM chain (`--chain-rpc URL --contract ADDR`), as `cohort stage`
//! does, and `--check` runs the call without recording it.

use std::path::PathBuf;
use std::process::ExitCode;

use alloy_primitives::{Address, B256, U256};
use anyhow::{Context, bail};
use clap::Subcommand;
use cohort_ledger::LedgerError;
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::{CohortErrors, CohortEvents};
use cohort_ledger::protocol::{CohortRuns, GovParams, decode_events};
use cohort_ledger::runs::{address_target, kind, request_target};
use serde::Serialize;

use crate::args::{duration_secs, int_in, percent_bps, token_amount};
use crate::cmd::stage::{
    AnyProtocol, Party, Place, Recorded, Signer, amount, hash32, party, recorded_lines, resolve,
};
use crate::output::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum GovCmd {
    /// Enable governance of your run (as its coordinator), once, after enrolling the founding
    /// clients: from then on clients and datasets join by vote.
    Enable(EnableArgs),
    /// Bond tokens to a run's governance (a member: its coordinator or a roster client); your
    /// bond is your vote's weight.
    Bond(BondArgs),
    /// Take bonded tokens back (once the votes you cast have ended).
    Unbond(BondArgs),
    /// Propose, as a bonded member: admit a client or a dataset, approve an unlearning
    /// request, or adopt new hyperparameters.
    Propose(ProposeArgs),
    /// Vote on a proposal with your whole bond, once.
    Vote(VoteArgs),
    /// Execute a passed proposal once its timelock has run out (anyone).
    Execute(ExecuteArgs),
    /// A run's governance: its parameters, members' bonds, proposals and votes (read-only; needs
    /// no key).
    Show(ShowArgs),
}

impl GovCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Enable(a) => a.execute(),
            Self::Bond(a) => a.execute(true),
            Self::Unbond(a) => a.execute(false),
            Self::Propose(a) => a.execute(),
            Self::Vote(a) => a.execute(),
            Self::Execute(a) => a.execute(),
            Self::Show(a) => a.execute(),
        }
    }
}

/// Why a call of per-run governance or the market was refused, in words (`None` for the
/// other errors).
pub fn explain_runs(e: &CohortErrors) -> Option<String> {
    let t = fmt_tokens;
    Some(match e {
        CohortErrors::InvalidGovParam(x) => format!(
            "governance parameter {} is out of range (quorum 0.01-100%, majority 50-99.99%, \
             voting period 1 s to a year, timelock up to a year)",
            ["quorum", "majority", "voting period", "timelock"]
                .get(usize::from(x.field))
                .unwrap_or(&"?")
        ),
        CohortErrors::GovernanceEnabled(x) => {
            format!(
                "the run {} has governance already (it is enabled once)",
                x.run
            )
        }
        CohortErrors::NoGovernance(x) => format!(
            "the run {} has no governance (its coordinator enables it: cohort gov enable)",
            x.run
        ),
        CohortErrors::NotAMember(x) => format!(
            "{} is no member of the run {}: its coordinator and its roster clients are",
            x.who, x.run
        ),
        CohortErrors::BondLocked(x) => format!(
            "{}'s bond in the run {} is locked until {} (the end of the last vote it cast)",
            x.who, x.run, x.until
        ),
        CohortErrors::NoBond(x) => format!(
            "{} has no bond in the run {} (cohort gov bond)",
            x.who, x.run
        ),
        CohortErrors::InvalidProposal(x) => format!(
            "a {} proposal with target {} is not valid (already admitted, or malformed)",
            kind::name_of(x.kind),
            x.target
        ),
        CohortErrors::UnknownProposal(x) => {
            format!("the run {} has no proposal {}", x.run, x.proposalId)
        }
        CohortErrors::VotingClosed(x) => format!(
            "voting on proposal {} ended at {}",
            x.proposalId, x.votingEnds
        ),
        CohortErrors::VotingOpen(x) => format!(
            "proposal {} is still being voted on, until {}",
            x.proposalId, x.votingEnds
        ),
        CohortErrors::BondAfterProposal(x) => format!(
            "{} bonded after proposal {} was made: a bond votes on later proposals only (the \
             same tokens cannot vote twice)",
            x.who, x.proposalId
        ),
        CohortErrors::AlreadyVoted(x) => {
            format!("{} voted on proposal {} already", x.who, x.proposalId)
        }
        CohortErrors::Timelocked(x) => format!(
            "proposal {} passed and is timelocked until {}",
            x.proposalId, x.executableAt
        ),
        CohortErrors::ProposalRejected(x) => format!(
            "proposal {} did not pass (quorum or majority missed; cohort gov show --proposal {})",
            x.proposalId, x.proposalId
        ),
        CohortErrors::AlreadyExecuted(x) => {
            format!("proposal {} was executed already", x.proposalId)
        }
        CohortErrors::NotAdmitted(x) => format!(
            "{} is not admitted to the run {} (its members admit by vote: cohort gov propose)",
            x.what, x.run
        ),
        CohortErrors::UnlearningNotApproved(x) => format!(
            "unlearning request {} waits for the approval of the run {} (cohort gov propose \
             --approve-unlearning {})",
            x.requestId, x.run, x.requestId
        ),
        CohortErrors::UnknownRequest(x) => {
            format!("there is no unlearning request {}", x.requestId)
        }
        CohortErrors::AlreadyInRoster(x) => format!("{} is in the roster already", x.client),
        CohortErrors::UnknownDataset(x) => format!("there is no dataset {}", x.id),
        CohortErrors::NotDatasetOwner(x) => format!("{} does not own dataset {}", x.who, x.id),
        CohortErrors::DatasetIsForgotten(x) => format!("dataset {} was forgotten", x.id),
        CohortErrors::NotListed(x) => format!("dataset {} is not listed", x.datasetId),
        CohortErrors::InvalidFees(x) => format!(
            "fees of {} and {} bps add up to more than 100%",
            x.coordinatorBps, x.treasuryBps
        ),
        CohortErrors::PriceAboveSupply(x) => format!(
            "a price of {} tokens is beyond the supply cap ({})",
            t(x.price),
            t(x.cap)
        ),
        CohortErrors::RecipeSet(x) => format!("round {} has its recipe already", x.roundId),
        CohortErrors::RecipeNotAllowed(x) => format!(
            "recipe {} is not allowed on dataset {} (its owner allows recipes: cohort market \
             allow)",
            x.recipe, x.datasetId
        ),
        CohortErrors::RecipeAllowedThere(x) => format!(
            "recipe {} is allowed on dataset {}: there is nothing to refuse",
            x.recipe, x.datasetId
        ),
        CohortErrors::NotTrainedOn(x) => format!(
            "update {} of round {} was not aggregated: it owes no royalty",
            x.index, x.roundId
        ),
        CohortErrors::RoyaltyAlreadyPaid(x) => format!(
            "the royalty of dataset {} for round {} was paid already",
            x.datasetId, x.roundId
        ),
        CohortErrors::InsufficientRoyaltyFund(x) => format!(
            "the run {}'s royalty fund holds {} tokens; {} are needed (cohort market fund)",
            x.run,
            t(x.have),
            t(x.need)
        ),
        CohortErrors::RosterFixed(x) => format!(
            "the run {} has started (its roster is fixed from its first round)",
            x.coordinator
        ),
        CohortErrors::UnknownRound(x) => format!("there is no round {}", x.round),
        CohortErrors::UnknownUpdate(x) => {
            format!("round {} has no update {}", x.round, x.index)
        }
        CohortErrors::WrongPhase(x) => format!(
            "round {} is in phase {} (this needs phase {})",
            x.round, x.phase, x.expected
        ),
        CohortErrors::NotRoundCoordinator(x) => {
            format!("{} is not round {}'s coordinator", x.who, x.round)
        }
        CohortErrors::ZeroAmount(_) => "the amount is zero".to_owned(),
        CohortErrors::ZeroCommitment(_) => "the zero hash names nothing".to_owned(),
        _ => return None,
    })
}

/// `--run`: the run's coordinator, by address or ed25519 public key.
#[derive(Debug, clap::Args)]
pub struct RunArg {
    /// The run: its coordinator's address (0x...) or ed25519 public key (64 hex digits).
    /// Optional where the ledger has a single coordinator (a `cohort run` directory's).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    run: Option<Party>,
}

impl RunArg {
    /// The run's address: `--run`, or the ledger's only approved coordinator.
    pub fn address(&self, p: &AnyProtocol) -> anyhow::Result<Address> {
        run_address(p, self.run.as_ref())
    }
}

/// `run` resolved, or the only coordinator the governance approved on `p`'s ledger.
pub fn run_address(p: &AnyProtocol, run: Option<&Party>) -> anyhow::Result<Address> {
    if let Some(r) = run {
        return resolve(p, r);
    }
    let mut coordinators: Vec<Address> = all_events(p)?
        .into_iter()
        .filter_map(|e| match e {
            CohortEvents::CoordinatorApproved(c) => Some(c.who),
            _ => None,
        })
        .collect();
    coordinators.dedup();
    match coordinators.as_slice() {
        [one] => Ok(*one),
        [] => bail!("--run is needed: no coordinator was approved on this ledger"),
        many => bail!(
            "--run is needed: this ledger has {} coordinators ({})",
            many.len(),
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Enable governance of your run, as its coordinator.
///
/// Do it after enrolling the founding clients (`extendRoster`): from then on the coordinator
/// adds only clients the members admitted by vote, and the run's updates name only admitted
/// datasets (the founding ones given here, and those admitted by vote). A proposal passes when
/// the votes cast reach --quorum of the stake bonded when it was made and more than --majority
/// of them are for it; it executes --timelock after voting ends.
#[derive(Debug, clap::Args)]
pub struct EnableArgs {
    #[command(flatten)]
    signer: Signer,
    /// The share of the bonded stake that must vote (0.01-100%).
    #[arg(long, value_name = "PCT", default_value = "50%", value_parser = percent_bps)]
    quorum: u16,
    /// The share of the votes cast that must be for it, exceeded (50% is a simple majority;
    /// up to 99.99%).
    #[arg(long, value_name = "PCT", default_value = "50%", value_parser = percent_bps)]
    majority: u16,
    /// How long a proposal is open for votes (90, 15m, 2h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = duration_secs)]
    voting_period: u64,
    /// How long a passed proposal waits before it can be executed.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = duration_secs)]
    timelock: u64,
    /// A founding dataset, admitted without a vote (its id, 64 hex digits; repeat the flag).
    #[arg(long = "dataset", value_name = "ID", value_parser = hash_arg)]
    datasets: Vec<B256>,
}

/// A 32-byte id or hash in hex.
pub fn hash_arg(s: &str) -> Result<B256, String> {
    hash32(s).ok_or_else(|| "must be 64 hex digits (0x optional)".to_owned())
}

#[derive(Serialize)]
struct EnableOut {
    run: Address,
    quorum_bps: u16,
    majority_bps: u16,
    voting_period: u64,
    timelock: u64,
    datasets: Vec<B256>,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl EnableArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        if self.quorum == 0 {
            bail!("--quorum 0: at least some stake must vote (0.01% or more)");
        }
        if self.majority < 5_000 || self.majority >= 10_000 {
            bail!(
                "--majority {}%: must be from 50% (a simple majority) to 99.99%",
                f64::from(self.majority) / 100.0
            );
        }
        if self.voting_period == 0 {
            bail!("--voting-period 0: a vote must be open for some time");
        }
        let mut s = self.signer.open()?;
        let params = GovParams {
            quorumBps: self.quorum,
            majorityBps: self.majority,
            votingPeriod: self.voting_period,
            timelock: self.timelock,
        };
        let calls: Vec<Recorded> = s
            .send(CohortRuns::enableRunGovernanceCall {
                p: params,
                datasets: self.datasets.clone(),
            })?
            .into_iter()
            .collect();
        let run = s.address();
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "the run {run} is governed: quorum {}%, majority over {}%, votes open {} s, \
                 timelock {} s; {} founding dataset(s)",
                f64::from(self.quorum) / 100.0,
                f64::from(self.majority) / 100.0,
                self.voting_period,
                self.timelock,
                self.datasets.len()
            ));
        }
        let out = EnableOut {
            run,
            quorum_bps: self.quorum,
            majority_bps: self.majority,
            voting_period: self.voting_period,
            timelock: self.timelock,
            datasets: self.datasets,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}

/// Bond tokens to a run's governance, or take them back.
#[derive(Debug, clap::Args)]
pub struct BondArgs {
    #[command(flatten)]
    signer: Signer,
    #[command(flatten)]
    run: RunArg,
    /// How many tokens (up to 18 decimals).
    #[arg(long, value_name = "TOKENS", value_parser = token_amount)]
    amount: U256,
}

#[derive(Serialize)]
struct BondOut {
    run: Address,
    member: Address,
    /// Your bond and the run's bonded total after (base units).
    bond: String,
    total: String,
    locked_until: u64,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl BondArgs {
    fn execute(self, bond: bool) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let run = self.run.address(&s.p)?;
        let calls: Vec<Recorded> = if bond {
            s.send(CohortRuns::govBondCall {
                run,
                amount: self.amount,
            })?
        } else {
            s.send(CohortRuns::govUnbondCall {
                run,
                amount: self.amount,
            })?
        }
        .into_iter()
        .collect();
        let me = s.address();
        let (b, total, locked) = s.p.gov_bond_of(run, me)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "{me} {} {} tokens: its bond in the run {run} is {} of {} tokens",
                if bond { "bonded" } else { "took back" },
                fmt_tokens(self.amount),
                fmt_tokens(b),
                fmt_tokens(total)
            ));
        }
        let out = BondOut {
            run,
            member: me,
            bond: amount(b),
            total: amount(total),
            locked_until: locked,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}

/// Propose, as a bonded member of a run. Exactly one of the proposal flags.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(false)))]
pub struct ProposeArgs {
    #[command(flatten)]
    signer: Signer,
    #[command(flatten)]
    run: RunArg,
    /// Admit a client: its address or ed25519 public key (it must be registered as a client).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party, group = "what")]
    admit_client: Option<Party>,
    /// Admit a dataset: its id (64 hex digits).
    #[arg(long, value_name = "ID", value_parser = hash_arg, group = "what")]
    admit_dataset: Option<B256>,
    /// Approve an unlearning request of a dataset admitted to this run: its number.
    #[arg(long, value_name = "N", value_parser = int_in(1..=u64::MAX), group = "what")]
    approve_unlearning: Option<u64>,
    /// Adopt the hyperparameters in this TOML file (recorded by its SHA-256; on a run's
    /// directory the file goes into its blob store, and `cohort run --resume` applies them from
    /// the next round). Only these may change: task.lr, task.local_steps,
    /// coordinator.clients_per_round, incentives.accept_threshold, incentives.reward_per_nat,
    /// aggregation.*.
    #[arg(long, value_name = "FILE", group = "what")]
    hyperparams: Option<PathBuf>,
}

#[derive(Serialize)]
struct ProposeOut {
    run: Address,
    proposal: Option<u64>,
    kind: &'static str,
    target: B256,
    payload: B256,
    voting_ends: Option<u64>,
    executable_at: Option<u64>,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl ProposeArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        // The hyperparameters file is read and checked before anything is opened.
        let hyperparams = match &self.hyperparams {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--hyperparams {}", path.display()))?;
                crate::cmd::run::hyperparameters(&text)
                    .map_err(|e| anyhow::anyhow!("--hyperparams {}: {e:#}", path.display()))?;
                Some(text)
            }
            None => None,
        };
        let payload = hyperparams.as_deref().map_or(B256::ZERO, |t| {
            B256::from(cohort_core::sha256(t.as_bytes()))
        });
        let mut s = self.signer.open()?;
        let run = self.run.address(&s.p)?;
        let (k, target) = if let Some(c) = &self.admit_client {
            (kind::ADMIT_CLIENT, address_target(resolve(&s.p, c)?))
        } else if let Some(d) = self.admit_dataset {
            (kind::ADMIT_DATASET, d)
        } else if let Some(r) = self.approve_unlearning {
            (kind::APPROVE_UNLEARNING, request_target(r))
        } else {
            (kind::HYPERPARAMS, B256::ZERO)
        };
        let calls: Vec<Recorded> = s
            .send(CohortRuns::proposeCall {
                run,
                kind: k,
                target,
                payloadHash: payload,
            })?
            .into_iter()
            .collect();
        let id = calls.iter().flat_map(|r| &r.decoded).find_map(|e| match e {
            CohortEvents::Proposed(p) => Some(p.proposalId),
            _ => None,
        });
        // On a run's directory the file goes into the run's blob store, where `cohort run
        // --resume` finds it by its hash once the proposal is executed.
        if let (Some(text), Some(dir), Some(_)) = (&hyperparams, s.run_dir(), id) {
            let blobs = dir.join("blobs");
            let store = cohort_blob::LocalDir::open(&blobs)
                .with_context(|| format!("opening {}", blobs.display()))?;
            cohort_blob::BlobStore::put(&store, text.as_bytes())
                .with_context(|| format!("putting the hyperparameters in {}", blobs.display()))?;
        }
        let (mut ends, mut exec) = (None, None);
        let mut lines = recorded_lines(&calls, s.check);
        if let Some(id) = id {
            let (p, _) = s.p.proposal(run, id)?;
            (ends, exec) = (Some(p.votingEnds), Some(p.executableAt));
            lines.push(format!(
                "proposal {id} ({}) in the run {run}: votes open until {}, executable from {} \
                 if it passes",
                kind::name_of(k),
                p.votingEnds,
                p.executableAt
            ));
        }
        let out = ProposeOut {
            run,
            proposal: id,
            kind: kind::name_of(k),
            target,
            payload,
            voting_ends: ends,
            executable_at: exec,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}

/// Vote on a proposal with your whole bond, once, while it is open.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("side").required(true).multiple(false)))]
pub struct VoteArgs {
    #[command(flatten)]
    signer: Signer,
    #[command(flatten)]
    run: RunArg,
    /// The proposal's number.
    #[arg(long, value_name = "N", value_parser = int_in(1..=u64::MAX))]
    proposal: u64,
    /// Vote for it.
    #[arg(long = "for", group = "side")]
    yes: bool,
    /// Vote against it.
    #[arg(long, group = "side")]
    against: bool,
}

#[derive(Serialize)]
struct VoteOut {
    run: Address,
    proposal: u64,
    voter: Address,
    support: bool,
    /// The tallies after (base units) and whether it passes so far.
    yes: String,
    no: String,
    passing: bool,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl VoteArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let run = self.run.address(&s.p)?;
        let support = self.yes && !self.against;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::voteCall {
                run,
                proposalId: self.proposal,
                support,
            })?
            .into_iter()
            .collect();
        let (p, passing) = s.p.proposal(run, self.proposal)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "proposal {}: {} tokens for, {} against, of {} bonded when it was made; {}",
                self.proposal,
                fmt_tokens(p.yes),
                fmt_tokens(p.no),
                fmt_tokens(p.snapshotTotal),
                if passing { "passing" } else { "not passing" }
            ));
        }
        let out = VoteOut {
            run,
            proposal: self.proposal,
            voter: s.address(),
            support,
            yes: amount(p.yes),
            no: amount(p.no),
            passing,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}

/// Execute a passed proposal once its timelock has run out (anyone may).
#[derive(Debug, clap::Args)]
pub struct ExecuteArgs {
    #[command(flatten)]
    signer: Signer,
    #[command(flatten)]
    run: RunArg,
    /// The proposal's number.
    #[arg(long, value_name = "N", value_parser = int_in(1..=u64::MAX))]
    proposal: u64,
}

#[derive(Serialize)]
struct ExecuteOut {
    run: Address,
    proposal: u64,
    kind: &'static str,
    target: B256,
    payload: B256,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl ExecuteArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let run = self.run.address(&s.p)?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::executeCall {
                run,
                proposalId: self.proposal,
            })?
            .into_iter()
            .collect();
        let (p, _) = s.p.proposal(run, self.proposal)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "proposal {} executed: {}",
                self.proposal,
                describe(p.kind, p.target, p.payloadHash)
            ));
        }
        let out = ExecuteOut {
            run,
            proposal: self.proposal,
            kind: kind::name_of(p.kind),
            target: p.target,
            payload: p.payloadHash,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}

/// What a proposal does, in words.
fn describe(k: u8, target: B256, payload: B256) -> String {
    match k {
        kind::ADMIT_CLIENT => format!(
            "admit client {}",
            Address::from_slice(&target.as_slice()[12..])
        ),
        kind::ADMIT_DATASET => format!("admit dataset {target}"),
        kind::APPROVE_UNLEARNING => format!(
            "approve unlearning request {}",
            U256::from_be_bytes(target.0)
        ),
        kind::HYPERPARAMS => format!("adopt the hyperparameters with SHA-256 {payload}"),
        _ => format!("kind {k}"),
    }
}

/// A run's governance, read-only: the ledger is verified and replayed as `cohort ledger show`
/// does, or the chain read with calls and logs; nothing is written and no key is needed.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    place: Place,
    #[command(flatten)]
    run: RunArg,
    /// Only this proposal, with each vote.
    #[arg(long, value_name = "N", value_parser = int_in(1..=u64::MAX))]
    proposal: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Member {
    address: Address,
    /// The party's name, where the ledger is a run's (`client-3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    bond: String,
    locked_until: u64,
}

#[derive(Serialize)]
struct VoteRow {
    voter: Address,
    support: bool,
    weight: String,
}

#[derive(Serialize)]
struct ProposalRow {
    id: u64,
    kind: &'static str,
    what: String,
    proposer: Address,
    target: B256,
    payload: B256,
    created_at: u64,
    voting_ends: u64,
    executable_at: u64,
    yes: String,
    no: String,
    snapshot_total: String,
    /// open, passed, executable, executed or rejected.
    status: &'static str,
    executed_at: Option<u64>,
    votes: Vec<VoteRow>,
}

/// Opens `place` for reading; a ledger that does not verify is reported as `cohort ledger
/// show` reports it (the exit code is then returned as `Err(Ok(code))`).
pub fn open_read(place: &Place, json: bool) -> anyhow::Result<Result<AnyProtocol, ExitCode>> {
    match place.open_read() {
        Ok(p) => Ok(Ok(p)),
        Err(e) => match (place.ledger_dir(), e.downcast_ref::<LedgerError>()) {
            (Some(dir), Some(le)) if e.chain().count() == 1 => {
                Ok(Err(crate::cmd::ledger::report_failure(dir, le, json)?))
            }
            _ => Err(e),
        },
    }
}

/// The names of a run's parties by address, where `place` is a run's directory (`cohort run
/// --out DIR`; its keys derive the addresses); empty elsewhere.
pub fn party_names(place: &Place) -> std::collections::BTreeMap<Address, String> {
    let mut names = std::collections::BTreeMap::new();
    let Some(dir) = place.ledger_dir() else {
        return names;
    };
    let Ok(run) = crate::cmd::unlearn::RunDir::open(dir) else {
        return names;
    };
    let mut parties = vec!["coordinator".to_owned()];
    parties.extend((0..run.cfg.clients).map(|k| format!("client-{k}")));
    parties.extend((0..run.cfg.validators).map(|v| format!("validator-{v}")));
    for n in parties {
        names.insert(run.identity(&n).address(), n);
    }
    names
}

/// `a` with its party's name when known: `client-3 (0x...)`.
pub fn named(names: &std::collections::BTreeMap<Address, String>, a: Address) -> String {
    match names.get(&a) {
        Some(n) => format!("{n} ({a})"),
        None => a.to_string(),
    }
}

/// Every event of the protocol contract, in order.
pub fn all_events(p: &AnyProtocol) -> anyhow::Result<Vec<CohortEvents>> {
    let logs = p.backend().contract_logs(p.address())?;
    let logs: Vec<_> = logs.into_iter().map(|(_, l)| l).collect();
    Ok(decode_events(p.address(), &logs))
}

impl ShowArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut p = match open_read(&self.place, self.json)? {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        let run = self.run.address(&p)?;
        let g = p.run_governance(run)?;
        let now = p.backend().head()?.time;
        if g.votingPeriod == 0 {
            if self.json {
                print_json(&serde_json::json!({ "run": run, "governance": null }))?;
            } else {
                outln!(
                    "the run {run} has no governance (its coordinator enables it: cohort gov enable)"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let events = all_events(&p)?;
        let names = party_names(&self.place);
        let mut members: Vec<Address> = Vec::new();
        let (mut clients, mut datasets) = (Vec::new(), Vec::new());
        for e in &events {
            match e {
                CohortEvents::GovBonded(b) if b.run == run && !members.contains(&b.member) => {
                    members.push(b.member);
                }
                CohortEvents::ClientAdmitted(a) if a.run == run => clients.push(a.client),
                CohortEvents::DatasetAdmitted(a) if a.run == run => datasets.push(a.datasetId),
                _ => {}
            }
        }
        let mut bonds = Vec::new();
        let mut total = U256::ZERO;
        for m in members {
            let (bond, t, locked) = p.gov_bond_of(run, m)?;
            total = t;
            bonds.push(Member {
                address: m,
                name: names.get(&m).cloned(),
                bond: amount(bond),
                locked_until: locked,
            });
        }
        let count = p.proposal_count(run)?;
        let ids: Vec<u64> = match self.proposal {
            Some(id) if id > count => {
                bail!("--proposal {id}: the run {run} has {count} proposal(s)")
            }
            Some(id) => vec![id],
            None => (1..=count).collect(),
        };
        let mut rows = Vec::new();
        for id in ids {
            let (pr, passing) = p.proposal(run, id)?;
            let status = if pr.executed {
                "executed"
            } else if now < pr.votingEnds {
                "open"
            } else if !passing {
                "rejected"
            } else if now < pr.executableAt {
                "passed"
            } else {
                "executable"
            };
            let votes = events
                .iter()
                .filter_map(|e| match e {
                    CohortEvents::Voted(v) if v.run == run && v.proposalId == id => Some(VoteRow {
                        voter: v.voter,
                        support: v.support,
                        weight: amount(v.weight),
                    }),
                    _ => None,
                })
                .collect();
            rows.push(ProposalRow {
                id,
                kind: kind::name_of(pr.kind),
                what: describe(pr.kind, pr.target, pr.payloadHash),
                proposer: pr.proposer,
                target: pr.target,
                payload: pr.payloadHash,
                created_at: pr.createdAt,
                voting_ends: pr.votingEnds,
                executable_at: pr.executableAt,
                yes: amount(pr.yes),
                no: amount(pr.no),
                snapshot_total: amount(pr.snapshotTotal),
                status,
                executed_at: pr.executed.then_some(pr.executedAt),
                votes,
            });
        }
        if self.json {
            print_json(&serde_json::json!({
                "run": run, "time": now,
                "governance": {
                    "quorum_bps": g.quorumBps, "majority_bps": g.majorityBps,
                    "voting_period": g.votingPeriod, "timelock": g.timelock,
                },
                "bonded": amount(total), "members": bonds,
                "admitted_clients": clients, "admitted_datasets": datasets,
                "proposals": rows,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("run           {run}");
        outln!(
            "governance    quorum {}% of the bonded stake, majority over {}%, votes open {} s, \
             timelock {} s",
            f64::from(g.quorumBps) / 100.0,
            f64::from(g.majorityBps) / 100.0,
            g.votingPeriod,
            g.timelock
        );
        outln!("bonded        {} tokens", fmt_tokens(total));
        outln!();
        let mut t = Table::new(&["member", "bond", "locked until"]);
        for m in &bonds {
            t.row(vec![
                named(&names, m.address),
                fmt_tokens(m.bond.parse().unwrap_or_default()),
                m.locked_until.to_string(),
            ]);
        }
        t.print();
        outln!();
        let mut t = Table::new(&["#", "proposal", "for", "against", "of", "status"]);
        for r in &rows {
            let tok = |s: &str| fmt_tokens(s.parse().unwrap_or_default());
            t.row(vec![
                r.id.to_string(),
                r.what.clone(),
                tok(&r.yes),
                tok(&r.no),
                tok(&r.snapshot_total),
                match r.status {
                    "open" => format!("open until {}", r.voting_ends),
                    "passed" => format!("passed; executable from {}", r.executable_at),
                    "executed" => format!("executed at {}", r.executed_at.unwrap_or_default()),
                    s => s.to_owned(),
                },
            ]);
        }
        t.print();
        if self.proposal.is_some() {
            for r in &rows {
                for v in &r.votes {
                    outln!(
                        "  {} voted {} with {} tokens",
                        named(&names, v.voter),
                        if v.support { "for" } else { "against" },
                        fmt_tokens(v.weight.parse().unwrap_or_default())
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
