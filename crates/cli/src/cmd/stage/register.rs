use std::ops::Range;
use std::path::Path;
use std::process::ExitCode;

use alloy_primitives::{Address, B256, U256};
use anyhow::bail;
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::{Cohort, CohortStages, roles};
use serde::Serialize;

use super::{Recorded, Signer, amount, hash32, layers, recorded_lines};
use crate::args::token_amount;

/// Declare your key a stage server of a model's layers.
///
/// You must be a registered participant (a key the ledger does not know is registered first,
/// as a validator: stage servers verify one another) with at least `minStageStake` of active
/// stake (`--stake` stakes more first). A key declares once; a slashed server stays inactive.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    signer: Signer,
    /// The model: its directory (config.json and model.safetensors, hashed as `cohort
    /// serve-layers` hashes them) or that SHA-256 (64 hex digits).
    #[arg(long, value_name = "DIR|SHA256")]
    model: String,
    /// The layers you serve: A..B, the first and one past the last.
    #[arg(long, value_name = "A..B", value_parser = layers)]
    layers: Range<u32>,
    /// Stake this many tokens first (added to your active stake).
    #[arg(long, value_name = "TOKENS", value_parser = token_amount)]
    stake: Option<U256>,
}

#[derive(Serialize)]
struct Out {
    server: Address,
    model: B256,
    first_layer: u32,
    end_layer: u32,
    /// Active stake after (base units).
    stake: String,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let model = match hash32(&self.model) {
            Some(h) => h,
            None if Path::new(&self.model).is_dir() => B256::from(
                crate::cmd::model::model_sha256(Path::new(&self.model))
                    .map_err(|e| anyhow::anyhow!("--model {}: {e:#}", self.model))?,
            ),
            None => bail!(
                "--model {:?}: neither a model directory nor a SHA-256 (64 hex digits)",
                self.model
            ),
        };
        if model == B256::ZERO {
            bail!("--model: the zero hash names no model");
        }
        let mut s = self.signer.open()?;
        let me = s.address();
        let rec = s.p.stage_server(me)?;
        if rec.modelHash != B256::ZERO {
            bail!(
                "{me} is a stage server already (model {}, layers {}..{}{}); a key declares once",
                rec.modelHash,
                rec.firstLayer,
                rec.endLayer,
                if rec.slashClaim == B256::ZERO {
                    ""
                } else {
                    ", slashed"
                }
            );
        }
        let registered = s.p.view(Cohort::participantCall { who: me })?.roles != 0;
        let need = s.p.stage_params()?.minStageStake;
        let (active, _, _) = s.p.stake_of(me)?;
        let more = self.stake.unwrap_or_default();
        if active + more < need {
            bail!(
                "{me} has {} tokens of active stake{}; a stage server needs {} (give --stake \
                 TOKENS)",
                fmt_tokens(active),
                if more.is_zero() {
                    String::new()
                } else {
                    format!(" and --stake adds {}", fmt_tokens(more))
                },
                fmt_tokens(need)
            );
        }
        let balance = s.p.balance_of(me)?;
        if balance < more {
            bail!(
                "--stake {}: {me} has {} tokens",
                fmt_tokens(more),
                fmt_tokens(balance)
            );
        }
        let mut calls = Vec::new();
        // With --check only the first call runs (the later ones depend on it); the checks
        // above cover them.
        let mut more_calls = true;
        if !registered {
            calls.extend(s.send(Cohort::registerCall {
                roles: roles::VALIDATOR,
                keyHash: s.me.key_hash(),
            })?);
            more_calls = !s.check;
        }
        if more_calls && !more.is_zero() {
            calls.extend(s.send(Cohort::stakeCall { amount: more })?);
            more_calls = !s.check;
        }
        if more_calls {
            calls.extend(s.send(CohortStages::registerStageCall {
                modelHash: model,
                firstLayer: self.layers.start,
                endLayer: self.layers.end,
            })?);
        }
        let stake = if s.check { active } else { s.p.stake_of(me)?.0 };
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "{me} serves layers {}..{} of model {model}, with {} tokens of active stake",
                self.layers.start,
                self.layers.end,
                fmt_tokens(stake)
            ));
        }
        let out = Out {
            server: me,
            model,
            first_layer: self.layers.start,
            end_layer: self.layers.end,
            stake: amount(stake),
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}
