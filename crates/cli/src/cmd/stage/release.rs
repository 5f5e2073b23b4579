use std::process::ExitCode;

use alloy_primitives::{Address, U256};
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::CohortEvents;
use cohort_ledger::protocol::CohortStages;
use serde::Serialize;

use super::{Party, Recorded, Signer, amount, party, recorded_lines, resolve};
use crate::args::int_in;

/// Pay a period's escrow to its stage server, once the challenge window after the period's
/// last payment has passed and if the server was not slashed. Anyone may run it (the tokens go
/// to the server).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    signer: Signer,
    /// The server: its address (0x...) or its ed25519 public key (64 hex digits).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    server: Party,
    /// The period.
    #[arg(long, value_name = "N", value_parser = int_in(0..=u64::MAX))]
    period: u64,
}

#[derive(Serialize)]
struct Out {
    server: Address,
    period: u64,
    /// What the server was paid (base units), for how many model tokens.
    released: String,
    tokens: u64,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let server = resolve(&s.p, &self.server)?;
        let call = CohortStages::releaseStageCall {
            server,
            period: self.period,
        };
        let calls: Vec<Recorded> = s.send(call)?.into_iter().collect();
        let (mut released, mut tokens) = (U256::ZERO, 0);
        for e in calls.iter().flat_map(|r| &r.decoded) {
            if let CohortEvents::StageReleased(r) = e {
                (released, tokens) = (r.amount, r.tokens);
            }
        }
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "paid {} tokens to {} for period {} ({tokens} model tokens)",
                fmt_tokens(released),
                server,
                self.period
            ));
        }
        let out = Out {
            server,
            period: self.period,
            released: amount(released),
            tokens,
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}
