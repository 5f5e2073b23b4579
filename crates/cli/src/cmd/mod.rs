//! Subcommands, one per file.

mod bench;
mod collaboration;
mod federation;
pub(crate) mod gov;
mod keys;
mod ledger;
mod market;
mod model;
mod provenance;
pub(crate) mod run;
mod sim;
mod stage;
pub(crate) mod unlearn;
mod value;

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

// Parsed once per process; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, verify and prove the ledger.
    #[command(subcommand)]
    Ledger(ledger::LedgerCmd),
    /// Make and inspect a party's signing key file (ed25519, PKCS#8 PEM, mode 0600), and make
    /// the TLS certificates of a federation without a PKI.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Run a federated experiment from a TOML config on the embedded ledger.
    Run(run::Args),
    /// Host a federation of separate processes: the rounds, the ledger and the blob store, for
    /// clients and validators that dial in over gRPC (TLS), each with its own key.
    Coordinator(federation::CoordinatorArgs),
    /// Run one client of a federation: its own key and data; dials the coordinator.
    Client(federation::ClientArgs),
    /// Run one validator of a federation: its own key and held-out data; dials the coordinator.
    Validator(federation::ValidatorArgs),
    /// Check a run's provenance.jsonl against its ledger and blob store.
    Provenance(provenance::Args),
    /// Forget a client's data in a finished run: the request, the execution (by a method of
    /// unlearning) and a validator's verification of its evidence, on the run's ledger.
    Unlearn(unlearn::Args),
    /// Each client's contribution to a finished run from its stored updates: leave-one-out or
    /// Shapley values (exact, truncated Monte-Carlo, GTG).
    Value(value::Args),
    /// Train, evaluate, sample from and adapt language models (GPT from scratch, LoRA).
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Hold a range of a GPT's layers and run them, forward and backward, for clients that
    /// train through a pipeline of such servers (`cohort model lora --pipeline`).
    ServeLayers(model::ServeArgs),
    /// Stage servers on the ledger: stake and declare the layers served, escrowed pay per
    /// token, fraud claims by a quorum of verifiers, slashing.
    #[command(subcommand)]
    Stage(stage::StageCmd),
    /// Per-run governance: members bond tokens and decide by stake-weighted vote, after a
    /// timelock, on admitting clients and datasets, unlearning and hyperparameters.
    #[command(subcommand)]
    Gov(gov::GovCmd),
    /// The data market: datasets listed at a price per round of use with an allowlist of
    /// training recipes; royalties paid from a run's fund.
    #[command(subcommand)]
    Market(market::MarketCmd),
    /// Benchmarks that print a table and write JSON.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Collaborative-learning economics simulator (Deposit-Refund-Take on IMDB, executing the
    /// contracts in revm).
    #[command(subcommand)]
    Sim(sim::SimCmd),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Ledger(c) => c.execute(),
            Command::Keys(c) => c.execute(),
            Command::Run(a) => a.execute(),
            Command::Provenance(a) => a.execute(),
            Command::Coordinator(a) => a.execute(),
            Command::Client(a) => a.execute(),
            Command::Validator(a) => a.execute(),
            Command::Unlearn(a) => a.execute(),
            Command::Value(a) => a.execute(),
            Command::Model(c) => c.execute(),
            Command::ServeLayers(a) => a.execute(),
            Command::Stage(c) => c.execute(),
            Command::Gov(c) => c.execute(),
            Command::Market(c) => c.execute(),
            Command::Bench(c) => c.execute(),
            Command::Sim(c) => c.execute(),
        }
    }
}
