//! Model parallelism over the network (docs/pipeline.md): `cohort serve-layers`, a stage
//! server holding a range of a GPT's layers, and the client's side of `cohort model lora
//! --pipeline`, which routes each training step through such servers.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use cohort_model::fast::stages;
use cohort_model::{LanguageModel, Lora, LoraConfig};
use cohort_net::stage::{
    BackwardOutcome, Backwarded, ForwardCall, Forwarded, Named, StageClient, StageCompute,
    StageError, StageInfo, serve_stage,
};
use sha2::{Digest, Sha256};

/// SHA-256 over a model directory's `config.json` and `model.safetensors`, as a stage server
/// and its client read them: they must hold the same model.
pub fn model_sha256(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let mut h = Sha256::new();
    for name in ["config.json", "model.safetensors"] {
        let path = dir.join(name);
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().into())
}

/// The file in a model directory that holds its stream bases (`cohort model calibrate`).
pub const STREAM_BASES_FILE: &str = "stream_bases.safetensors";

/// The stream bases in `dir` (`None` when it has none), only those of the boundaries `only`
/// when given: the basis of the stream entering layer `b` is the tensors `boundary.{b}.mean`
/// (`[width]`) and `boundary.{b}.basis` (`[width, width]`, rows orthonormal).
///
/// # Errors
/// The file does not read, or holds bases that are not (shapes, values, orthonormality), or
/// lacks a boundary asked for.
pub fn load_stream_bases(
    dir: &Path,
    only: Option<&[usize]>,
) -> anyhow::Result<Option<Arc<cohort_net::stage::StreamBases>>> {
    let path = dir.join(STREAM_BASES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse_stream_bases(&bytes, &path, only).map(|b| Some(Arc::new(b)))
}

/// The stream bases in `bytes`, the contents of `path`: see [`load_stream_bases`].
///
/// # Errors
/// As [`load_stream_bases`].
pub fn parse_stream_bases(
    bytes: &[u8],
    path: &Path,
    only: Option<&[usize]>,
) -> anyhow::Result<cohort_net::stage::StreamBases> {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let bad = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let mut boundaries = std::collections::BTreeMap::new();
    for name in tensors.keys() {
        let Some(b) = name
            .strip_prefix("boundary.")
            .and_then(|r| r.strip_suffix(".mean"))
        else {
            continue;
        };
        let b: usize = b
            .parse()
            .map_err(|_| bad(format!("tensor {name}: not boundary.<layer>.mean")))?;
        if only.is_some_and(|o| !o.contains(&b)) {
            continue;
        }
        let read = |n: &str| -> anyhow::Result<Vec<f32>> {
            let t = tensors
                .get(n)
                .ok_or_else(|| bad(format!("no tensor {n}")))?;
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        let basis =
            cohort_net::stage::StreamBasis::new(read(name)?, read(&format!("boundary.{b}.basis"))?)
                .map_err(|e| bad(format!("boundary {b}: {e}")))?;
        boundaries.insert(b, basis);
    }
    for b in only.unwrap_or(&[]) {
        if !boundaries.contains_key(b) {
            return Err(bad(format!(
                "no basis for the stream entering layer {b} (`cohort model calibrate` writes \
                 every boundary)"
            )));
        }
    }
    Ok(cohort_net::stage::StreamBases::new(sha, boundaries))
}

/// `A..B` as a range of layers of a model of `total`.
fn parse_layers(s: &str, total: usize) -> anyhow::Result<std::ops::Range<usize>> {
    let bad = || {
        anyhow::anyhow!(
            "--layers {s:?}: expected A..B, the first layer and one past the last, within \
             0..{total} (this model has {total} layers)"
        )
    };
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    // A..A holds no layers: a server that answers Info only, the baseline of memory
    // measurements (`cohort bench pipeline`); clients refuse it.
    if a > b || b > total {
        return Err(bad());
    }
    Ok(a..b)
}

/// Whether parameter `name` of `m` belongs to one of `layers` (a base weight, or an adapter
/// weight, also under PEFT's `base_model.model.` prefix).
/// Whether parameter `name` is an input embedding (GPT's token and position embeddings,
/// Llama's token embedding), which only the client holds.
fn is_embedding(name: &str) -> bool {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    matches!(
        name,
        "transformer.wte.weight" | "transformer.wpe.weight" | "model.embed_tokens.weight"
    )
}

fn in_layers(m: &dyn LanguageModel, name: &str, layers: &std::ops::Range<usize>) -> bool {
    m.layer_of(name).is_some_and(|l| layers.contains(&l))
}

/// A forward a server answered, waiting for its backward.
struct Pending {
    saved: stages::Saved,
    adapter: Named,
}

/// A stage server's model side: a model (GPT or Llama family) whose layers `layers` it runs,
/// the adapter weights of each call set into it first. Calls are served one at a time.
struct LayerStage {
    model: Mutex<Box<dyn LanguageModel>>,
    /// How it cheats, when it is a dishonest server for tests (`--misbehave`).
    misbehave: Option<Misbehave>,
    /// The first output a stale server computed, which it then returns for every call.
    stale: Mutex<Option<Vec<f32>>>,
    /// Forward and backward calls received, for a crashing test server (`--misbehave
    /// crash-forward=N`, `crash-backward=N`).
    forwards: AtomicU64,
    backwards: AtomicU64,
    /// Verifiers' recomputations received (`--misbehave crash-check=N`).
    checks: AtomicU64,
    info: StageInfo,
    /// The adapter configuration the server was first asked for; it serves only that one.
    adapter: Mutex<Option<LoraConfig>>,
    pending: Mutex<VecDeque<((u64, u64), Pending)>>,
    /// Where and as whom it attests fraud claims (`--attest-ledger`), one at a time.
    attester: Option<Mutex<Attester>>,
    /// The model's stream bases of its two boundaries, when the model has them.
    bases: Option<Arc<cohort_net::stage::StreamBases>>,
}

/// A verifier's attesting side: its ledger and its key.
struct Attester {
    place: crate::cmd::stage::Place,
    key: PathBuf,
    public_key: cohort_core::PublicKey,
}

impl Attester {
    /// The ledger or chain at `place` opened as the key in `key` (checked: the key loads, the
    /// ledger opens or the chain answers, and the stage contract is there), then closed.
    fn new(place: crate::cmd::stage::Place, key: &Path) -> anyhow::Result<Self> {
        let signer = crate::cmd::stage::Signer::on(place.clone(), key.to_owned());
        let s = signer.open().context("--attest-ledger")?;
        Ok(Self {
            place,
            key: key.to_owned(),
            public_key: s.me.public_key(),
        })
    }

    /// Attests `claim` (a forward or backward claim's evidence, JSON), when it holds and carries this
    /// verifier's own signed recomputation.
    fn attest(&self, claim: &[u8]) -> anyhow::Result<cohort_net::stage::Attested> {
        let c = crate::cmd::stage::evidence::parse(claim, None, "the claim")?;
        if c.verifier_key != self.public_key {
            bail!(
                "the claim's verifier key {} is not this verifier's ({}): a verifier attests \
                 its own recomputations only",
                hex::encode(c.verifier_key),
                hex::encode(self.public_key)
            );
        }
        if !c.verifier_signature_checked {
            bail!(
                "the claim lacks the digests of the rows this verifier recomputed, so its \
                 signature cannot be checked"
            );
        }
        // Another process (a client paying, another verifier attesting) may hold the ledger
        // for a moment: try again for up to ten seconds.
        let signer = crate::cmd::stage::Signer::on(self.place.clone(), self.key.clone());
        let mut tries = 0;
        let mut s = loop {
            match signer.open() {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("--attest-ledger busy ({e:#}); trying again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        let a = crate::cmd::stage::attest::attest(&mut s, &c, c.session)?;
        let attested = cohort_net::stage::Attested {
            claim_id: a.claim_id.to_string(),
            attestations: u64::try_from(a.count).unwrap_or(u64::MAX),
            quorum: u32::from(a.quorum),
            slashed: a.slashed.is_some(),
        };
        eprintln!(
            "serve-layers: attested claim {} against {} (attestation {} of {}){}",
            attested.claim_id,
            a.server,
            attested.attestations,
            attested.quorum,
            if attested.slashed {
                "; the server is slashed"
            } else {
                ""
            }
        );
        Ok(attested)
    }
}

/// Forwards kept waiting for their backward, at most (the oldest is dropped first).
const MAX_PENDING: usize = 64;

impl LayerStage {
    /// A server of `model`'s layers that `info` names, cheating as `misbehave` says (tests).
    fn new(model: Box<dyn LanguageModel>, info: StageInfo, misbehave: Option<Misbehave>) -> Self {
        Self {
            attester: None,
            bases: None,
            model: Mutex::new(model),
            misbehave,
            stale: Mutex::new(None),
            forwards: AtomicU64::new(0),
            backwards: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            info,
            adapter: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// Counts a training call of `phase` received (a forward or backward, not inference; or a
    /// verifier's recomputation, `Phase::Check`); a crashing test server (`--misbehave
    /// crash-forward=N`, `crash-backward=N` or `crash-check=N`) exits the process on its N-th,
    /// before answering, so that its client sees the connection break as on a real crash.
    fn received(&self, phase: Phase) {
        let counter = match phase {
            Phase::Forward => &self.forwards,
            Phase::Backward => &self.backwards,
            Phase::Check => &self.checks,
        };
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let at = match (self.misbehave, phase) {
            (Some(Misbehave::CrashForward(at)), Phase::Forward)
            | (Some(Misbehave::CrashBackward(at)), Phase::Backward)
            | (Some(Misbehave::CrashCheck(at)), Phase::Check) => at,
            _ => return,
        };
        if n == at {
            eprintln!(
                "serve-layers: crashing on {phase} call {n}, before answering (--misbehave, a \
                 test aid)"
            );
            std::process::exit(3);
        }
    }

    /// Sets `adapter` (names of this server's layers' LoRA weights) into the model, attaching
    /// an adapter of `config` on the first call.
    fn set_adapter(
        &self,
        m: &mut dyn LanguageModel,
        config: &LoraConfig,
        adapter: &Named,
        training: bool,
    ) -> Result<(), String> {
        // What shapes the computation: the rank, the scale, the targets, the bias; and, in
        // training, the dropout. A saved adapter's metadata (its base model's path, inference
        // mode, `fan_in_fan_out`, which attaching sets from the model's layout) does not.
        let fits = |c: &LoraConfig| {
            c.r == config.r
                && c.lora_alpha == config.lora_alpha
                && c.target_modules == config.target_modules
                && c.bias == config.bias
                && (!training || c.lora_dropout == config.lora_dropout)
        };
        let mut attached = self.adapter.lock().map_err(|_| "poisoned".to_owned())?;
        match &*attached {
            None => {
                let linears = m.linear_modules();
                let w = m.weights_mut();
                let lora = Lora::attach(&mut w.params, &linears, config.clone(), 0)
                    .map_err(|e| format!("the adapter configuration: {e}"))?;
                w.lora = Some(lora);
                *attached = Some(config.clone());
            }
            Some(c) if !fits(c) => {
                return Err(
                    "this server already serves an adapter of another configuration (rank, \
                     alpha, targets or dropout); start another server for it"
                        .into(),
                );
            }
            Some(_) => {}
        }
        let layers = &self.info.layers;
        for (name, values) in adapter {
            if !in_layers(m, name, layers) {
                return Err(format!("{name} is not a weight of layers {layers:?}"));
            }
            let p = m
                .params()
                .get(name)
                .ok_or_else(|| format!("{name} is not an adapter weight of this model"))?;
            if p.var.elem_count() != values.len() {
                return Err(format!(
                    "{name}: {} values for a tensor of {}",
                    values.len(),
                    p.var.elem_count()
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(format!("{name} holds a value that is not finite"));
            }
            let t = Tensor::from_vec(values.clone(), p.var.shape(), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            p.var.set(&t).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl StageCompute for LayerStage {
    fn info(&self) -> StageInfo {
        self.info.clone()
    }

    fn forward(&self, call: ForwardCall) -> Result<Vec<f32>, String> {
        if !call.rows.is_empty() {
            self.received(Phase::Check);
        } else if !call.inference {
            self.received(Phase::Forward);
        }
        if call.inference && call.adapter_config.is_none() && call.adapter.is_empty() {
            // The base model: the adapter, if one is attached, set aside for this call.
            let mut m = self.model.lock().map_err(|_| "poisoned".to_owned())?;
            let lora = m.weights_mut().lora.take();
            let rows: Vec<usize> = match call.rows.is_empty() {
                true => (0..call.batch).collect(),
                false => call.rows.clone(),
            };
            let r = stages::forward_rows(
                &**m,
                self.info.layers.clone(),
                &call.stream,
                &rows,
                call.batch,
                call.tokens,
            );
            m.weights_mut().lora = lora;
            return r.map_err(|e| e.to_string());
        }
        let config: LoraConfig = call
            .adapter_config
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| format!("the adapter configuration does not read: {e}"))?
            .ok_or("no adapter configuration: a client trains an adapter")?;
        let mut m = self.model.lock().map_err(|_| "poisoned".to_owned())?;
        self.set_adapter(&mut **m, &config, &call.adapter, !call.inference)?;
        // A dishonest server running a smaller model: its layers but the last.
        let mut layers = self.info.layers.clone();
        if matches!(self.misbehave, Some(Misbehave::SkipLayer)) {
            layers.end -= 1;
        }
        if let Some(l) = &m.weights().lora {
            l.set_dropout_key(call.dropout_key);
        }
        let r = if !call.rows.is_empty() || call.inference {
            // A verifier's recomputation of some rows, or inference: nothing kept.
            let all: Vec<usize>;
            let rows = match call.rows.is_empty() {
                true => {
                    all = (0..call.batch).collect();
                    &all
                }
                false => &call.rows,
            };
            stages::forward_rows(
                &**m,
                layers.clone(),
                &call.stream,
                rows,
                call.batch,
                call.tokens,
            )
            .map(|out| (out, None))
        } else if layers.is_empty() {
            Ok((call.stream.clone(), None))
        } else {
            stages::forward(&**m, layers, &call.stream, call.batch, call.tokens)
                .map(|(out, saved)| (out, Some(saved)))
        };
        if let Some(l) = &m.weights().lora {
            l.set_dropout_key(None);
        }
        let (mut out, saved) = r.map_err(|e| e.to_string())?;
        let Some(saved) = saved else {
            return Ok(out);
        };
        match self.misbehave {
            None
            | Some(
                Misbehave::SkipLayer
                | Misbehave::GradNoise(_)
                | Misbehave::CrashForward(_)
                | Misbehave::CrashBackward(_)
                | Misbehave::CrashCheck(_)
                | Misbehave::OtherKind,
            ) => {}
            Some(Misbehave::Bf16) => {
                // A lower-precision model: every output rounded to bfloat16.
                for x in &mut out {
                    let b = x.to_bits();
                    *x = f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & !0xffff);
                }
            }
            Some(Misbehave::Noise(rel)) => {
                // Deterministic relative noise, different in every element.
                let mut rng = cohort_core::SplitMix64::new(call.session ^ call.step);
                for x in &mut out {
                    let u = rng.below(1 << 20) as f32 / (1 << 20) as f32 * 2.0 - 1.0;
                    *x += *x * rel as f32 * u;
                }
            }
            Some(Misbehave::Stale) => {
                let mut stale = self.stale.lock().map_err(|_| "poisoned".to_owned())?;
                match &*stale {
                    Some(first) if first.len() == out.len() => out.clone_from(first),
                    _ => *stale = Some(out.clone()),
                }
            }
        }
        let mut pending = self.pending.lock().map_err(|_| "poisoned".to_owned())?;
        pending.retain(|(k, _)| *k != (call.session, call.step));
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back((
            (call.session, call.step),
            Pending {
                saved,
                adapter: call.adapter,
            },
        ));
        Ok(out)
    }

    fn backward(
        &self,
        session: u64,
        step: u64,
        grad: Vec<f32>,
    ) -> Result<(Vec<f32>, Named), String> {
        self.received(Phase::Backward);
        let p = {
            let mut pending = self.pending.lock().map_err(|_| "poisoned".to_owned())?;
            let i = pending
                .iter()
                .position(|(k, _)| *k == (session, step))
                .ok_or_else(|| {
                    format!("no forward of session {session} step {step} is waiting here")
                })?;
            pending.remove(i).map(|(_, p)| p).ok_or("vanished")?
        };
        let mut m = self.model.lock().map_err(|_| "poisoned".to_owned())?;
        let config = self
            .adapter
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .clone()
            .ok_or("no adapter")?;
        self.set_adapter(&mut **m, &config, &p.adapter, true)?;
        let (mut dx, grads) = stages::backward(&**m, p.saved, &grad).map_err(|e| e.to_string())?;
        if let Some(Misbehave::GradNoise(rel)) = self.misbehave {
            // A dishonest backward: relative noise on the gradient it returns.
            let mut rng = cohort_core::SplitMix64::new(session ^ step ^ 0x9e37);
            for x in &mut dx {
                let u = rng.below(1 << 20) as f32 / (1 << 20) as f32 * 2.0 - 1.0;
                *x += *x * rel as f32 * u;
            }
        }
        let mut named: Named = grads.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((dx, named))
    }

    fn stream_bases(&self) -> Option<Arc<cohort_net::stage::StreamBases>> {
        self.bases.clone()
    }

    fn attest(&self, claim: &[u8]) -> Result<cohort_net::stage::Attested, String> {
        let Some(a) = &self.attester else {
            return Err(
                "this server attests nothing (a verifier attests with `serve-layers \
                        --attest-ledger DIR --key FILE`)"
                    .into(),
            );
        };
        let a = a.lock().map_err(|_| "poisoned".to_owned())?;
        a.attest(claim).map_err(|e| format!("{e:#}"))
    }
}

/// `cohort serve-layers`: hold layers A..B of a GPT and run them for pipeline clients.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The model directory (config.json, model.safetensors: a GPT).
    dir: PathBuf,
    /// The layers to hold: A..B, the first and one past the last (0..2: layers 0 and 1).
    #[arg(long)]
    layers: String,
    /// Where to listen: HOST:PORT (port 0: any free port, printed).
    #[arg(long)]
    listen: String,
    /// The server's TLS certificate chain (PEM; `cohort keys tls` makes one).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "insecure",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain text instead of TLS (loopback and tests only).
    #[arg(long)]
    insecure: bool,
    /// Replace the weights of this server's linear layers by truncated SVD factors of this
    /// rank, in [1, 65536] (where that saves parameters; `cohort model svd` reports the cost
    /// in perplexity by rank): less memory and compute, an approximation of the model. Its
    /// clients and verifiers must accept the same rank.
    #[arg(long, value_name = "K", value_parser = crate::args::int_in(1..=65_536usize))]
    svd_rank: Option<usize>,
    /// The server's key file (`cohort keys new`; mode 0600): it signs every answer's
    /// commitment, so that a wrong answer can be proved against it. Without it, answers are
    /// unsigned.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// As a verifier, attest on this embedded ledger, under --key, the fraud claims clients
    /// send it, as `cohort stage attest` does: each is checked first and must carry this
    /// server's own signed recomputation. The ledger is opened for each attestation only, so
    /// that other processes can use it between (docs/pipeline.md).
    #[arg(long, value_name = "DIR", requires = "key")]
    attest_ledger: Option<PathBuf>,
    /// As a verifier, attest on the protocol contract --attest-contract of the EVM chain at
    /// this JSON-RPC endpoint instead, signing with the chain key --key derives.
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "attest_ledger",
        requires_all = ["key", "attest_contract"]
    )]
    attest_chain_rpc: Option<String>,
    /// The protocol contract's address on that chain.
    #[cfg(feature = "evm-rpc")]
    #[arg(long, value_name = "ADDR", requires = "attest_chain_rpc")]
    attest_contract: Option<alloy_primitives::Address>,
    /// Hex private key of an account that pays the attestations' gas on that chain (for
    /// anvil, its first default account).
    #[cfg(feature = "evm-rpc")]
    #[arg(
        long,
        value_name = "HEX",
        env = "COHORT_FUNDER_KEY",
        hide_env_values = true
    )]
    attest_funder_key: Option<String>,
    /// Check everything a start would (the model, the layers, TLS, the address), say what
    /// would be served, and exit.
    #[arg(long)]
    check: bool,
    /// A dishonest or crashing server, for testing verification and failover (never for real
    /// use): `noise=R` adds relative noise of size R (in (0, 1]) to every forward output;
    /// `stale` returns the first output it computed for every later call of the same size;
    /// `bf16` rounds its outputs to bfloat16 (a lower-precision model); `skip-layer` runs its
    /// layers but the last (a smaller model); `grad-noise=R` adds relative noise R to the
    /// gradient every backward returns; `crash-forward=N` (`crash-backward=N`,
    /// `crash-check=N`), N in [1, 1000000000], exits the process on its N-th forward
    /// (backward, verification) call, before answering. A dishonest server answers
    /// verifiers' calls honestly.
    #[arg(long, value_name = "HOW", value_parser = parse_misbehave)]
    misbehave: Option<Misbehave>,
}

/// A stage call's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Forward,
    Backward,
    /// A verifier's recomputation of some rows.
    Check,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Check => "verification",
        })
    }
}

/// How a test server cheats or fails (`--misbehave`).
#[derive(Debug, Clone, Copy)]
pub enum Misbehave {
    /// Relative noise of this size on every output.
    Noise(f64),
    /// The first output, replayed.
    Stale,
    /// A lower-precision model: outputs rounded to bfloat16.
    Bf16,
    /// A smaller model: its layers but the last.
    SkipLayer,
    /// Relative noise of this size on the gradient every backward returns.
    GradNoise(f64),
    /// The process exits on this forward call (counted from 1), before answering.
    CrashForward(u64),
    /// The process exits on this backward call (counted from 1), before answering.
    CrashBackward(u64),
    /// The process exits on this verification call (a verifier's recomputation, counted
    /// from 1), before answering.
    CrashCheck(u64),
    /// Computes honestly but announces another compute kind (another build or CPU), which
    /// clients refuse to pair with verifiers of this one.
    OtherKind,
}

/// The most calls a crashing test server counts before its crash.
const MAX_CRASH_AT: u64 = 1_000_000_000;

fn parse_misbehave(s: &str) -> Result<Misbehave, String> {
    match s {
        "stale" => return Ok(Misbehave::Stale),
        "bf16" => return Ok(Misbehave::Bf16),
        "skip-layer" => return Ok(Misbehave::SkipLayer),
        "other-kind" => return Ok(Misbehave::OtherKind),
        _ => {}
    }
    let bad = || {
        format!(
            "{s:?}: expected noise=R or grad-noise=R (R in (0, 1]), stale, bf16, skip-layer, \
             other-kind, crash-forward=N, crash-backward=N or crash-check=N (N in [1, \
             {MAX_CRASH_AT}])"
        )
    };
    let (how, value) = s.split_once('=').ok_or_else(bad)?;
    match how {
        "noise" | "grad-noise" => {
            let r: f64 = value.parse().map_err(|_| bad())?;
            if !(r.is_finite() && r > 0.0 && r <= 1.0) {
                return Err(bad());
            }
            Ok(match how {
                "noise" => Misbehave::Noise(r),
                _ => Misbehave::GradNoise(r),
            })
        }
        "crash-forward" | "crash-backward" | "crash-check" => {
            let n: u64 = value.parse().map_err(|_| bad())?;
            if !(1..=MAX_CRASH_AT).contains(&n) {
                return Err(bad());
            }
            Ok(match how {
                "crash-forward" => Misbehave::CrashForward(n),
                "crash-backward" => Misbehave::CrashBackward(n),
                _ => Misbehave::CrashCheck(n),
            })
        }
        _ => Err(bad()),
    }
}

impl ServeArgs {
    /// Where a verifier attests: --attest-ledger, or the chain of --attest-chain-rpc.
    fn attest_place(&self) -> Option<crate::cmd::stage::Place> {
        #[cfg(feature = "evm-rpc")]
        if let (Some(url), Some(contract)) = (&self.attest_chain_rpc, self.attest_contract) {
            return Some(crate::cmd::stage::Place::chain(
                url.clone(),
                contract,
                self.attest_funder_key.clone(),
            ));
        }
        self.attest_ledger
            .clone()
            .map(crate::cmd::stage::Place::embedded)
    }

    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let tls = match (&self.tls_cert, &self.tls_key, self.insecure) {
            (Some(c), Some(k), false) => Some(cohort_net::tls::server_config(c, k)?),
            (None, None, true) => None,
            _ => bail!(
                "serve-layers needs --tls-cert and --tls-key (`cohort keys tls` makes them), or \
                 --insecure for plain text"
            ),
        };
        let signer = self
            .key
            .as_deref()
            .map(cohort_core::keyfile::load)
            .transpose()
            .context("--key")?;
        let mut model = cohort_model::load_mapped_any(&self.dir, &Device::Cpu)
            .with_context(|| format!("mapping model {}", self.dir.display()))?;
        let total = model.num_layers();
        let layers = parse_layers(&self.layers, total)?;
        if let Some(k) = self.svd_rank {
            // Only this server's layers are read and factored; the rest stays unmapped.
            let paths: Vec<String> = model
                .linear_modules()
                .into_iter()
                .map(|l| l.path)
                .filter(|p| in_layers(&*model, &format!("{p}.weight"), &layers))
                .collect();
            let r = cohort_model::svd::factorize_layers(&mut *model, k, &paths)
                .context("--svd-rank")?;
            if r.layers.is_empty() {
                bail!(
                    "--svd-rank {k}: no linear layer of layers {layers:?} is smaller as rank-{k} \
                     factors; a smaller rank"
                );
            }
            eprintln!(
                "serve-layers: {} linear layers as rank-{k} SVD factors: {} parameters instead of \
                 {} ({:.1}% fewer), energy kept {:.4} to {:.4}",
                r.layers.len(),
                r.params_after,
                r.params_before,
                100.0 * (1.0 - r.params_after as f64 / r.params_before.max(1) as f64),
                r.layers
                    .iter()
                    .map(|l| l.energy)
                    .fold(f64::INFINITY, f64::min),
                r.layers.iter().map(|l| l.energy).fold(0.0, f64::max),
            );
        }
        let bases = load_stream_bases(&self.dir, Some(&[layers.start, layers.end]))?;
        let info = StageInfo {
            model_sha256: model_sha256(&self.dir)?,
            stream_bases: bases.as_ref().map(|b| b.sha256()),
            layers: layers.clone(),
            width: model.hidden_size(),
            total_layers: total,
            public_key: signer.as_ref().map(cohort_core::Identity::public_key),
            svd_rank: self.svd_rank.unwrap_or(0),
            compute_kind: match self.misbehave {
                Some(Misbehave::OtherKind) => {
                    format!(
                        "{} (a test server of another kind)",
                        cohort_model::kernels::compute_kind()
                    )
                }
                _ => cohort_model::kernels::compute_kind(),
            },
        };
        let attester = match (self.attest_place(), &self.key) {
            (Some(place), Some(k)) => Some(Attester::new(place, k)?),
            _ => None,
        };
        let listener = std::net::TcpListener::bind(&self.listen)
            .with_context(|| format!("--listen {}", self.listen))?;
        if layers.is_empty() {
            eprintln!(
                "serve-layers: --layers {}: no layers; this server answers Info only (a \
                 baseline for memory measurements)",
                self.layers
            );
        }
        if self.check {
            println!(
                "would serve layers {}..{} of {} ({} layers) on {}",
                layers.start,
                layers.end,
                self.dir.display(),
                total,
                self.listen
            );
            return Ok(ExitCode::SUCCESS);
        }
        let rt = cohort_net::run::server_runtime(2)?;
        match self.misbehave {
            None => {}
            Some(
                m @ (Misbehave::CrashForward(_)
                | Misbehave::CrashBackward(_)
                | Misbehave::CrashCheck(_)),
            ) => {
                eprintln!("serve-layers: a CRASHING server ({m:?}), for testing failover");
            }
            Some(Misbehave::OtherKind) => eprintln!(
                "serve-layers: a server announcing another compute kind, for testing verifier \
                 pairing"
            ),
            Some(m) => {
                eprintln!("serve-layers: a DISHONEST server ({m:?}), for testing verification")
            }
        }
        let mut stage = LayerStage::new(model, info, self.misbehave);
        stage.bases = bases;
        if let Some(a) = attester {
            eprintln!(
                "serve-layers: attests the fraud claims clients send it on {}",
                a.place.name()
            );
            stage.attester = Some(Mutex::new(a));
        }
        let addr = serve_stage(&rt, Arc::new(stage), signer, listener, tls)?;
        println!(
            "serving layers {}..{} of {} ({} layers) on {addr}",
            layers.start,
            layers.end,
            self.dir.display(),
            total
        );
        // Serves until killed.
        loop {
            std::thread::park();
        }
    }
}

/// A server to dial: its URL, and its TLS (`None` for plain text).
pub type Dial = (String, Option<cohort_net::tls::ClientTlsConfig>);

/// The servers at `urls` to dial, with the TLS of `ca` (https://) or plain text when
/// `insecure` (http://); `what` (a flag or a config field) names a bad URL.
fn dials<'a>(
    what: &str,
    urls: impl IntoIterator<Item = &'a str>,
    ca: Option<&Path>,
    insecure: bool,
    deadline: Duration,
) -> anyhow::Result<Vec<Dial>> {
    urls.into_iter()
        .map(|u| {
            crate::cmd::federation::dial_to(what, u, ca, None, insecure, deadline)
                .map(|d| (d.url, d.tls))
        })
        .collect()
}

/// [`dials`] for stages listed in the order of their layers, each `URL` or `URL|SPARE|...`
/// (a spare replaces a server that stops answering).
pub fn stage_dials(
    what: &str,
    stages: &[String],
    ca: Option<&Path>,
    insecure: bool,
    deadline: Duration,
) -> anyhow::Result<Vec<Vec<Dial>>> {
    stages
        .iter()
        .map(|s| dials(what, s.split('|'), ca, insecure, deadline))
        .collect()
}

/// The deadline of every stage call unless told otherwise (`--stage-timeout`).
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// [`cohort_model::train::evaluate`] of `m` on `tokens` with its layers on the servers of
/// `p`: this process runs the embeddings and the head only.
pub fn evaluate_through(
    p: &mut Pipeline,
    m: &dyn LanguageModel,
    tokens: &[u32],
    batch: usize,
    seq: usize,
    max_windows: usize,
) -> anyhow::Result<cohort_model::train::EvalStats> {
    let vocab = m.vocab_size();
    let mut logits = |x: &Tensor| {
        let (b, t) = x.dims2()?;
        let ids: Vec<u32> = x.flatten_all()?.to_vec1()?;
        let l = p
            .logits(m, &ids, b, t)
            .map_err(|e| cohort_model::Error::Data(format!("{e:#}")))?;
        Ok(Tensor::from_vec(l, (b, t, vocab), x.device())?)
    };
    Ok(cohort_model::train::evaluate_with(
        &mut logits,
        tokens,
        batch,
        seq,
        max_windows,
        &Device::Cpu,
    )?)
}

/// The flags of a command that runs a model's layers on stage servers instead of here
/// (`cohort model generate`, `cohort model eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Run the model's layers on stage servers (`cohort serve-layers`) holding them, in the
    /// order of their layers, comma-separated; a stage's replacements after `|`. This process
    /// runs only the embeddings and the head (docs/pipeline.md). GPT and Llama-family models.
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub pipeline: Vec<String>,
    /// The CA certificate (PEM) that signed the stage servers' TLS certificates.
    #[arg(
        long,
        value_name = "FILE",
        requires = "pipeline",
        conflicts_with = "insecure"
    )]
    pub ca: Option<PathBuf>,
    /// Dial the stage servers over plain text (http://; loopback and tests only).
    #[arg(long, requires = "pipeline")]
    pub insecure: bool,
    /// Seconds each stage call may take, in [1, 86400].
    #[arg(long, default_value_t = 120, value_parser = crate::args::int_in(1..=86_400u64), requires = "pipeline")]
    pub stage_timeout: u64,
}

impl PipelineArgs {
    /// The pipeline of `--pipeline` for `model` (loaded from `dir`), its adapter's if it has
    /// one; `None` without `--pipeline`.
    pub fn connect(
        &self,
        dir: &Path,
        model: &dyn LanguageModel,
    ) -> anyhow::Result<Option<Pipeline>> {
        if self.pipeline.is_empty() {
            return Ok(None);
        }
        let deadline = Duration::from_secs(self.stage_timeout);
        let stages = stage_dials(
            "--pipeline",
            &self.pipeline,
            self.ca.as_deref(),
            self.insecure,
            deadline,
        )?;
        let adapter = model.weights().lora.as_ref().map(|l| l.config.clone());
        Ok(Some(Pipeline::connect_stages(
            &stages,
            dir,
            model.num_layers(),
            adapter.as_ref(),
            deadline,
        )?))
    }
}

/// The client's side: servers that together hold every layer of its model, in order.
pub struct Pipeline {
    stages: Vec<(std::ops::Range<usize>, Servers)>,
    adapter_config: Option<String>,
    session: u64,
    step: u64,
    /// Each call's deadline.
    deadline: Duration,
    /// Stage calls that got no answer and were replayed on a replacement server.
    replays: u64,
    /// Verifiers (servers holding the same layers as a stage) and the share of calls checked.
    verify: Option<Verify>,
    /// Where the fraud claims' evidence goes.
    evidence: Option<PathBuf>,
    /// The fraud claims so far, each against a server dropped and routed around.
    caught: Vec<Claim>,
    /// Inference calls made ([`Pipeline::logits`]).
    inference_calls: u64,
    /// How streams and gradients travel (`cohort_net::stage::COMPRESSION_*`).
    compression: u32,
    /// The model's stream bases, for codecs that send activations in them.
    bases: Option<Arc<cohort_net::stage::StreamBases>>,
    /// Bytes of streams and gradients sent and received by training steps.
    stream_bytes: u64,
    /// Model tokens each server (by URL, with its key) processed in training steps it
    /// completed: what it is paid for.
    served: Vec<(String, Option<cohort_core::PublicKey>, u64)>,
}

/// `call` forward on the stage `servers` (of `layers`), failed over when a server does not
/// answer, and checked by `verify`: drawn after the server answered, so that it cannot know
/// which rows are checked. A server caught (`what` names the call) is dropped for the rest of
/// the run, its claims recorded, and the call replayed on the stage's next server, whose
/// answer is checked the same way.
#[allow(clippy::too_many_arguments)]
fn forward_checked(
    servers: &mut Servers,
    layers: &std::ops::Range<usize>,
    call: &ForwardCall,
    verify: &mut Option<Verify>,
    caught: &mut Vec<Claim>,
    evidence: Option<&Path>,
    replays: &mut u64,
    what: &str,
) -> anyhow::Result<Forwarded> {
    let mut out = servers.forward(layers, call, replays)?;
    loop {
        let claims = match verify {
            Some(v) => v.check(layers, call, &servers.active, &out)?,
            None => Vec::new(),
        };
        let Some(bad) = claims.first() else {
            return Ok(out);
        };
        let why = format!(
            "stage server {} (layers {layers:?}) answered {what} with an output that differs \
             from verifier {}'s recomputation (row {}: committed SHA-256 {}, recomputed {})",
            servers.url(),
            bad.verifier,
            bad.row,
            bad.committed,
            bad.recomputed
        );
        let claims: Vec<Claim> = claims.into_iter().map(Claim::Forward).collect();
        if let Some(v) = verify {
            v.attest(&claims);
        }
        servers.drop_caught(&why, claims, caught, evidence)?;
        out = servers.forward(layers, call, replays)?;
    }
}

/// The stage protocol's code of a compression named on the command line: `none`, `int8`,
/// `int4`, `int5-3`, or `qF/B` with optional suffixes `s` (gradients rounded stochastically),
/// `c` (one scale for a call's gradients), `r` (a range coder in place of Huffman codes) and
/// `k` (activations in the model's stream bases): activations in F steps each side of zero,
/// gradients in B, both odd in [1, 127], entropy-coded (`q7/7` is `int4`, `q15/3s` is
/// `int5-3`).
///
/// # Errors
/// An unknown name, named with those known.
pub fn compression(name: &str) -> anyhow::Result<u32> {
    if let Some((_, c)) = cohort_net::stage::COMPRESSIONS
        .iter()
        .find(|(n, _)| *n == name)
    {
        return Ok(*c);
    }
    let known = || {
        let names: Vec<&str> = cohort_net::stage::COMPRESSIONS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        format!(
            "compression {name:?}: known are {}, and qF/B[s][c][r][k] (F and B odd steps in [1, \
             127], s: stochastic gradients, c: one scale a call, r: a range coder, k: activations \
             in the model's stream bases)",
            names.join(", ")
        )
    };
    let spec = name.strip_prefix('q').with_context(known)?;
    let (f, b) = spec.split_once('/').with_context(known)?;
    let digits = b.trim_end_matches(['s', 'c', 'r', 'k']);
    let flags = &b[digits.len()..];
    // Each flag at most once, in any order.
    if flags
        .chars()
        .enumerate()
        .any(|(i, c)| flags[i + 1..].contains(c))
    {
        bail!(known());
    }
    let (f, b): (u32, u32) = match (f.parse(), digits.parse()) {
        (Ok(f), Ok(b)) => (f, b),
        _ => bail!(known()),
    };
    let has = |c| flags.contains(c);
    cohort_net::stage::custom_compression(f, b, has('s'), has('c'), has('r'), has('k'))
        .map_err(|e| anyhow::anyhow!("compression {name:?}: {e}"))
}

/// Inference calls' session: the client's, with these bits flipped.
const INFERENCE_SESSION: u64 = 0x1f0e_1f0e_1f0e_1f0e;

/// One stage's servers: the one in use and its replacements left, the next first
/// (`--pipeline A|A2|A3`). A call that gets no answer (the server unreachable, its connection
/// broken, or past the deadline) moves the stage to its next replacement for the rest of the
/// run and is replayed there from the step's inputs, which the client keeps. A refusal is an
/// answer: another server would give it again, so it stays an error.
struct Servers {
    active: StageClient,
    spares: VecDeque<StageClient>,
}

/// Whether `e` is a call that got no answer, which a replacement can take over.
fn unanswered(e: &StageError) -> bool {
    matches!(
        e,
        StageError::Unreachable { .. } | StageError::Deadline { .. }
    )
}

/// The first index where `a` and `b` differ bit for bit, if any.
fn first_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    (0..a.len().max(b.len()))
        .find(|&i| a.get(i).map(|x| x.to_bits()) != b.get(i).map(|x| x.to_bits()))
}

impl Servers {
    /// Drops the server in use, which `claims` accuse (`why` says of what), for the rest of the
    /// run: the claims are recorded (and written to `evidence`), and the stage moves to its
    /// next server, or the training stops when there is none.
    fn drop_caught(
        &mut self,
        why: &str,
        claims: impl IntoIterator<Item = Claim>,
        caught: &mut Vec<Claim>,
        evidence: Option<&Path>,
    ) -> anyhow::Result<()> {
        caught.extend(claims);
        if let Some(path) = evidence {
            crate::output::write_json(path, caught)
                .with_context(|| format!("--evidence {}", path.display()))?;
        }
        let Some(next) = self.spares.pop_front() else {
            bail!(
                "{why}: it is dropped, and no other server holds these layers; nothing was \
                 written (list another after it with `|`)"
            );
        };
        eprintln!(
            "pipeline: {why}: it is dropped; routing around it to {}",
            next.url()
        );
        self.active = next;
        Ok(())
    }

    /// The server in use.
    fn url(&self) -> &str {
        self.active.url()
    }

    /// `f` on the verifier in use (of `layers`), and on its next replacement, for the rest of
    /// the run, when it does not answer (`replaced` counts them); an error when none is
    /// left: work no one can check must not be paid, so the training stops.
    fn verifier_call<T>(
        &mut self,
        layers: &std::ops::Range<usize>,
        replaced: &mut u64,
        mut f: impl FnMut(&mut StageClient) -> Result<T, StageError>,
    ) -> anyhow::Result<T> {
        loop {
            match f(&mut self.active) {
                Ok(x) => return Ok(x),
                Err(e) if unanswered(&e) => {
                    let Some(next) = self.spares.pop_front() else {
                        bail!(
                            "verifier of layers {layers:?}: {e}, and no replacement is left for \
                             it: the training stops (work no one checks is not paid) and \
                             nothing was written (list a replacement after the verifier with \
                             `|`: --verifiers ...,{}|URL)",
                            self.url()
                        );
                    };
                    eprintln!(
                        "pipeline: verifier of layers {layers:?}: {e}; replaced by {}",
                        next.url()
                    );
                    self.active = next;
                    *replaced += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Moves to the next replacement after `e`, the failure of the `phase` of `step`, saying
    /// so on standard error; an error naming the server when no replacement is left.
    fn fail_over(
        &mut self,
        e: &StageError,
        layers: &std::ops::Range<usize>,
        phase: Phase,
        step: u64,
    ) -> anyhow::Result<()> {
        let Some(next) = self.spares.pop_front() else {
            bail!(
                "{e} (the {phase} of step {step}, layers {layers:?}), and no replacement is left \
                 for these layers: the training stops and nothing was written (list a \
                 replacement after the server with `|`: --pipeline ...,{}|URL,...)",
                self.url()
            );
        };
        eprintln!(
            "pipeline: {e} (the {phase} of step {step}, layers {layers:?}); replaying it on \
             the replacement {}",
            next.url()
        );
        self.active = next;
        Ok(())
    }

    /// `call` forward, on a replacement if the server in use does not answer.
    fn forward(
        &mut self,
        layers: &std::ops::Range<usize>,
        call: &ForwardCall,
        replays: &mut u64,
    ) -> anyhow::Result<Forwarded> {
        loop {
            match self.active.forward(call) {
                Ok(out) => return Ok(out),
                Err(e) if unanswered(&e) => {
                    self.fail_over(&e, layers, Phase::Forward, call.step)?;
                    *replays += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The backward of `call`, whose forward gave `out`, on a replacement if the server in use
    /// does not answer. A replacement has none of the step's activations: it is sent `call`
    /// again first, and must give `out` again, bit for bit.
    fn backward(
        &mut self,
        layers: &std::ops::Range<usize>,
        call: &ForwardCall,
        out: &[f32],
        grad: &[f32],
        replays: &mut u64,
    ) -> anyhow::Result<Backwarded> {
        // The server that gave `out`.
        let gave = self.url().to_owned();
        let mut r = self.active.backward_signed(call.session, call.step, grad);
        loop {
            let e = match r {
                Ok(answer) => return Ok(answer),
                Err(e) if unanswered(&e) => e,
                Err(e) => return Err(e.into()),
            };
            self.fail_over(&e, layers, Phase::Backward, call.step)?;
            *replays += 1;
            let again = match self.active.forward(call) {
                Ok(again) => again,
                Err(e) if unanswered(&e) => {
                    r = Err(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(i) = first_difference(out, &again.stream) {
                bail!(
                    "stage server {} (layers {layers:?}), replaying the forward of step {} for \
                     its backward, gave an output that differs from the one {gave} gave \
                     (first at value {i}: {:?} against {:?}): one of them is \
                     dishonest, or they compute differently (the kernels give the same bits on \
                     the same build and CPU kind); nothing was written",
                    self.url(),
                    call.step,
                    again.stream.get(i),
                    out.get(i)
                );
            }
            r = self.active.backward_signed(call.session, call.step, grad);
        }
    }
}

/// Sampled recomputation. After a stage server answers a forward call with its stream and its
/// commitment (a digest per row), each row (sequence) of the call is drawn for checking with
/// probability `rate`, with randomness of the client's own: the server cannot know which rows
/// will be checked. The drawn rows' inputs go to a verifier holding the same layers, which
/// recomputes only those rows; its digests must equal the server's commitment.
pub struct Verify {
    /// Each verifier with its replacements (`--verifiers V|V2`), by the layers it holds.
    verifiers: Vec<(std::ops::Range<usize>, Servers)>,
    rate: f64,
    rng: cohort_core::SplitMix64,
    stats: VerifyStats,
    /// What the verifiers did with the claims sent them to attest.
    attested: Vec<AttestOutcome>,
}

/// A forward claim sent to the verifier whose recomputation it carries, to attest on its
/// ledger (`serve-layers --attest-ledger`): what it recorded, or why it did not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttestOutcome {
    pub server: String,
    pub verifier: String,
    #[serde(flatten)]
    pub attested: Option<cohort_net::stage::Attested>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What verification did in a run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct VerifyStats {
    /// Forward calls made to the stage servers.
    pub calls: u64,
    /// Of those, with at least one row recomputed by a verifier (all equal, or the run
    /// stopped).
    pub checked: u64,
    /// Rows (sequences) of the calls, and those recomputed: the share of serving compute the
    /// verifiers spent.
    pub rows: u64,
    pub rows_checked: u64,
    /// Backward calls made, and of those recomputed whole (forward and backward) by a
    /// verifier: an adapter weight's gradient sums over every row, so backward calls are
    /// sampled whole, with probability `rate`.
    pub backwards: u64,
    pub backwards_checked: u64,
    /// Verifiers that stopped answering and were replaced by the next listed after them.
    pub verifiers_replaced: u64,
}

/// A verifier's recomputation that differs from a server's commitment: the evidence of a
/// fraud claim. With keys on both sides, the server's signature binds it to its commitment
/// and the verifier's to its recomputation of the same call (the rows' inputs included in the
/// call digest), so anyone holding the model can check the claim by recomputing the row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mismatch {
    /// The server caught, and the verifier.
    pub server: String,
    pub verifier: String,
    /// The call's session and step.
    pub session: u64,
    pub step: u64,
    /// The row (sequence) of the call.
    pub row: usize,
    /// The server's digest of that row, and the verifier's.
    pub committed: String,
    pub recomputed: String,
    /// The server's call digest, its whole commitment (every row) and its signature over
    /// them, with its key (`None`: a server without a key).
    pub server_call: String,
    pub server_rows: Vec<String>,
    pub server_key: Option<String>,
    pub server_signature: Option<String>,
    /// The verifier's call digest (the same call, restricted to the rows it recomputed), its
    /// rows' digests and its signature, with its key.
    pub verifier_call: String,
    pub verifier_rows: Vec<usize>,
    /// The verifier's digests of the rows it recomputed (what its signature covers).
    pub verifier_row_sha256: Vec<String>,
    pub verifier_key: Option<String>,
    pub verifier_signature: Option<String>,
}

/// A recomputed backward that differs from a server's: the evidence of a fraud claim. The
/// server's signature binds it to its answer for the session and step and the gradient it
/// was given (whose forward call, `call`, holds the inputs); the verifier recomputed the same
/// call, forward then backward, in a session of its own, and signed its answer likewise. The
/// digests of both answers are here, so that both signatures can be checked without the
/// values, and two verifiers' recomputations of the same backward name the same claim on the
/// ledger ([`cohort_net::stage::backward_claim_call`], [`BackwardOutcome::digest`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackwardMismatch {
    /// The server caught, and the verifier.
    pub server: String,
    pub verifier: String,
    /// The call's session and step, and what differs.
    pub session: u64,
    pub step: u64,
    pub differs: String,
    /// The forward call's digest (its inputs), as the server holds it.
    pub call: String,
    /// The SHA-256 of the gradient both were given.
    pub grad_sha256: String,
    /// The server's backward digest and signature, with its key, and the digests of its
    /// answer.
    pub server_digest: String,
    pub server_key: Option<String>,
    pub server_signature: Option<String>,
    pub server_outcome: BackwardOutcome,
    /// The verifier's session, backward digest and signature, with its key, and the digests
    /// of its answer.
    pub verifier_session: u64,
    pub verifier_digest: String,
    pub verifier_key: Option<String>,
    pub verifier_signature: Option<String>,
    pub verifier_outcome: BackwardOutcome,
}

/// A fraud claim's evidence: a forward row or a backward that a verifier recomputed
/// differently.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Claim {
    Forward(Mismatch),
    Backward(BackwardMismatch),
}

impl Claim {
    /// The server it accuses.
    pub fn server(&self) -> &str {
        match self {
            Claim::Forward(m) => &m.server,
            Claim::Backward(m) => &m.server,
        }
    }

    /// The verifier whose recomputation it carries.
    pub fn verifier(&self) -> &str {
        match self {
            Claim::Forward(m) => &m.verifier,
            Claim::Backward(m) => &m.verifier,
        }
    }
}

/// The session a verifier recomputes a backward call in: the client's, these bits flipped.
const BACKWARD_CHECK_SESSION: u64 = 0x0bac_0bac_0bac_0bac;

impl Verify {
    /// Draws whether to check the backward of `call` (answered by `server`, which holds
    /// `layers`, with `answer` for the gradient `grad`), and checks it on a verifier of those
    /// layers: the call forward again, then its backward, in a session of the verifier's own.
    /// When it differs, every other verifier of those layers recomputes it too, so that the
    /// claim has its quorum of independent attestations: the evidence, one claim a verifier
    /// that found the difference (none when all agree with the server).
    pub fn check_backward(
        &mut self,
        layers: &std::ops::Range<usize>,
        call: &ForwardCall,
        grad: &[f32],
        server: &StageClient,
        answer: &Backwarded,
    ) -> anyhow::Result<Vec<BackwardMismatch>> {
        self.stats.backwards += 1;
        let drawn = (self.rng.below(1 << 30) as f64) < self.rate * f64::from(1u32 << 30);
        if !drawn || !self.verifiers.iter().any(|(r, _)| r == layers) {
            return Ok(Vec::new());
        }
        let mut again = call.clone();
        again.session ^= BACKWARD_CHECK_SESSION;
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        let key = |c: &StageClient| c.held().and_then(|i| i.public_key).map(hex::encode);
        let server_outcome = BackwardOutcome::of(&answer.dx, &answer.grads);
        let grad_sha256 = hex::encode(cohort_net::stage::floats_sha256(grad));
        let server_call = server
            .held()
            .map(|i| hex::encode(cohort_net::stage::call_digest(i, call)))
            .unwrap_or_default();
        let mut claims = Vec::new();
        self.stats.backwards_checked += 1;
        for (_, v) in self.verifiers.iter_mut().filter(|(r, _)| r == layers) {
            // Forward then backward on one verifier: a replacement redoes both.
            let theirs = v.verifier_call(layers, &mut self.stats.verifiers_replaced, |c| {
                c.forward(&again)?;
                c.backward_signed(again.session, again.step, grad)
            })?;
            let v = &v.active;
            let differs = if !same(&answer.dx, &theirs.dx) {
                "the gradient of its input".to_owned()
            } else if answer.grads.len() != theirs.grads.len() {
                format!(
                    "{} adapter gradients against {}",
                    answer.grads.len(),
                    theirs.grads.len()
                )
            } else if let Some(((n, _), _)) = answer
                .grads
                .iter()
                .zip(&theirs.grads)
                .find(|((n1, g1), (n2, g2))| n1 != n2 || !same(g1, g2))
            {
                format!("the gradient of {n}")
            } else if claims.is_empty() {
                // The first verifier agrees: the server passed.
                break;
            } else {
                // A later one agrees with the server where the first did not: no claim of
                // its own (the first's stands on its signatures).
                continue;
            };
            claims.push(BackwardMismatch {
                server: server.url().to_owned(),
                verifier: v.url().to_owned(),
                session: call.session,
                step: call.step,
                differs,
                call: server_call.clone(),
                grad_sha256: grad_sha256.clone(),
                server_digest: hex::encode(answer.digest),
                server_key: key(server),
                server_signature: answer.signature.map(hex::encode),
                server_outcome: server_outcome.clone(),
                verifier_session: again.session,
                verifier_digest: hex::encode(theirs.digest),
                verifier_key: key(v),
                verifier_signature: theirs.signature.map(hex::encode),
                verifier_outcome: BackwardOutcome::of(&theirs.dx, &theirs.grads),
            });
        }
        Ok(claims)
    }

    /// Checks a share `rate` (in [0, 1]) of the rows of the forward calls on `verifiers`,
    /// drawing with `seed`.
    pub fn new(
        verifiers: Vec<(std::ops::Range<usize>, StageClient)>,
        rate: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let verifiers = verifiers
            .into_iter()
            .map(|(layers, active)| {
                let spares = VecDeque::new();
                (layers, Servers { active, spares })
            })
            .collect();
        Self::with_spares(verifiers, rate, seed)
    }

    /// [`Verify::new`] with verifiers that have replacements.
    fn with_spares(
        verifiers: Vec<(std::ops::Range<usize>, Servers)>,
        rate: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        if !(rate.is_finite() && (0.0..=1.0).contains(&rate)) {
            bail!("--verify-rate {rate}: not in [0, 1]");
        }
        Ok(Self {
            verifiers,
            rate,
            rng: cohort_core::SplitMix64::new(seed),
            stats: VerifyStats::default(),
            attested: Vec::new(),
        })
    }

    /// What it did so far.
    pub fn stats(&self) -> VerifyStats {
        self.stats
    }

    /// Sends each of `claims` to the verifier whose recomputation it carries, to attest on
    /// its ledger; says on standard error what each did. A verifier that attests nothing, or
    /// fails, does not stop the run: the claims are in the evidence for `cohort stage attest`.
    pub fn attest(&mut self, claims: &[Claim]) {
        for m in claims {
            let (server, verifier) = (m.server(), m.verifier());
            let Some(v) = self
                .verifiers
                .iter_mut()
                .map(|(_, s)| &mut s.active)
                .find(|c| c.url() == verifier)
            else {
                continue;
            };
            let r = serde_json::to_vec(m)
                .map_err(|e| e.to_string())
                .and_then(|claim| v.attest(&claim).map_err(|e| e.to_string()));
            match &r {
                Ok(a) => eprintln!(
                    "pipeline: verifier {verifier} attested the claim against {server} on its \
                     ledger (attestation {} of {}){}",
                    a.attestations,
                    a.quorum,
                    if a.slashed { ": slashed" } else { "" }
                ),
                Err(e) => eprintln!(
                    "pipeline: verifier {verifier} did not attest the claim against {server}: {e}"
                ),
            }
            self.attested.push(AttestOutcome {
                server: server.to_owned(),
                verifier: verifier.to_owned(),
                refused: r.as_ref().err().cloned(),
                attested: r.ok(),
            });
        }
    }

    /// What the verifiers did with the claims sent them to attest.
    pub fn attestations(&self) -> &[AttestOutcome] {
        &self.attested
    }

    /// Draws the rows of `call` to check (answered with `answer` by `server`, which holds
    /// `layers`) and checks them on a verifier of those layers: the first row whose
    /// recomputation differs from the server's commitment, if any, with the evidence.
    pub fn check(
        &mut self,
        layers: &std::ops::Range<usize>,
        call: &ForwardCall,
        server: &StageClient,
        answer: &Forwarded,
    ) -> anyhow::Result<Vec<Mismatch>> {
        let committed = &answer.row_sha256;
        self.stats.calls += 1;
        self.stats.rows += call.batch as u64;
        let rows: Vec<usize> = (0..call.batch)
            .filter(|_| (self.rng.below(1 << 30) as f64) < self.rate * f64::from(1u32 << 30))
            .collect();
        if rows.is_empty() || !self.verifiers.iter().any(|(r, _)| r == layers) {
            return Ok(Vec::new());
        }
        let per = call.stream.len() / call.batch.max(1);
        let mut again = call.clone();
        again.stream = rows
            .iter()
            .flat_map(|&r| call.stream[r * per..(r + 1) * per].iter().copied())
            .collect();
        again.rows = rows.clone();
        self.stats.checked += 1;
        self.stats.rows_checked += rows.len() as u64;
        let key = |c: &StageClient| c.held().and_then(|i| i.public_key).map(hex::encode);
        let mut claims = Vec::new();
        // The first verifier of these layers checks; when it finds a difference, every other
        // verifier of them recomputes the same rows too, so that the claim has its quorum of
        // independent attestations of the same call.
        for (_, v) in self.verifiers.iter_mut().filter(|(r, _)| r == layers) {
            let checked = v.verifier_call(layers, &mut self.stats.verifiers_replaced, |c| {
                c.forward(&again)
            })?;
            let v = &v.active;
            let found = rows
                .iter()
                .zip(&checked.row_sha256)
                .find(|&(&r, h)| committed.get(r) != Some(h));
            let Some((&row, &recomputed)) = found else {
                if claims.is_empty() {
                    break;
                }
                continue;
            };
            claims.push(Mismatch {
                server: server.url().to_owned(),
                verifier: v.url().to_owned(),
                session: call.session,
                step: call.step,
                row,
                committed: committed.get(row).map(hex::encode).unwrap_or_default(),
                recomputed: hex::encode(recomputed),
                server_call: hex::encode(answer.call),
                server_rows: committed.iter().map(hex::encode).collect(),
                server_key: key(server),
                server_signature: answer.signature.map(hex::encode),
                verifier_call: hex::encode(checked.call),
                verifier_rows: rows.clone(),
                verifier_row_sha256: checked.row_sha256.iter().map(hex::encode).collect(),
                verifier_key: key(v),
                verifier_signature: checked.signature.map(hex::encode),
            });
        }
        Ok(claims)
    }
}

impl Pipeline {
    /// Dials `servers`, one a stage, with no replacements and the default deadline: see
    /// [`Pipeline::connect_stages`].
    pub fn connect(
        servers: &[Dial],
        dir: &Path,
        total: usize,
        adapter: Option<&LoraConfig>,
    ) -> anyhow::Result<Self> {
        let stages: Vec<Vec<Dial>> = servers.iter().map(|s| vec![s.clone()]).collect();
        Self::connect_stages(&stages, dir, total, adapter, STAGE_TIMEOUT)
    }

    /// Dials every server of `stages` (each a stage's server, then its replacements), each
    /// call with `deadline`, and checks that they hold the model in `dir` (by hash); that the
    /// stages' first servers cover its `total` layers in order, each starting where the one
    /// before ends; and that each replacement holds the layers of its stage. `adapter`: the
    /// configuration of the adapter trained or applied, if any.
    pub fn connect_stages(
        stages: &[Vec<Dial>],
        dir: &Path,
        total: usize,
        adapter: Option<&LoraConfig>,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let want = model_sha256(dir)?;
        let mut dialed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut next = 0usize;
        for list in stages {
            let mut servers: Vec<StageClient> = Vec::new();
            let mut layers = next..next;
            for (url, tls) in list {
                if !seen.insert(url.as_str()) {
                    bail!("--pipeline {url}: listed twice (a replacement must be another server)");
                }
                let mut c = StageClient::connect(url, tls.as_ref(), deadline)?;
                let info = c.info()?;
                if info.model_sha256 != want {
                    bail!(
                        "--pipeline {url}: it serves another model than {} (its files' SHA-256 \
                         differ)",
                        dir.display()
                    );
                }
                if info.layers.is_empty() {
                    bail!("--pipeline {url}: it holds no layers ({:?})", info.layers);
                }
                match servers.first() {
                    None if info.total_layers != total || info.layers.start != next => bail!(
                        "--pipeline {url}: it holds layers {:?} of {}; the next stage must start \
                         at layer {next} of {total} (list the servers in the order of their \
                         layers)",
                        info.layers,
                        info.total_layers
                    ),
                    None => layers = info.layers,
                    Some(first) if info.total_layers != total || info.layers != layers => bail!(
                        "--pipeline {url}: a replacement for {} (layers {layers:?}), it holds \
                         layers {:?} of {}; a replacement must hold the layers of its stage",
                        first.url(),
                        info.layers,
                        info.total_layers
                    ),
                    Some(first) if first.held().map(|i| i.svd_rank) != Some(info.svd_rank) => {
                        bail!(
                            "--pipeline {url}: a replacement for {}, it serves its layers as \
                             rank-{} SVD factors where that server serves rank {} (0: none); a \
                             replacement must compute what its stage computes",
                            first.url(),
                            info.svd_rank,
                            first.held().map_or(0, |i| i.svd_rank)
                        )
                    }
                    Some(_) => {}
                }
                servers.push(c);
            }
            if let Some(k) = servers.first().and_then(|c| c.held()).map(|i| i.svd_rank)
                && k > 0
            {
                eprintln!(
                    "pipeline: layers {layers:?} run as rank-{k} SVD factors on their server: an \
                     approximation of the model, so results differ from one process's"
                );
            }
            let mut servers = VecDeque::from(servers);
            let active = servers
                .pop_front()
                .context("--pipeline: a stage with no server")?;
            next = layers.end;
            dialed.push((
                layers,
                Servers {
                    active,
                    spares: servers,
                },
            ));
        }
        if next != total {
            bail!("--pipeline: the servers hold layers 0..{next}; the model has {total}");
        }
        Ok(Self {
            stages: dialed,
            adapter_config: adapter.map(serde_json::to_string).transpose()?,
            session: rand::random(),
            step: 0,
            deadline,
            replays: 0,
            verify: None,
            evidence: None,
            caught: Vec::new(),
            inference_calls: 0,
            compression: cohort_net::stage::COMPRESSION_NONE,
            bases: None,
            stream_bytes: 0,
            served: Vec::new(),
        })
    }

    /// Checks every stage server, spare and verifier against the stage servers declared at
    /// `place` (an embedded ledger or a chain): each must have a key, and that key's address
    /// must be a stage server of this model (`model_sha256`) and of exactly the layers it
    /// serves, never slashed. Read only; refused by name before any step otherwise.
    pub fn check_on_ledger(
        &self,
        place: &crate::cmd::stage::Place,
        model: [u8; 32],
    ) -> anyhow::Result<()> {
        let mut p = place.open_read()?;
        let ledger = place.name();
        let clients = self
            .stages
            .iter()
            .flat_map(|(_, s)| std::iter::once(&s.active).chain(s.spares.iter()))
            .chain(
                self.verify
                    .iter()
                    .flat_map(|v| v.verifiers.iter())
                    .flat_map(|(_, s)| std::iter::once(&s.active).chain(s.spares.iter())),
            );
        for c in clients {
            let info = c.held().context("a server not asked what it holds")?;
            let key = info.public_key.with_context(|| {
                format!(
                    "--ledger: stage server {} has no key (serve-layers --key): it cannot be \
                     held to its answers on the ledger",
                    c.url()
                )
            })?;
            let address = crate::cmd::stage::resolve(&p, &crate::cmd::stage::Party::Key(key))
                .with_context(|| format!("{ledger}: stage server {}", c.url()))?;
            let r = p.stage_server(address)?;
            let ok = r.modelHash == alloy_primitives::B256::from(model)
                && r.firstLayer as usize == info.layers.start
                && r.endLayer as usize == info.layers.end;
            if !ok {
                bail!(
                    "{}: stage server {} (key {}, address {address}) is not declared on it as \
                     a stage server of this model's layers {:?} (`cohort stage register`)",
                    ledger,
                    c.url(),
                    hex::encode(key),
                    info.layers
                );
            }
            if r.slashClaim != alloy_primitives::B256::ZERO {
                bail!(
                    "{}: stage server {} (address {address}) was slashed for fraud; it is not \
                     used",
                    ledger,
                    c.url()
                );
            }
        }
        Ok(())
    }

    /// Streams and gradients travel quantised (`compression`: `COMPRESSION_INT8`, a quarter
    /// of the bytes; `COMPRESSION_INT4`, about a tenth): an approximation, so results differ
    /// from one process's. A codec that sends activations in the model's stream bases reads
    /// them from `dir` (`cohort model calibrate` writes them).
    ///
    /// # Errors
    /// Such a codec, and `dir` has no stream bases or bad ones.
    pub fn with_compression(mut self, compression: u32, dir: &Path) -> anyhow::Result<Self> {
        self.compression = compression;
        if cohort_net::stage::uses_stream_bases(compression) {
            let bases = load_stream_bases(dir, None)?.with_context(|| {
                format!(
                    "this compression sends activations in the model's stream bases, and {} has \
                     no {STREAM_BASES_FILE}: `cohort model calibrate {} --data FILE` writes it \
                     (and every stage server needs the same file)",
                    dir.display(),
                    dir.display()
                )
            })?;
            self.bases = Some(bases);
        }
        let bases = self.bases.clone();
        let set = |c: &mut StageClient| {
            c.set_compression(compression);
            c.set_stream_bases(bases.clone());
        };
        for (_, s) in &mut self.stages {
            set(&mut s.active);
            s.spares.iter_mut().for_each(set);
        }
        if let Some(v) = &mut self.verify {
            for (_, s) in &mut v.verifiers {
                set(&mut s.active);
                s.spares.iter_mut().for_each(set);
            }
        }
        Ok(self)
    }

    /// Whether the first stage's backward answers carry the gradient of the stream it was
    /// given: only the embeddings' training needs it.
    fn set_input_gradient(&mut self, on: bool) {
        for (layers, s) in &mut self.stages {
            if layers.start == 0 {
                s.active.set_input_gradient(on);
                for c in &mut s.spares {
                    c.set_input_gradient(on);
                }
            }
        }
        if let Some(v) = &mut self.verify {
            for (layers, s) in &mut v.verifiers {
                if layers.start == 0 {
                    s.active.set_input_gradient(on);
                    for c in &mut s.spares {
                        c.set_input_gradient(on);
                    }
                }
            }
        }
    }

    /// The servers that completed training steps, with their keys and the model tokens they
    /// processed, in the order they first did.
    pub fn served(&self) -> &[(String, Option<cohort_core::PublicKey>, u64)] {
        &self.served
    }

    /// The session: the period its servers are paid for.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Bytes of streams and gradients the training steps sent and received so far.
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }

    /// Rounds `v` (rows of `width`) as it will travel `way`.
    fn round(
        &self,
        v: &mut [f32],
        width: usize,
        way: cohort_net::stage::Way<'_>,
    ) -> anyhow::Result<()> {
        cohort_net::stage::round_stream(v, width, self.compression, way)
            .map_err(|e| anyhow::anyhow!("the head's gradient: {e}"))
    }

    /// Rounds the embeddings' output `h` (rows of `width`) as it travels to the first stage,
    /// and gives its bytes on the wire (encoded once, with the rounding).
    fn first_stream(&self, h: &mut [f32], width: usize) -> anyhow::Result<Arc<Vec<u8>>> {
        let way = cohort_net::stage::Way::Forward(self.bases.as_ref().and_then(|b| b.get(0)));
        cohort_net::stage::round_and_encode(h, width, self.compression, way)
            .map(Arc::new)
            .map_err(|e| anyhow::anyhow!("the stream to the first stage: {e}"))
    }

    /// What the verifiers did with the claims sent them to attest (empty without
    /// verifiers).
    pub fn attestations(&self) -> Vec<AttestOutcome> {
        self.verify
            .as_ref()
            .map(|v| v.attestations().to_vec())
            .unwrap_or_default()
    }

    /// The servers verifiers caught so far.
    pub fn caught_servers(&self) -> Vec<String> {
        let mut servers: Vec<String> = self.caught.iter().map(|c| c.server().to_owned()).collect();
        // A claim attested by several verifiers names its server once.
        servers.dedup();
        servers
    }

    /// Stage calls so far that got no answer and were replayed on a replacement server.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Checks a share `rate` (in [0, 1]) of the rows of the forward calls on `verifiers`,
    /// which must hold the model (by hash) and each the same layers as one of the stages.
    pub fn with_verifiers(
        mut self,
        verifiers: &[Vec<Dial>],
        dir: &Path,
        rate: f64,
    ) -> anyhow::Result<Self> {
        if !(rate.is_finite() && (0.0..=1.0).contains(&rate)) {
            bail!("--verify-rate {rate}: not in [0, 1]");
        }
        let want = model_sha256(dir)?;
        let mut list: Vec<(std::ops::Range<usize>, Servers)> = Vec::new();
        let listed = verifiers
            .iter()
            .flat_map(|g| g.iter().enumerate().map(|(k, d)| (k == 0, d)));
        for (first, (url, tls)) in listed {
            let mut c = StageClient::connect(url, tls.as_ref(), self.deadline)?;
            let info = c.info()?;
            if info.model_sha256 != want {
                bail!(
                    "--verifiers {url}: it serves another model than {}",
                    dir.display()
                );
            }
            if !self.stages.iter().any(|(r, _)| *r == info.layers) {
                bail!(
                    "--verifiers {url}: it holds layers {:?}, which no stage of --pipeline \
                     holds; a verifier recomputes a stage's calls",
                    info.layers
                );
            }
            let served = self
                .stages
                .iter()
                .find(|(r, _)| *r == info.layers)
                .and_then(|(_, s)| s.active.held())
                .map_or(0, |i| i.svd_rank);
            if served != info.svd_rank {
                bail!(
                    "--verifiers {url}: it serves layers {:?} as rank-{} SVD factors, the stage's \
                     server as rank {served} (0: none); a verifier must compute what the stage \
                     computes",
                    info.layers,
                    info.svd_rank
                );
            }
            // Recomputation is bit for bit only between processes of one kind: a verifier of
            // another would accuse honest servers.
            if let Some((_, stage)) = self.stages.iter().find(|(r, _)| *r == info.layers) {
                for server in std::iter::once(&stage.active).chain(&stage.spares) {
                    if let Some(held) = server.held()
                        && held.compute_kind != info.compute_kind
                    {
                        bail!(
                            "--verifiers {url}: it computes as {:?}, stage server {} as {:?}; \
                             recomputation is bit for bit only between processes of one build \
                             and CPU kind, so a verifier must be of its servers' kind",
                            info.compute_kind,
                            server.url(),
                            held.compute_kind
                        );
                    }
                }
            }
            // A replacement (after `|`) must hold the layers of the verifier it follows.
            match (first, list.last_mut()) {
                (true, _) | (false, None) => list.push((
                    info.layers,
                    Servers {
                        active: c,
                        spares: VecDeque::new(),
                    },
                )),
                (false, Some((layers, s))) => {
                    if *layers != info.layers {
                        bail!(
                            "--verifiers {url}: a replacement of verifier {} must hold its \
                             layers {layers:?}; it holds {:?}",
                            s.active.url(),
                            info.layers
                        );
                    }
                    s.spares.push_back(c);
                }
            }
        }
        self.verify = Some(Verify::with_spares(list, rate, rand::random())?);
        Ok(self)
    }

    /// Writes the fraud claims' evidence to `path` (a JSON array, rewritten at each) when a
    /// verifier catches a server.
    pub fn with_evidence(mut self, path: Option<PathBuf>) -> Self {
        self.evidence = path;
        self
    }

    /// What verification did so far (`None` without verifiers).
    pub fn verify_stats(&self) -> Option<VerifyStats> {
        self.verify.as_ref().map(Verify::stats)
    }

    /// The logits `[b, t, vocab]` of `ids` through the servers (inference: they keep
    /// nothing): the embeddings here, each stage's layers there (with `m`'s adapter, if it has
    /// one), the head here. Verified like training calls, with failover.
    pub fn logits(
        &mut self,
        m: &dyn LanguageModel,
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> anyhow::Result<Vec<f32>> {
        // Inference calls are numbered apart from the training steps, in a session of their
        // own.
        self.inference_calls += 1;
        let step = self.inference_calls;
        let mut h = stages::embed(m, ids, b, t)?;
        // The bytes sent to each server: the first's rounded and encoded here once, then what
        // each server sent, passed on to the next as it came.
        let mut wire = Some(self.first_stream(&mut h, m.hidden_size())?);
        let adapted = m.weights().lora.is_some() && self.adapter_config.is_some();
        for (layers, c) in &mut self.stages {
            let adapter: Named = match adapted {
                false => Vec::new(),
                true => m
                    .params()
                    .trainable()
                    .filter(|p| in_layers(m, &p.name, layers))
                    .map(|p| -> anyhow::Result<(String, Vec<f32>)> {
                        Ok((p.name.clone(), p.var.flatten_all()?.to_vec1()?))
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            let call = ForwardCall {
                session: self.session ^ INFERENCE_SESSION,
                step,
                batch: b,
                tokens: t,
                stream: h,
                adapter,
                adapter_config: if adapted {
                    self.adapter_config.clone()
                } else {
                    None
                },
                dropout_key: None,
                rows: Vec::new(),
                inference: true,
                compression: self.compression,
                wire: wire.take(),
            };
            let out = forward_checked(
                c,
                layers,
                &call,
                &mut self.verify,
                &mut self.caught,
                self.evidence.as_deref(),
                &mut self.replays,
                &format!("inference call {step}"),
            )?;
            wire = Some(Arc::new(out.wire));
            h = out.stream;
        }
        Ok(stages::head_logits(m, &h, b, t)?)
    }

    /// The loss and gradients of one micro-batch, through the servers: embeddings here, each
    /// stage's layers there, the head here, and back. Each stage's forward call is kept for the
    /// step, so that a call a server does not answer is replayed on its replacement.
    pub fn grads(
        &mut self,
        m: &dyn LanguageModel,
        x: &Tensor,
        y: &Tensor,
        key: Option<u64>,
    ) -> anyhow::Result<(f64, Vec<Vec<f32>>)> {
        let (b, t) = x.dims2()?;
        let ids: Vec<u32> = x.flatten_all()?.to_vec1()?;
        let targets: Vec<u32> = y.flatten_all()?.to_vec1()?;
        self.step += 1;
        let step = self.step;
        // The first stage sends back the gradient of its input only when the embeddings
        // train (never with a LoRA adapter alone): a twelfth of a three-stage step's traffic.
        let embeddings = m.params().trainable().any(|p| is_embedding(&p.name));
        self.set_input_gradient(embeddings);
        let mut h = stages::embed(m, &ids, b, t)?;
        let mut kept = Vec::with_capacity(self.stages.len());
        // The bytes sent to each server: the first's rounded and encoded here once, then what
        // each server sent, passed on to the next as it came.
        let mut wire = Some(self.first_stream(&mut h, m.hidden_size())?);
        for (layers, c) in &mut self.stages {
            let adapter: Named = m
                .params()
                .trainable()
                .filter(|p| in_layers(m, &p.name, layers))
                .map(|p| -> anyhow::Result<(String, Vec<f32>)> {
                    Ok((p.name.clone(), p.var.flatten_all()?.to_vec1()?))
                })
                .collect::<anyhow::Result<_>>()?;
            let call = ForwardCall {
                session: self.session,
                step,
                batch: b,
                tokens: t,
                stream: h,
                adapter,
                adapter_config: Some(
                    self.adapter_config
                        .clone()
                        .context("the pipeline was set up without an adapter to train")?,
                ),
                dropout_key: key,
                rows: Vec::new(),
                inference: false,
                compression: self.compression,
                wire: wire.take(),
            };
            let out = forward_checked(
                c,
                layers,
                &call,
                &mut self.verify,
                &mut self.caught,
                self.evidence.as_deref(),
                &mut self.replays,
                &format!("step {step}"),
            )?;
            self.stream_bytes += out.wire_bytes;
            kept.push(call);
            wire = Some(Arc::new(out.wire));
            h = out.stream;
        }
        let (loss, mut dx, head) = stages::head(m, &h, &targets, b, t)?;
        // The head's gradient, rounded as a server rounds its own (seeded by the step, the
        // layer it comes down from, here the model's last plus one, and the gradient itself).
        let seed = match cohort_net::stage::rounds_stochastically(self.compression) {
            true => cohort_net::stage::grad_seed(step, m.num_layers(), &dx),
            false => 0,
        };
        self.round(
            &mut dx,
            m.hidden_size(),
            cohort_net::stage::Way::Backward(seed),
        )?;
        let mut parts: Vec<stages::NamedGrads> = Vec::new();
        for (i, ((layers, c), call)) in self.stages.iter_mut().zip(&kept).enumerate().rev() {
            // What its forward gave: the next stage's input, or the head's.
            let out = kept.get(i + 1).map_or(&h, |next| &next.stream);
            let mut got = c.backward(layers, call, out, &dx, &mut self.replays)?;
            // Drawn after the server answered, like the forward's rows; a server caught is
            // dropped and the backward redone on the stage's next server (its forward first).
            loop {
                let claims = match &mut self.verify {
                    Some(v) => v.check_backward(layers, call, &dx, &c.active, &got)?,
                    None => Vec::new(),
                };
                let Some(bad) = claims.first() else {
                    break;
                };
                let why = format!(
                    "stage server {} (layers {layers:?}) answered the backward of step {step}: \
                     {} differs from verifier {}'s recomputation",
                    c.url(),
                    bad.differs,
                    bad.verifier
                );
                let claims: Vec<Claim> = claims.into_iter().map(Claim::Backward).collect();
                if let Some(v) = &mut self.verify {
                    v.attest(&claims);
                }
                c.drop_caught(&why, claims, &mut self.caught, self.evidence.as_deref())?;
                c.active.forward(call)?;
                got = c.active.backward_signed(call.session, call.step, &dx)?;
            }
            self.stream_bytes += got.wire_bytes;
            let (d, g) = (got.dx, got.grads);
            parts.push(g.into_iter().collect::<HashMap<_, _>>());
            dx = d;
        }
        // Each stage's server now in place answered the step's forward and backward.
        for (_, c) in &self.stages {
            let key = c.active.held().and_then(|i| i.public_key);
            let url = c.active.url();
            match self.served.iter_mut().find(|(u, _, _)| u == url) {
                Some((_, _, n)) => *n += (b * t) as u64,
                None => self.served.push((url.to_owned(), key, (b * t) as u64)),
            }
        }
        parts.push(match embeddings {
            true => stages::embed_backward(m, &ids, b, t, &dx, head)?,
            // Frozen embeddings: the head's gradients are all the client computes.
            false => head,
        });
        Ok((loss, stages::assemble(m, parts)?))
    }
}

/// Stage servers started in this process on loopback (`[pipeline] stages`), served on a
/// runtime of their own until dropped.
pub struct LocalStages {
    _rt: cohort_net::run::Runtime,
    /// The servers' URLs, in the order of their layers.
    pub urls: Vec<String>,
    /// One verifier per stage, when asked for.
    pub verifiers: Vec<String>,
    /// Each server's layers.
    pub ranges: Vec<std::ops::Range<usize>>,
}

impl LocalStages {
    /// Serves the model in `dir` (GPT or Llama family) in `stages` stage servers of equal
    /// shares of its layers (the first ones one more), plus one verifier per stage when
    /// `verifiers`, each with a key of its own (derived from `seed`), on loopback.
    ///
    /// # Errors
    /// `dir` does not load, has fewer layers than `stages`, or a server cannot listen.
    pub fn start(dir: &Path, stages: usize, verifiers: bool, seed: u64) -> anyhow::Result<Self> {
        let total = cohort_model::load_mapped_any(dir, &Device::Cpu)
            .with_context(|| format!("mapping model {}", dir.display()))?
            .num_layers();
        if stages == 0 || stages > total {
            bail!("pipeline.stages {stages}: the base model has {total} layers");
        }
        let mut ranges = Vec::new();
        let mut at = 0;
        for s in 0..stages {
            let n = total / stages + usize::from(s < total % stages);
            ranges.push(at..at + n);
            at += n;
        }
        let rt = cohort_net::run::server_runtime(2)?;
        let sha = model_sha256(dir)?;
        let serve = |layers: &std::ops::Range<usize>, name: &str| -> anyhow::Result<String> {
            let model = cohort_model::load_mapped_any(dir, &Device::Cpu)
                .with_context(|| format!("mapping model {}", dir.display()))?;
            let signer = cohort_core::Identity::from_seed(seed, name);
            let bases = load_stream_bases(dir, Some(&[layers.start, layers.end]))?;
            let info = StageInfo {
                model_sha256: sha,
                stream_bases: bases.as_ref().map(|b| b.sha256()),
                layers: layers.clone(),
                width: model.hidden_size(),
                total_layers: total,
                public_key: Some(signer.public_key()),
                svd_rank: 0,
                compute_kind: cohort_model::kernels::compute_kind(),
            };
            let mut stage = LayerStage::new(model, info, None);
            stage.bases = bases;
            let listener = std::net::TcpListener::bind("127.0.0.1:0")
                .context("a loopback port for a stage server")?;
            let addr = serve_stage(&rt, Arc::new(stage), Some(signer), listener, None)?;
            Ok(format!("http://{addr}"))
        };
        let mut urls = Vec::new();
        let mut checkers = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            urls.push(serve(r, &format!("stage/{i}"))?);
            if verifiers {
                checkers.push(serve(r, &format!("verifier/{i}"))?);
            }
        }
        Ok(Self {
            _rt: rt,
            urls,
            verifiers: checkers,
            ranges,
        })
    }
}

/// The gradients of a federated client's micro-batches through stage servers (`[pipeline]`
/// of `cohort run` and `cohort client`): starts them here (`stages`) or dials them
/// (`servers`, with `ca` relative to `config_dir`), for the base model in `dir` whose adapter
/// `model` holds.
///
/// # Errors
/// A server does not start, answer, or hold what it should; the model has no stage passes.
pub fn stage_gradients(
    p: &cohort_fl::config::PipelineConfig,
    config_dir: &Path,
    dir: &Path,
    model: &dyn LanguageModel,
    seed: u64,
) -> anyhow::Result<cohort_tasks::StageGradients> {
    let adapter = model
        .weights()
        .lora
        .as_ref()
        .context("[pipeline]: the model has no adapter to train")?
        .config
        .clone();
    let deadline = Duration::from_secs(p.timeout);
    let ca = p.ca.as_ref().map(|c| config_dir.join(c));
    let (local, stages, verifiers) = match p.stages {
        Some(n) => {
            let local = LocalStages::start(dir, n, p.verify_rate > 0.0, seed)?;
            let stages: Vec<Vec<Dial>> =
                local.urls.iter().map(|u| vec![(u.clone(), None)]).collect();
            let verifiers: Vec<Vec<Dial>> = local
                .verifiers
                .iter()
                .map(|u| vec![(u.clone(), None)])
                .collect();
            eprintln!(
                "pipeline: clients train through {n} stage servers on loopback (layers {:?}){}",
                local.ranges,
                if verifiers.is_empty() {
                    String::new()
                } else {
                    format!(", verified at a rate of {}", p.verify_rate)
                }
            );
            (Some(local), stages, verifiers)
        }
        None => {
            let (ca, insecure) = (ca.as_deref(), p.insecure);
            let stages = stage_dials("pipeline.servers", &p.servers, ca, insecure, deadline)?;
            let verifiers =
                stage_dials("pipeline.verifiers", &p.verifiers, ca, insecure, deadline)?;
            (None, stages, verifiers)
        }
    };
    let mut pipeline =
        Pipeline::connect_stages(&stages, dir, model.num_layers(), Some(&adapter), deadline)?;
    if !verifiers.is_empty() {
        pipeline = pipeline.with_verifiers(&verifiers, dir, p.verify_rate)?;
    }
    let mut pipeline = pipeline.with_compression(compression(&p.compress)?, dir)?;
    Ok(Box::new(
        move |model: &dyn LanguageModel, x: &Tensor, y: &Tensor, key: Option<u64>| {
            // The servers started here live as long as the clients train through them.
            let _ = &local;
            pipeline
                .grads(model, x, y, key)
                .map_err(|e| cohort_model::Error::Data(format!("{e:#}")))
        },
    ))
}

/// The run's task, its `lm` clients training through the stage servers of `[pipeline]` when
/// the config has one and `clients` (a party that trains): see [`stage_gradients`].
///
/// # Errors
/// The task cannot be built, or the stage servers cannot be started or reached.
pub fn build_task(
    cfg: &cohort_fl::ValidConfig,
    config_dir: &Path,
    cache_dir: &Path,
    own: Option<&cohort_tasks::OwnData>,
    clients: bool,
) -> anyhow::Result<Box<dyn cohort_fl::learner::Learner + Send + Sync>> {
    let make = |dir: &Path,
                model: &dyn LanguageModel|
     -> Result<cohort_tasks::StageGradients, cohort_fl::FlError> {
        let p = cfg
            .pipeline
            .as_ref()
            .ok_or_else(|| cohort_fl::FlError::InvalidConfig {
                what: "pipeline",
                reason: "no [pipeline] section".into(),
            })?;
        stage_gradients(p, config_dir, dir, model, cfg.seed)
            .map_err(|e| cohort_fl::FlError::task_failed("[pipeline]", format!("{e:#}")))
    };
    let stages: Option<cohort_tasks::StageFactory<'_>> =
        (clients && cfg.pipeline.is_some()).then_some(&make);
    Ok(cohort_tasks::build_with(
        cfg, config_dir, cache_dir, own, stages,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compression names: the named ones, and qF/B with the flags s, c, r and k each at most
    /// once, in any order; anything else refused with what is known.
    #[test]
    fn compression_names_take_each_flag_once() {
        use cohort_net::stage::uses_stream_bases;
        for name in [
            "none",
            "int8",
            "int4",
            "int5-3",
            "q15/9sc",
            "q63/9sckr",
            "q1/1rk",
        ] {
            assert!(compression(name).is_ok(), "{name}");
        }
        assert!(uses_stream_bases(compression("q63/9kr").unwrap()));
        assert!(!uses_stream_bases(compression("q63/9sc").unwrap()));
        assert_eq!(
            compression("q63/9kr").unwrap(),
            compression("q63/9rk").unwrap()
        );
        for name in [
            "",
            "q",
            "q15/9scs",
            "q15/9kk",
            "q16/9",
            "q15/0",
            "q15/129",
            "q15/9x",
            "int9",
            "q15/-9",
            "q15/9 ",
            "q99999999999/9",
        ] {
            let e = compression(name).unwrap_err().to_string();
            assert!(e.contains("known are") || e.contains("odd"), "{name}: {e}");
        }
    }
}
