use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cohort_ledger::demo::{self, Cast};
use cohort_ledger::{EmbeddedLedger, LedgerConfig};

use crate::args::int_in;
use crate::output::{Table, print_json};

/// The latest `--start-time`: 2100-01-01T00:00:00Z.
const MAX_START_TIME: u64 = 4_102_444_800;

/// Create an embedded ledger in DIR and run one round of the protocol through it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the new ledger (created if missing; one that already holds a ledger is
    /// refused and left untouched).
    dir: PathBuf,
    /// Seed for identities; the same seed gives the same ledger root.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = int_in(0u64..))]
    seed: u64,
    /// Log name used in checkpoints: non-empty, no spaces, '+' or control characters.
    #[arg(long, default_value = "cohort.local/demo", value_parser = parse_origin)]
    origin: String,
    /// Time of the first entry (unix seconds, up to 2100-01-01; execution never reads the
    /// wall clock).
    #[arg(
        long,
        default_value_t = 1_767_225_600,
        allow_negative_numbers = true,
        value_parser = int_in(0..=MAX_START_TIME),
    )]
    start_time: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Run the scenario on an EVM chain at this JSON-RPC URL instead; DIR then receives
    /// `chain-demo.json`: the report, the head of this client's transaction log and every
    /// transaction hash, block and gas.
    #[cfg(feature = "evm-rpc")]
    #[arg(long, value_name = "URL")]
    chain_rpc: Option<String>,
    /// Hex private key of an account that pays the participants' gas on that chain
    /// (for anvil, its first default account).
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        env = "COHORT_FUNDER_KEY",
        requires = "chain_rpc",
        hide_env_values = true
    )]
    funder_key: Option<String>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        #[cfg(feature = "evm-rpc")]
        if let Some(url) = &self.chain_rpc {
            return self.on_chain(url);
        }
        let cast = Cast::new(self.seed);
        let config = LedgerConfig::new(&self.origin, cast.governance.clone())
            .with_start_time(self.start_time);
        let made_dir = !self.dir.exists();
        // The error names the directory and says what is there; nothing is changed.
        let ledger = EmbeddedLedger::create(&self.dir, config)?;
        let run = demo::run(ledger, self.seed)
            .context("running the demo scenario")
            .and_then(|(p, report)| {
                let ledger = p.into_backend();
                let verified = ledger
                    .verify()
                    .context("verifying the ledger after the demo")?;
                Ok((report, verified))
            });
        let (report, verified) = match run {
            Ok(x) => x,
            Err(e) => {
                // Leave nothing half-made: a second try would refuse the directory.
                for f in ["ledger.redb", "operator.key"] {
                    let _ = std::fs::remove_file(self.dir.join(f));
                }
                if made_dir {
                    let _ = std::fs::remove_dir(&self.dir);
                }
                return Err(e);
            }
        };
        if self.json {
            print_json(&serde_json::json!({
                "dir": self.dir,
                "report": report,
                "verify": verified,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("ledger    {}", self.dir.display());
        print_report(&report);
        outln!(
            "verified {} entries, root {}",
            verified.entries,
            verified.root
        );
        outln!("\ncheckpoint:\n{}", verified.checkpoint);
        outln!(
            "next: cohort ledger show {0} | cohort ledger verify {0} | cohort ledger prove {0} --entry 0",
            self.dir.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// A log origin, checked as `EmbeddedLedger::create` checks it.
pub(crate) fn parse_origin(s: &str) -> Result<String, String> {
    if cohort_ledger::note::is_valid_name(s) && !s.contains(char::is_control) {
        Ok(s.to_owned())
    } else {
        Err(
            "must be non-empty, without spaces, '+' or control characters (e.g. example.com/log)"
                .into(),
        )
    }
}

fn print_report(report: &demo::DemoReport) {
    outln!("contract  {}", report.contract);
    outln!(
        "round 1   accepted {:?}, rejected {:?}, consensus scores {:?}",
        report.accepted,
        report.rejected,
        report.consensus
    );
    outln!();
    let mut t = Table::new(&["participant", "address", "balance", "stake"]);
    for s in &report.standings {
        t.row(vec![
            s.name.clone(),
            s.address.to_string(),
            s.balance.clone(),
            s.stake.clone(),
        ]);
    }
    t.print();
    outln!();
    outln!(
        "{} transactions, {} gas; supply conserved: {}",
        report.transactions,
        report.gas_used,
        report.supply_conserved
    );
}

#[cfg(feature = "evm-rpc")]
impl Args {
    fn on_chain(&self, url: &str) -> anyhow::Result<ExitCode> {
        use cohort_ledger::LedgerBackend;
        let funder = crate::args::funder_key(self.funder_key.as_deref())?;
        let chain = cohort_ledger::EvmRpcLedger::connect(url, funder)?;
        let (p, report) =
            demo::run(chain, self.seed).context("running the demo scenario on chain")?;
        let chain = p.into_backend();
        let txs: Vec<serde_json::Value> = chain
            .recorded()
            .iter()
            .map(|t| serde_json::json!({ "tx_hash": t.tx_hash, "block": t.block, "gas_used": t.gas_used }))
            .collect();
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let record = self.dir.join("chain-demo.json");
        crate::output::write_json(
            &record,
            &serde_json::json!({ "chain_rpc": url, "chain_id": chain.chain_id(),
                "report": report, "head": chain.head()?, "transactions": txs }),
        )?;
        if self.json {
            print_json(&serde_json::json!({ "chain_rpc": url, "report": report }))?;
        } else {
            outln!("chain     {url} (record in {})", record.display());
            print_report(&report);
        }
        Ok(ExitCode::SUCCESS)
    }
}
