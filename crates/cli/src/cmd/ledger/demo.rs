use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cohort_ledger::demo::{self, Cast};
use cohort_ledger::{EmbeddedLedger, LedgerConfig};

use crate::output::{Table, print_json};

/// Create an embedded ledger in DIR and run one round of the protocol through it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the new ledger (must not hold one already).
    dir: PathBuf,
    /// Seed for identities; the same seed gives the same ledger root.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Log name used in checkpoints.
    #[arg(long, default_value = "cohort.local/demo")]
    origin: String,
    /// Time of the first entry (unix seconds; execution never reads the wall clock).
    #[arg(long, default_value_t = 1_767_225_600)]
    start_time: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let cast = Cast::new(self.seed);
        let config = LedgerConfig::new(&self.origin, cast.governance.clone())
            .with_start_time(self.start_time);
        let ledger = EmbeddedLedger::create(&self.dir, config)
            .with_context(|| format!("creating a ledger in {}", self.dir.display()))?;
        let (p, report) = demo::run(ledger, self.seed).context("running the demo scenario")?;
        let ledger = p.into_backend();
        let verified = ledger
            .verify()
            .context("verifying the ledger after the demo")?;
        if self.json {
            print_json(&serde_json::json!({
                "dir": self.dir,
                "report": report,
                "verify": verified,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("ledger    {}", self.dir.display());
        println!("contract  {}", report.contract);
        println!(
            "round 1   accepted {:?}, rejected {:?}, consensus scores {:?}",
            report.accepted, report.rejected, report.consensus
        );
        println!();
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
        println!();
        println!(
            "{} transactions, {} gas; supply conserved: {}",
            report.transactions, report.gas_used, report.supply_conserved
        );
        println!(
            "verified {} entries, root {}",
            verified.entries, verified.root
        );
        println!("\ncheckpoint:\n{}", verified.checkpoint);
        println!(
            "next: cohort ledger show {0} | cohort ledger verify {0} | cohort ledger prove {0} --entry 0",
            self.dir.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
