//! `cohort market ...`: the data market on the ledger (docs/economics.md, "The data market").
//!
//! A dataset's owner lists it at a price per round of use with an allowlist of training
//! recipes (`offer`, `allow`, `withdraw`); nothing may train on a listed dataset under a recipe
//! its owner did not allow (deny by default: the contract refuses such an update, and the
//! owner records that it sits the round out with `refuse`). A recipe (`recipe CONFIG`) is the
//! SHA-256 of cohort's version and commit, the run's config and its adapter targets
//! ([`cohort_node::market`]). A run's
//! coordinator sets the royalty split (`fees`); sponsors fund the run's royalties (`fund`);
//! once a round has aggregated an update trained on a listed dataset, anyone pays the royalty
//! (`pay --round N`), once per round and dataset. `list` and `show` read it all, read-only.

use std::path::PathBuf;
use std::process::ExitCode;

use alloy_primitives::{Address, B256, U256};
use anyhow::bail;
use clap::Subcommand;
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::CohortEvents;
use cohort_ledger::protocol::{Cohort, CohortRuns, Listing};
use serde::Serialize;

use crate::args::{int_in, percent_bps, token_amount};
use crate::cmd::gov::{all_events, hash_arg, open_read};
use crate::cmd::stage::{Party, Place, Recorded, Session, Signer, amount, party, recorded_lines};
use crate::output::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum MarketCmd {
    /// The recipe of a run config: what a listing allows (prints its SHA-256 and its parts;
    /// reads only the config).
    Recipe(RecipeArgs),
    /// List your dataset at a price per round of use, allowing some recipes.
    Offer(OfferArgs),
    /// Allow (or, with --deny, disallow) a recipe on your listed dataset.
    Allow(AllowArgs),
    /// Withdraw your listing: rounds opened from now on owe it nothing.
    Withdraw(DatasetArgs),
    /// Set your run's royalty split, as its coordinator, before its first round.
    Fees(FeesArgs),
    /// Add tokens to a run's royalty fund (anyone).
    Fund(FundArgs),
    /// Record that your listed dataset sits a round out: its recipe is not allowed on it.
    Refuse(RefuseArgs),
    /// Pay every royalty a round owes, from its run's fund (anyone).
    Pay(PayArgs),
    /// Every listing: owner, price, recipes allowed, royalties earned (read-only).
    List(ListArgs),
    /// One listing: its recipes, the royalties paid per round and the rounds it sat out
    /// (read-only).
    Show(ShowArgs),
}

impl MarketCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Recipe(a) => a.execute(),
            Self::Offer(a) => a.execute(),
            Self::Allow(a) => a.execute(),
            Self::Withdraw(a) => a.execute(),
            Self::Fees(a) => a.execute(),
            Self::Fund(a) => a.execute(),
            Self::Refuse(a) => a.execute(),
            Self::Pay(a) => a.execute(),
            Self::List(a) => a.execute(),
            Self::Show(a) => a.execute(),
        }
    }
}

pub use cohort_node::market::{COMMIT, VERSION, recipe_of};

/// The recipe of a run config.
#[derive(Debug, clap::Args)]
pub struct RecipeArgs {
    /// The run config (TOML), as `cohort run` takes it.
    config: PathBuf,
    /// Print JSON (the recipe and its parts).
    #[arg(long)]
    json: bool,
}

impl RecipeArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let cfg = crate::cmd::run::load_config(&self.config, &[], None)?;
        let (recipe, parts) = recipe_of(&cfg);
        if self.json {
            print_json(&serde_json::json!({ "recipe": recipe, "parts": parts }))?;
        } else {
            outln!("recipe    {recipe}");
            outln!("cohort    {VERSION} (commit {COMMIT})");
            outln!("config    {}", self.config.display());
            outln!("targets   {}", parts["adapter_targets"]);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// List your dataset at a price per round of use.
///
/// Nothing may train on it under a recipe you have not allowed: give each recipe you accept
/// (`cohort market recipe CONFIG` prints a run's), now or later with `cohort market allow`.
/// Listing again changes the price.
#[derive(Debug, clap::Args)]
pub struct OfferArgs {
    #[command(flatten)]
    signer: Signer,
    /// The dataset's id (64 hex digits, as committed).
    #[arg(long, value_name = "ID", value_parser = hash_arg)]
    dataset: B256,
    /// Tokens per round that trains on it (up to 18 decimals).
    #[arg(long, value_name = "TOKENS", value_parser = token_amount)]
    price: U256,
    /// A recipe allowed to train on it (64 hex digits; repeat the flag).
    #[arg(long = "recipe", value_name = "HASH", value_parser = hash_arg)]
    recipes: Vec<B256>,
}

#[derive(Serialize)]
struct ListingOut {
    dataset: B256,
    owner: Address,
    price: String,
    active: bool,
    recipes: u32,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl ListingOut {
    /// Reports a listing after a call on it (`--json`, or `lines`).
    fn report(
        s: &Session,
        dataset: B256,
        l: &Listing,
        calls: Vec<Recorded>,
        lines: &[String],
    ) -> anyhow::Result<ExitCode> {
        let out = Self {
            dataset,
            owner: s.address(),
            price: amount(l.pricePerRound),
            active: l.active,
            recipes: l.recipes,
            checked_only: s.check,
            calls,
        };
        s.report(&out, lines)
    }
}

impl OfferArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        if self.recipes.contains(&B256::ZERO) {
            bail!("--recipe: the zero hash names no recipe");
        }
        let mut s = self.signer.open()?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::listDatasetCall {
                datasetId: self.dataset,
                pricePerRound: self.price,
                recipes: self.recipes.clone(),
            })?
            .into_iter()
            .collect();
        let (l, _) = s.p.listing(self.dataset, B256::ZERO)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "dataset {} is listed at {} tokens a round; {} recipe(s) allowed",
                self.dataset,
                fmt_tokens(l.pricePerRound),
                l.recipes
            ));
            if l.recipes == 0 {
                lines.push(
                    "no recipe is allowed yet: nothing can train on it until you allow one \
                     (cohort market allow)"
                        .to_owned(),
                );
            }
        }
        ListingOut::report(&s, self.dataset, &l, calls, &lines)
    }
}

/// Allow (or disallow) a recipe on your listed dataset.
#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    #[command(flatten)]
    signer: Signer,
    /// The dataset's id.
    #[arg(long, value_name = "ID", value_parser = hash_arg)]
    dataset: B256,
    /// The recipe (64 hex digits; `cohort market recipe CONFIG`).
    #[arg(long, value_name = "HASH", value_parser = hash_arg)]
    recipe: B256,
    /// Disallow it instead.
    #[arg(long)]
    deny: bool,
}

impl AllowArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::allowRecipeCall {
                datasetId: self.dataset,
                recipe: self.recipe,
                allowed: !self.deny,
            })?
            .into_iter()
            .collect();
        let (l, allowed) = s.p.listing(self.dataset, self.recipe)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "recipe {} is {} on dataset {} ({} allowed)",
                self.recipe,
                if allowed { "allowed" } else { "not allowed" },
                self.dataset,
                l.recipes
            ));
        }
        ListingOut::report(&s, self.dataset, &l, calls, &lines)
    }
}

/// A dataset of yours.
#[derive(Debug, clap::Args)]
pub struct DatasetArgs {
    #[command(flatten)]
    signer: Signer,
    /// The dataset's id.
    #[arg(long, value_name = "ID", value_parser = hash_arg)]
    dataset: B256,
}

impl DatasetArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::delistDatasetCall {
                datasetId: self.dataset,
            })?
            .into_iter()
            .collect();
        let (l, _) = s.p.listing(self.dataset, B256::ZERO)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "dataset {} is withdrawn: rounds opened from now on owe it nothing",
                self.dataset
            ));
        }
        ListingOut::report(&s, self.dataset, &l, calls, &lines)
    }
}

/// Set your run's royalty split, as its coordinator, before its first round: the coordinator's
/// and the protocol treasury's shares; the dataset's owner gets the rest.
#[derive(Debug, clap::Args)]
pub struct FeesArgs {
    #[command(flatten)]
    signer: Signer,
    /// The coordinator's share (0-100%).
    #[arg(long, value_name = "PCT", value_parser = percent_bps)]
    coordinator: u16,
    /// The treasury's share (0-100%; with the coordinator's at most 100%).
    #[arg(long, value_name = "PCT", value_parser = percent_bps)]
    treasury: u16,
}

impl FeesArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        if u32::from(self.coordinator) + u32::from(self.treasury) > 10_000 {
            bail!(
                "--coordinator {}% and --treasury {}% add up to more than 100%",
                f64::from(self.coordinator) / 100.0,
                f64::from(self.treasury) / 100.0
            );
        }
        let mut s = self.signer.open()?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::setMarketFeesCall {
                coordinatorBps: self.coordinator,
                treasuryBps: self.treasury,
            })?
            .into_iter()
            .collect();
        let mut lines = recorded_lines(&calls, s.check);
        let owner = 10_000 - self.coordinator - self.treasury;
        if !s.check {
            lines.push(format!(
                "royalties of the run {}: {}% to the coordinator, {}% to the treasury, {}% to \
                 each dataset's owner",
                s.address(),
                f64::from(self.coordinator) / 100.0,
                f64::from(self.treasury) / 100.0,
                f64::from(owner) / 100.0
            ));
        }
        let out = serde_json::json!({
            "run": s.address(), "coordinator_bps": self.coordinator,
            "treasury_bps": self.treasury, "owner_bps": owner,
            "checked_only": s.check, "calls": calls,
        });
        s.report(&out, &lines)
    }
}

/// Add tokens to a run's royalty fund (anyone; they pay the royalties of its rounds).
#[derive(Debug, clap::Args)]
pub struct FundArgs {
    #[command(flatten)]
    signer: Signer,
    /// The run: its coordinator's address or ed25519 public key (optional where the ledger
    /// has a single coordinator, as a `cohort run` directory's).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    run: Option<Party>,
    /// How many tokens.
    #[arg(long, value_name = "TOKENS", value_parser = token_amount)]
    amount: U256,
}

impl FundArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let run = crate::cmd::gov::run_address(&s.p, self.run.as_ref())?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::fundRoyaltiesCall {
                run,
                amount: self.amount,
            })?
            .into_iter()
            .collect();
        let (_, fund) = s.p.market_of(run)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "the run {run}'s royalty fund holds {} tokens",
                fmt_tokens(fund)
            ));
        }
        let out = serde_json::json!({
            "run": run, "funded": amount(self.amount), "fund": amount(fund),
            "checked_only": s.check, "calls": calls,
        });
        s.report(&out, &lines)
    }
}

/// Record that your listed dataset sits a round out because the round's recipe is not allowed
/// on it (the ledger refuses a refusal where it is allowed).
#[derive(Debug, clap::Args)]
pub struct RefuseArgs {
    #[command(flatten)]
    signer: Signer,
    /// The round.
    #[arg(long, value_name = "N", value_parser = int_in(1..=u64::MAX))]
    round: u64,
    /// Your listed dataset.
    #[arg(long, value_name = "ID", value_parser = hash_arg)]
    dataset: B256,
}

impl RefuseArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let recipe = s.p.round_recipe(self.round)?;
        let calls: Vec<Recorded> = s
            .send(CohortRuns::refuseRoundCall {
                roundId: self.round,
                datasetId: self.dataset,
            })?
            .into_iter()
            .collect();
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "dataset {} sits round {} out: its recipe {} is not allowed on it",
                self.dataset,
                self.round,
                if recipe == B256::ZERO {
                    "(none set)".to_owned()
                } else {
                    recipe.to_string()
                }
            ));
        }
        let out = serde_json::json!({
            "round": self.round, "dataset": self.dataset, "recipe": recipe,
            "checked_only": s.check, "calls": calls,
        });
        s.report(&out, &lines)
    }
}

/// Pay every royalty a round owes: one per listed dataset that an aggregated update of it
/// trained on under an allowed recipe, not paid yet.
#[derive(Debug, clap::Args)]
pub struct PayArgs {
    #[command(flatten)]
    signer: Signer,
    /// The round (finalized).
    #[arg(long, value_name = "N", value_parser = int_in(1..=u64::MAX))]
    round: u64,
}

#[derive(Serialize)]
struct Paid {
    update: u32,
    dataset: B256,
    owner: Address,
    to_owner: String,
    to_coordinator: String,
    to_treasury: String,
}

impl PayArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let r = s.p.round(self.round)?;
        if r.coordinator == Address::ZERO {
            bail!("--round {}: there is no such round", self.round);
        }
        let recipe = s.p.round_recipe(self.round)?;
        // What the round owes, found with reads; each payment is then one call.
        let mut owed = Vec::new();
        for i in 0..r.numUpdates {
            let u = s.p.view(Cohort::updateCall {
                roundId: self.round,
                index: i,
            })?;
            if !u.accepted {
                continue;
            }
            let (l, allowed) = s.p.listing(u.datasetId, recipe)?;
            let (paid, _) = s.p.royalty(self.round, u.datasetId)?;
            if l.listedAt != 0 && allowed && !paid && !owed.iter().any(|(_, d)| *d == u.datasetId) {
                owed.push((i, u.datasetId));
            }
        }
        if owed.is_empty() {
            bail!(
                "round {} owes no royalty: no aggregated update trained on a listed dataset \
                 whose royalty is unpaid (cohort market show --dataset ID)",
                self.round
            );
        }
        let mut calls = Vec::new();
        let mut paid = Vec::new();
        for (i, _) in &owed {
            let rec = s.send(CohortRuns::payRoyaltyCall {
                roundId: self.round,
                index: *i,
            })?;
            for e in rec.iter().flat_map(|r| &r.decoded) {
                if let CohortEvents::RoyaltyPaid(x) = e {
                    paid.push(Paid {
                        update: *i,
                        dataset: x.datasetId,
                        owner: x.owner,
                        to_owner: amount(x.toOwner),
                        to_coordinator: amount(x.toCoordinator),
                        to_treasury: amount(x.toTreasury),
                    });
                }
            }
            calls.extend(rec);
            if s.check {
                break;
            }
        }
        let mut lines = recorded_lines(&calls, s.check);
        for p in &paid {
            let t = |v: &str| fmt_tokens(v.parse().unwrap_or_default());
            lines.push(format!(
                "round {}: dataset {} paid {} tokens to its owner {}, {} to the coordinator, {} \
                 to the treasury",
                self.round,
                p.dataset,
                t(&p.to_owner),
                p.owner,
                t(&p.to_coordinator),
                t(&p.to_treasury)
            ));
        }
        let out = serde_json::json!({
            "round": self.round, "recipe": recipe, "paid": paid,
            "checked_only": s.check, "calls": calls,
        });
        s.report(&out, &lines)
    }
}

/// Every listing (read-only).
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    place: Place,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ListingRow {
    dataset: B256,
    owner: Address,
    /// The owner's name, where the ledger is a run's (`client-0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_name: Option<String>,
    price: String,
    active: bool,
    recipes: u32,
    listed_at: u64,
    royalties: String,
    rounds_paid: usize,
}

impl ListArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut p = match open_read(&self.place, self.json)? {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        let events = all_events(&p)?;
        let names = crate::cmd::gov::party_names(&self.place);
        let mut ids: Vec<(B256, Address)> = Vec::new();
        for e in &events {
            if let CohortEvents::DatasetListed(l) = e
                && !ids.iter().any(|(d, _)| *d == l.datasetId)
            {
                ids.push((l.datasetId, l.owner));
            }
        }
        let mut rows = Vec::new();
        for (id, owner) in ids {
            let (l, _) = p.listing(id, B256::ZERO)?;
            let (_, total) = p.royalty(0, id)?;
            let rounds_paid = events
                .iter()
                .filter(|e| matches!(e, CohortEvents::RoyaltyPaid(r) if r.datasetId == id))
                .count();
            rows.push(ListingRow {
                dataset: id,
                owner,
                owner_name: names.get(&owner).cloned(),
                price: amount(l.pricePerRound),
                active: l.active,
                recipes: l.recipes,
                listed_at: l.listedAt,
                royalties: amount(total),
                rounds_paid,
            });
        }
        if self.json {
            print_json(&serde_json::json!({ "contract": p.address(), "listings": rows }))?;
            return Ok(ExitCode::SUCCESS);
        }
        if rows.is_empty() {
            outln!("no dataset is listed on {}", self.place.name());
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = Table::new(&[
            "dataset",
            "owner",
            "price",
            "recipes",
            "status",
            "royalties",
            "rounds",
        ]);
        for r in &rows {
            let tok = |s: &str| fmt_tokens(s.parse().unwrap_or_default());
            t.row(vec![
                r.dataset.to_string(),
                r.owner_name.clone().unwrap_or_else(|| r.owner.to_string()),
                tok(&r.price),
                r.recipes.to_string(),
                if r.active { "listed" } else { "withdrawn" }.to_owned(),
                tok(&r.royalties),
                r.rounds_paid.to_string(),
            ]);
        }
        t.print();
        Ok(ExitCode::SUCCESS)
    }
}

/// One listing (read-only).
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    place: Place,
    /// The dataset's id.
    #[arg(long, value_name = "ID", value_parser = hash_arg)]
    dataset: B256,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl ShowArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut p = match open_read(&self.place, self.json)? {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        let (l, _) = p.listing(self.dataset, B256::ZERO)?;
        if l.listedAt == 0 {
            bail!(
                "--dataset {}: not listed on {} (cohort market list)",
                self.dataset,
                self.place.name()
            );
        }
        let events = all_events(&p)?;
        let mut recipes: Vec<B256> = Vec::new();
        let (mut paid, mut refused) = (Vec::new(), Vec::new());
        let mut owner = Address::ZERO;
        for e in &events {
            match e {
                CohortEvents::DatasetListed(x) if x.datasetId == self.dataset => owner = x.owner,
                CohortEvents::RecipeAllowed(x)
                    if x.datasetId == self.dataset && !recipes.contains(&x.recipe) =>
                {
                    recipes.push(x.recipe)
                }
                CohortEvents::RoyaltyPaid(x) if x.datasetId == self.dataset => {
                    paid.push(serde_json::json!({
                        "round": x.roundId, "to_owner": amount(x.toOwner),
                        "to_coordinator": amount(x.toCoordinator),
                        "to_treasury": amount(x.toTreasury),
                    }));
                }
                CohortEvents::RoundRefused(x) if x.datasetId == self.dataset => {
                    refused.push(serde_json::json!({ "round": x.roundId, "recipe": x.recipe }));
                }
                _ => {}
            }
        }
        let mut allowed = Vec::new();
        for r in recipes {
            if p.listing(self.dataset, r)?.1 {
                allowed.push(r);
            }
        }
        let (_, total) = p.royalty(0, self.dataset)?;
        if self.json {
            print_json(&serde_json::json!({
                "dataset": self.dataset, "owner": owner, "price": amount(l.pricePerRound),
                "active": l.active, "listed_at": l.listedAt,
                "delisted_at": (l.delistedAt != 0).then_some(l.delistedAt),
                "recipes": allowed, "royalties": amount(total), "paid": paid,
                "refused": refused,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("dataset    {}", self.dataset);
        outln!("owner      {owner}");
        outln!(
            "price      {} tokens a round ({})",
            fmt_tokens(l.pricePerRound),
            if l.active { "listed" } else { "withdrawn" }
        );
        outln!(
            "royalties  {} tokens over {} round(s)",
            fmt_tokens(total),
            paid.len()
        );
        for r in &allowed {
            outln!("allows     {r}");
        }
        if allowed.is_empty() {
            outln!("allows     no recipe (nothing may train on it)");
        }
        for r in &refused {
            outln!("sat out    round {} (recipe {})", r["round"], r["recipe"]);
        }
        Ok(ExitCode::SUCCESS)
    }
}
