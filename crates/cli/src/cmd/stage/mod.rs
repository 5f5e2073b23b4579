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
//! ledger's operator) or, in builds with the `evm-rpc` feature, sends it to the protocol
//! contract on an EVM chain (`--chain-rpc URL --contract ADDR`), signed with the chain key the
//! party's key derives. It checks what it can before writing, and a call the contract refuses
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
use cohort_ledger::protocol::{Protocol, ProtocolError, decode_events};
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

/// Where the protocol is: the embedded ledger in a directory, or (in builds with the
/// `evm-rpc` feature) a contract on an EVM chain.
#[derive(Debug, Clone, clap::Args)]
pub struct Place {
    /// The embedded ledger's directory (a writing command opens it for appending with its
    /// `operator.key`), or a run's directory (`cohort run --out DIR`: its DIR/ledger, with the
    /// operator key the run keeps in DIR/keys).
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
    /// An EVM chain's JSON-RPC endpoint (http://host:port), in place of --ledger: the
    /// protocol deployed there at --contract. Each party signs with the chain key its own key
    /// derives (docs/ledger.md); keys are found by their registrations on the chain.
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "ledger",
        requires = "contract"
    )]
    chain_rpc: Option<String>,
    /// The protocol contract's address on that chain.
    #[cfg(feature = "evm-rpc")]
    #[arg(long, value_name = "ADDR", requires = "chain_rpc")]
    contract: Option<Address>,
    /// Hex private key of an account that pays the gas on that chain (for anvil, its first
    /// default account); without it the party's chain account pays its own.
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        value_name = "HEX",
        env = "COHORT_FUNDER_KEY",
        hide_env_values = true
    )]
    funder_key: Option<String>,
}

/// The protocol on a ledger or a chain, chosen at run time.
pub type AnyProtocol = Protocol<Box<dyn LedgerBackend>>;

impl Place {
    /// The embedded ledger in `dir`.
    pub fn embedded(dir: PathBuf) -> Self {
        Self {
            ledger: Some(dir),
            #[cfg(feature = "evm-rpc")]
            chain_rpc: None,
            #[cfg(feature = "evm-rpc")]
            contract: None,
            #[cfg(feature = "evm-rpc")]
            funder_key: None,
        }
    }

    /// A chain at `url`, the protocol at `contract`, gas paid by `funder_key` (hex) if given.
    #[cfg(feature = "evm-rpc")]
    pub fn chain(url: String, contract: Address, funder_key: Option<String>) -> Self {
        Self {
            ledger: None,
            chain_rpc: Some(url),
            contract: Some(contract),
            funder_key,
        }
    }

    /// The embedded ledger's directory, when it is one.
    pub fn ledger_dir(&self) -> Option<&Path> {
        self.ledger.as_deref()
    }

    /// Whether a ledger or a chain was named.
    pub fn given(&self) -> bool {
        self.ledger.is_some() || self.is_chain()
    }

    /// Whether it is a chain.
    #[cfg(feature = "evm-rpc")]
    pub fn is_chain(&self) -> bool {
        self.chain_rpc.is_some()
    }

    /// Whether it is a chain.
    #[cfg(not(feature = "evm-rpc"))]
    pub fn is_chain(&self) -> bool {
        false
    }

    /// How refusals name it: `--ledger DIR` or `--chain-rpc URL`.
    pub fn name(&self) -> String {
        match &self.ledger {
            Some(d) => format!("--ledger {}", d.display()),
            None => self.chain_name(),
        }
    }

    #[cfg(feature = "evm-rpc")]
    fn chain_name(&self) -> String {
        format!(
            "--chain-rpc {}",
            self.chain_rpc.as_deref().unwrap_or_default()
        )
    }

    #[cfg(not(feature = "evm-rpc"))]
    fn chain_name(&self) -> String {
        "--ledger".to_owned()
    }

    /// The protocol there, for writing: the embedded ledger opened for appending, or the
    /// chain connected (its chain id read), with the contract checked to have the stage
    /// servers' functions.
    pub fn open(&self) -> anyhow::Result<AnyProtocol> {
        match &self.ledger {
            Some(dir) => {
                let ledger =
                    open_ledger(dir).with_context(|| format!("--ledger {}", dir.display()))?;
                protocol_on(Box::new(ledger) as Box<dyn LedgerBackend>, &self.name())
            }
            None => self.open_chain(),
        }
    }

    /// The protocol there, read-only: the embedded ledger verified and replayed in memory
    /// (as `cohort ledger show` does; nothing is written), or the chain (read with calls and
    /// logs only).
    pub fn open_read(&self) -> anyhow::Result<AnyProtocol> {
        match &self.ledger {
            Some(dir) => {
                // Its errors as they come, for `cohort ledger show`'s report of a ledger
                // that does not verify (`stage show`), which names the directory.
                let state =
                    cohort_ledger::LedgerReader::open(ledger_dir_of(dir)).and_then(|r| {
                        crate::cmd::ledger::note_recovery(&r);
                        r.replay()
                    })?;
                protocol_on(Box::new(state) as Box<dyn LedgerBackend>, &self.name())
            }
            None => self.open_chain(),
        }
    }

    #[cfg(feature = "evm-rpc")]
    fn open_chain(&self) -> anyhow::Result<AnyProtocol> {
        let url = self
            .chain_rpc
            .as_deref()
            .context("--ledger DIR (or --chain-rpc URL --contract ADDR) is needed")?;
        let contract = self.contract.context("--chain-rpc needs --contract")?;
        let funder = crate::args::funder_key(self.funder_key.as_deref())?;
        let chain = cohort_ledger::EvmRpcLedger::connect(url, funder)
            .with_context(|| format!("--chain-rpc {url}"))?;
        let mut p = Protocol::at(Box::new(chain) as Box<dyn LedgerBackend>, contract);
        if p.stage_params().is_err() {
            bail!(
                "--contract {contract}: no protocol contract with stage servers answers there on \
                 --chain-rpc {url}"
            );
        }
        Ok(p)
    }

    #[cfg(not(feature = "evm-rpc"))]
    fn open_chain(&self) -> anyhow::Result<AnyProtocol> {
        bail!("--ledger DIR is needed")
    }
}

/// The ledger directory `--ledger DIR` names: DIR itself, or a run's (`cohort run --out DIR`,
/// with its run.json, keeps its ledger in DIR/ledger).
pub fn ledger_dir_of(dir: &Path) -> PathBuf {
    let run = dir.join("ledger");
    if !dir.join("ledger.redb").exists()
        && run.join("ledger.redb").exists()
        && dir.join("run.json").is_file()
    {
        run
    } else {
        dir.to_path_buf()
    }
}

/// The embedded ledger in DIR opened for appending with DIR/operator.key, or a run's
/// (`cohort run --out DIR`: DIR/ledger, with the operator key the run keeps in
/// DIR/keys/operator.key).
fn open_ledger(dir: &Path) -> anyhow::Result<EmbeddedLedger> {
    let ledger = ledger_dir_of(dir);
    let key = dir.join("keys/operator.key");
    if ledger != dir && key.exists() {
        let secret =
            std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
        let operator = Identity::from_secret_hex("operator", &secret)
            .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
        return Ok(EmbeddedLedger::open_as(ledger, operator)?);
    }
    Ok(EmbeddedLedger::open(ledger)?)
}

/// The flags of every command that signs a call.
#[derive(Debug, clap::Args)]
pub struct Signer {
    #[command(flatten)]
    place: Place,
    /// Your key file (ed25519, PKCS#8 PEM; `cohort keys new`): it signs the call.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The time the call executes at, in unix seconds (default: now by the wall clock; never
    /// before the ledger's last entry). On a chain the default is the chain's own time, and
    /// --at needs a chain that lets it be set (anvil, hardhat).
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
    pub p: AnyProtocol,
    pub me: Identity,
    pub check: bool,
    pub json: bool,
    /// A run's directory the ledger is in (`--ledger` naming a `cohort run --out DIR`): what
    /// is recorded is noted in its saved state, so that `cohort run --resume` goes on.
    run_dir: Option<PathBuf>,
}

impl Signer {
    /// The signer of `key` at `place` (its time now), recording.
    pub fn on(place: Place, key: PathBuf) -> Self {
        Self {
            place,
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

    /// Loads the key and opens the ledger (or connects to the chain) at `--at` (or now).
    /// Nothing is written.
    pub fn open(&self) -> anyhow::Result<Session> {
        let me = cohort_core::keyfile::load(&self.key).context("--key")?;
        let mut p = self.place.open()?;
        let last = p.backend().head()?.time;
        let now = match self.at {
            Some(t) if t < last => {
                bail!("--at {t}: before the ledger's last entry ({last}); its time never goes back")
            }
            Some(t) => Some(t),
            // A chain keeps its own time.
            None if self.place.is_chain() => None,
            None => Some(wall_clock().max(last)),
        };
        if let Some(now) = now {
            p.backend_mut()
                .set_time(now)
                .with_context(|| format!("--at {now}: {}", self.place.name()))?;
        }
        let run_dir = self
            .place
            .ledger_dir()
            .filter(|d| ledger_dir_of(d) != *d && d.join("state").is_dir())
            .map(Path::to_path_buf);
        Ok(Session {
            p,
            me,
            check: self.check,
            json: self.json,
            run_dir,
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
/// `Cohort`'s constructor does), checked to have the stage servers' functions; `what` names
/// the ledger in refusals.
pub fn protocol_on<B: LedgerBackend>(ledger: B, what: &str) -> anyhow::Result<Protocol<B>> {
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
        .with_context(|| format!("{what}: no protocol contract was deployed on it"))?;
    let mut p = Protocol::at(ledger, contract);
    if p.stage_params().is_err() {
        bail!(
            "{what}: its protocol contract {contract} has no stage servers (it was deployed \
             before them)"
        );
    }
    Ok(p)
}

/// The address `party` has where `p` runs: an address as given; a key's on the embedded
/// ledger (derived from it), or on a chain the address that registered it (a chain address
/// derives from the key's secret, not from the public key, so it is found in the contract's
/// `Registered` events).
pub fn resolve<B: LedgerBackend>(p: &Protocol<B>, party: &Party) -> anyhow::Result<Address> {
    let key = match party {
        Party::Address(a) => return Ok(*a),
        Party::Key(k) => k,
    };
    if p.backend().chain_id().is_none() {
        return Ok(cohort_core::address_of(key));
    }
    let want = cohort_core::key_hash(key);
    let logs: Vec<_> = p
        .backend()
        .contract_logs(p.address())?
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    decode_events(p.address(), &logs)
        .into_iter()
        .find_map(|e| match e {
            CohortEvents::Registered(r) if r.keyHash == want => Some(r.who),
            _ => None,
        })
        .with_context(|| {
            format!(
                "key {}: no participant registered it on the chain's contract {} (a chain \
                 address does not follow from a public key: name an unregistered party by its \
                 address)",
                hex::encode(key),
                p.address()
            )
        })
}

impl Session {
    /// The run's directory, when `--ledger` named one.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_deref()
    }

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
        // A run's directory: the head before, to find the run's saved round that names it.
        let before = match &self.run_dir {
            Some(_) => Some(self.p.backend().head()?),
            None => None,
        };
        let sent = self.p.send(&me, call).map_err(|e| refused(name, &e))?;
        if let (Some(dir), Some(before)) = (&self.run_dir, before) {
            let after = self.p.backend().head()?;
            let state = dir.join("state");
            cohort_node::resume::note_appended(
                &state,
                (before.size, before.root),
                (after.size, after.root, after.time),
            )
            .with_context(|| format!("noting the call in {}", state.display()))?;
        }
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
            chain: self.p.backend().chain_id().is_some(),
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
    /// Its entry in the ledger (on a chain: its block).
    pub entry: u64,
    /// Gas used.
    pub gas: u64,
    /// The events it emitted, by name.
    pub events: Vec<String>,
    /// And decoded.
    #[serde(skip)]
    pub decoded: Vec<CohortEvents>,
    /// Whether it went to a chain (`entry` is then its block).
    #[serde(skip)]
    pub chain: bool,
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
                "recorded {} {} {} ({} gas; {})",
                r.call,
                if r.chain { "in block" } else { "at entry" },
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
        CohortErrors::MissingRole(x) => format!(
            "{} lacks the role this needs (role bits {}: 1 coordinator, 2 client, 4 validator, \
             8 data owner)",
            x.who, x.role
        ),
        other => crate::cmd::gov::explain_runs(other).unwrap_or_else(|| format!("{other:?}")),
    }
}

/// A party as `--server` and `--payer` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// An address.
    Address(Address),
    /// An ed25519 public key ([`resolve`] finds its address).
    Key(cohort_core::PublicKey),
}

/// `--server`, `--payer`: an address (`0x` and 40 hex digits) or an ed25519 public key (64 hex
/// digits, as a stage server's Info and `cohort keys show` give it), whose address is the one
/// the embedded ledger gives that key, or on a chain the one that registered it.
pub fn party(s: &str) -> Result<Party, String> {
    let t = s.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    let bad = || {
        "must be an address (0x and 40 hex digits) or an ed25519 public key (64 hex digits)"
            .to_owned()
    };
    match h.len() {
        40 if t.starts_with("0x") => h.parse::<Address>().map(Party::Address).map_err(|_| bad()),
        64 => {
            let mut pk = [0u8; 32];
            hex::decode_to_slice(h, &mut pk).map_err(|_| bad())?;
            Ok(Party::Key(pk))
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
