//! `cohort ledger ...`

mod demo;
mod prove;
mod show;
mod verify;

use std::process::ExitCode;

use alloy_sol_types::SolInterface;
use clap::Subcommand;
use cohort_ledger::protocol::Cohort::{CohortCalls, CohortEvents};

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Create an embedded ledger in DIR and run a short protocol scenario through it.
    Demo(demo::Args),
    /// Entries, balances and the current checkpoint of a ledger.
    Show(show::Args),
    /// Re-check every signature, link, receipt and the root; exit 1 naming the first bad entry.
    Verify(verify::Args),
    /// Produce an inclusion proof for an entry, or check one (`--check FILE`).
    Prove(prove::Args),
}

impl LedgerCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Demo(a) => a.execute(),
            Self::Show(a) => a.execute(),
            Self::Verify(a) => a.execute(),
            Self::Prove(a) => a.execute(),
        }
    }
}

/// The function name of protocol calldata (`deploy` for init code, `?` when unknown).
pub fn call_name(to: Option<alloy_primitives::Address>, data: &[u8]) -> String {
    if to.is_none() {
        return "deploy".into();
    }
    match CohortCalls::abi_decode(data) {
        Ok(c) => variant_name(&format!("{c:?}")),
        Err(_) => format!("0x{}", hex::encode(data.get(..4).unwrap_or(data))),
    }
}

/// The name of a decoded event.
pub fn event_name(e: &CohortEvents) -> String {
    variant_name(&format!("{e:?}"))
}

fn variant_name(debug: &str) -> String {
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or(debug)
        .to_string()
}
