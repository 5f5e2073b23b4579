//! `cohort ledger deploy`: the protocol contract on a new embedded ledger, or on an EVM chain.

use std::path::PathBuf;
use std::process::ExitCode;

use alloy_primitives::Address;
use anyhow::{Context, bail};
use cohort_ledger::protocol::Protocol;
use cohort_ledger::{EmbeddedLedger, LedgerConfig};
use rand::RngCore;
use serde::Serialize;

use crate::output::print_json;

/// Deploy the protocol contract, governed by your key: on a new embedded ledger in a
/// directory (its operator key is made there, `operator.key`), or, in builds with the
/// `evm-rpc` feature, on an EVM chain. Prints the contract's address, which `cohort stage
/// ... --contract` and `cohort ledger mint` take on a chain.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The governance's key file (`cohort keys new`): it deploys, mints and sets the
    /// parameters.
    #[arg(long, value_name = "FILE")]
    governance_key: PathBuf,
    /// Create an embedded ledger in this directory (new, or empty).
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
    /// The embedded ledger's log origin (its name in checkpoints).
    #[arg(long, value_name = "NAME", default_value = "cohort.local/ledger",
          value_parser = super::demo::parse_origin)]
    origin: String,
    /// Deploy on the EVM chain at this JSON-RPC endpoint instead.
    #[cfg(feature = "evm-rpc")]
    #[arg(long, value_name = "URL", conflicts_with = "ledger")]
    chain_rpc: Option<String>,
    /// Hex private key of an account that pays the gas on that chain (for anvil, its first
    /// default account).
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        value_name = "HEX",
        env = "COHORT_FUNDER_KEY",
        hide_env_values = true
    )]
    funder_key: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Out {
    contract: Address,
    /// The governance's address where the contract runs.
    governance: Address,
    /// The embedded ledger's directory, or the chain's endpoint and id.
    ledger: Option<PathBuf>,
    chain_rpc: Option<String>,
    chain_id: Option<u64>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let gov = cohort_core::keyfile::load(&self.governance_key).context("--governance-key")?;
        let out = match &self.ledger {
            Some(dir) => self.embedded(dir, &gov)?,
            None => self.chain(&gov)?,
        };
        if self.json {
            print_json(&out)?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("contract    {}", out.contract);
        outln!("governance  {}", out.governance);
        match (&out.ledger, &out.chain_rpc) {
            (Some(dir), _) => {
                outln!("ledger      {}", dir.display());
                outln!(
                    "next: cohort ledger mint --ledger {} --key {} --to ADDR --amount TOKENS",
                    dir.display(),
                    self.governance_key.display()
                );
            }
            (None, Some(url)) => {
                outln!(
                    "chain       {url} (chain id {})",
                    out.chain_id.unwrap_or_default()
                );
                outln!(
                    "next: cohort ledger mint --chain-rpc {url} --contract {} --key {} --to \
                     ADDR --amount TOKENS",
                    out.contract,
                    self.governance_key.display()
                );
            }
            (None, None) => {}
        }
        Ok(ExitCode::SUCCESS)
    }

    fn embedded(&self, dir: &std::path::Path, gov: &cohort_core::Identity) -> anyhow::Result<Out> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let operator = cohort_core::Identity::from_secret("operator", secret);
        let made_dir = !dir.exists();
        // The error names the directory and says what is there; nothing is changed.
        let ledger = EmbeddedLedger::create(dir, LedgerConfig::new(&self.origin, operator))
            .with_context(|| format!("--ledger {}", dir.display()))?;
        match Protocol::deploy(ledger, gov) {
            Ok(p) => Ok(Out {
                contract: p.address(),
                governance: gov.address(),
                ledger: Some(dir.to_owned()),
                chain_rpc: None,
                chain_id: None,
            }),
            Err(e) => {
                // Leave nothing half-made: a second try would refuse the directory.
                for f in ["ledger.redb", "operator.key"] {
                    let _ = std::fs::remove_file(dir.join(f));
                }
                if made_dir {
                    let _ = std::fs::remove_dir(dir);
                }
                Err(anyhow::anyhow!("deploying the protocol: {e}"))
            }
        }
    }

    #[cfg(feature = "evm-rpc")]
    fn chain(&self, gov: &cohort_core::Identity) -> anyhow::Result<Out> {
        let Some(url) = &self.chain_rpc else {
            bail!("--ledger DIR (or --chain-rpc URL) is needed");
        };
        let funder = crate::args::funder_key(self.funder_key.as_deref())?;
        let chain = cohort_ledger::EvmRpcLedger::connect(url, funder)
            .with_context(|| format!("--chain-rpc {url}"))?;
        let chain_id = chain.chain_id();
        let governance = chain.chain_address(gov);
        let p = Protocol::deploy(chain, gov)
            .map_err(|e| anyhow::anyhow!("deploying the protocol on {url}: {e}"))?;
        Ok(Out {
            contract: p.address(),
            governance,
            ledger: None,
            chain_rpc: Some(url.clone()),
            chain_id: Some(chain_id),
        })
    }

    #[cfg(not(feature = "evm-rpc"))]
    fn chain(&self, _gov: &cohort_core::Identity) -> anyhow::Result<Out> {
        bail!("--ledger DIR is needed")
    }
}
