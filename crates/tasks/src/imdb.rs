//! Federated sentiment classification of IMDB reviews (word ids, as Keras ships them) with
//! Dirichlet label skew across clients.
//!
//! Two models ([`ImdbModel`]): `bow` (the default), logistic regression on the set of words a
//! review uses (each present word weighs `1/sqrt(distinct words)`), trained by mini-batch
//! SGD; and `gpt`, a tiny GPT with a classification head (cohort-model's `classify`: the last
//! real token's final hidden state through a `score` projection) trained in full on each
//! review's last `max_len` ids. The flat vector is every parameter of the model. On this data
//! the bag of words reaches about 80% test accuracy in a few federated rounds; the GPT, trained
//! from scratch on a few thousand reviews, stays near chance in that budget (measured), which
//! is why it is not the default.
//! Validators hold a share of the training file set apart from every client; the test set is
//! the test file. Attacking clients can poison their own data: label flipping, or a backdoor
//! (a trigger id sequence appended to a share of their reviews, labelled with the target);
//! [`Metrics::backdoor_success_rate`] is then the share of triggered test reviews of the other
//! class that the model puts in the target class.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use cohort_core::{Hash32, Rng};
use cohort_ledger::merkle::{MerkleTree, leaf_hash};
use cohort_model::classify::{self, Example};
use cohort_model::optim::{AdamWConfig, collect_grads};
use cohort_model::train::{TrainConfig, Trainer};
use cohort_model::{Gpt, GptConfig, LanguageModel};

use cohort_fl::attack::DataAttack;
use cohort_fl::learner::{Learner, Metrics, SampleLosses};
use cohort_fl::partition::{dirichlet_label_skew, holdout};
pub use cohort_fl::task::{ImdbModel, ImdbTaskConfig};
use cohort_fl::{FlError, Layout};

use crate::lm::add_prox;
use crate::own::{OwnData, OwnDataSummary};

/// The first `take` reviews of `path` (all if 0), through cohort-data's IMDB reader (which
/// refuses a malformed line by file and line).
fn read(path: &Path, num_words: u32, take: usize) -> Result<Vec<Example>, FlError> {
    let mut v = cohort_data::imdb::read(path, num_words).map_err(|e| FlError::InvalidConfig {
        what: "task.data",
        reason: e.to_string(),
    })?;
    if take > 0 {
        v.truncate(take);
    }
    Ok(v.into_iter()
        .map(|r| Example {
            label: u32::from(r.label),
            ids: r.ids,
        })
        .collect())
}

/// Checks a party's own reviews file (`LABEL<TAB>ID ID ...` lines, as `task.data`'s
/// `train.tsv`) for the task `cfg`: what [`ImdbTask::use_own_data`] would use. A client needs
/// `task.min_client_samples` reviews, a validator one.
pub fn check_own_data(cfg: &ImdbTaskConfig, own: &OwnData) -> Result<OwnDataSummary, FlError> {
    Ok(own_reviews(cfg, own)?.0)
}

fn own_reviews(
    cfg: &ImdbTaskConfig,
    own: &OwnData,
) -> Result<(OwnDataSummary, Vec<Example>), FlError> {
    cohort_fl::config::check_imdb(cfg)?;
    let text = own.read_text()?;
    let reviews = cohort_data::imdb::parse_text(&text, cfg.num_words, own.path()).map_err(|e| {
        FlError::InvalidConfig {
            what: own.flag(),
            reason: format!("{e} (expected LABEL<TAB>ID ID ... lines, as task.data's train.tsv)"),
        }
    })?;
    let need = match own {
        OwnData::Client { .. } => cfg.min_client_samples.max(1),
        OwnData::Holdout { .. } => 1,
    };
    if reviews.len() < need {
        return Err(own.err(format!(
            "{} bytes hold {} reviews, fewer than the minimum of {need}{}",
            text.len(),
            reviews.len(),
            if matches!(own, OwnData::Client { .. }) {
                " (task.min_client_samples)"
            } else {
                ""
            }
        )));
    }
    let examples: Vec<Example> = reviews
        .into_iter()
        .map(|r| Example {
            label: u32::from(r.label),
            ids: r.ids,
        })
        .collect();
    let commitment = matches!(own, OwnData::Client { .. }).then(|| reviews_commitment(&examples));
    let summary = OwnDataSummary {
        task: "imdb",
        path: own.path().to_path_buf(),
        bytes: text.len() as u64,
        samples: examples.len() as u64,
        unit: "reviews",
        tokens: None,
        commitment,
    };
    Ok((summary, examples))
}

/// The dataset commitment of a client's reviews: one shard per review, its label and ids as
/// little-endian u32s.
fn reviews_commitment(reviews: &[Example]) -> (Hash32, u64) {
    let mut tree = MerkleTree::new();
    for e in reviews {
        let mut b = Vec::with_capacity(4 * (e.ids.len() + 1));
        for v in std::iter::once(&e.label).chain(&e.ids) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        tree.push_hash(leaf_hash(&b));
    }
    (tree.root(), reviews.len() as u64)
}

/// IMDB sentiment with a tiny GPT classifier, clients split by Dirichlet label skew.
pub struct ImdbTask {
    cfg: ImdbTaskConfig,
    /// The GPT, for `model = "gpt"`.
    model: Option<Gpt>,
    layout: Arc<Layout>,
    init: Vec<f32>,
    clients: Vec<Vec<Example>>,
    holdouts: Vec<Vec<Example>>,
    test: Vec<Example>,
    /// Trigger and target of a backdoor, once a client is poisoned with one.
    backdoor: Option<(Vec<u32>, u32)>,
    seed: u64,
}

impl std::fmt::Debug for ImdbTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdbTask")
            .field("cfg", &self.cfg)
            .field("clients", &self.clients.len())
            .field("validators", &self.holdouts.len())
            .field("backdoor", &self.backdoor)
            .finish()
    }
}

impl ImdbTask {
    /// Reads the data, splits it among `clients` clients (Dirichlet label skew) and
    /// `validators` validators, and initialises the model, all deterministic from `seed`.
    pub fn new(
        cfg: ImdbTaskConfig,
        clients: usize,
        validators: usize,
        seed: u64,
    ) -> Result<Self, FlError> {
        cohort_fl::config::check_imdb(&cfg)?;
        let train = read(
            &cfg.data.join("train.tsv"),
            cfg.num_words,
            cfg.train_samples,
        )?;
        let test = read(&cfg.data.join("test.tsv"), cfg.num_words, cfg.test_samples)?;
        let (rest, held) = holdout(train.len(), cfg.holdout_fraction, seed, "imdb/validators");
        if held.len() < validators {
            return Err(FlError::InvalidConfig {
                what: "task.holdout_fraction",
                reason: format!(
                    "{} held-out reviews for {validators} validators",
                    held.len()
                ),
            });
        }
        let mut holdouts = vec![Vec::new(); validators];
        for (i, &j) in held.iter().enumerate() {
            holdouts[i % validators].push(train[j].clone());
        }
        let labels: Vec<u32> = rest.iter().map(|&i| train[i].label).collect();
        let mut parts = dirichlet_label_skew(&labels, clients, cfg.alpha, seed)?;
        if rest.len() < clients * cfg.min_client_samples {
            return Err(FlError::InvalidConfig {
                what: "task.train_samples",
                reason: format!(
                    "{} client reviews cannot give {clients} clients {} each",
                    rest.len(),
                    cfg.min_client_samples
                ),
            });
        }
        // Top up clients the Dirichlet draw left (nearly) empty from the largest one.
        while let Some(small) = (0..clients).find(|&c| parts[c].len() < cfg.min_client_samples) {
            let big = (0..clients)
                .max_by_key(|&c| (parts[c].len(), std::cmp::Reverse(c)))
                .unwrap_or(0);
            match parts[big].pop() {
                Some(i) => parts[small].push(i),
                None => break,
            }
        }
        let clients_data = parts
            .iter()
            .map(|p| p.iter().map(|&i| train[rest[i]].clone()).collect())
            .collect();
        let (model, spec, init) = match cfg.model {
            ImdbModel::Bow => {
                let n = cfg.num_words as usize;
                let spec = vec![
                    ("classifier.weight".to_owned(), vec![1, n]),
                    ("classifier.bias".to_owned(), vec![1]),
                ];
                (None, spec, vec![0.0; n + 1])
            }
            ImdbModel::Gpt => {
                let gc = GptConfig::new(
                    cfg.num_words as usize,
                    cfg.max_len,
                    cfg.d_model,
                    cfg.layers,
                    cfg.heads,
                );
                let mut model = Gpt::new(gc, seed, &Device::Cpu)
                    .map_err(crate::task_err("building the IMDB classifier"))?;
                classify::add_head(&mut model, 2, seed)
                    .map_err(crate::task_err("building the IMDB classifier"))?;
                let spec = model
                    .params()
                    .spec()
                    .into_iter()
                    .map(|s| (s.name, s.shape))
                    .collect();
                let init = model
                    .params()
                    .flat()
                    .map_err(crate::task_err("building the IMDB classifier"))?;
                (Some(model), spec, init)
            }
        };
        Ok(Self {
            cfg,
            model,
            layout: crate::layout_of(spec, &init)?,
            init,
            clients: clients_data,
            holdouts,
            test,
            backdoor: None,
            seed,
        })
    }

    /// Replaces a party's partition by its own reviews file (`own`): client `index` trains on
    /// it (and commits to its reviews), validator `index` scores on it. Checked as
    /// [`check_own_data`] does.
    pub fn use_own_data(&mut self, own: &OwnData) -> Result<OwnDataSummary, FlError> {
        let (summary, examples) = own_reviews(&self.cfg, own)?;
        let i = own.index() as usize;
        let slot = match own {
            OwnData::Client { .. } => self.clients.get_mut(i),
            OwnData::Holdout { .. } => self.holdouts.get_mut(i),
        };
        let Some(slot) = slot else {
            return Err(own.err(format!("there is no party {i} of its role in this run")));
        };
        *slot = examples;
        Ok(summary)
    }

    /// How many reviews of each label (0, 1) client `k` holds.
    pub fn label_counts(&self, client: u32) -> [usize; 2] {
        let mut c = [0, 0];
        for e in self.clients.get(client as usize).into_iter().flatten() {
            c[(e.label as usize).min(1)] += 1;
        }
        c
    }

    /// Mean loss and accuracy of `params` on `examples`.
    fn loss_acc(&self, params: &[f32], examples: &[Example]) -> Result<(f64, f64), FlError> {
        let n = examples.len().max(1) as f64;
        let Some(model) = &self.model else {
            let (mut sum, mut correct) = (0.0, 0usize);
            for e in examples {
                let z = bow_logit(params, &e.ids, self.cfg.skip_top);
                sum += bce(z, e.label);
                correct += usize::from((z > 0.0) == (e.label == 1));
            }
            return Ok((sum / n, correct as f64 / n));
        };
        model
            .params()
            .set_flat(params)
            .map_err(crate::task_err("evaluating the IMDB classifier"))?;
        let mut sum = 0.0;
        for chunk in examples.chunks(64) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let (ids, lengths, labels) =
                classify::batch(&refs, self.cfg.max_len, model.device())
                    .map_err(crate::task_err("evaluating the IMDB classifier"))?;
            let l = classify::loss(model, &ids, &lengths, &labels)
                .map_err(crate::task_err("evaluating the IMDB classifier"))?
                .detach();
            sum += f64::from(
                l.to_scalar::<f32>()
                    .map_err(crate::task_err("evaluating the IMDB classifier"))?,
            ) * chunk.len() as f64;
        }
        let acc = classify::accuracy(model, examples, self.cfg.max_len, 64)
            .map_err(crate::task_err("evaluating the IMDB classifier"))?;
        Ok((sum / n, acc))
    }

    /// `params` on `examples`, review by review: each one's cross-entropy, and the mean and
    /// the accuracy.
    fn sample_losses(&self, params: &[f32], examples: &[Example]) -> Result<SampleLosses, FlError> {
        let mut losses = Vec::with_capacity(examples.len());
        let mut correct = 0usize;
        match &self.model {
            None => {
                for e in examples {
                    let z = bow_logit(params, &e.ids, self.cfg.skip_top);
                    losses.push(bce(z, e.label));
                    correct += usize::from((z > 0.0) == (e.label == 1));
                }
            }
            Some(model) => {
                const WHAT: &str = "evaluating the IMDB classifier review by review";
                model
                    .params()
                    .set_flat(params)
                    .map_err(crate::task_err(WHAT))?;
                for chunk in examples.chunks(64) {
                    let refs: Vec<&Example> = chunk.iter().collect();
                    let (ids, lengths, labels) =
                        classify::batch(&refs, self.cfg.max_len, model.device())
                            .map_err(crate::task_err(WHAT))?;
                    let rows = classify::logits(model, &ids, &lengths)
                        .and_then(|l| Ok(l.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?))
                        .map_err(crate::task_err(WHAT))?;
                    for (row, &label) in rows.iter().zip(&labels) {
                        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let lse = f64::from(max)
                            + row
                                .iter()
                                .map(|&z| f64::from(z - max).exp())
                                .sum::<f64>()
                                .ln();
                        let z = row.get(label as usize).copied().unwrap_or(f32::NAN);
                        losses.push(lse - f64::from(z));
                        let best = row
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map_or(0, |(i, _)| i);
                        correct += usize::from(best == label as usize);
                    }
                }
            }
        }
        let n = examples.len().max(1) as f64;
        Ok(SampleLosses {
            metrics: Metrics {
                accuracy: Some(correct as f64 / n),
                ..Metrics::loss(losses.iter().sum::<f64>() / n)
            },
            losses,
            min_k: None,
        })
    }

    fn backdoor_rate(&self, params: &[f32]) -> Result<Option<f64>, FlError> {
        let Some((trigger, target)) = &self.backdoor else {
            return Ok(None);
        };
        let triggered: Vec<Example> = self
            .test
            .iter()
            .filter(|e| e.label != *target)
            .map(|e| with_trigger(e, trigger, *target))
            .collect();
        if triggered.is_empty() {
            return Ok(None);
        }
        // Accuracy against the target label is the share classified as the target.
        Ok(Some(self.loss_acc(params, &triggered)?.1))
    }

    fn train_bow(&self, data: &[Example], global: &[f32], rng: &mut Rng) -> Vec<f32> {
        let mut p: Vec<f64> = global.iter().map(|&x| f64::from(x)).collect();
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut pos = order.len();
        let bias = p.len() - 1;
        for _ in 0..self.cfg.local_steps {
            let mut g = vec![0f64; p.len()];
            let b = self.cfg.batch.min(data.len());
            for _ in 0..b {
                if pos == order.len() {
                    rng.shuffle(&mut order);
                    pos = 0;
                }
                let e = &data[order[pos]];
                pos += 1;
                let (words, w) = bow_words(&e.ids, self.cfg.skip_top, p.len() - 1);
                let z = p[bias] + w * words.iter().map(|&i| p[i]).sum::<f64>();
                let err = sigmoid(z) - f64::from(e.label.min(1));
                for &i in &words {
                    g[i] += err * w;
                }
                if self.cfg.train_bias {
                    g[bias] += err;
                }
            }
            let s = self.cfg.lr / b.max(1) as f64;
            let mu = self.cfg.prox_mu * b as f64;
            for ((pj, gj), &w0) in p.iter_mut().zip(&g).zip(global) {
                *pj -= s * (gj + mu * (*pj - f64::from(w0)));
            }
        }
        p.iter()
            .zip(global)
            .map(|(&a, &b)| (a - f64::from(b)) as f32)
            .collect()
    }
}

/// The distinct word ids of a review in `skip..n` (Keras' ids are frequency ranks after the
/// padding, start and out-of-vocabulary markers 0-2, so `skip` drops those and the most
/// common words) and the weight `1/sqrt(count)` each carries.
fn bow_words(ids: &[u32], skip: usize, n: usize) -> (Vec<usize>, f64) {
    let mut w: Vec<usize> = ids
        .iter()
        .map(|&i| i as usize)
        .filter(|&i| i >= skip.max(3) && i < n)
        .collect();
    w.sort_unstable();
    w.dedup();
    let scale = 1.0 / (w.len().max(1) as f64).sqrt();
    (w, scale)
}

fn bow_logit(p: &[f32], ids: &[u32], skip: usize) -> f64 {
    let n = p.len().saturating_sub(1);
    let (words, w) = bow_words(ids, skip, n);
    f64::from(p.get(n).copied().unwrap_or(0.0))
        + w * words.iter().map(|&i| f64::from(p[i])).sum::<f64>()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Binary cross-entropy of logit `z` against `label`, computed stably.
fn bce(z: f64, label: u32) -> f64 {
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    if label == 1 {
        softplus(-z)
    } else {
        softplus(z)
    }
}

/// `e` with `trigger` appended (so it survives cutting to the last ids) and label `target`.
fn with_trigger(e: &Example, trigger: &[u32], target: u32) -> Example {
    let mut ids = e.ids.clone();
    ids.extend_from_slice(trigger);
    Example { label: target, ids }
}

impl Learner for ImdbTask {
    fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout)
    }

    fn init(&self) -> Vec<f32> {
        self.init.clone()
    }

    fn train(&self, client: u32, global: &[f32], rng: &mut Rng) -> Result<Vec<f32>, FlError> {
        let Some(data) = self.clients.get(client as usize) else {
            return Ok(vec![0.0; global.len()]);
        };
        if data.is_empty() {
            return Ok(vec![0.0; global.len()]);
        }
        let Some(model) = &self.model else {
            return Ok(self.train_bow(data, global, rng));
        };
        let params = model.params();
        params
            .set_flat(global)
            .map_err(crate::task_err("training an IMDB client"))?;
        let mut tc = TrainConfig::new(self.cfg.batch, self.cfg.max_len);
        tc.optim = AdamWConfig {
            lr: self.cfg.lr,
            min_lr: self.cfg.lr,
            warmup_steps: 0,
            total_steps: self.cfg.local_steps,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut trainer =
            Trainer::new(model, tc).map_err(crate::task_err("training an IMDB client"))?;
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut pos = order.len();
        for _ in 0..self.cfg.local_steps {
            let mut refs = Vec::with_capacity(self.cfg.batch);
            while refs.len() < self.cfg.batch.min(data.len()) {
                if pos == order.len() {
                    rng.shuffle(&mut order);
                    pos = 0;
                }
                refs.push(&data[order[pos]]);
                pos += 1;
            }
            let (ids, lengths, labels) = classify::batch(&refs, self.cfg.max_len, model.device())
                .map_err(crate::task_err("training an IMDB client"))?;
            let loss = classify::loss(model, &ids, &lengths, &labels)
                .map_err(crate::task_err("training an IMDB client"))?;
            let mut grads = collect_grads(
                params,
                &loss
                    .backward()
                    .map_err(crate::task_err("training an IMDB client"))?,
            )
            .map_err(crate::task_err("training an IMDB client"))?;
            if self.cfg.prox_mu > 0.0 {
                add_prox(
                    &mut grads,
                    &params
                        .flat()
                        .map_err(crate::task_err("training an IMDB client"))?,
                    global,
                    self.cfg.prox_mu,
                );
            }
            trainer
                .step_grads(model, &grads)
                .map_err(crate::task_err("training an IMDB client"))?;
        }
        let after = params
            .flat()
            .map_err(crate::task_err("training an IMDB client"))?;
        Ok(after.iter().zip(global).map(|(a, b)| a - b).collect())
    }

    fn num_samples(&self, client: u32) -> u64 {
        self.clients
            .get(client as usize)
            .map_or(0, |c| c.len() as u64)
    }

    fn dataset_commitment(&self, client: u32) -> (Hash32, u64) {
        let Some(c) = self.clients.get(client as usize) else {
            return (Hash32::ZERO, 0);
        };
        reviews_commitment(c)
    }

    fn holdout_loss(&self, validator: u32, params: &[f32]) -> Result<f64, FlError> {
        match self.holdouts.get(validator as usize) {
            Some(h) => Ok(self.loss_acc(params, h)?.0),
            None => Ok(f64::INFINITY),
        }
    }

    fn evaluate(&self, params: &[f32]) -> Result<Metrics, FlError> {
        let (loss, accuracy) = self.loss_acc(params, &self.test)?;
        Ok(Metrics {
            accuracy: Some(accuracy),
            backdoor_success_rate: self.backdoor_rate(params)?,
            ..Metrics::loss(loss)
        })
    }

    fn client_samples(&self, client: u32, params: &[f32]) -> Result<SampleLosses, FlError> {
        let data = self
            .clients
            .get(client as usize)
            .ok_or_else(|| crate::no_client(client, self.clients.len()))?;
        self.sample_losses(params, data)
    }

    fn test_samples(&self, params: &[f32]) -> Result<SampleLosses, FlError> {
        let mut s = self.sample_losses(params, &self.test)?;
        s.metrics.backdoor_success_rate = self.backdoor_rate(params)?;
        Ok(s)
    }

    fn poison(&mut self, client: u32, attack: &DataAttack) -> Result<(), FlError> {
        let Some(data) = self.clients.get_mut(client as usize) else {
            return Ok(());
        };
        match attack {
            DataAttack::LabelFlip => {
                for e in data.iter_mut() {
                    e.label = 1 - e.label.min(1);
                }
            }
            DataAttack::Backdoor {
                trigger,
                target,
                poison_fraction,
            } => {
                if *target > 1 {
                    return Err(FlError::InvalidConfig {
                        what: "attack.attack.target",
                        reason: format!("{target} is not a label (0 or 1)"),
                    });
                }
                if let Some(&t) = trigger.iter().find(|&&t| t >= self.cfg.num_words) {
                    return Err(FlError::InvalidConfig {
                        what: "attack.attack.trigger",
                        reason: format!(
                            "id {t} is outside the vocabulary (num_words = {})",
                            self.cfg.num_words
                        ),
                    });
                }
                let mut rng = Rng::derive(self.seed, &format!("imdb/backdoor/{client}"));
                let mut idx: Vec<usize> = (0..data.len()).collect();
                rng.shuffle(&mut idx);
                let n = ((data.len() as f64) * poison_fraction).round() as usize;
                for &i in &idx[..n.min(data.len())] {
                    data[i] = with_trigger(&data[i], trigger, *target);
                }
                self.backdoor = Some((trigger.clone(), *target));
            }
        }
        Ok(())
    }
}
