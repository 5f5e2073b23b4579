use std::process::ExitCode;

use alloy_primitives::{Address, U256};
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::CohortEvents;
use cohort_ledger::protocol::CohortStages;
use serde::Serialize;

use super::{Party, Recorded, Signer, amount, party, recorded_lines, resolve};
use crate::args::int_in;

/// Give a payer back what it escrowed for a slashed stage server in a period that was not
/// released. Anyone may run it (the tokens go to the payer).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    signer: Signer,
    /// The slashed server: its address (0x...) or its ed25519 public key (64 hex digits).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    server: Party,
    /// The period.
    #[arg(long, value_name = "N", value_parser = int_in(0..=u64::MAX))]
    period: u64,
    /// The payer refunded (default: your key's address).
    #[arg(long, value_name = "ADDR|KEY", value_parser = party)]
    payer: Option<Party>,
}

#[derive(Serialize)]
struct Out {
    server: Address,
    period: u64,
    payer: Address,
    /// What went back to the payer (base units).
    refunded: String,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut s = self.signer.open()?;
        let server = resolve(&s.p, &self.server)?;
        let payer = match &self.payer {
            Some(p) => resolve(&s.p, p)?,
            None => s.address(),
        };
        let call = CohortStages::refundStageCall {
            server,
            period: self.period,
            payer,
        };
        let calls: Vec<Recorded> = s.send(call)?.into_iter().collect();
        let mut refunded = U256::ZERO;
        for e in calls.iter().flat_map(|r| &r.decoded) {
            if let CohortEvents::StageRefunded(r) = e {
                refunded = r.amount;
            }
        }
        let mut lines = recorded_lines(&calls, s.check);
        if !s.check {
            lines.push(format!(
                "gave {} tokens back to {payer} (its pay to {} for period {})",
                fmt_tokens(refunded),
                server,
                self.period
            ));
        }
        let out = Out {
            server,
            period: self.period,
            payer,
            refunded: amount(refunded),
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }
}
