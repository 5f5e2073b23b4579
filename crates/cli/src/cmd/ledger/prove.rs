use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cohort_ledger::merkle::verify_consistency;
use cohort_ledger::{Checkpoint, InclusionProof, LedgerError, LedgerReader};

use crate::args::{check_output_file, int_in};
use crate::output::print_json;

/// Produce an inclusion proof of entry N against the ledger's current signed checkpoint, or
/// check a proof file against the ledger's operator key (and, if the ledger has grown since,
/// that its current tree extends the proof's). Read-only; needs no key. Exit 0 when the proof
/// is made or checks out, 1 when the proof or the ledger is tampered or damaged, 2 when either
/// cannot be read (or N is past the end).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ledger directory.
    dir: PathBuf,
    /// The entry to prove (0 is the first).
    #[arg(
        long,
        required_unless_present = "check",
        conflicts_with = "check",
        allow_negative_numbers = true, value_parser = int_in(0u64..)
    )]
    entry: Option<u64>,
    /// Write the proof to this file instead of stdout.
    #[arg(long, conflicts_with = "check")]
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
        let Some(n) = self.entry else {
            anyhow::bail!("--entry N or --check PROOF is required");
        };
        if let Some(p) = &self.out {
            check_output_file(p, "--out")?;
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if parent.canonicalize().ok() == self.dir.canonicalize().ok() {
                anyhow::bail!(
                    "--out {}: is inside the ledger directory, which a reading command never writes",
                    p.display()
                );
            }
        }
        let proof = LedgerReader::open(&self.dir).and_then(|r| {
            super::note_recovery(&r);
            r.prove(n)
        });
        let proof = match proof {
            Ok(p) => p,
            Err(LedgerError::Invalid { reason, .. }) => anyhow::bail!("--entry: {reason}"),
            Err(e) => return super::report_failure(&self.dir, &e, false),
        };
        let text = serde_json::to_string_pretty(&proof)? + "\n";
        match &self.out {
            Some(p) => {
                std::fs::write(p, &text)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
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

    fn check(&self, path: &Path) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let proof: InclusionProof = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not an inclusion proof: {e}", path.display()))?;
        let reader = match LedgerReader::open(&self.dir) {
            Ok(r) => r,
            Err(e) => return super::report_failure(&self.dir, &e, self.json),
        };
        super::note_recovery(&reader);
        let info = match reader.info() {
            Ok(i) => i,
            Err(e) => return super::report_failure(&self.dir, &e, self.json),
        };
        let key = reader.operator_key();
        let result = proof.check(Some(&key)).and_then(|entry| {
            // The proof's checkpoint must be this log's, signed by this ledger's operator.
            let old = Checkpoint::verify_log(&proof.checkpoint, &info.origin, &key)?;
            // The ledger may have grown since the proof was made: its tree must extend it.
            if info.size > proof.size {
                let (c, now) = reader.consistency_proof(proof.size)?;
                verify_consistency(proof.size, now.size, &old.root, &now.root, &c)?;
            } else if info.size < proof.size {
                return Err(LedgerError::Invalid {
                    what: "proof",
                    reason: format!(
                        "proof is for size {} but the ledger only has {}",
                        proof.size, info.size
                    ),
                });
            } else if old.root != info.root {
                return Err(LedgerError::BadCheckpoint(format!(
                    "the proof's checkpoint and the ledger's, both of size {}, have different roots",
                    info.size
                )));
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
            // Anything wrong with the proof itself is a failed check (exit 1), as is a ledger
            // that does not match its own checkpoint; only a ledger that cannot be read is 2.
            Err(e) => {
                let failed = e.is_integrity_failure() || matches!(e, LedgerError::Invalid { .. });
                if self.json {
                    print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
                } else {
                    eprintln!("FAILED: {}: {e}", path.display());
                }
                Ok(if failed {
                    ExitCode::from(1)
                } else {
                    super::exit_code(&e)
                })
            }
        }
    }
}
