use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cohort_ledger::merkle::verify_consistency;
use cohort_ledger::{EmbeddedLedger, InclusionProof, LedgerBackend};

use crate::output::print_json;

/// Produce an inclusion proof of entry N against the ledger's current signed checkpoint, or
/// check a proof file against the ledger's operator key (and, if the ledger has grown since,
/// that its current tree extends the proof's).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ledger directory.
    dir: PathBuf,
    /// The entry to prove.
    #[arg(long, required_unless_present = "check", conflicts_with = "check")]
    entry: Option<u64>,
    /// Write the proof to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Check this proof file instead of producing one.
    #[arg(long, value_name = "PROOF")]
    check: Option<PathBuf>,
    /// Print JSON when checking.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(path) = &self.check {
            return self.check(path);
        }
        let n = self.entry.context("--entry is required")?;
        let ledger = EmbeddedLedger::open(&self.dir)
            .with_context(|| format!("opening {}", self.dir.display()))?;
        let proof = ledger.prove(n)?;
        let text = serde_json::to_string_pretty(&proof)? + "\n";
        match &self.out {
            Some(p) => {
                std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
                eprintln!(
                    "wrote proof of entry {n} in tree of size {} ({} path bytes) to {}",
                    proof.size,
                    proof.path_bytes(),
                    p.display()
                );
            }
            None => out!("{text}"),
        }
        Ok(ExitCode::SUCCESS)
    }

    fn check(&self, path: &PathBuf) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let proof: InclusionProof = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an inclusion proof", path.display()))?;
        let info = EmbeddedLedger::info(&self.dir)?;
        let key: cohort_core::Hash32 = info.operator_key.parse()?;
        let result = proof.check(Some(&key.0)).and_then(|entry| {
            // The ledger may have grown since the proof was made: its tree must extend it.
            if info.size > proof.size {
                let ledger = EmbeddedLedger::open(&self.dir)?;
                let c = ledger.consistency_proof(proof.size, info.size)?;
                let old =
                    cohort_ledger::Checkpoint::verify(&proof.checkpoint, &info.origin, &key.0)?;
                verify_consistency(proof.size, info.size, &old.root, &info.root, &c)?;
            } else if info.size < proof.size {
                return Err(cohort_ledger::LedgerError::Invalid {
                    what: "proof",
                    reason: format!(
                        "proof is for size {} but the ledger only has {}",
                        proof.size, info.size
                    ),
                });
            }
            Ok(entry)
        });
        match result {
            Ok(entry) => {
                let name = super::call_name(entry.tx.tx.to, &entry.tx.tx.data);
                if self.json {
                    print_json(&serde_json::json!({ "ok": true, "entry": proof.index,
                        "size": proof.size, "call": name, "author": entry.tx.sender() }))?;
                } else {
                    outln!(
                        "OK: entry {} ({name} by {}) is in the log of size {}, and the current \
                         checkpoint (size {}) extends it",
                        proof.index,
                        entry.tx.sender(),
                        proof.size,
                        info.size
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                if self.json {
                    print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
                } else {
                    eprintln!("FAILED: {}: {e}", path.display());
                }
                if matches!(e, cohort_ledger::LedgerError::Storage(_)) {
                    bail!(e);
                }
                Ok(ExitCode::from(1))
            }
        }
    }
}
