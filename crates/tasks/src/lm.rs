//! Federated LoRA fine-tuning of a small language model on Tiny Shakespeare split by speaking
//! role (LEAF's split): one client per role with enough lines.
//!
//! Every client role's lines are cut in order into a training part (the client's), a
//! validator part (spread over the validators line by line) and a test part (the end), so the
//! validators and the test set see every client's style but never a client's training text.
//! The base model is either a checkpoint directory (`base`) or a small GPT pretrained first on
//! the text of the roles that are not clients (deterministic from the seed, cached as a
//! Hugging Face-style directory under the run's cache directory, named by the hash of
//! everything it depends on). The federated parameters are the LoRA adapter (PEFT names);
//! local training is a few AdamW steps on the client's own text, optionally with FedProx's
//! proximal term.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use cohort_core::{Hash32, Rng, sha256};
use cohort_ledger::merkle::{MerkleTree, leaf_hash};
use cohort_model::data::{TokenData, sample_batch};
use cohort_model::optim::AdamWConfig;
use cohort_model::train::{TrainConfig, Trainer, evaluate, window_losses};
use cohort_model::{Gpt, GptConfig, LanguageModel, Tokenizer};

use cohort_fl::learner::{Learner, Metrics, SampleLosses};
use cohort_fl::partition::shakespeare_roles;
pub use cohort_fl::task::LmTaskConfig;
use cohort_fl::unlearning::UnlearnSpec;
use cohort_fl::{FlError, Layout};

use crate::own::{OwnData, OwnDataSummary};

struct Client {
    role: String,
    lines: Vec<String>,
    tokens: Vec<u32>,
    /// The end of its tokens it holds out from its training ([`Learner::hold_out_locally`]);
    /// empty unless asked.
    local: Vec<u32>,
}

/// LoRA fine-tuning of a small language model, one client per speaking role.
pub struct LmTask {
    cfg: LmTaskConfig,
    model: Box<dyn LanguageModel>,
    layout: Arc<Layout>,
    init: Vec<f32>,
    clients: Vec<Client>,
    holdouts: Vec<Vec<u32>>,
    test: Vec<u32>,
    base_dir: PathBuf,
    tokenizer: Tokenizer,
    /// Public text (the roles that are not clients, what the base model is pretrained on):
    /// the retain term of approximate unlearning.
    public: Vec<u32>,
    /// Where clients' gradients come from instead of the model's own pass: stage servers
    /// (`[pipeline]`, [`LmTask::train_through`]).
    stages: Option<std::sync::Mutex<crate::StageGradients>>,
}

/// At most this much of the public text is kept for unlearning's retain term (characters).
const PUBLIC_CHARS: usize = 200_000;

impl std::fmt::Debug for LmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmTask")
            .field("base", &self.base_dir)
            .field("clients", &self.roles())
            .field("adapter_values", &self.init.len())
            .finish()
    }
}

fn io_err(path: &Path, e: std::io::Error) -> FlError {
    FlError::task_failed(path.display().to_string(), e)
}

impl LmTask {
    /// Splits the corpus by role for `clients` clients and `validators` validators, loads or
    /// pretrains the base model (pretrained bases are cached under `cache_dir`) and attaches
    /// the LoRA adapter, all deterministic from `seed`.
    pub fn new(
        cfg: LmTaskConfig,
        clients: usize,
        validators: usize,
        seed: u64,
        cache_dir: &Path,
    ) -> Result<Self, FlError> {
        cohort_fl::config::check_lm(&cfg)?;
        let text = std::fs::read_to_string(&cfg.corpus).map_err(|e| FlError::InvalidConfig {
            what: "task.corpus",
            reason: format!("{}: {e}", cfg.corpus.display()),
        })?;
        let roles = shakespeare_roles(&text, 1);
        let eligible = roles.iter().filter(|r| r.lines >= cfg.min_lines).count();
        let per_role = cfg.clients_per_role.max(1);
        let n_roles = clients.div_ceil(per_role);
        if eligible < n_roles {
            return Err(FlError::InvalidConfig {
                what: "task.min_lines",
                reason: format!(
                    "only {eligible} roles of {} speak at least {} lines, but {clients} clients at {per_role} per role need {n_roles} (raise task.clients_per_role)",
                    cfg.corpus.display(),
                    cfg.min_lines
                ),
            });
        }
        // Roles are sorted by lines: the first `n_roles` are the clients'; the others' text
        // pretrains the base.
        let (client_roles, rest) = roles.split_at(n_roles);
        let (model_dir, tokenizer) = match &cfg.base {
            Some(dir) if !dir.join("config.json").is_file() => {
                return Err(FlError::InvalidConfig {
                    what: "task.base",
                    reason: format!("{} holds no config.json", dir.display()),
                });
            }
            Some(dir) => (
                dir.clone(),
                Tokenizer::load(dir)
                    .map_err(crate::task_err("loading the base model's tokenizer"))?,
            ),
            None => {
                let pretrain_text: String = rest.iter().map(|r| r.text.as_str()).collect();
                let tok = Tokenizer::chars_of(&text);
                let dir = pretrained_base(
                    &cfg,
                    &text,
                    &pretrain_text,
                    client_roles,
                    &tok,
                    seed,
                    cache_dir,
                )?;
                (dir, tok)
            }
        };
        // The base is memory-mapped: its frozen weights are read in place, and a client
        // training through stage servers (`[pipeline]`) never reads its layers' pages.
        let mut model = cohort_model::load_mapped_any(&model_dir, &Device::Cpu).map_err(|e| {
            FlError::InvalidConfig {
                what: "task.base",
                reason: e.to_string(),
            }
        })?;
        if cfg.seq_len > model.max_context() {
            return Err(FlError::InvalidConfig {
                what: "task.seq_len",
                reason: format!(
                    "{} exceeds the base model's context {}",
                    cfg.seq_len,
                    model.max_context()
                ),
            });
        }
        crate::attach_lora(
            &mut *model,
            (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout),
            &cfg.lora_targets,
            seed,
        )?;
        let spec = model
            .params()
            .spec()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        let init = model
            .params()
            .flat()
            .map_err(crate::task_err("preparing the language-model task"))?;

        let need = cfg.seq_len + 2;
        let mut holdout_text = vec![String::new(); validators];
        let mut test_text = String::new();
        let mut out = Vec::with_capacity(clients);
        for r in client_roles {
            let lines: Vec<&str> = r.text.lines().collect();
            let n = lines.len();
            let n_test = ((n as f64 * cfg.test_fraction).round() as usize).max(1);
            let n_hold = ((n as f64 * cfg.holdout_fraction).round() as usize).max(validators);
            let n_train = n.saturating_sub(n_test + n_hold);
            for (i, l) in lines[n_train..n - n_test].iter().enumerate() {
                let h = &mut holdout_text[i % validators];
                h.push_str(l);
                h.push('\n');
            }
            for l in &lines[n - n_test..] {
                test_text.push_str(l);
                test_text.push('\n');
            }
            // The role's training lines, cut into `per_role` contiguous shards (the last role
            // may have fewer clients).
            let shards = per_role.min(clients - out.len());
            for shard in 0..shards {
                let (a, b) = (shard * n_train / shards, (shard + 1) * n_train / shards);
                let train: Vec<String> = lines[a..b].iter().map(|s| (*s).to_owned()).collect();
                let joined: String = train.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
                let tokens = tokenizer
                    .encode(&joined)
                    .map_err(crate::task_err("preparing the language-model task"))?;
                let role = if per_role == 1 {
                    r.role.clone()
                } else {
                    format!("{}#{shard}", r.role)
                };
                if tokens.len() < need {
                    return Err(FlError::InvalidConfig {
                        what: "task.min_lines",
                        reason: format!(
                            "role {role} keeps {} training tokens, fewer than a window of {need}",
                            tokens.len()
                        ),
                    });
                }
                out.push(Client {
                    role,
                    lines: train,
                    tokens,
                    local: Vec::new(),
                });
            }
        }
        let holdouts = holdout_text
            .iter()
            .enumerate()
            .map(|(v, t)| {
                let tokens = tokenizer
                    .encode(t)
                    .map_err(crate::task_err("preparing the language-model task"))?;
                if tokens.len() < need {
                    return Err(FlError::InvalidConfig {
                        what: "task.holdout_fraction",
                        reason: format!(
                            "validator {v}'s holdout has {} tokens, fewer than a window of {need}",
                            tokens.len()
                        ),
                    });
                }
                Ok(tokens)
            })
            .collect::<Result<Vec<_>, FlError>>()?;
        let test = tokenizer
            .encode(&test_text)
            .map_err(crate::task_err("preparing the language-model task"))?;
        if test.len() < need {
            return Err(FlError::InvalidConfig {
                what: "task.test_fraction",
                reason: format!(
                    "the test set has {} tokens, fewer than a window of {need}",
                    test.len()
                ),
            });
        }
        let public_text: String = rest
            .iter()
            .flat_map(|r| r.text.chars())
            .take(PUBLIC_CHARS)
            .collect();
        let public = tokenizer
            .encode(&public_text)
            .map_err(crate::task_err("preparing the language-model task"))?;
        Ok(Self {
            cfg,
            model,
            layout: crate::layout_of(spec, &init)?,
            init,
            clients: out,
            holdouts,
            test,
            base_dir: model_dir,
            tokenizer,
            public,
            stages: None,
        })
    }

    /// The model, its adapter attached.
    pub fn model(&self) -> &dyn LanguageModel {
        &*self.model
    }

    /// Clients train through `stages` from now on: each micro-batch's loss and gradients come
    /// from it (stage servers holding the layers) instead of the model's own pass. Validation
    /// and evaluation stay here.
    pub fn train_through(&mut self, stages: crate::StageGradients) {
        self.stages = Some(std::sync::Mutex::new(stages));
    }

    /// Replaces a party's partition by its own text file (`own`): client `index` trains on
    /// it (and commits to its lines), validator `index` scores on it. What the file holds is
    /// checked as [`check_own_data`] does.
    pub fn use_own_data(&mut self, own: &OwnData) -> Result<OwnDataSummary, FlError> {
        let text = own.read_text()?;
        let (summary, lines, tokens) = own_text(&self.cfg, &self.tokenizer, own, &text)?;
        let i = own.index() as usize;
        match own {
            OwnData::Client { .. } => {
                let Some(c) = self.clients.get_mut(i) else {
                    return Err(own.err(format!("there is no client {i} in this run")));
                };
                c.role = format!("{}", own.path().display());
                c.lines = lines;
                c.tokens = tokens;
            }
            OwnData::Holdout { .. } => {
                let Some(h) = self.holdouts.get_mut(i) else {
                    return Err(own.err(format!("there is no validator {i} in this run")));
                };
                *h = tokens;
            }
        }
        Ok(summary)
    }

    /// The speaking role of each client, in client order.
    pub fn roles(&self) -> Vec<&str> {
        self.clients.iter().map(|c| c.role.as_str()).collect()
    }

    /// The base model's directory (pretrained and cached, or the configured `base`).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// [`Learner::unlearn`]'s optimisation: `spec.steps` steps from `params` on batches of
    /// the `forget` windows of `tokens` (their start offsets), each with a batch of the
    /// `retain` windows of the public text.
    fn unlearn_steps(
        &self,
        tokens: &[u32],
        params: &[f32],
        spec: &UnlearnSpec,
        rng: &mut Rng,
        forget: &[usize],
        retain: &[usize],
    ) -> cohort_model::Result<Vec<f32>> {
        use candle_core::{DType, Tensor};
        use cohort_fl::unlearning::Objective;
        let seq = self.cfg.seq_len;
        let model = &*self.model;
        let device = model.device();
        let batch_of =
            |tokens: &[u32], starts: &[usize]| -> candle_core::Result<(Tensor, Tensor)> {
                let x: Vec<u32> = starts
                    .iter()
                    .flat_map(|&s| tokens[s..s + seq].iter().copied())
                    .collect();
                let y: Vec<u32> = starts
                    .iter()
                    .flat_map(|&s| tokens[s + 1..s + seq + 1].iter().copied())
                    .collect();
                let n = starts.len();
                Ok((
                    Tensor::from_vec(x, (n, seq), device)?,
                    Tensor::from_vec(y, (n, seq), device)?,
                ))
            };
        let p = model.params();
        p.set_flat(params)?;
        // The reference log-likelihood of every forget window, before any step (NPO).
        let reference: Vec<f64> = match spec.objective {
            Objective::Npo { .. } => window_losses(model, tokens, 16, seq, forget.len())?
                .iter()
                .map(|w| -w.loss * seq as f64)
                .collect(),
            Objective::GradientAscent => Vec::new(),
        };
        let mut tc = TrainConfig::new(spec.batch, seq);
        tc.optim = AdamWConfig {
            lr: spec.lr,
            min_lr: spec.lr,
            warmup_steps: 0,
            total_steps: spec.steps,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut trainer = Trainer::new(model, tc)?;
        let (mut fo, mut ro) = (forget.to_vec(), retain.to_vec());
        let (mut fi, mut ri) = (fo.len(), ro.len());
        let next = |order: &mut Vec<usize>, at: &mut usize, rng: &mut Rng| -> Vec<usize> {
            let mut out = Vec::with_capacity(spec.batch);
            while out.len() < spec.batch.min(order.len()) {
                if *at == order.len() {
                    rng.shuffle(order);
                    *at = 0;
                }
                out.push(order[*at]);
                *at += 1;
            }
            out
        };
        for _ in 0..spec.steps {
            let picked = next(&mut fo, &mut fi, rng);
            let (x, y) = batch_of(tokens, &picked)?;
            // The adapter's dropout while training (none at the default 0).
            let lora = model
                .weights()
                .lora
                .as_ref()
                .filter(|_| self.cfg.lora_dropout > 0.0);
            if let Some(l) = lora {
                l.set_dropout_key(Some(rng.next_u64()));
            }
            let logits = model.forward(&x);
            if let Some(l) = lora {
                l.set_dropout_key(None);
            }
            let logits = logits?;
            let (b, t, v) = logits.dims3()?;
            let rows = cohort_model::kernels::cross_entropy_rows(
                &logits.reshape((b * t, v))?,
                &y.reshape(b * t)?.to_dtype(DType::U32)?,
            )?;
            let forget_loss = match spec.objective {
                Objective::GradientAscent => rows.mean_all()?.neg()?,
                Objective::Npo { beta } => {
                    // d = log p(window) - log p_ref(window); (2/beta) mean log(1 + e^(beta d)).
                    let logp = rows.reshape((b, t))?.sum(1)?.neg()?;
                    let refs: Vec<f32> = picked
                        .iter()
                        .map(|s| reference.get(s / seq).copied().unwrap_or(0.0) as f32)
                        .collect();
                    let d = logp.sub(&Tensor::from_vec(refs, b, device)?)?;
                    let z = (d * beta)?.exp()?;
                    ((z + 1.0)?.log()?.mean_all()? * (2.0 / beta))?
                }
            };
            let loss = if spec.retain_weight > 0.0 && !ro.is_empty() {
                let picked = next(&mut ro, &mut ri, rng);
                let (xr, yr) = batch_of(&self.public, &picked)?;
                (forget_loss + (model.loss(&xr, &yr)? * spec.retain_weight)?)?
            } else {
                forget_loss
            };
            let grads = cohort_model::optim::collect_grads(p, &loss.backward()?)?;
            trainer.step_grads(model, &grads)?;
        }
        p.flat()
    }

    /// `params` on `tokens`, window by window (the task's `eval_windows` windows of
    /// `seq_len` tokens): each window's mean loss and Min-K% loss, and the mean loss and
    /// perplexity over them.
    fn windows_on(&self, tokens: &[u32], params: &[f32]) -> Result<SampleLosses, FlError> {
        const WHAT: &str = "evaluating the language model window by window";
        self.model
            .params()
            .set_flat(params)
            .map_err(crate::task_err(WHAT))?;
        let w = window_losses(
            &*self.model,
            tokens,
            16,
            self.cfg.seq_len,
            self.cfg.eval_windows,
        )
        .map_err(crate::task_err(WHAT))?;
        let losses: Vec<f64> = w.iter().map(|x| x.loss).collect();
        let loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        Ok(SampleLosses {
            metrics: Metrics {
                perplexity: Some(loss.exp()),
                ..Metrics::loss(loss)
            },
            losses,
            min_k: Some(w.iter().map(|x| x.min_k).collect()),
        })
    }

    fn loss_on(&self, tokens: &[u32], params: &[f32]) -> Result<f64, FlError> {
        self.model
            .params()
            .set_flat(params)
            .map_err(crate::task_err("evaluating the language model"))?;
        let s = evaluate(
            &*self.model,
            tokens,
            16,
            self.cfg.seq_len,
            self.cfg.eval_windows,
        )
        .map_err(crate::task_err("evaluating the language model"))?;
        Ok(s.loss)
    }
}

/// The tokenizer the task `cfg` uses, without building the model: the base checkpoint's, or
/// the characters of the corpus for a pretrained base (as [`LmTask::new`] makes it).
fn tokenizer_of(cfg: &LmTaskConfig) -> Result<Tokenizer, FlError> {
    match &cfg.base {
        Some(dir) if !dir.join("config.json").is_file() => Err(FlError::InvalidConfig {
            what: "task.base",
            reason: format!("{} holds no config.json", dir.display()),
        }),
        Some(dir) => {
            Tokenizer::load(dir).map_err(crate::task_err("loading the base model's tokenizer"))
        }
        None => {
            let text =
                std::fs::read_to_string(&cfg.corpus).map_err(|e| FlError::InvalidConfig {
                    what: "task.corpus",
                    reason: format!("{}: {e}", cfg.corpus.display()),
                })?;
            Ok(Tokenizer::chars_of(&text))
        }
    }
}

/// Checks a party's own text file for the task `cfg` without building the model (reads the
/// tokenizer and the file): what [`LmTask::use_own_data`] would use.
pub fn check_own_data(cfg: &LmTaskConfig, own: &OwnData) -> Result<OwnDataSummary, FlError> {
    cohort_fl::config::check_lm(cfg)?;
    let text = own.read_text()?;
    let tokenizer = tokenizer_of(cfg)?;
    Ok(own_text(cfg, &tokenizer, own, &text)?.0)
}

/// The lines and tokens of a party's own `text` (read from `own`), refused if the tokenizer
/// cannot encode it or it is shorter than one window.
fn own_text(
    cfg: &LmTaskConfig,
    tokenizer: &Tokenizer,
    own: &OwnData,
    text: &str,
) -> Result<(OwnDataSummary, Vec<String>, Vec<u32>), FlError> {
    let tokens = match tokenizer.encode(text) {
        Ok(t) => t,
        Err(e) => {
            // Name the first line it cannot encode.
            let line = text
                .lines()
                .position(|l| tokenizer.encode_plain(l).is_err())
                .map_or_else(String::new, |n| format!(" (line {})", n + 1));
            let whose = if cfg.base.is_some() {
                "the base model's tokenizer".to_owned()
            } else {
                format!(
                    "the task's tokenizer (the {} characters of task.corpus {})",
                    tokenizer.vocab_size(),
                    cfg.corpus.display()
                )
            };
            return Err(own.err(format!("{whose} cannot encode it{line}: {e}")));
        }
    };
    let need = cfg.seq_len + 2;
    if tokens.len() < need {
        return Err(own.err(format!(
            "{} bytes make {} tokens, fewer than the minimum of {need} (one window: task.seq_len \
             {} + 2)",
            text.len(),
            tokens.len(),
            cfg.seq_len
        )));
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let commitment = matches!(own, OwnData::Client { .. }).then(|| lines_commitment(&lines));
    let summary = OwnDataSummary {
        task: "lm",
        path: own.path().to_path_buf(),
        bytes: text.len() as u64,
        samples: lines.len() as u64,
        unit: "lines",
        tokens: Some(tokens.len() as u64),
        commitment,
    };
    Ok((summary, lines, tokens))
}

/// The dataset commitment of a client's training text: one shard per line.
fn lines_commitment(lines: &[String]) -> (Hash32, u64) {
    let mut tree = MerkleTree::new();
    for l in lines {
        tree.push_hash(leaf_hash(l.as_bytes()));
    }
    (tree.root(), lines.len() as u64)
}

/// Pretrains (or finds in the cache) the base model and returns its directory.
fn pretrained_base(
    cfg: &LmTaskConfig,
    corpus: &str,
    pretrain_text: &str,
    client_roles: &[cohort_fl::partition::RoleText],
    tok: &Tokenizer,
    seed: u64,
    cache_dir: &Path,
) -> Result<PathBuf, FlError> {
    let gc =
        GptConfig::preset(&cfg.preset, tok.vocab_size()).map_err(|e| FlError::InvalidConfig {
            what: "task.preset",
            reason: e.to_string(),
        })?;
    let seq = cfg.seq_len.min(gc.n_positions);
    let roles: Vec<&str> = client_roles.iter().map(|r| r.role.as_str()).collect();
    let key = sha256(
        format!(
            "cohort-fl lm base v1/{}/{}/{}/{}/{}/{seq}/{seed}/{}",
            sha256(corpus.as_bytes()),
            cfg.preset,
            cfg.pretrain_steps,
            cfg.pretrain_lr,
            cfg.pretrain_batch,
            roles.join("|")
        )
        .as_bytes(),
    );
    let dir = cache_dir.join(format!("base-{}", &key.to_hex()[..16]));
    if dir.join("config.json").exists() {
        return Ok(dir);
    }
    let model =
        Gpt::new(gc, seed, &Device::Cpu).map_err(crate::task_err("pretraining the base model"))?;
    let mut tc = TrainConfig::new(cfg.pretrain_batch, seq);
    tc.seed = seed;
    tc.optim = AdamWConfig {
        lr: cfg.pretrain_lr,
        min_lr: cfg.pretrain_lr / 10.0,
        warmup_steps: (cfg.pretrain_steps / 10).max(1),
        total_steps: cfg.pretrain_steps.max(1),
        ..AdamWConfig::default()
    };
    let mut trainer =
        Trainer::new(&model, tc).map_err(crate::task_err("pretraining the base model"))?;
    let data = TokenData {
        train: tok
            .encode(pretrain_text)
            .map_err(crate::task_err("pretraining the base model"))?,
        val: Vec::new(),
    };
    for _ in 0..cfg.pretrain_steps {
        trainer
            .step(&model, &data)
            .map_err(crate::task_err("pretraining the base model"))?;
    }
    let tmp = cache_dir.join(format!("base-{}.partial", &key.to_hex()[..16]));
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    model
        .save(&tmp)
        .map_err(crate::task_err("pretraining the base model"))?;
    tok.save(&tmp)
        .map_err(crate::task_err("pretraining the base model"))?;
    std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
    Ok(dir)
}

impl Learner for LmTask {
    fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout)
    }

    fn init(&self) -> Vec<f32> {
        self.init.clone()
    }

    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Result<Vec<f32>, FlError> {
        let Some(c) = self.clients.get(client as usize) else {
            return Ok(vec![0.0; global.len()]);
        };
        let params = self.model.params();
        params
            .set_flat(global)
            .map_err(crate::task_err("training a language-model client"))?;
        let mut tc = TrainConfig::new(self.cfg.batch, self.cfg.seq_len);
        tc.optim = AdamWConfig {
            lr: self.cfg.lr,
            min_lr: self.cfg.lr,
            warmup_steps: 0,
            total_steps: self.cfg.local_steps,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut trainer = Trainer::new(&*self.model, tc)
            .map_err(crate::task_err("training a language-model client"))?;
        let mut data_rng = cohort_core::SplitMix64::new(rng.next_u64());
        for _ in 0..self.cfg.local_steps {
            let batch = sample_batch(
                &c.tokens,
                self.cfg.batch,
                self.cfg.seq_len,
                &mut data_rng,
                self.model.device(),
            )
            .map_err(crate::task_err("training a language-model client"))?;
            // Dropout masks from the client's own stream (none at the default 0, which keeps
            // the fast path and the results of runs without it).
            let key = (self.cfg.lora_dropout > 0.0).then(|| data_rng.next_u64());
            let (_, mut grads) = match (&self.stages, key) {
                (Some(stages), key) => {
                    let mut stages = stages.lock().map_err(|_| {
                        FlError::task_failed(
                            "training a language-model client",
                            "the stage servers' connection was poisoned by a failed step",
                        )
                    })?;
                    let model = &*self.model;
                    let mut source =
                        |x: &candle_core::Tensor, y: &candle_core::Tensor, k: Option<u64>| {
                            (*stages)(model, x, y, k)
                        };
                    Trainer::gradients_from(model, &[batch], key, &mut source)
                }
                (None, Some(key)) => {
                    Trainer::gradients_with_dropout(&*self.model, &[batch], false, key)
                }
                (None, None) => Trainer::gradients(&*self.model, &[batch], false),
            }
            .map_err(crate::task_err("training a language-model client"))?;
            if self.cfg.prox_mu > 0.0 {
                add_prox(
                    &mut grads,
                    &params
                        .flat()
                        .map_err(crate::task_err("training a language-model client"))?,
                    global,
                    self.cfg.prox_mu,
                );
            }
            trainer
                .step_grads(&*self.model, &grads)
                .map_err(crate::task_err("training a language-model client"))?;
        }
        let after = params
            .flat()
            .map_err(crate::task_err("training a language-model client"))?;
        Ok(after.iter().zip(global).map(|(a, b)| a - b).collect())
    }

    fn num_samples(&self, client: u32) -> u64 {
        self.clients
            .get(client as usize)
            .map_or(0, |c| c.lines.len() as u64)
    }

    fn dataset_commitment(&self, client: u32) -> (Hash32, u64) {
        let Some(c) = self.clients.get(client as usize) else {
            return (Hash32::ZERO, 0);
        };
        // One shard per line of the client's training text.
        lines_commitment(&c.lines)
    }

    fn hold_out_locally(&mut self, fraction: f64) -> Result<(), FlError> {
        if !(fraction.is_finite() && fraction > 0.0 && fraction < 1.0) {
            return Err(FlError::InvalidConfig {
                what: "report.local_fraction",
                reason: format!("{fraction}: not in (0, 1)"),
            });
        }
        let need = self.cfg.seq_len + 2;
        for c in &mut self.clients {
            // Put back what an earlier call held out, then cut again.
            let mut all = std::mem::take(&mut c.tokens);
            all.append(&mut c.local);
            let n = all.len();
            let k = (n as f64 * fraction).round() as usize;
            if k < need || n - k < need {
                let (train, kept) = (n - k, k);
                c.tokens = all;
                return Err(FlError::InvalidConfig {
                    what: "report.local_fraction",
                    reason: format!(
                        "role {} would keep {kept} tokens for itself and train on {train}; \
                         each needs a window of {need} (a larger fraction, or more lines a \
                         client)",
                        c.role
                    ),
                });
            }
            c.local = all.split_off(n - k);
            c.tokens = all;
        }
        Ok(())
    }

    fn local_loss(&self, client: u32, params: &[f32]) -> Result<f64, FlError> {
        match self.clients.get(client as usize) {
            Some(c) if !c.local.is_empty() => self.loss_on(&c.local, params),
            Some(_) => Err(FlError::InvalidConfig {
                what: "report.collaboration_gain",
                reason: format!("client {client} holds nothing out (hold_out_locally first)"),
            }),
            None => Err(FlError::InvalidConfig {
                what: "report.collaboration_gain",
                reason: format!("no client {client}"),
            }),
        }
    }

    fn holdout_loss(&self, validator: u32, params: &[f32]) -> Result<f64, FlError> {
        match self.holdouts.get(validator as usize) {
            Some(t) => self.loss_on(t, params),
            None => Ok(f64::INFINITY),
        }
    }

    fn evaluate(&self, params: &[f32]) -> Result<Metrics, FlError> {
        let loss = self.loss_on(&self.test, params)?;
        Ok(Metrics {
            perplexity: Some(loss.exp()),
            ..Metrics::loss(loss)
        })
    }

    fn unlearn(
        &self,
        client: u32,
        params: &[f32],
        spec: &UnlearnSpec,
        seed: u64,
    ) -> Result<Vec<f32>, FlError> {
        spec.check()?;
        let c = self
            .clients
            .get(client as usize)
            .ok_or_else(|| crate::no_client(client, self.clients.len()))?;
        let seq = self.cfg.seq_len;
        let windows =
            |n: usize| -> Vec<usize> { (0..n.saturating_sub(1) / seq).map(|i| i * seq).collect() };
        let forget = windows(c.tokens.len());
        if forget.is_empty() {
            return Err(FlError::InvalidConfig {
                what: "client",
                reason: format!("client {client}'s text fills no window of {seq} tokens"),
            });
        }
        let retain = windows(self.public.len());
        let mut rng = Rng::derive(seed, &format!("unlearn/client/{client}"));
        let after = self
            .unlearn_steps(&c.tokens, params, spec, &mut rng, &forget, &retain)
            .map_err(crate::task_err("unlearning on the language model"))?;
        crate::finite_unlearned(after, spec)
    }

    fn client_samples(&self, client: u32, params: &[f32]) -> Result<SampleLosses, FlError> {
        let c = self
            .clients
            .get(client as usize)
            .ok_or_else(|| crate::no_client(client, self.clients.len()))?;
        self.windows_on(&c.tokens, params)
    }

    fn test_samples(&self, params: &[f32]) -> Result<SampleLosses, FlError> {
        let mut s = self.windows_on(&self.test, params)?;
        // The test metrics are `evaluate`'s (the same windows, summed in one pass).
        s.metrics = self.evaluate(params)?;
        Ok(s)
    }
}

/// Adds FedProx's proximal gradient `mu (w - global)` to per-parameter gradients laid out in
/// flat order.
pub(crate) fn add_prox(grads: &mut [Vec<f32>], current: &[f32], global: &[f32], mu: f64) {
    let mut off = 0;
    for g in grads.iter_mut() {
        let n = g.len();
        if let (Some(w), Some(w0)) = (current.get(off..off + n), global.get(off..off + n)) {
            for ((gi, &a), &b) in g.iter_mut().zip(w).zip(w0) {
                *gi += (mu * f64::from(a - b)) as f32;
            }
        }
        off += n;
    }
}
