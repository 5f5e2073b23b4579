use std::path::PathBuf;
use std::process::ExitCode;

use cohort_ledger::LedgerReader;

use crate::output::print_json;

/// Re-check a ledger: every page of its database against its checksum, every entry decodes and
/// links to the one before, every signature verifies, re-execution reproduces every receipt,
/// and the Merkle root equals the signed checkpoint's. Read-only; needs no key. Exit 0 if all
/// holds, 1 naming what is wrong if the ledger is tampered or damaged, 2 if it cannot be read.
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
        let checked = LedgerReader::open(&self.dir).and_then(|r| {
            super::note_recovery(&r);
            Ok((r.verify()?, r.recovered()))
        });
        let (r, recovered) = match checked {
            Ok(x) => x,
            Err(e) => return super::report_failure(&self.dir, &e, self.json),
        };
        if self.json {
            print_json(
                &serde_json::json!({ "ok": true, "report": r, "recovered": recovered,
                "seconds": started.elapsed().as_secs_f64() }),
            )?;
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
}
