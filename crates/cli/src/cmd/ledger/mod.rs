//! `cohort ledger ...`
//!
//! Exit codes of the commands that read a ledger (`show`, `verify`, `prove`): 0 when the
//! ledger (or proof) checks out, 1 when it is tampered or damaged (the message names what is
//! wrong), 2 when it could not be checked at all (a wrong path, a ledger busy in another
//! process, an I/O error, a bad argument). They open the ledger through
//! [`cohort_ledger::LedgerReader`], which never writes the directory and never reads
//! `operator.key`. `show` and `verify` also read the ledger a running coordinator serves
//! (`--remote URL`): every durable entry is fetched and checked here exactly as a directory's.

mod demo;
mod deploy;
mod mint;
mod prove;
mod show;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use alloy_sol_types::SolInterface;
use clap::Subcommand;
use cohort_ledger::protocol::Cohort::{CohortCalls, CohortEvents};
use cohort_ledger::{LedgerError, LedgerReader, LedgerState};

use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Create an embedded ledger in DIR and run a short protocol scenario through it.
    Demo(demo::Args),
    /// Deploy the protocol contract on a new embedded ledger or an EVM chain.
    Deploy(deploy::Args),
    /// Mint protocol tokens to a party, as the governance.
    Mint(mint::Args),
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
            Self::Deploy(a) => a.execute(),
            Self::Mint(a) => a.execute(),
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
    use cohort_ledger::protocol::CohortRuns::CohortRunsCalls;
    use cohort_ledger::protocol::CohortStages::CohortStagesCalls;
    match CohortCalls::abi_decode(data) {
        Ok(c) => variant_name(&format!("{c:?}")),
        // The stage servers' functions, which Cohort runs from its fallback.
        Err(_) => match CohortStagesCalls::abi_decode(data) {
            Ok(c) => variant_name(&format!("{c:?}")),
            // Per-run governance and the market, which CohortStages runs from its fallback.
            Err(_) => match CohortRunsCalls::abi_decode(data) {
                Ok(c) => variant_name(&format!("{c:?}")),
                Err(_) => format!("0x{}", hex::encode(data.get(..4).unwrap_or(data))),
            },
        },
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

/// Where a read command finds its ledger: a directory, or a coordinator's server.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// The ledger directory.
    #[arg(required_unless_present = "remote", conflicts_with = "remote")]
    dir: Option<PathBuf>,
    /// Read the ledger a running `cohort coordinator` serves at URL instead (https://HOST:PORT,
    /// or http://HOST:PORT with --insecure): every durable entry is fetched and checked here
    /// as a directory's would be. Needs no key and no session.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// With --remote: the CA certificate to trust (PEM; `cohort keys tls` makes one).
    #[arg(
        long,
        value_name = "FILE",
        requires = "remote",
        conflicts_with = "insecure"
    )]
    ca: Option<PathBuf>,
    /// With --remote and --ca: the name the coordinator's certificate was made for (default:
    /// the URL's host).
    #[arg(long, value_name = "NAME", requires = "ca")]
    server_name: Option<String>,
    /// With --remote: dial in plain text, without TLS (for loopback and tests only).
    #[arg(long, requires = "remote")]
    insecure: bool,
}

impl Source {
    /// Refuses the dialling options without --remote (they would be silently ignored).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.remote.is_none() && (self.insecure || self.ca.is_some()) {
            anyhow::bail!(
                "--insecure and --ca are for reading a ledger over the network: give --remote URL"
            );
        }
        Ok(())
    }

    /// The directory, when the ledger is one.
    pub fn dir(&self) -> Option<&Path> {
        match self.remote {
            Some(_) => None,
            None => self.dir.as_deref(),
        }
    }

    /// Reads and checks a remote ledger: `Ok(Err(code))` when it could not be (reported).
    pub fn remote_state(&self, json: bool) -> anyhow::Result<Result<LedgerState, ExitCode>> {
        let Some(url) = &self.remote else {
            anyhow::bail!("not a remote ledger");
        };
        let fail = |msg: String| -> anyhow::Result<Result<LedgerState, ExitCode>> {
            if json {
                print_json(&serde_json::json!({ "ok": false, "error": msg,
                    "failure": "could not be checked", "bad_entry": null }))?;
            } else {
                eprintln!("error: {msg}");
            }
            Ok(Err(ExitCode::from(2)))
        };
        let dial = match crate::cmd::federation::dial_to(
            "--remote",
            url,
            self.ca.as_deref(),
            self.server_name.as_deref(),
            self.insecure,
            Duration::from_secs(30),
        ) {
            Ok(d) => d,
            Err(e) => return fail(format!("{e:#}")),
        };
        let (head, entries, secs) = match cohort_net::ledger::fetch_ledger(&dial) {
            Ok(x) => x,
            Err(e) => return fail(format!("{url}: {e}")),
        };
        match LedgerState::check(&head, &entries, secs) {
            Ok(s) => Ok(Ok(s)),
            Err(e) => Ok(Err(report_failure(Path::new(url), &e, json)?)),
        }
    }
}
