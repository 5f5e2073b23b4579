//! `cohort bench ...`: benchmark programs that print a table and write JSON.

mod ledger;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Ledger throughput: appends, full re-verification, inclusion proofs.
    Ledger(ledger::Args),
}

impl BenchCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Ledger(a) => a.execute(),
        }
    }
}
