//! `cohort bench ...`: benchmark programs that print a table and write JSON.

mod ledger;
mod net;
mod pipeline;
mod train;
mod verify;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Ledger throughput: appends, full re-verification, inclusion proofs.
    Ledger(ledger::Args),
    /// Training throughput of the reference GPT (full and LoRA) against the matmul peak and,
    /// with --torch, PyTorch.
    Train(train::Args),
    /// What the network costs: the same experiment in process and over loopback gRPC + TLS
    /// (the ratio), and blob uploads against raw loopback TCP.
    Net(net::Args),
    /// LoRA training through stage servers (`cohort serve-layers`) against single-process
    /// training of the same model, in one run: the ratio, bytes and the servers' memory.
    Pipeline(pipeline::Args),
    /// Stage-server verification: how fast dishonest servers are caught at a recompute rate
    /// (seeded trials), false alarms on honest servers across thread counts, and the cost.
    Verify(verify::Args),
}

impl BenchCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Ledger(a) => a.execute(),
            Self::Train(a) => a.execute(),
            Self::Net(a) => a.execute(),
            Self::Pipeline(a) => a.execute(),
            Self::Verify(a) => a.execute(),
        }
    }
}
