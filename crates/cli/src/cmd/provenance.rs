//! `cohort provenance DIR`: rebuilds a run's provenance from its ledger and its blob store
//! alone and checks DIR/provenance.jsonl against it.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cohort_core::{Address, Hash32, Score};
use cohort_fl::events::ProvenanceRecord;
use cohort_ledger::LedgerReader;
use cohort_ledger::protocol::{Cohort::CohortEvents, decode_events};
use serde::Serialize;
use serde_json::Value;

use crate::output::print_json;

/// Check a run's provenance: rebuild, from DIR/ledger and the blob store alone, where every
/// recorded update came from (its client's address, its blob, its submission's ledger entry,
/// its samples) and what became of it (verdict, consensus score, the global model before and
/// after), check every blob in the store against its hash, and compare with
/// DIR/provenance.jsonl. Exit 0: they agree; 1: a record disagrees, or a blob is missing or
/// altered (each named); 2: something cannot be read. Reads only.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run's output directory (`cohort run ... --out DIR`).
    dir: PathBuf,
    /// The blob store the run used, if not DIR/blobs (a directory or s3://bucket/prefix).
    #[arg(long, value_name = "LOCATION")]
    blobs: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// One record as the ledger has it (everything but the strategy's contribution).
#[derive(Debug, Clone, PartialEq)]
struct Rebuilt {
    ledger_round: u64,
    address: Address,
    blob: Hash32,
    entry: u64,
    samples: u64,
    accepted: Option<bool>,
    consensus: Option<f64>,
    global_before: Option<Hash32>,
    global_after: Option<Hash32>,
}

#[derive(Debug, Serialize)]
struct Outcome {
    records: usize,
    blobs_checked: usize,
    /// Blobs gone because an unlearning deleted them (its `recordBlobDeletion` on the ledger
    /// names the manifest that lists them): not problems.
    deleted_by_unlearning: usize,
    problems: Vec<String>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let ledger_dir = self.dir.join("ledger");
        if !ledger_dir.is_dir() {
            bail!(
                "{}: no embedded ledger there (DIR/ledger); the provenance check reads the \
                 embedded ledger (a run on a chain is not supported yet)",
                self.dir.display()
            );
        }
        let file = self.dir.join("provenance.jsonl");
        let written = read_provenance(&self.dir)?;
        let reader = LedgerReader::open(&ledger_dir)?;
        let state = reader.replay()?;
        let rebuilt = rebuild(state.entries())?;
        let spec = self
            .blobs
            .clone()
            .unwrap_or_else(|| self.dir.join("blobs").display().to_string());
        let store = cohort_blob::open_existing(&spec).context("--blobs")?;

        let mut problems = Vec::new();
        // The blobs: every update and every global model, read back and hash-checked.
        let mut hashes: Vec<(String, Hash32)> = Vec::new();
        for r in &rebuilt {
            let name = format!("round {} update of {}", r.ledger_round, r.address);
            hashes.push((name, r.blob));
        }
        let mut globals: BTreeMap<Hash32, String> = BTreeMap::new();
        for r in &rebuilt {
            for (what, h) in [
                ("global model before", r.global_before),
                ("global model after", r.global_after),
            ] {
                if let Some(h) = h {
                    globals
                        .entry(h)
                        .or_insert(format!("round {} {what}", r.ledger_round));
                }
            }
        }
        hashes.extend(globals.into_iter().map(|(h, n)| (n, h)));
        let deleted = deleted_by_unlearning(state.entries(), &*store)?;
        let mut gone = 0;
        for (name, h) in &hashes {
            match store.get(h) {
                Err(cohort_blob::BlobError::NotFound { .. }) if deleted.contains(h) => gone += 1,
                Err(e) => problems.push(format!("{name}: blob {h}: {e}")),
                Ok(_) => {}
            }
        }
        // The records.
        let by_key: BTreeMap<(u64, Address), &ProvenanceRecord> = written
            .iter()
            .map(|r| ((r.ledger_round, r.address), r))
            .collect();
        if by_key.len() != written.len() {
            problems.push(format!(
                "{}: a round lists the same client twice",
                file.display()
            ));
        }
        for r in &rebuilt {
            let key = (r.ledger_round, r.address);
            let Some(w) = by_key.get(&key) else {
                problems.push(format!(
                    "round {} update of {} (ledger entry {}): on the ledger, missing from {}",
                    r.ledger_round,
                    r.address,
                    r.entry,
                    file.display()
                ));
                continue;
            };
            let name = format!("round {} client {} ({})", w.round, w.client, w.address);
            let mut field = |f: &str, file_says: String, ledger_says: String| {
                if file_says != ledger_says {
                    problems.push(format!(
                        "{name}: {f}: the file says {file_says}, the ledger says {ledger_says}"
                    ));
                }
            };
            field("blob", w.blob.to_string(), r.blob.to_string());
            field("entry", w.entry.to_string(), r.entry.to_string());
            field("samples", w.samples.to_string(), r.samples.to_string());
            field(
                "accepted",
                Some(w.accepted).map_or(String::new(), |a| a.to_string()),
                r.accepted.map_or("nothing".into(), |a| a.to_string()),
            );
            field(
                "consensus",
                format!("{:?}", Some(w.consensus)),
                format!("{:?}", r.consensus),
            );
            field(
                "global_before",
                format!("{:?}", Some(w.global_before)),
                format!("{:?}", r.global_before),
            );
            field(
                "global_after",
                format!("{:?}", Some(w.global_after)),
                format!("{:?}", r.global_after),
            );
            if w.contribution.is_some() && r.accepted == Some(false) {
                // Allowed only when the run aggregated rejected updates (ignore_verdicts);
                // reported so that it is seen.
                problems.push(format!(
                    "{name}: a contribution is recorded for an update the consensus rejected \
                     (only a run with aggregation.ignore_verdicts does that)"
                ));
            }
        }
        let on_ledger: std::collections::BTreeSet<(u64, Address)> = rebuilt
            .iter()
            .map(|r| (r.ledger_round, r.address))
            .collect();
        for w in &written {
            if !on_ledger.contains(&(w.ledger_round, w.address)) {
                problems.push(format!(
                    "round {} client {} ({}): in {}, but no such submission is on the ledger",
                    w.round,
                    w.client,
                    w.address,
                    file.display()
                ));
            }
        }
        let outcome = Outcome {
            records: rebuilt.len(),
            blobs_checked: hashes.len() - gone,
            deleted_by_unlearning: gone,
            problems,
        };
        if self.json {
            print_json(&outcome)?;
        } else if outcome.problems.is_empty() {
            outln!(
                "OK: {} provenance records agree with the ledger ({} entries); {} blobs present and intact in {}{}",
                outcome.records,
                state.entries().len(),
                outcome.blobs_checked,
                store.location(),
                if gone > 0 {
                    format!("; {gone} deleted by an unlearning, as the ledger records")
                } else {
                    String::new()
                }
            );
        } else {
            for p in &outcome.problems {
                outln!("MISMATCH {p}");
            }
        }
        Ok(if outcome.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// A run's DIR/provenance.jsonl, record by record; a line that does not read is named.
pub(crate) fn read_provenance(dir: &std::path::Path) -> anyhow::Result<Vec<ProvenanceRecord>> {
    let file = dir.join("provenance.jsonl");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).with_context(|| {
            format!("{} line {}: not a provenance record", file.display(), i + 1)
        })?);
    }
    Ok(out)
}

/// The blobs unlearnings deleted: the hashes the manifests of the ledger's
/// `UnlearningBlobsDeleted` events list (a manifest is a blob: `{"deleted": [hash, ...]}`).
/// A manifest that is missing or does not read is an error: the ledger says blobs were
/// deleted and cannot say which.
pub(crate) fn deleted_by_unlearning(
    entries: &[cohort_ledger::Entry],
    store: &dyn cohort_blob::BlobStore,
) -> anyhow::Result<std::collections::BTreeSet<Hash32>> {
    let mut out = std::collections::BTreeSet::new();
    let Some(contract) = entries.iter().find_map(|e| e.receipt.created) else {
        return Ok(out);
    };
    for e in entries {
        for ev in decode_events(contract, &e.receipt.logs) {
            if let CohortEvents::UnlearningBlobsDeleted(d) = ev {
                let h = Hash32(d.manifestHash.0);
                let bytes = store.get(&h).with_context(|| {
                    format!(
                        "the manifest of the blobs unlearning request {} deleted (entry {})",
                        d.requestId, e.seq
                    )
                })?;
                let m: Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("manifest {h} is not JSON"))?;
                for x in m["deleted"].as_array().into_iter().flatten() {
                    let hash: Hash32 = x
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .with_context(|| format!("manifest {h}: {x} is not a blob hash"))?;
                    out.insert(hash);
                }
            }
        }
    }
    Ok(out)
}

/// The provenance the ledger's protocol events hold, in submission order.
fn rebuild(entries: &[cohort_ledger::Entry]) -> anyhow::Result<Vec<Rebuilt>> {
    let Some(contract) = entries.iter().find_map(|e| e.receipt.created) else {
        bail!("the ledger holds no contract deployment: not a cohort run's ledger");
    };
    let mut out: Vec<Rebuilt> = Vec::new();
    let mut slot: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    let mut opened: BTreeMap<u64, Hash32> = BTreeMap::new();
    let mut finalized: BTreeMap<u64, Hash32> = BTreeMap::new();
    for e in entries {
        for ev in decode_events(contract, &e.receipt.logs) {
            match ev {
                CohortEvents::RoundOpened(o) => {
                    opened.insert(o.roundId, Hash32(o.globalModelHash.0));
                }
                CohortEvents::UpdateSubmitted(u) => {
                    slot.insert((u.roundId, u.index), out.len());
                    out.push(Rebuilt {
                        ledger_round: u.roundId,
                        address: u.client,
                        blob: Hash32(u.blobHash.0),
                        entry: e.seq,
                        samples: u.numSamples,
                        accepted: None,
                        consensus: None,
                        global_before: None,
                        global_after: None,
                    });
                }
                CohortEvents::UpdateAccepted(a) => {
                    if let Some(&i) = slot.get(&(a.roundId, a.index)) {
                        out[i].accepted = Some(true);
                        out[i].consensus = Some(Score(a.consensusScore).to_f64());
                    }
                }
                CohortEvents::UpdateRejected(a) => {
                    if let Some(&i) = slot.get(&(a.roundId, a.index)) {
                        out[i].accepted = Some(false);
                        out[i].consensus = Some(Score(a.consensusScore).to_f64());
                    }
                }
                CohortEvents::RoundFinalized(f) => {
                    finalized.insert(f.roundId, Hash32(f.aggregateHash.0));
                }
                _ => {}
            }
        }
    }
    for r in &mut out {
        r.global_before = opened.get(&r.ledger_round).copied();
        r.global_after = finalized.get(&r.ledger_round).copied();
    }
    // A round still in progress (a run that stopped) has no final model yet: its updates are
    // not part of the run's provenance.
    out.retain(|r| r.global_after.is_some());
    Ok(out)
}
