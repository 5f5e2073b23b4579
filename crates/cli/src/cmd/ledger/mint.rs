//! `cohort ledger mint`: the governance mints protocol tokens to a party.

use std::process::ExitCode;

use alloy_primitives::{Address, U256};
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort;
use serde::Serialize;

use crate::args::token_amount;
use crate::cmd::stage::{Party, Recorded, Signer, amount, party, recorded_lines, resolve};

/// Mint protocol tokens to a party, as the governance (`--key`: the key `cohort ledger
/// deploy` was given). On a chain, name a party that has not registered by its chain address
/// (`cohort keys show` prints it).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    signer: Signer,
    /// Who receives them: an address (0x...) or an ed25519 public key (64 hex digits).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    to: Party,
    /// How many, in tokens (up to 18 decimals).
    #[arg(long, value_name = "TOKENS", value_parser = token_amount)]
    amount: U256,
}

#[derive(Serialize)]
struct Out {
    to: Address,
    minted: String,
    /// The receiver's free balance after (base units).
    balance: String,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let to = resolve(&s.p, &self.to)?;
        let calls: Vec<Recorded> = s
            .send(Cohort::mintCall {
                to,
                amount: self.amount,
            })?
            .into_iter()
            .collect();
        let balance = s.p.balance_of(to)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "minted {} tokens to {to}: it holds {}",
                fmt_tokens(self.amount),
                fmt_tokens(balance)
            ));
        }
        let out = Out {
            to,
            minted: amount(self.amount),
            balance: amount(balance),
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}
