//! `cohort ledger ...`
//!
//! Exit codes of the commands that read a ledger (`show`, `verify`, `prove`): 0 when the
//! ledger (or proof) checks out, 1 when it is tampered or damaged (the message names what is
//! wrong), 2 when it could not be checked at all (a wrong path, a ledger busy in another
//! process, an I/O error, a bad argument). They open the ledger through
//! [`cohort_ledger::LedgerReader`], which never writes the directory and never reads
//! `operator.key`.

mod demo;
mod prove;
mod show;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use alloy_sol_types::SolInterface;
use clap::Subcommand;
use cohort_ledger::protocol::Cohort::{CohortCalls, CohortEvents};
use cohort_ledger::{LedgerError, LedgerReader};

use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Create an embedded ledger in DIR and run a short protocol scenario through it.
    Demo(demo::Args),
    /// Entries, balances and the current checkpoint of a ledger.
    Show(show::Args),
    /// Re-check every signature, link, receipt and the root; exit 1 naming what is wrong.
    Verify(verify::Args),
    /// Produce an inclusion proof for an entry, or check one (`--check FILE`).
    Prove(prove::Args),
}

impl LedgerCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Demo(a) => a.execute(),
            Self::Show(a) => a.execute(),
            Self::Verify(a) => a.execute(),
            Self::Prove(a) => a.execute(),
        }
    }
}

/// The function name of protocol calldata (`deploy` for init code, `?` when unknown).
pub fn call_name(to: Option<alloy_primitives::Address>, data: &[u8]) -> String {
    if to.is_none() {
        return "deploy".into();
    }
    match CohortCalls::abi_decode(data) {
        Ok(c) => variant_name(&format!("{c:?}")),
        Err(_) => format!("0x{}", hex::encode(data.get(..4).unwrap_or(data))),
    }
}

/// The name of a decoded event.
pub fn event_name(e: &CohortEvents) -> String {
    variant_name(&format!("{e:?}"))
}

fn variant_name(debug: &str) -> String {
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or(debug)
        .to_string()
}

/// The exit code for an error met reading a ledger: 1 when it says the ledger is tampered or
/// damaged, 2 when the ledger could not be read or checked.
pub fn exit_code(e: &LedgerError) -> ExitCode {
    ExitCode::from(if e.is_integrity_failure() { 1 } else { 2 })
}

/// Reports an error met reading the ledger in `dir` (on stderr, or as `{"ok": false, ...}` on
/// stdout with `--json`) and returns its exit code. The message names the directory once.
pub fn report_failure(dir: &Path, e: &LedgerError, json: bool) -> anyhow::Result<ExitCode> {
    let msg = e.to_string();
    let shown = dir.display().to_string();
    let msg = if msg.contains(&shown) {
        msg
    } else {
        format!("{shown}: {msg}")
    };
    let tampered = e.is_integrity_failure();
    if json {
        let bad_entry = match e {
            LedgerError::BadEntry { seq, .. } => Some(*seq),
            _ => None,
        };
        print_json(&serde_json::json!({ "ok": false, "error": msg,
            "failure": if tampered { "tampered or damaged" } else { "could not be checked" },
            "bad_entry": bad_entry }))?;
    } else if tampered {
        eprintln!("FAILED: {msg}");
    } else {
        eprintln!("error: {msg}");
    }
    Ok(exit_code(e))
}

/// Tells the user (on stderr) that the ledger was read as of its last complete commit because
/// its writer did not close it; the file is unchanged.
pub fn note_recovery(r: &LedgerReader) {
    if r.recovered() {
        eprintln!(
            "note: {} was not closed by its writer (it crashed or was killed); read as of its \
             last complete commit, recovered in memory. The file is unchanged: the next command \
             that appends to it repairs it in place.",
            r.dir().join("ledger.redb").display()
        );
    }
}
