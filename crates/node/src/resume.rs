//! What a run needs to continue after its last settled round, saved once per round.
//!
//! The ledger is the record and the unit of durability is the round: the runtime flushes the
//! embedded ledger once per settled round (`SyncPolicy::OnFlush`), so a run killed at any
//! point (SIGKILL, power loss) reopens at the end of its last settled round, or at the end of
//! its set-up. To go on from there the runtime needs what is not on the ledger: the global
//! model, the server optimiser's moments, the virtual clock, the coordinator's round, the
//! dataset ids the set-up registered, the initial model's metrics and holdings and the round
//! summaries so far (from which the run's summary fold continues). It writes them into a
//! state directory for every settled round (and once after the set-up, as round 0) *before*
//! the ledger's flush, each file written to a temporary name, synced and renamed:
//!
//! - `rounds.jsonl`: one [`RoundSummary`] per line, appended and synced;
//! - `round-NNNNNN.global`: the global model after round N, as the safetensors blob whose
//!   SHA-256 the ledger records;
//! - `round-NNNNNN.json`: a [`SavedRound`], naming the ledger size and root it goes with.
//!
//! After the flush the previous round's two files are removed, so the directory holds the
//! files of the last flushed round and at most one round ahead of the ledger (killed between
//! the state write and the flush). [`load`] picks the saved round whose ledger size and root
//! are the ledger's: a state written ahead of a flush that never happened is ignored, and the
//! round that was in progress is run again from its start (its ledger entries were never
//! durable; the update blobs it wrote are content-addressed and written again, byte for
//! byte). Since every random choice derives from the seed, the round number and the ledger
//! round, the continued run records the same entries and ends at the same root as one that
//! was never interrupted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};
use cohort_core::{Hash32, sha256};
use serde::{Deserialize, Serialize};

use cohort_fl::FlError;
use cohort_fl::learner::Metrics;

use crate::runtime::RoundSummary;

/// The format of [`SavedRound`] files.
pub const FORMAT: &str = "cohort-run-state/1";

const ROUNDS: &str = "rounds.jsonl";

/// The state of a run after a settled round (round 0: after the set-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRound {
    /// [`FORMAT`].
    pub format: String,
    /// Rounds settled.
    pub round: u64,
    /// SHA-256 of the run's config as JSON: a state is only resumed under the config it was
    /// saved with.
    pub config_sha256: Hash32,
    /// Ledger entries after the round's settlement.
    pub ledger_entries: u64,
    /// The ledger's root then.
    pub ledger_root: Hash32,
    /// The run's virtual clock.
    pub now: u64,
    /// The protocol contract's address.
    pub contract: Address,
    /// Each client's dataset id, as the set-up registered it.
    pub datasets: Vec<Hash32>,
    /// SHA-256 of the global model's blob (`round-NNNNNN.global`).
    pub global_sha256: Hash32,
    /// The strategy's state ([`cohort_fl::strategy::Strategy::state`]), as `f64` bit patterns.
    pub strategy: Vec<Vec<u64>>,
    /// Test metrics of the initial model.
    pub initial: Metrics,
    /// Balance + stake of every participant after the set-up, base units (empty in a state
    /// saved before cohort recorded it).
    #[serde(default, with = "cohort_core::amount::decimal_map")]
    pub initial_holdings: BTreeMap<String, U256>,
    /// Clients whose data an unlearning has forgotten since the run's set-up, in the order
    /// they were forgotten (`cohort unlearn` saves the round again after it records one, the
    /// unlearned model as its global model): a continued run never asks them to train, and a
    /// later unlearning leaves them out of its retraining and replay too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<u32>,
}

/// A saved round with everything it refers to, read back by [`load`].
#[derive(Debug, Clone)]
pub struct Resume {
    /// The saved state.
    pub saved: SavedRound,
    /// The global model's blob.
    pub global: Vec<u8>,
    /// Rounds 1 to `saved.round`.
    pub rounds: Vec<RoundSummary>,
}

/// SHA-256 of a config as JSON (what [`SavedRound::config_sha256`] holds).
pub fn config_digest<T: Serialize>(cfg: &T) -> Hash32 {
    sha256(&serde_json::to_vec(cfg).unwrap_or_default())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlError + '_ {
    move |e| FlError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> FlError {
    FlError::State {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn stem(round: u64) -> String {
    format!("round-{round:06}")
}

/// Writes `bytes` to `path` so that it is either the old file or the whole new one: a
/// temporary file, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FlError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), FlError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Saves `saved` (with the global model's `global` blob) into `dir`, appending `round` (the
/// summary of the round just settled; none for round 0) to `rounds.jsonl`. Everything is
/// synced before it returns.
pub fn save(
    dir: &Path,
    saved: &SavedRound,
    global: &[u8],
    round: Option<&RoundSummary>,
) -> Result<(), FlError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    if let Some(r) = round {
        let path = dir.join(ROUNDS);
        let mut line = serde_json::to_vec(r).map_err(|e| bad(&path, e.to_string()))?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&line).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    let stem = stem(saved.round);
    write_atomic(&dir.join(format!("{stem}.global")), global)?;
    let path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_vec_pretty(saved).map_err(|e| bad(&path, e.to_string()))?;
    write_atomic(&path, &json)?;
    sync_dir(dir)
}

/// Rewrites `rounds.jsonl` with exactly `rounds` (those of the saved round a run continues
/// from), so that the continued run appends after them.
pub fn rewrite_rounds(dir: &Path, rounds: &[RoundSummary]) -> Result<(), FlError> {
    let path = dir.join(ROUNDS);
    let mut keep = Vec::new();
    for r in rounds {
        keep.extend(serde_json::to_vec(r).map_err(|e| bad(&path, e.to_string()))?);
        keep.push(b'\n');
    }
    write_atomic(&path, &keep)
}

/// Removes the files of every saved round before `round` (called once `round` is durable on
/// the ledger).
pub fn prune(dir: &Path, round: u64) -> Result<(), FlError> {
    for (r, path) in saved_files(dir)? {
        if r < round {
            fs::remove_file(&path).map_err(io(&path))?;
            let global = path.with_extension("global");
            if global.exists() {
                fs::remove_file(&global).map_err(io(&global))?;
            }
        }
    }
    Ok(())
}

/// The `round-NNNNNN.json` files in `dir`, by round.
fn saved_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, FlError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries {
        let path = e.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(r) = name
            .strip_prefix("round-")
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((r, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Records that the ledger a saved round goes with (`entries`, `root`) has grown by entries
/// that are not a round's (a `cohort gov` or `cohort market` call on the run's directory) to
/// `new_entries`, `new_root` at `time`, so that `cohort run --resume` continues from it: the
/// saved round is rewritten to name the new head (its global model unchanged). Returns whether
/// a saved round named the old head.
pub fn note_appended(
    dir: &Path,
    (entries, root): (u64, Hash32),
    (new_entries, new_root, time): (u64, Hash32, u64),
) -> Result<bool, FlError> {
    for (_, path) in saved_files(dir)? {
        let mut s = read_saved(&path)?;
        if s.ledger_entries == entries && s.ledger_root == root {
            s.ledger_entries = new_entries;
            s.ledger_root = new_root;
            s.now = s.now.max(time);
            let json = serde_json::to_vec_pretty(&s).map_err(|e| bad(&path, e.to_string()))?;
            write_atomic(&path, &json)?;
            sync_dir(dir)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The saved rounds in `dir`: round, ledger size and root (for messages).
pub fn list(dir: &Path) -> Result<Vec<SavedRound>, FlError> {
    saved_files(dir)?
        .into_iter()
        .map(|(_, path)| read_saved(&path))
        .collect()
}

fn read_saved(path: &Path) -> Result<SavedRound, FlError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let s: SavedRound =
        serde_json::from_slice(&bytes).map_err(|e| bad(path, format!("not a saved round: {e}")))?;
    if s.format != FORMAT {
        return Err(bad(
            path,
            format!("format {:?}, this cohort reads {FORMAT:?}", s.format),
        ));
    }
    Ok(s)
}

/// The saved round that goes with a ledger of `entries` entries and root `root`, with its
/// global model and the round summaries up to it; `None` when there is none (a ledger killed
/// during its set-up has none). A saved round that names this ledger but whose files are
/// damaged is an error, not a `None`.
pub fn load(dir: &Path, entries: u64, root: Hash32) -> Result<Option<Resume>, FlError> {
    let Some(saved) = list(dir)?
        .into_iter()
        .find(|s| s.ledger_entries == entries && s.ledger_root == root)
    else {
        return Ok(None);
    };
    let gpath = dir.join(format!("{}.global", stem(saved.round)));
    let global = fs::read(&gpath).map_err(io(&gpath))?;
    if sha256(&global) != saved.global_sha256 {
        return Err(bad(
            &gpath,
            format!(
                "SHA-256 {} is not the saved {}",
                sha256(&global),
                saved.global_sha256
            ),
        ));
    }
    let rpath = dir.join(ROUNDS);
    let text = match fs::read_to_string(&rpath) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&rpath)(e)),
    };
    // Lines past the saved round (a round written ahead of a flush that never happened, or
    // cut short by the kill) are left out.
    let mut rounds: Vec<RoundSummary> = Vec::new();
    // Why the first line that did not read failed (a torn last line, or a summary of an older
    // format: amounts as formatted strings), for the error if rounds are missing.
    let mut unread: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let r = match serde_json::from_str::<RoundSummary>(line) {
            Ok(r) => r,
            Err(e) => {
                unread.get_or_insert_with(|| format!("; line {}: {e}", i + 1));
                continue;
            }
        };
        if r.round >= 1 && r.round <= saved.round && r.round == rounds.len() as u64 + 1 {
            rounds.push(r);
        }
    }
    if rounds.len() as u64 != saved.round {
        return Err(bad(
            &rpath,
            format!(
                "holds rounds 1 to {} of the {} the saved state needs{}",
                rounds.len(),
                saved.round,
                unread.unwrap_or_default()
            ),
        ));
    }
    Ok(Some(Resume {
        saved,
        global,
        rounds,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A state directory whose `rounds.jsonl` was written before amounts were integers is
    /// refused with an error naming the field, not resumed with amounts off by 10^18.
    #[test]
    fn rounds_of_the_old_amount_format_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let global = b"global model".to_vec();
        let saved = SavedRound {
            format: FORMAT.into(),
            round: 1,
            config_sha256: Hash32::ZERO,
            ledger_entries: 7,
            ledger_root: Hash32::ZERO,
            now: 0,
            contract: Address::ZERO,
            datasets: Vec::new(),
            global_sha256: sha256(&global),
            strategy: Vec::new(),
            initial: Metrics::loss(1.0),
            initial_holdings: BTreeMap::new(),
            forgotten: Vec::new(),
        };
        save(dir.path(), &saved, &global, None).unwrap();
        let old = r#"{"round":1,"test":{"loss":0.5,"accuracy":null},"accepted":[0],"rejected":[],"consensus":{"0":0.1},"rewards":{"client-0":"10.0000"},"slashes":{},"bytes":1,"submitted":[0],"scores":[],"holdings":{"client-0":10010.0}}"#;
        fs::write(dir.path().join(ROUNDS), format!("{old}\n")).unwrap();
        let err = load(dir.path(), 7, Hash32::ZERO).unwrap_err().to_string();
        assert!(
            err.contains("holds rounds 1 to 0") && err.contains("line 1: field `rewards`"),
            "{err}"
        );
    }
}
