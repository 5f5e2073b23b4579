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
/// DIR/provenance.jsonl. Unlearnings are told from the ledger too: each request, how it was
/// executed and verified, and, where the run went on, that the next round started from the
/// unlearned model and that the forgotten client submitted nothing after. Exit 0: they agree; 1: a record disagrees, or a blob is missing or
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
    unlearnings: Vec<Story>,
    problems: Vec<String>,
}

/// One unlearning request as the ledger tells it.
#[derive(Debug, Clone, Serialize)]
struct Story {
    request: u64,
    /// Whose data: the dataset's owner (the clawback's), else the requester.
    owner: Address,
    dataset: Hash32,
    requested_entry: u64,
    /// The last execution: method number, unlearned model, evidence, entry.
    method: Option<u8>,
    model: Option<Hash32>,
    evidence: Option<Hash32>,
    executed_entry: Option<u64>,
    /// The last verdict (`None`: not verified yet).
    verified: Option<bool>,
    verdict_entry: Option<u64>,
    /// The first round opened after an accepted verification: its ledger round and whether
    /// it started from the unlearned model.
    next_round: Option<u64>,
    continued_from_unlearned: Option<bool>,
    /// A later unlearning verified before that round, whose model the round had to start
    /// from instead (it was made from this one's).
    #[serde(skip_serializing_if = "Option::is_none")]
    superseded_by: Option<u64>,
    blobs_deleted: bool,
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
        problems.extend(compare(&written, &rebuilt, &file));
        let unlearnings = stories(state.entries(), &mut problems);
        let outcome = Outcome {
            records: rebuilt.len(),
            blobs_checked: hashes.len() - gone,
            deleted_by_unlearning: gone,
            unlearnings,
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
        if !self.json {
            for u in &outcome.unlearnings {
                outln!("{}", u.line(&written));
            }
        }
        Ok(if outcome.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// Where DIR/provenance.jsonl (`written`, read from `file`) and the ledger's own record
/// (`rebuilt`) disagree, each named.
fn compare(
    written: &[ProvenanceRecord],
    rebuilt: &[Rebuilt],
    file: &std::path::Path,
) -> Vec<String> {
    let mut problems = Vec::new();
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
    for r in rebuilt {
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
    for w in written {
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
    problems
}

/// Where a run's DIR/provenance.jsonl disagrees with its ledger (its records only, not the
/// blobs): what a command that builds on the provenance checks before it records anything.
pub(crate) fn mismatches(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let written = read_provenance(dir)?;
    let state = LedgerReader::open(dir.join("ledger"))?.replay()?;
    let rebuilt = rebuild(state.entries())?;
    Ok(compare(&written, &rebuilt, &dir.join("provenance.jsonl")))
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

impl Story {
    /// One line for people: the client by name where the provenance file knows its address.
    fn line(&self, written: &[ProvenanceRecord]) -> String {
        let who = written
            .iter()
            .find(|r| r.address == self.owner)
            .map_or_else(
                || self.owner.to_string(),
                |r| format!("client-{}", r.client),
            );
        let method = self.method.map_or_else(
            || "not executed yet".to_owned(),
            |m| {
                format!(
                    "executed by {} (entry {}, model {})",
                    cohort_ledger::protocol::unlearning::name_of(m),
                    self.executed_entry.unwrap_or_default(),
                    self.model
                        .map(|h| h.to_hex()[..16].to_owned())
                        .unwrap_or_default()
                )
            },
        );
        let verdict = match self.verified {
            Some(true) => "verified",
            Some(false) => "rejected (the request is open again)",
            None => "not verified yet",
        };
        let after = match (self.next_round, self.continued_from_unlearned) {
            (Some(r), Some(true)) if self.superseded_by.is_some() => format!(
                "; request {} unlearned again before ledger round {r}, which started from its \
                 model",
                self.superseded_by.unwrap_or_default()
            ),
            (Some(r), Some(true)) => {
                format!(
                    "; the run went on from the unlearned model at ledger round {r}, without it"
                )
            }
            (Some(r), _) => format!("; ledger round {r} did NOT start from the unlearned model"),
            _ => String::new(),
        };
        format!(
            "unlearning request {}: {who}'s dataset forgotten (entry {}), {method}, {verdict}{}{after}",
            self.request,
            self.requested_entry,
            if self.blobs_deleted {
                ", its blobs deleted"
            } else {
                ""
            }
        )
    }
}

/// The unlearnings the ledger records, each request's story; a round that did not start from
/// a verified unlearned model, or an update of a forgotten owner, is a problem.
fn stories(entries: &[cohort_ledger::Entry], problems: &mut Vec<String>) -> Vec<Story> {
    let Some(contract) = entries.iter().find_map(|e| e.receipt.created) else {
        return Vec::new();
    };
    let mut out: Vec<Story> = Vec::new();
    // Owners whose data is forgotten, from the entry of the first execution on.
    let mut forgotten: BTreeMap<Address, u64> = BTreeMap::new();
    for e in entries {
        for ev in decode_events(contract, &e.receipt.logs) {
            let find = |out: &mut Vec<Story>, id: u64| out.iter_mut().position(|s| s.request == id);
            match ev {
                CohortEvents::UnlearningRequested(r) => out.push(Story {
                    request: r.requestId,
                    owner: r.requester,
                    dataset: Hash32(r.datasetId.0),
                    requested_entry: e.seq,
                    method: None,
                    model: None,
                    evidence: None,
                    executed_entry: None,
                    verified: None,
                    verdict_entry: None,
                    next_round: None,
                    continued_from_unlearned: None,
                    superseded_by: None,
                    blobs_deleted: false,
                }),
                CohortEvents::UnlearningExecuted(x) => {
                    if let Some(i) = find(&mut out, x.requestId) {
                        let s = &mut out[i];
                        s.method = Some(x.method);
                        s.model = Some(Hash32(x.resultModelHash.0));
                        s.evidence = Some(Hash32(x.evidenceHash.0));
                        s.executed_entry = Some(e.seq);
                        s.verified = None;
                        forgotten.entry(s.owner).or_insert(e.seq);
                    }
                }
                CohortEvents::Clawback(c) => {
                    if let Some(i) = find(&mut out, c.requestId) {
                        out[i].owner = c.owner;
                        forgotten.entry(c.owner).or_insert(e.seq);
                    }
                }
                CohortEvents::UnlearningVerified(v) => {
                    if let Some(i) = find(&mut out, v.requestId) {
                        out[i].verified = Some(true);
                        out[i].verdict_entry = Some(e.seq);
                    }
                }
                CohortEvents::UnlearningRejected(v) => {
                    if let Some(i) = find(&mut out, v.requestId) {
                        out[i].verified = Some(false);
                        out[i].verdict_entry = Some(e.seq);
                    }
                }
                CohortEvents::UnlearningBlobsDeleted(d) => {
                    if let Some(i) = find(&mut out, d.requestId) {
                        out[i].blobs_deleted = true;
                    }
                }
                CohortEvents::RoundOpened(o) => {
                    // Of the unlearnings verified since the last round, the round must start
                    // from the latest one's model (each later one was made from the one
                    // before).
                    let latest = out
                        .iter()
                        .filter(|s| s.verified == Some(true) && s.next_round.is_none())
                        .max_by_key(|s| s.verdict_entry)
                        .map(|s| s.request);
                    for s in out
                        .iter_mut()
                        .filter(|s| s.verified == Some(true) && s.next_round.is_none())
                    {
                        s.next_round = Some(o.roundId);
                        if latest != Some(s.request) {
                            s.superseded_by = latest;
                            s.continued_from_unlearned = Some(true);
                            continue;
                        }
                        let ok = s.model == Some(Hash32(o.globalModelHash.0));
                        s.continued_from_unlearned = Some(ok);
                        if !ok {
                            problems.push(format!(
                                "ledger round {} (entry {}) opened with model {}, not the model \
                                 {} that unlearning request {} left",
                                o.roundId,
                                e.seq,
                                Hash32(o.globalModelHash.0),
                                s.model.unwrap_or_default(),
                                s.request
                            ));
                        }
                    }
                }
                CohortEvents::UpdateSubmitted(u) => {
                    if let Some(at) = forgotten.get(&u.client) {
                        problems.push(format!(
                            "ledger round {} (entry {}): an update of {}, whose data was \
                             forgotten at entry {at}",
                            u.roundId, e.seq, u.client
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    out
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
