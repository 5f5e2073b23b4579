//! The learning tasks of cohort, behind [`cohort_fl::learner::Learner`].
//!
//! A [`Learner`] holds every party's private data for an in-process run (each party only ever
//! touches its own) and knows how to train locally, evaluate on a validator's holdout and on
//! the test set. The runtime does not know the architecture: parameters are one flat vector,
//! and the task's [`Layout`] names the tensors it is made of (what blobs and updates carry).
//! Three tasks implement it:
//!
//! - [`LinearTask`]: least squares on non-IID synthetic data, trained by mini-batch gradient
//!   descent; needs no data files.
//! - [`lm::LmTask`]: LoRA fine-tuning of a small GPT (cohort-model) on Tiny Shakespeare split
//!   by speaking role, one client per role; the flat vector is the adapter.
//! - [`imdb::ImdbTask`]: sentiment classification of IMDB reviews (word ids) by a
//!   bag-of-words logistic regression or a tiny GPT with a classification head, clients split
//!   by Dirichlet label skew; supports the data-level attacks (label flipping, backdoor).
//!
//! [`build`] makes the task a [`RunConfig`](cohort_fl::config::RunConfig) names, with the data
//! attacks applied. This crate is where candle and cohort-model enter: the trait, the task
//! settings and everything else of the domain are in `cohort-fl`, which builds without them.

pub mod imdb;
pub mod lm;
pub mod own;

pub use own::{MAX_OWN_DATA_BYTES, OwnData, OwnDataSummary};

use std::path::Path;
use std::sync::Arc;

use cohort_core::{Hash32, Rng};
use cohort_ledger::merkle::{MerkleTree, leaf_hash};

use cohort_fl::config::ValidConfig;
pub use cohort_fl::learner::{Learner, Metrics, SampleLosses};
pub use cohort_fl::task::{LinearTaskConfig, TaskConfig};
use cohort_fl::{FlError, Layout};

/// An unlearning's result, refused when a step made it non-finite (a rate or a number of steps
/// too high for the model), naming `--lr`.
pub(crate) fn finite_unlearned(
    after: Vec<f32>,
    spec: &cohort_fl::unlearning::UnlearnSpec,
) -> Result<Vec<f32>, FlError> {
    if after.iter().any(|x| !x.is_finite()) {
        return Err(FlError::InvalidConfig {
            what: "--lr",
            reason: format!(
                "{} steps at {} made the adapter non-finite: lower the rate or the steps",
                spec.steps, spec.lr
            ),
        });
    }
    Ok(after)
}

/// Attaches a LoRA adapter (rank, alpha, dropout, target modules, as `task.lora_*` set them)
/// to `model`, its initial values from `seed`; a target that matches no module is refused as
/// `task.lora_targets`.
pub(crate) fn attach_lora(
    model: &mut dyn cohort_model::LanguageModel,
    (rank, alpha, dropout): (usize, f64, f64),
    targets: &[String],
    seed: u64,
) -> Result<(), FlError> {
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let linears = model.linear_modules();
    let w = model.weights_mut();
    let lora = cohort_model::Lora::attach(
        &mut w.params,
        &linears,
        cohort_model::LoraConfig::new(rank, alpha, &targets).with_dropout(dropout),
        seed,
    )
    .map_err(|e| FlError::InvalidConfig {
        what: "task.lora_targets",
        reason: e.to_string(),
    })?;
    w.lora = Some(lora);
    Ok(())
}

/// A model or tensor error, met while doing `context`, as the task error the runtime reports:
/// [`FlError::TaskFailed`], which keeps the error as its source (cohort-fl knows neither
/// cohort-model nor candle, so the conversion is here rather than a `From`).
pub(crate) fn task_err<E>(context: &'static str) -> impl FnOnce(E) -> FlError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| FlError::task_failed(context, e)
}

/// A client index a task does not have, refused by name.
pub(crate) fn no_client(client: u32, clients: usize) -> FlError {
    FlError::InvalidConfig {
        what: "client",
        reason: format!("client {client} is not one of the task's {clients}"),
    }
}

/// The layout of a model's trainable tensors `spec` (name and shape, in flat order), checked
/// against the flat parameters `init` it describes.
pub(crate) fn layout_of(
    spec: Vec<(String, Vec<usize>)>,
    init: &[f32],
) -> Result<Arc<Layout>, FlError> {
    let layout = Layout::new(spec)?;
    if layout.len() != init.len() {
        return Err(FlError::InvalidLayout {
            reason: format!(
                "the model's tensors hold {} values, its flat parameters {}",
                layout.len(),
                init.len()
            ),
        });
    }
    Ok(Arc::new(layout))
}

/// Where a client's gradients come from instead of the model's own pass (`[pipeline]`): given
/// the model (embeddings, head, adapter), a micro-batch's inputs and targets and its dropout
/// key, the loss and the gradients of the model's trainable parameters, in their order.
pub type StageGradients = Box<
    dyn FnMut(
            &dyn cohort_model::LanguageModel,
            &candle_core::Tensor,
            &candle_core::Tensor,
            Option<u64>,
        ) -> cohort_model::Result<(f64, Vec<Vec<f32>>)>
        + Send,
>;

/// Makes the [`StageGradients`] of the base model in a directory, given the model with its
/// adapter attached (`[pipeline]`): starts or dials the stage servers holding its layers.
pub type StageFactory<'a> =
    &'a dyn Fn(&Path, &dyn cohort_model::LanguageModel) -> Result<StageGradients, FlError>;

/// Builds the task `cfg.task`, reading data files relative to `base_dir` (the config file's
/// directory) and caching derived artefacts (a pretrained base model) under `cache_dir`, and
/// applies the configured data attack to the attacking clients.
pub fn build(
    cfg: &ValidConfig,
    base_dir: &Path,
    cache_dir: &Path,
) -> Result<Box<dyn Learner + Send + Sync>, FlError> {
    build_party(cfg, base_dir, cache_dir, None)
}

/// [`build`] for one party of a federation that brings its own data: `own` replaces its
/// partition of the config's data (before any data attack of the config is applied to it).
/// The config's data is still read: it makes the model (a pretrained base's corpus) and the
/// other parties' partitions, which this party never touches.
pub fn build_party(
    cfg: &ValidConfig,
    base_dir: &Path,
    cache_dir: &Path,
    own: Option<&OwnData>,
) -> Result<Box<dyn Learner + Send + Sync>, FlError> {
    build_with(cfg, base_dir, cache_dir, own, None)
}

/// [`build_party`] whose `lm` clients train through the stage servers `stages` makes for the
/// base model (`[pipeline]`); other tasks refuse them.
pub fn build_with(
    cfg: &ValidConfig,
    base_dir: &Path,
    cache_dir: &Path,
    own: Option<&OwnData>,
    stages: Option<StageFactory<'_>>,
) -> Result<Box<dyn Learner + Send + Sync>, FlError> {
    if stages.is_some() && !matches!(cfg.task, TaskConfig::Lm(_)) {
        return Err(FlError::InvalidConfig {
            what: "pipeline",
            reason: "only the lm task trains through stage servers".into(),
        });
    }
    check_inputs(cfg, base_dir)?;
    if let (Some(own), TaskConfig::Linear(_)) = (own, &cfg.task) {
        // Refused, naming the tasks that take a file, before anything is built.
        check_own_data(cfg, base_dir, own)?;
    }
    let data_attack = cfg.attack.as_ref().and_then(|a| a.attack.data());
    let mut task: Box<dyn Learner + Send + Sync> = match &cfg.task {
        TaskConfig::Linear(c) => Box::new(LinearTask::new(
            c.clone(),
            cfg.clients,
            cfg.validators,
            cfg.seed,
        )),
        TaskConfig::Lm(c) => {
            let mut t = lm::LmTask::new(
                c.clone().resolve(base_dir),
                cfg.clients,
                cfg.validators,
                cfg.seed,
                cache_dir,
            )?;
            if let Some(own) = own {
                t.use_own_data(own)?;
            }
            if let Some(make) = stages {
                let stages = make(t.base_dir(), t.model())?;
                t.train_through(stages);
            }
            Box::new(t)
        }
        TaskConfig::Imdb(c) => {
            let mut t = imdb::ImdbTask::new_cached(
                c.clone().resolve(base_dir),
                cfg.clients,
                cfg.validators,
                cfg.seed,
                Some(cache_dir),
            )?;
            if let Some(own) = own {
                t.use_own_data(own)?;
            }
            Box::new(t)
        }
    };
    if let Some(data) = data_attack {
        for k in 0..cfg.clients as u32 {
            if cfg.is_attacker(k) {
                task.poison(k, &data)?;
            }
        }
    }
    // Client profiles: the others' data first, then the duplicates, which copy their
    // original as it is then.
    let profiled = |dup: bool| {
        (0..cfg.clients as u32).filter_map(move |k| {
            cfg.profile(k)
                .and_then(|p| p.data.as_ref())
                .filter(|d| matches!(d, cohort_fl::DataProfile::Duplicate { .. }) == dup)
                .map(|d| (k, d.clone()))
        })
    };
    for (k, d) in profiled(false).chain(profiled(true)).collect::<Vec<_>>() {
        task.reshape(k, &d)?;
    }
    if cfg.report.collaboration_gain {
        // Every party builds the task the same way, so a client trains on what is left.
        task.hold_out_locally(cfg.report.local_fraction)?;
    }
    Ok(task)
}

/// Checks that the files `cfg.task` names (relative to `base_dir`, the config file's
/// directory) are there: the `lm` corpus (and base checkpoint's `config.json`, if one is
/// given), the `imdb` data directory's `train.tsv` and `test.tsv`. Reads no data: what the
/// data holds is checked when the task is built.
pub fn check_inputs(cfg: &ValidConfig, base_dir: &Path) -> Result<(), FlError> {
    let need = |what: &'static str, path: &Path| {
        if path.is_file() {
            Ok(())
        } else {
            Err(FlError::InvalidConfig {
                what,
                reason: format!(
                    "{} {}",
                    path.display(),
                    if path.exists() {
                        "is not a file"
                    } else {
                        "does not exist"
                    }
                ),
            })
        }
    };
    match &cfg.task {
        TaskConfig::Linear(_) => Ok(()),
        TaskConfig::Lm(c) => {
            let c = c.clone().resolve(base_dir);
            need("task.corpus", &c.corpus)?;
            match &c.base {
                Some(b) => need("task.base", &b.join("config.json")),
                None => Ok(()),
            }
        }
        TaskConfig::Imdb(c) => {
            let c = c.clone().resolve(base_dir);
            need("task.data", &c.data.join("train.tsv"))?;
            need("task.data", &c.data.join("test.tsv"))
        }
    }
}

/// The name of the task `cfg` runs: `linear`, `lm` or `imdb`.
pub fn task_name(cfg: &TaskConfig) -> &'static str {
    match cfg {
        TaskConfig::Linear(_) => "linear",
        TaskConfig::Lm(_) => "lm",
        TaskConfig::Imdb(_) => "imdb",
    }
}

/// Checks a party's own data file `own` for the task of `cfg` (files relative to `base_dir`,
/// the config file's directory) without building the task, and says what it holds. The
/// `linear` task has no data file (its data is drawn from the seed): refused.
pub fn check_own_data(
    cfg: &ValidConfig,
    base_dir: &Path,
    own: &OwnData,
) -> Result<OwnDataSummary, FlError> {
    match &cfg.task {
        TaskConfig::Linear(_) => Err(FlError::InvalidConfig {
            what: own.flag(),
            reason: format!(
                "the linear task has no data file to replace: it draws every party's data from \
                 the seed. A party's own data (--data for a client, --holdout for a validator) \
                 is supported by the lm task (UTF-8 text) and the imdb task (LABEL<TAB>IDS \
                 lines, as task.data's train.tsv); leave {} out to use the partition of the \
                 config",
                own.flag()
            ),
        }),
        TaskConfig::Lm(c) => lm::check_own_data(&c.clone().resolve(base_dir), own),
        TaskConfig::Imdb(c) => imdb::check_own_data(&c.clone().resolve(base_dir), own),
    }
}

struct Set {
    x: Vec<Vec<f32>>,
    y: Vec<f32>,
}

impl Set {
    fn draw(rng: &mut Rng, w: &[f64], n: usize, noise: f64) -> Self {
        let mut x = Vec::with_capacity(n);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let xi: Vec<f32> = w.iter().map(|_| rng.normal() as f32).collect();
            let yi: f64 = xi
                .iter()
                .zip(w)
                .map(|(&a, &b)| f64::from(a) * b)
                .sum::<f64>()
                + noise * rng.normal();
            x.push(xi);
            y.push(yi as f32);
        }
        Self { x, y }
    }

    /// Each sample's squared error.
    fn errors(&self, p: &[f32]) -> Vec<f64> {
        self.x
            .iter()
            .zip(&self.y)
            .map(|(x, &y)| {
                let e = dot(x, p) - f64::from(y);
                e * e
            })
            .collect()
    }

    fn samples(&self, p: &[f32]) -> SampleLosses {
        let losses = self.errors(p);
        let mean = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        SampleLosses {
            metrics: Metrics::loss(mean),
            losses,
            min_k: None,
        }
    }

    fn mse(&self, p: &[f32]) -> f64 {
        let n = self.y.len().max(1) as f64;
        self.x
            .iter()
            .zip(&self.y)
            .map(|(x, &y)| {
                let e = dot(x, p) - f64::from(y);
                e * e
            })
            .sum::<f64>()
            / n
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Least-squares regression with a shared true weight vector, each client's data drawn around
/// its own perturbation of it.
pub struct LinearTask {
    cfg: LinearTaskConfig,
    seed: u64,
    layout: Arc<Layout>,
    clients: Vec<Set>,
    holdouts: Vec<Set>,
    test: Set,
}

impl std::fmt::Debug for LinearTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearTask")
            .field("cfg", &self.cfg)
            .field("clients", &self.clients.len())
            .field("validators", &self.holdouts.len())
            .finish()
    }
}

impl LinearTask {
    /// Draws the data of `clients` clients and `validators` validators from `seed`.
    pub fn new(cfg: LinearTaskConfig, clients: usize, validators: usize, seed: u64) -> Self {
        let mut rng = Rng::derive(seed, "linear-task/truth");
        let w: Vec<f64> = (0..cfg.dim).map(|_| rng.normal()).collect();
        let clients = (0..clients)
            .map(|k| {
                let mut r = Rng::derive(seed, &format!("linear-task/client/{k}"));
                let wk: Vec<f64> = w
                    .iter()
                    .map(|&v| v + cfg.client_drift * r.normal())
                    .collect();
                Set::draw(&mut r, &wk, cfg.samples_per_client, cfg.noise)
            })
            .collect();
        let holdouts = (0..validators)
            .map(|v| {
                let mut r = Rng::derive(seed, &format!("linear-task/validator/{v}"));
                Set::draw(&mut r, &w, cfg.holdout_samples, cfg.noise)
            })
            .collect();
        let mut r = Rng::derive(seed, "linear-task/test");
        let test = Set::draw(&mut r, &w, cfg.test_samples, cfg.noise);
        Self {
            layout: Arc::new(Layout::flat(cfg.dim)),
            seed,
            cfg,
            clients,
            holdouts,
            test,
        }
    }
}

impl Learner for LinearTask {
    fn reshape(&mut self, client: u32, profile: &cohort_fl::DataProfile) -> Result<(), FlError> {
        use cohort_fl::DataProfile;
        let k = client as usize;
        let bad = |reason: String| FlError::InvalidConfig {
            what: "profile",
            reason,
        };
        if k >= self.clients.len() {
            return Err(bad(format!("client {client} does not exist")));
        }
        match profile {
            DataProfile::LabelNoise { share } => {
                let set = &mut self.clients[k];
                let n = set.y.len();
                let mean = set.y.iter().map(|&y| f64::from(y)).sum::<f64>() / n.max(1) as f64;
                let spread = (set
                    .y
                    .iter()
                    .map(|&y| (f64::from(y) - mean).powi(2))
                    .sum::<f64>()
                    / n.max(1) as f64)
                    .sqrt();
                let mut r = Rng::derive(self.seed, &format!("linear-task/label-noise/{k}"));
                let mut idx: Vec<usize> = (0..n).collect();
                r.shuffle(&mut idx);
                let noisy = ((share * n as f64).round() as usize).min(n);
                for &i in &idx[..noisy] {
                    set.y[i] = (mean + spread * r.normal()) as f32;
                }
            }
            DataProfile::Duplicate { of } => {
                let Some(original) = self.clients.get(*of as usize) else {
                    return Err(bad(format!("of = {of}: no such client")));
                };
                self.clients[k] = Set {
                    x: original.x.clone(),
                    y: original.y.clone(),
                };
            }
            DataProfile::Subsample { share } => {
                let set = &mut self.clients[k];
                let keep = ((share * set.y.len() as f64).round() as usize).clamp(1, set.y.len());
                set.x.truncate(keep);
                set.y.truncate(keep);
            }
        }
        Ok(())
    }

    /// One tensor, `delta` of shape `[dim]` ([`Layout::flat`]): the weights are not named.
    fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout)
    }

    fn init(&self) -> Vec<f32> {
        vec![0.0; self.cfg.dim]
    }

    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Result<Vec<f32>, FlError> {
        let Some(data) = self.clients.get(client as usize) else {
            return Ok(vec![0.0; global.len()]);
        };
        let mut p: Vec<f64> = global.iter().map(|&x| f64::from(x)).collect();
        let n = data.y.len();
        let mut order: Vec<usize> = (0..n).collect();
        for _ in 0..self.cfg.epochs {
            rng.shuffle(&mut order);
            for batch in order.chunks(self.cfg.batch.max(1)) {
                let mut g = vec![0f64; p.len()];
                for &i in batch {
                    let x = &data.x[i];
                    let e: f64 = x
                        .iter()
                        .zip(&p)
                        .map(|(&a, &b)| f64::from(a) * b)
                        .sum::<f64>()
                        - f64::from(data.y[i]);
                    for (gj, &xj) in g.iter_mut().zip(x) {
                        *gj += 2.0 * e * f64::from(xj);
                    }
                }
                if self.cfg.prox_mu > 0.0 {
                    // The proximal term's gradient, mu (w - global), per sample.
                    let m = self.cfg.prox_mu * batch.len() as f64;
                    for ((gj, &pj), &wj) in g.iter_mut().zip(&p).zip(global) {
                        *gj += m * (pj - f64::from(wj));
                    }
                }
                let s = self.cfg.lr / batch.len() as f64;
                for (pj, gj) in p.iter_mut().zip(&g) {
                    *pj -= s * gj;
                }
            }
        }
        Ok(p.iter()
            .zip(global)
            .map(|(&a, &b)| (a - f64::from(b)) as f32)
            .collect())
    }

    fn num_samples(&self, client: u32) -> u64 {
        self.clients
            .get(client as usize)
            .map_or(0, |c| c.y.len() as u64)
    }

    fn dataset_commitment(&self, client: u32) -> (Hash32, u64) {
        let Some(c) = self.clients.get(client as usize) else {
            return (Hash32::ZERO, 0);
        };
        // One shard per sample: the leaf is the sample's bytes.
        let mut tree = MerkleTree::new();
        for (x, y) in c.x.iter().zip(&c.y) {
            let mut b = Vec::with_capacity(4 * (x.len() + 1));
            for v in x.iter().chain(std::iter::once(y)) {
                b.extend_from_slice(&v.to_le_bytes());
            }
            tree.push_hash(leaf_hash(&b));
        }
        (tree.root(), c.y.len() as u64)
    }

    fn holdout_loss(&self, validator: u32, params: &[f32]) -> Result<f64, FlError> {
        Ok(self
            .holdouts
            .get(validator as usize)
            .map_or(f64::INFINITY, |h| h.mse(params)))
    }

    fn evaluate(&self, params: &[f32]) -> Result<Metrics, FlError> {
        Ok(Metrics::loss(self.test.mse(params)))
    }

    fn client_samples(&self, client: u32, params: &[f32]) -> Result<SampleLosses, FlError> {
        let data = self
            .clients
            .get(client as usize)
            .ok_or_else(|| crate::no_client(client, self.clients.len()))?;
        Ok(data.samples(params))
    }

    fn test_samples(&self, params: &[f32]) -> Result<SampleLosses, FlError> {
        Ok(self.test.samples(params))
    }
}
