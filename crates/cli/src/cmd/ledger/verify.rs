use std::process::ExitCode;

use cohort_ledger::LedgerReader;

use crate::output::print_json;

/// Re-check a ledger: every page of its database against its checksum, every entry decodes and
/// links to the one before, every signature verifies, re-execution reproduces every receipt,
/// and the Merkle root equals the signed checkpoint's. Read-only; needs no key. Exit 0 if all
/// holds, 1 naming what is wrong if the ledger is tampered or damaged, 2 if it cannot be read.
/// With --remote, the ledger a running coordinator serves, fetched and checked here.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        self.source.check()?;
        let started = std::time::Instant::now();
        let (r, recovered) = match self.source.dir() {
            Some(dir) => {
                let checked = LedgerReader::open(dir).and_then(|r| {
                    super::note_recovery(&r);
                    Ok((r.verify()?, r.recovered()))
                });
                match checked {
                    Ok(x) => x,
                    Err(e) => return super::report_failure(dir, &e, self.json),
                }
            }
            None => match self.source.remote_state(self.json)? {
                Ok(state) => (state.report().clone(), false),
                Err(code) => return Ok(code),
            },
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
