use std::path::PathBuf;
use std::process::ExitCode;

use cohort_ledger::{EmbeddedLedger, LedgerError};

use crate::output::print_json;

/// Re-check a ledger: every entry decodes and links to the one before, every signature
/// verifies, re-execution reproduces every receipt, and the Merkle root equals the signed
/// checkpoint's. Exit 0 if all holds, 1 naming the first bad entry otherwise.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ledger directory.
    dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let started = std::time::Instant::now();
        match EmbeddedLedger::verify_dir(&self.dir) {
            Ok(r) => {
                if self.json {
                    print_json(&serde_json::json!({ "ok": true, "report": r,
                        "seconds": started.elapsed().as_secs_f64() }))?;
                } else {
                    outln!(
                        "OK: {} entries, root {}, state {} ({:.3} s)",
                        r.entries,
                        r.root,
                        r.state_root,
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                let bad_entry = match &e {
                    LedgerError::BadEntry { seq, .. } => Some(*seq),
                    _ => None,
                };
                if self.json {
                    print_json(&serde_json::json!({ "ok": false, "error": e.to_string(),
                        "bad_entry": bad_entry }))?;
                } else {
                    eprintln!("FAILED: {}: {e}", self.dir.display());
                }
                Ok(ExitCode::from(1))
            }
        }
    }
}
