//! `cohort bench ...`: benchmark programs that print a table and write JSON.

mod ledger;
mod train;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Ledger throughput: appends, full re-verification, inclusion proofs.
    Ledger(ledger::Args),
    /// Training throughput of the reference GPT (full and LoRA) against the matmul peak and,
    /// with --torch, PyTorch.
    Train(train::Args),
}

impl BenchCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Ledger(a) => a.execute(),
            Self::Train(a) => a.execute(),
        }
    }
}
