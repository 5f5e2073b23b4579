//! Federated sentiment classification of IMDB reviews (word ids, as Keras ships them) with
//! Dirichlet label skew across clients.
//!
//! Two models ([`ImdbModel`]): `bow` (the default), logistic regression on the set of words a
//! review uses (each present word weighs `1/sqrt(distinct words)`), trained by mini-batch
//! SGD; and `gpt`, a tiny GPT with a classification head (cohort-model's `classify`: the last
//! real token's final hidden state, or with `pooling = "mean"` the mean of every real token's,
//! through a `score` projection) on each review's last `max_len` ids. On this data the bag of
//! words reaches about 80% test accuracy in a few federated rounds.
//!
//! The GPT can be trained in three ways:
//! - from scratch, in full (`pretrain_steps = 0`, `lora_rank = 0`, the flat vector is every
//!   parameter): on a few thousand reviews it stays near chance in a few federated rounds with
//!   the last token's state (measured), which is why it is not the default;
//! - pretrained first (`pretrain_steps`) as a causal language model on the public reviews,
//!   those of `train.tsv` after the first `train_samples` that the run uses (no client,
//!   validator or test review: unlearning a client stays measurable), deterministic from the
//!   seed and cached under the run's cache directory by the hash of its inputs, as the `lm`
//!   task's base;
//! - then fine-tuned through a LoRA adapter (`lora_rank` above 0): the base is frozen and the
//!   flat vector is the adapter (PEFT names) and the head only, which is what the LoRA
//!   unlearning methods ([`Learner::unlearn`]: gradient ascent or NPO on the forgotten client's
//!   classification loss) move. Measured on this 2-core CPU (examples/unlearn-imdb-gpt.toml's
//!   settings: d 32, one block, 64 ids, 1500 pretraining steps, rank 16, mean pooling): a
//!   frozen base read at its last token, or at a rate of 1e-2 or more, stays near chance; with
//!   mean pooling and a rate of 3e-3, 10 clients reach 60-63% test accuracy in 5 rounds (about
//!   30 s a round), well below the bag of words' 80%.
//!
//! Validators hold a share of the training file set apart from every client; the test set is
//! the test file. Attacking clients can poison their own data: label flipping, or a backdoor
//! (a trigger id sequence appended to a share of their reviews, labelled with the target);
//! [`Metrics::backdoor_success_rate`] is then the share of triggered test reviews of the other
//! class that the model puts in the target class.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use cohort_core::{Hash32, Rng, sha256};
use cohort_ledger::merkle::{MerkleTree, leaf_hash};
use cohort_model::classify::{self, Example};
use cohort_model::data::TokenData;
use cohort_model::optim::{AdamWConfig, collect_grads};
use cohort_model::train::{TrainConfig, Trainer, evaluate};
use cohort_model::{Gpt, GptConfig, LanguageModel, Lora};

use cohort_fl::attack::DataAttack;
use cohort_fl::learner::{Learner, Metrics, SampleLosses};
use cohort_fl::partition::{dirichlet_label_skew, holdout};
pub use cohort_fl::task::{ImdbModel, ImdbPooling, ImdbTaskConfig};
use cohort_fl::unlearning::UnlearnSpec;
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
    /// The public reviews (`train.tsv` after the first `train_samples`; what the GPT is
    /// pretrained on), at most [`PUBLIC_REVIEWS`] of them: the retain term of unlearning.
    public: Vec<Example>,
    /// The pretrained base's cache directory, when it was cached.
    base_dir: Option<PathBuf>,
}

/// At most this many public reviews are kept for unlearning's retain term.
const PUBLIC_REVIEWS: usize = 1_000;

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
    /// `validators` validators, and initialises the model (pretraining the GPT first if
    /// `pretrain_steps` says so, without caching it), all deterministic from `seed`.
    pub fn new(
        cfg: ImdbTaskConfig,
        clients: usize,
        validators: usize,
        seed: u64,
    ) -> Result<Self, FlError> {
        Self::new_cached(cfg, clients, validators, seed, None)
    }

    /// [`ImdbTask::new`], with a pretrained GPT base cached under `cache_dir` (a directory
    /// named by the hash of everything it depends on) and read back from there by later runs.
    pub fn new_cached(
        cfg: ImdbTaskConfig,
        clients: usize,
        validators: usize,
        seed: u64,
        cache_dir: Option<&Path>,
    ) -> Result<Self, FlError> {
        cohort_fl::config::check_imdb(&cfg)?;
        let mut train = read(&cfg.data.join("train.tsv"), cfg.num_words, 0)?;
        let public = if cfg.train_samples > 0 && train.len() > cfg.train_samples {
            train.split_off(cfg.train_samples)
        } else {
            Vec::new()
        };
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
        let mut base_dir = None;
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
                let (model, dir) = gpt_classifier(&cfg, &public, seed, cache_dir)?;
                base_dir = dir;
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
            public: public.into_iter().take(PUBLIC_REVIEWS).collect(),
            base_dir,
        })
    }

    /// The states the GPT's head reads.
    fn pooling(&self) -> classify::Pooling {
        match self.cfg.pooling {
            ImdbPooling::Last => classify::Pooling::Last,
            ImdbPooling::Mean => classify::Pooling::Mean,
        }
    }

    /// The cached pretrained GPT base's directory, for a pretrained `gpt` built with a cache.
    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    /// The public reviews' language-model loss under the base GPT as it is now (mean
    /// next-id cross-entropy over at most 32 windows of `max_len` ids): what pretraining
    /// lowers. `None` for the bag of words or without public reviews.
    pub fn public_lm_loss(&self) -> Result<Option<f64>, FlError> {
        let Some(model) = &self.model else {
            return Ok(None);
        };
        let tokens: Vec<u32> = self.public.iter().flat_map(|e| e.ids.clone()).collect();
        if tokens.len() < self.cfg.max_len + 2 {
            return Ok(None);
        }
        let s = evaluate(model, &tokens, 16, self.cfg.max_len, 32).map_err(crate::task_err(
            "evaluating the IMDB GPT as a language model",
        ))?;
        Ok(Some(s.loss))
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
            let l = classify::loss_pooled(model, &ids, &lengths, &labels, self.pooling())
                .map_err(crate::task_err("evaluating the IMDB classifier"))?
                .detach();
            sum += f64::from(
                l.to_scalar::<f32>()
                    .map_err(crate::task_err("evaluating the IMDB classifier"))?,
            ) * chunk.len() as f64;
        }
        let acc = classify::accuracy_pooled(model, examples, self.cfg.max_len, 64, self.pooling())
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
                    let rows = classify::logits_pooled(model, &ids, &lengths, self.pooling())
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

    /// [`Learner::unlearn`]'s optimisation on the GPT classifier: `spec.steps` steps from
    /// `params` on batches of the `forget` reviews (their classification loss ascended, or
    /// NPO's bounded objective against each review's label log-likelihood before any step),
    /// each with `spec.retain_weight` times the classification loss on as many public reviews
    /// labelled by the model before unlearning (its own predictions: nobody holds their
    /// labels).
    fn unlearn_steps(
        &self,
        model: &Gpt,
        forget: &[Example],
        params: &[f32],
        spec: &UnlearnSpec,
        rng: &mut Rng,
    ) -> cohort_model::Result<Vec<f32>> {
        use candle_core::{D, DType, Tensor};
        use cohort_fl::unlearning::Objective;
        let p = model.params();
        p.set_flat(params)?;
        let device = model.device();
        let max_len = self.cfg.max_len;
        let predict = |e: &[Example]| -> cohort_model::Result<Vec<u32>> {
            let mut out = Vec::with_capacity(e.len());
            for chunk in e.chunks(64) {
                let refs: Vec<&Example> = chunk.iter().collect();
                let (ids, lengths, _) = classify::batch(&refs, max_len, device)?;
                out.extend(
                    classify::logits_pooled(model, &ids, &lengths, self.pooling())?
                        .detach()
                        .argmax(1)?
                        .to_vec1::<u32>()?,
                );
            }
            Ok(out)
        };
        // Each forget review's log-likelihood of its label before any step (NPO's reference).
        let reference: Vec<f64> = match spec.objective {
            Objective::Npo { .. } => self
                .sample_losses(params, forget)
                .map_err(|e| cohort_model::Error::Data(e.to_string()))?
                .losses
                .iter()
                .map(|l| -l)
                .collect(),
            Objective::GradientAscent => Vec::new(),
        };
        let retain: Vec<Example> = if spec.retain_weight > 0.0 {
            let labels = predict(&self.public)?;
            self.public
                .iter()
                .zip(labels)
                .map(|(e, label)| Example {
                    label,
                    ids: e.ids.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut tc = TrainConfig::new(spec.batch, max_len);
        tc.optim = AdamWConfig {
            lr: spec.lr,
            min_lr: spec.lr,
            warmup_steps: 0,
            total_steps: spec.steps,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut trainer = Trainer::new(model, tc)?;
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
        let (mut fo, mut ro): (Vec<usize>, Vec<usize>) =
            ((0..forget.len()).collect(), (0..retain.len()).collect());
        let (mut fi, mut ri) = (fo.len(), ro.len());
        for _ in 0..spec.steps {
            let picked = next(&mut fo, &mut fi, rng);
            let refs: Vec<&Example> = picked.iter().map(|&i| &forget[i]).collect();
            let (ids, lengths, labels) = classify::batch(&refs, max_len, device)?;
            let mode = TrainMode::new(model, self.cfg.lora_dropout, rng);
            let logits = classify::logits_pooled(model, &ids, &lengths, self.pooling())?;
            let b = labels.len();
            // Each review's cross-entropy: logsumexp (stabilised by the detached row maximum)
            // minus its label's logit.
            let m = logits.max_keepdim(D::Minus1)?.detach();
            let lse = logits
                .broadcast_sub(&m)?
                .exp()?
                .sum_keepdim(D::Minus1)?
                .log()?
                .add(&m)?;
            let y = Tensor::from_vec(labels, (b, 1), device)?;
            let rows = lse.sub(&logits.gather(&y, 1)?)?.reshape(b)?;
            let forget_loss = match spec.objective {
                Objective::GradientAscent => rows.mean_all()?.neg()?,
                Objective::Npo { beta } => {
                    // d = log p(label) - log p_ref(label); (2/beta) mean log(1 + e^(beta d)).
                    let refs: Vec<f32> = picked
                        .iter()
                        .map(|&i| reference.get(i).copied().unwrap_or(0.0) as f32)
                        .collect();
                    let d = rows.neg()?.sub(&Tensor::from_vec(refs, b, device)?)?;
                    let z = (d * beta)?.exp()?;
                    ((z + 1.0)?.log()?.mean_all()? * (2.0 / beta))?
                }
            };
            let loss = if ro.is_empty() {
                forget_loss
            } else {
                let picked = next(&mut ro, &mut ri, rng);
                let refs: Vec<&Example> = picked.iter().map(|&i| &retain[i]).collect();
                let (ids, lengths, labels) = classify::batch(&refs, max_len, device)?;
                let r = classify::loss_pooled(model, &ids, &lengths, &labels, self.pooling())?;
                (forget_loss + (r * spec.retain_weight)?)?
            };
            let grads = collect_grads(p, &loss.to_dtype(DType::F32)?.backward()?)?;
            drop(mode);
            trainer.step_grads(model, &grads)?;
        }
        p.flat()
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

/// The `gpt` classifier of `cfg`: a GPT (pretrained on the `public` reviews when
/// `pretrain_steps` is above 0, cached under `cache_dir`), a two-label `score` head and, when
/// `lora_rank` is above 0, a LoRA adapter that freezes everything but itself and the head.
/// Also the cached base's directory, if any.
fn gpt_classifier(
    cfg: &ImdbTaskConfig,
    public: &[Example],
    seed: u64,
    cache_dir: Option<&Path>,
) -> Result<(Gpt, Option<PathBuf>), FlError> {
    const WHAT: &str = "building the IMDB classifier";
    let gc = GptConfig::new(
        cfg.num_words as usize,
        cfg.max_len,
        cfg.d_model,
        cfg.layers,
        cfg.heads,
    );
    let (mut model, dir) = if cfg.pretrain_steps == 0 {
        (
            Gpt::new(gc, seed, &Device::Cpu).map_err(crate::task_err(WHAT))?,
            None,
        )
    } else {
        pretrained_gpt(cfg, gc, public, seed, cache_dir)?
    };
    classify::add_head(&mut model, 2, seed).map_err(crate::task_err(WHAT))?;
    if cfg.lora_rank > 0 {
        crate::attach_lora(
            &mut model,
            (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout),
            &cfg.lora_targets,
            seed,
        )?;
    }
    Ok((model, dir))
}

/// The GPT `gc` pretrained as a causal language model for `cfg.pretrain_steps` AdamW steps on
/// windows of `max_len` ids of the `public` reviews (concatenated; each starts with Keras'
/// start marker), deterministic from `seed`; read from, or written to, `cache_dir` under the
/// hash of everything it depends on.
fn pretrained_gpt(
    cfg: &ImdbTaskConfig,
    gc: GptConfig,
    public: &[Example],
    seed: u64,
    cache_dir: Option<&Path>,
) -> Result<(Gpt, Option<PathBuf>), FlError> {
    const WHAT: &str = "pretraining the IMDB GPT";
    let tokens: Vec<u32> = public.iter().flat_map(|e| e.ids.iter().copied()).collect();
    let seq = cfg.max_len;
    if tokens.len() < seq + 2 {
        return Err(FlError::InvalidConfig {
            what: "task.pretrain_steps",
            reason: format!(
                "the {} public reviews (train.tsv after the first task.train_samples = {}) hold \
                 {} ids, fewer than a window of {}",
                public.len(),
                cfg.train_samples,
                tokens.len(),
                seq + 2
            ),
        });
    }
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let key = sha256(
        format!(
            "cohort-tasks imdb gpt base v1/{}/{}/{}/{}/{}/{}/{}/{}/{}/{seed}",
            sha256(&bytes).to_hex(),
            cfg.num_words,
            cfg.max_len,
            cfg.d_model,
            cfg.layers,
            cfg.heads,
            cfg.pretrain_steps,
            cfg.pretrain_lr,
            cfg.pretrain_batch,
        )
        .as_bytes(),
    );
    let name = format!("imdb-base-{}", &key.to_hex()[..16]);
    let dir = cache_dir.map(|c| c.join(&name));
    if let Some(d) = dir.as_ref().filter(|d| d.join("config.json").is_file()) {
        let model = Gpt::load(d, &Device::Cpu).map_err(crate::task_err(WHAT))?;
        return Ok((model, dir));
    }
    let model = Gpt::new(gc, seed, &Device::Cpu).map_err(crate::task_err(WHAT))?;
    let mut tc = TrainConfig::new(cfg.pretrain_batch, seq);
    tc.seed = seed;
    tc.optim = AdamWConfig {
        lr: cfg.pretrain_lr,
        min_lr: cfg.pretrain_lr / 10.0,
        warmup_steps: (cfg.pretrain_steps / 10).max(1),
        total_steps: cfg.pretrain_steps.max(1),
        ..AdamWConfig::default()
    };
    let mut trainer = Trainer::new(&model, tc).map_err(crate::task_err(WHAT))?;
    let data = TokenData {
        train: tokens,
        val: Vec::new(),
    };
    for _ in 0..cfg.pretrain_steps {
        trainer.step(&model, &data).map_err(crate::task_err(WHAT))?;
    }
    if let (Some(cache), Some(d)) = (cache_dir, dir.as_ref()) {
        let tmp = cache.join(format!("{name}.partial"));
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |e: std::io::Error| FlError::task_failed(p, e)
        };
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        model.save(&tmp).map_err(crate::task_err(WHAT))?;
        std::fs::rename(&tmp, d).map_err(io(d))?;
    }
    Ok((model, dir))
}

/// A LoRA adapter with dropout in training mode (its dropout key drawn from `rng`) until
/// dropped, also on error; nothing without an adapter or at dropout 0.
struct TrainMode<'a>(Option<&'a Lora>);

impl<'a> TrainMode<'a> {
    fn new(model: &'a Gpt, dropout: f64, rng: &mut Rng) -> Self {
        let lora = model.weights().lora.as_ref().filter(|_| dropout > 0.0);
        if let Some(l) = lora {
            l.set_dropout_key(Some(rng.next_u64()));
        }
        Self(lora)
    }
}

impl Drop for TrainMode<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.0 {
            l.set_dropout_key(None);
        }
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
            // LoRA dropout masks from the client's own stream (none at the default 0).
            let mode = TrainMode::new(model, self.cfg.lora_dropout, rng);
            let loss = classify::loss_pooled(model, &ids, &lengths, &labels, self.pooling())
                .map_err(crate::task_err("training an IMDB client"))?;
            let mut grads = collect_grads(
                params,
                &loss
                    .backward()
                    .map_err(crate::task_err("training an IMDB client"))?,
            )
            .map_err(crate::task_err("training an IMDB client"))?;
            drop(mode);
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

    fn unlearn(
        &self,
        client: u32,
        params: &[f32],
        spec: &UnlearnSpec,
        seed: u64,
    ) -> Result<Vec<f32>, FlError> {
        spec.check()?;
        let data = self
            .clients
            .get(client as usize)
            .ok_or_else(|| crate::no_client(client, self.clients.len()))?;
        let model = match &self.model {
            Some(m) if self.cfg.lora_rank > 0 => m,
            _ => {
                return Err(FlError::InvalidConfig {
                    what: "--method",
                    reason: "the LoRA methods need the run's LoRA adapter: an imdb task with \
                             model = \"gpt\" and task.lora_rank above 0; use retrain or \
                             fed-eraser"
                        .into(),
                });
            }
        };
        if data.is_empty() {
            return Err(FlError::InvalidConfig {
                what: "client",
                reason: format!("client {client} holds no reviews"),
            });
        }
        let mut rng = Rng::derive(seed, &format!("unlearn/client/{client}"));
        let after = self
            .unlearn_steps(model, data, params, spec, &mut rng)
            .map_err(crate::task_err("unlearning on the IMDB classifier"))?;
        crate::finite_unlearned(after, spec)
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
