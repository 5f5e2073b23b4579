use std::process::ExitCode;

use alloy_primitives::{Address, U256};
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::CohortStages;
use serde::Serialize;

use super::{Party, Recorded, Signer, amount, party, recorded_lines, resolve};
use crate::args::{int_in, token_amount};

/// Escrow pay to a stage server for a period.
///
/// The tokens leave your balance now and reach the server only when `cohort stage release` is
/// run after the challenge window (`stageChallengeWindow` seconds after the period's last
/// payment), if no quorum of verifiers slashed the server meanwhile; if one did, you take them
/// back with `cohort stage refund`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    signer: Signer,
    /// The server: its address (0x...) or its ed25519 public key (64 hex digits, as its Info
    /// gives it).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    server: Party,
    /// The period paid for (a number you and the server agree on, such as the session).
    #[arg(long, value_name = "N", value_parser = int_in(0..=u64::MAX))]
    period: u64,
    /// How many model tokens this pays for (recorded with the escrow).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = int_in(0..=u64::MAX))]
    tokens: u64,
    /// How much to escrow, in tokens of the protocol (up to 18 decimals).
    #[arg(long, value_name = "TOKENS", value_parser = token_amount)]
    amount: U256,
}

#[derive(Serialize)]
struct Out {
    server: Address,
    period: u64,
    payer: Address,
    /// This payment (base units) and model tokens.
    paid: String,
    tokens: u64,
    /// The period's escrow after it.
    escrowed: String,
    escrowed_tokens: u64,
    release_at: u64,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let server = resolve(&s.p, &self.server)?;
        let call = CohortStages::payStageCall {
            server,
            period: self.period,
            tokens: self.tokens,
            amount: self.amount,
        };
        let calls: Vec<Recorded> = s.send(call)?.into_iter().collect();
        let e = s.p.stage_escrow(server, self.period)?;
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "escrowed {} tokens for {} in period {}: {} in all, released to it from {} \
                 (cohort stage release)",
                fmt_tokens(self.amount),
                server,
                self.period,
                fmt_tokens(e.amount),
                e.releaseAt
            ));
        }
        let out = Out {
            server,
            period: self.period,
            payer: s.address(),
            paid: amount(self.amount),
            tokens: self.tokens,
            escrowed: amount(e.amount),
            escrowed_tokens: e.tokens,
            release_at: e.releaseAt,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}
