//! `cohort stage ...`: stage servers on the embedded ledger (docs/stages-ledger.md).
//!
//! A stage server stakes and declares the model and layers it serves (`register`); clients
//! escrow its pay per period (`pay`); the pay is released once the challenge window after the
//! period's last payment has passed (`release`); verifiers holding the same layers attest a
//! mismatch between a server's signed commitment and their recomputation (`attest --evidence
//! FILE`), and a quorum of them slashes the server; the payers of a slashed server take back
//! what was not released (`refund`). `show` reads it all, read-only.
//!
//! Each writing command signs with the party's own key file (`--key`) and records the call on
//! the embedded ledger in `--ledger DIR` (opened for appending with `DIR/operator.key`, as the
//! ledger's operator). It checks what it can before writing, and a call the contract refuses
//! records nothing; `--check` checks and runs the call without recording it.

pub(crate) mod attest;
pub(crate) mod evidence;
mod pay;
mod refund;
mod register;
mod release;
mod show;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolCall;
use anyhow::{Context, bail};
use clap::Subcommand;
use cohort_core::Identity;
use cohort_ledger::demo::fmt_tokens;
use cohort_ledger::protocol::Cohort::{CohortErrors, CohortEvents};
use cohort_ledger::protocol::{Protocol, ProtocolError};
use cohort_ledger::{EmbeddedLedger, LedgerBackend};
use serde::Serialize;

use crate::args::int_in;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum StageCmd {
    /// Declare your key a stage server of a model's layers (registering and staking first
    /// when needed).
    Register(register::Args),
    /// Escrow pay to a stage server for a period; it is released after the challenge window.
    Pay(pay::Args),
    /// Attest, as a verifier of the same layers, a server's mismatch from an evidence file
    /// (`cohort model lora --evidence FILE`); a quorum of verifiers slashes the server.
    Attest(attest::Args),
    /// Pay a period's escrow to its server once the challenge window has passed.
    Release(release::Args),
    /// Give a payer back its pay to a slashed server for a period.
    Refund(refund::Args),
    /// Stage servers, their escrows and the stage parameters (read-only; needs no key).
    Show(show::Args),
}

impl StageCmd {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Register(a) => a.execute(),
            Self::Pay(a) => a.execute(),
            Self::Attest(a) => a.execute(),
            Self::Release(a) => a.execute(),
            Self::Refund(a) => a.execute(),
            Self::Show(a) => a.execute(),
        }
    }
}

/// The latest `--at`: 2100-01-01T00:00:00Z.
const MAX_TIME: u64 = 4_102_444_800;

/// The flags of every command that signs a call.
#[derive(Debug, clap::Args)]
pub struct Signer {
    /// The embedded ledger's directory; it is opened for appending with its `operator.key`.
    #[arg(long, value_name = "DIR")]
    ledger: PathBuf,
    /// Your key file (ed25519, PKCS#8 PEM; `cohort keys new`): it signs the call.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The time the call executes at, in unix seconds (default: now by the wall clock; never
    /// before the ledger's last entry).
    #[arg(long, value_name = "UNIX", value_parser = int_in(0..=MAX_TIME))]
    at: Option<u64>,
    /// Check everything and run the call without recording it; nothing is written.
    #[arg(long)]
    check: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// An open ledger, the protocol contract on it and the signing party.
pub struct Session {
    pub p: Protocol<EmbeddedLedger>,
    pub me: Identity,
    pub check: bool,
    pub json: bool,
}

impl Signer {
    /// The signer of `key` on the embedded ledger in `ledger`, now, recording.
    pub fn new(ledger: PathBuf, key: PathBuf) -> Self {
        Self {
            ledger,
            key,
            at: None,
            check: false,
            json: false,
        }
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// Loads the key and opens the ledger at `--at` (or now). Nothing is written.
    pub fn open(&self) -> anyhow::Result<Session> {
        let me = cohort_core::keyfile::load(&self.key).context("--key")?;
        let ledger = EmbeddedLedger::open(&self.ledger)
            .with_context(|| format!("--ledger {}", self.ledger.display()))?;
        let last = ledger.head()?.time;
        let now = match self.at {
            Some(t) if t < last => {
                bail!("--at {t}: before the ledger's last entry ({last}); its time never goes back")
            }
            Some(t) => t,
            None => wall_clock().max(last),
        };
        let mut p = protocol_on(ledger, &self.ledger)?;
        p.backend_mut().set_time(now)?;
        Ok(Session {
            p,
            me,
            check: self.check,
            json: self.json,
        })
    }
}

/// The wall clock in unix seconds (0 if it is before 1970).
fn wall_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The protocol contract on `ledger` (the first contract that announced its governance, as
/// `Cohort`'s constructor does), checked to have the stage servers' functions.
pub fn protocol_on<B: LedgerBackend>(ledger: B, dir: &Path) -> anyhow::Result<Protocol<B>> {
    use alloy_sol_types::SolEvent;
    use cohort_ledger::protocol::Cohort::GovernanceChanged;
    let (logs, _) = ledger.logs_since(0)?;
    let contract = logs
        .iter()
        .find(|(_, l)| {
            l.data.topics().first() == Some(&GovernanceChanged::SIGNATURE_HASH)
                && GovernanceChanged::decode_log_data(&l.data)
                    .is_ok_and(|g| g.previous == Address::ZERO)
        })
        .map(|(_, l)| l.address)
        .with_context(|| {
            format!(
                "--ledger {}: no protocol contract was deployed on it",
                dir.display()
            )
        })?;
    let mut p = Protocol::at(ledger, contract);
    if p.stage_params().is_err() {
        bail!(
            "--ledger {}: its protocol contract {contract} has no stage servers (it was \
             deployed before them)",
            dir.display()
        );
    }
    Ok(p)
}

impl Session {
    /// My address on the ledger.
    pub fn address(&self) -> Address {
        self.p.backend().address_of(&self.me)
    }

    /// Sends `call` signed by my key, or with `--check` runs it without recording: the
    /// recorded entry, or `None` for a check. A refusal names the call and why.
    pub fn send<C: SolCall>(&mut self, call: C) -> anyhow::Result<Option<Recorded>> {
        let name = C::SIGNATURE.split('(').next().unwrap_or(C::SIGNATURE);
        if self.check {
            let me = self.address();
            self.p.simulate(me, call).map_err(|e| refused(name, &e))?;
            return Ok(None);
        }
        let me = self.me.clone();
        let sent = self.p.send(&me, call).map_err(|e| refused(name, &e))?;
        Ok(Some(Recorded {
            call: name.to_owned(),
            entry: sent.position,
            gas: sent.gas_used,
            events: sent
                .events
                .iter()
                .map(crate::cmd::ledger::event_name)
                .collect(),
            decoded: sent.events,
        }))
    }

    /// Prints `value` as JSON (with `--json`) or `lines`.
    pub fn report<T: Serialize>(&self, value: &T, lines: &[String]) -> anyhow::Result<ExitCode> {
        if self.json {
            print_json(value)?;
        } else {
            for l in lines {
                outln!("{l}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A recorded call.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// The function.
    pub call: String,
    /// Its entry in the ledger.
    pub entry: u64,
    /// Gas used.
    pub gas: u64,
    /// The events it emitted, by name.
    pub events: Vec<String>,
    /// And decoded.
    #[serde(skip)]
    pub decoded: Vec<CohortEvents>,
}

/// What the recorded calls were, for the human output.
pub fn recorded_lines(calls: &[Recorded], check: bool) -> Vec<String> {
    if check {
        return vec!["checked: the call would succeed; nothing was written".to_owned()];
    }
    calls
        .iter()
        .map(|r| {
            format!(
                "recorded {} at entry {} ({} gas; {})",
                r.call,
                r.entry,
                r.gas,
                r.events.join(", ")
            )
        })
        .collect()
}

/// A call the contract (or the ledger) refused, in words; nothing was recorded.
fn refused(call: &str, e: &ProtocolError) -> anyhow::Error {
    anyhow::anyhow!("{call} refused, nothing written: {}", explain(e))
}

/// Why a call was refused, in words for the stage servers' errors.
pub fn explain(e: &ProtocolError) -> String {
    let Some(err) = e.revert() else {
        return e.to_string();
    };
    let t = fmt_tokens;
    match err {
        CohortErrors::UnknownStage(x) => format!("{} is no stage server", x.server),
        CohortErrors::StageInactive(x) => {
            format!(
                "the stage server {} was slashed (inactive for good)",
                x.server
            )
        }
        CohortErrors::StageNotSlashed(x) => format!(
            "the stage server {} is not slashed: its payers are refunded only after a quorum's \
             claim",
            x.server
        ),
        CohortErrors::StageExists(x) => {
            format!("{} is a stage server already (once per key)", x.server)
        }
        CohortErrors::InvalidLayers(x) => format!(
            "layers {}..{}: the first must be below the end",
            x.firstLayer, x.endLayer
        ),
        CohortErrors::EscrowReleased(x) => format!(
            "the escrow of {} for period {} was released already",
            x.server, x.period
        ),
        CohortErrors::EscrowLocked(x) => format!(
            "the escrow of {} for period {} is locked until {} (the challenge window; it is {}, \
             {} s to go)",
            x.server,
            x.period,
            x.releaseAt,
            x.nowTs,
            x.releaseAt.saturating_sub(x.nowTs)
        ),
        CohortErrors::NothingEscrowed(x) if x.payer == Address::ZERO => format!(
            "nothing is escrowed for {} in period {}",
            x.server, x.period
        ),
        CohortErrors::NothingEscrowed(x) => format!(
            "{} holds nothing in the escrow of {} for period {}",
            x.payer, x.server, x.period
        ),
        CohortErrors::NotAMismatch(_) => {
            "the committed and recomputed rows are equal: no mismatch".to_owned()
        }
        CohortErrors::SelfAttestation(x) => {
            format!("{} cannot attest against itself", x.server)
        }
        CohortErrors::NotAStageVerifier(x) => format!(
            "{} is no verifier of {}: a verifier is an active stage server of the same model \
             and layers",
            x.who, x.server
        ),
        CohortErrors::AlreadyAttested(x) => format!(
            "{} attested claim {} already (each verifier counts once)",
            x.verifier, x.claimId
        ),
        CohortErrors::InsufficientStake(x) => format!(
            "{} has {} tokens of active stake; {} are needed",
            x.who,
            t(x.have),
            t(x.need)
        ),
        CohortErrors::InsufficientBalance(x) => format!(
            "{} has {} tokens; {} are needed",
            x.who,
            t(x.have),
            t(x.need)
        ),
        CohortErrors::NotRegistered(x) => format!("{} is not a registered participant", x.who),
        other => format!("{other:?}"),
    }
}

/// `--server`, `--payer`: an address (`0x` and 40 hex digits) or an ed25519 public key (64 hex
/// digits, as a stage server's Info and `cohort keys show` give it), which names the address
/// the embedded ledger gives that key.
pub fn party(s: &str) -> Result<Address, String> {
    let t = s.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    let bad = || {
        "must be an address (0x and 40 hex digits) or an ed25519 public key (64 hex digits)"
            .to_owned()
    };
    match h.len() {
        40 if t.starts_with("0x") => h.parse::<Address>().map_err(|_| bad()),
        64 => {
            let mut pk = [0u8; 32];
            hex::decode_to_slice(h, &mut pk).map_err(|_| bad())?;
            Ok(cohort_core::address_of(&pk))
        }
        _ => Err(bad()),
    }
}

/// `A..B`: layers A up to B (exclusive), A < B.
pub fn layers(s: &str) -> Result<std::ops::Range<u32>, String> {
    let bad = || "must be A..B, the first layer and one past the last (0..4), A below B".to_owned();
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let a: u32 = a.trim().parse().map_err(|_| bad())?;
    let b: u32 = b.trim().parse().map_err(|_| bad())?;
    if a >= b {
        return Err(bad());
    }
    Ok(a..b)
}

/// A 32-byte hash in hex (64 digits, `0x` optional).
pub fn hash32(s: &str) -> Option<B256> {
    let t = s.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    let mut b = [0u8; 32];
    (h.len() == 64 && hex::decode_to_slice(h, &mut b).is_ok()).then_some(B256::from(b))
}

/// Base units as a decimal string (JSON) with the whole tokens beside them (text).
pub fn amount(v: U256) -> String {
    v.to_string()
}
