//! Subcommands, one per file.

mod bench;
mod ledger;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cohort: many parties fine-tune small language models together without pooling their data;
/// every contribution, reward, penalty and deletion is recorded on a ledger anyone can verify.
#[derive(Debug, Parser)]
#[command(name = "cohort", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, verify and prove the ledger.
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
    /// Run a federated experiment from a TOML config on the embedded ledger.
    Run(run::Args),
    /// Benchmarks that print a table and write JSON.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Ledger(c) => c.execute(),
            Command::Run(a) => a.execute(),
            Command::Bench(c) => c.execute(),
        }
    }
}
