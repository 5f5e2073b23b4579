//! The settings of the learning tasks, as a run's config names them (`[task] kind = ...`):
//! plain data, checked by [`crate::config::RunConfig::check`]. The tasks that read them are in
//! `cohort-tasks`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which learning task a run trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TaskConfig {
    /// Least squares on non-IID synthetic data (`cohort_tasks::LinearTask`).
    Linear(LinearTaskConfig),
    /// LoRA fine-tuning of a small GPT on Tiny Shakespeare by role (`cohort_tasks::lm::LmTask`).
    Lm(LmTaskConfig),
    /// IMDB sentiment with Dirichlet label skew (`cohort_tasks::imdb::ImdbTask`).
    Imdb(ImdbTaskConfig),
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self::Linear(LinearTaskConfig::default())
    }
}

/// Settings of `cohort_tasks::LinearTask`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearTaskConfig {
    /// Features: [1, 1000000] (default 32).
    pub dim: usize,
    /// Samples per client: [1, 1000000] (default 64). All parties' samples times `dim + 1`
    /// may not exceed 2.5e8 values.
    pub samples_per_client: usize,
    /// Samples per validator holdout: [1, 1000000] (default 128).
    pub holdout_samples: usize,
    /// Test samples: [1, 1000000] (default 512).
    pub test_samples: usize,
    /// How far each client's true weights drift from the shared ones (non-IID-ness): [0, 100]
    /// (default 0.03).
    pub client_drift: f64,
    /// Label noise: [0, 100] (default 0.1).
    pub noise: f64,
    /// Local epochs: [1, 1000] (default 2).
    pub epochs: usize,
    /// Mini-batch size: [1, 1000000] (default 16).
    pub batch: usize,
    /// Learning rate: (0, 10] (default 0.05). A rate at which local training diverges stops
    /// the run (no honest client is slashed for it).
    pub lr: f64,
    /// FedProx's proximal coefficient: local training minimises `loss + mu/2 |w - global|^2`
    /// (0: plain local SGD): [0, 1000], with `lr * prox_mu` below 1.
    pub prox_mu: f64,
}

impl Default for LinearTaskConfig {
    fn default() -> Self {
        Self {
            dim: 32,
            samples_per_client: 64,
            holdout_samples: 128,
            test_samples: 512,
            client_drift: 0.03,
            noise: 0.1,
            epochs: 2,
            batch: 16,
            lr: 0.05,
            prox_mu: 0.0,
        }
    }
}

// The `lm` task.

/// Settings of `cohort_tasks::lm::LmTask` (`[task] kind = "lm"`). Paths are relative to the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmTaskConfig {
    /// The corpus in the Tiny Shakespeare layout (default
    /// `../../shared/data/tinyshakespeare/input.txt`, i.e. the shared data from `examples/`).
    pub corpus: PathBuf,
    /// A base checkpoint directory (GPT or Llama family, Hugging Face layout, with its
    /// tokenizer). None (the default): pretrain a GPT of `preset` first.
    pub base: Option<PathBuf>,
    /// Size of the pretrained base: `test` (d 32, 2 layers, context 32, the default),
    /// `tiny` (d 128, 4 layers, context 128), `reference`, `small` or `medium`; see `cohort
    /// model pretrain`.
    pub preset: String,
    /// Pretraining steps of the base: [0, 1000000] (default 300).
    pub pretrain_steps: usize,
    /// Peak pretraining learning rate: (0, 1] (default 3e-3, warm-up 10%, cosine to a tenth).
    pub pretrain_lr: f64,
    /// Sequences per pretraining step: [1, 4096] (default 16).
    pub pretrain_batch: usize,
    /// Lowest number of lines a role needs to be a client: [1, 1000000] (default 100).
    pub min_lines: usize,
    /// Clients per role: [1, 10000] (default 1, LEAF's split): with more, each client role's training
    /// lines are cut into this many contiguous shards, one client each, so that a run can
    /// have more clients than Tiny Shakespeare has roles (70 roles speak at least 100 lines).
    pub clients_per_role: usize,
    /// Tokens per training and evaluation window: [1, 4096] and at most the model's context
    /// (default 32).
    pub seq_len: usize,
    /// Sequences per local step: [1, 4096] (default 16).
    pub batch: usize,
    /// AdamW steps per round of local training: [1, 100000] (default 16).
    pub local_steps: usize,
    /// Local learning rate (constant): (0, 1] (default 2e-3).
    pub lr: f64,
    /// LoRA rank: [1, 1024] (default 4).
    pub lora_rank: usize,
    /// LoRA alpha: (0, 1e4] (default 8: scale alpha / rank = 2).
    pub lora_alpha: f64,
    /// Dropout on the LoRA branch's input while training (PEFT's `lora_dropout`): [0, 1)
    /// (default 0; left out of the serialized config when 0, so older configs keep their
    /// digest).
    #[serde(skip_serializing_if = "is_zero")]
    pub lora_dropout: f64,
    /// Modules LoRA adapts (PEFT suffixes, 1 to 32; default `c_attn`, `c_proj`, `c_fc`).
    pub lora_targets: Vec<String>,
    /// Share of every client role's lines given to the validators: (0, 0.5) (default 0.1).
    pub holdout_fraction: f64,
    /// Share of every client role's lines in the test set (the last lines): (0, 0.5)
    /// (default 0.1).
    pub test_fraction: f64,
    /// Most windows per validator holdout or test evaluation: [1, 1000000] (default 32).
    pub eval_windows: usize,
    /// FedProx's proximal coefficient mu: [0, 1000] (default 0).
    pub prox_mu: f64,
}

impl Default for LmTaskConfig {
    fn default() -> Self {
        Self {
            corpus: PathBuf::from("../../shared/data/tinyshakespeare/input.txt"),
            base: None,
            preset: "test".into(),
            pretrain_steps: 300,
            pretrain_lr: 3e-3,
            pretrain_batch: 16,
            min_lines: 100,
            clients_per_role: 1,
            seq_len: 32,
            batch: 16,
            local_steps: 16,
            lr: 2e-3,
            lora_rank: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            lora_targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
            holdout_fraction: 0.1,
            test_fraction: 0.1,
            eval_windows: 32,
            prox_mu: 0.0,
        }
    }
}

impl LmTaskConfig {
    /// Makes relative paths relative to `dir` (the config file's directory).
    pub fn resolve(mut self, dir: &Path) -> Self {
        if self.corpus.is_relative() {
            self.corpus = dir.join(&self.corpus);
        }
        if let Some(b) = self.base.as_mut().filter(|b| b.is_relative()) {
            *b = dir.join(&*b);
        }
        self
    }
}

// The `imdb` task.

/// Which classifier an `cohort_tasks::imdb::ImdbTask` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImdbModel {
    /// Logistic regression on the set of words (weights `classifier.weight` `[1, num_words]`
    /// and `classifier.bias` `[1]`).
    Bow,
    /// A tiny GPT with a classification head (`d_model`, `layers`, `heads`, `max_len`).
    Gpt,
}

/// Which final hidden states of the `gpt` model its classification head reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImdbPooling {
    /// The last real id's (Hugging Face's `*ForSequenceClassification`).
    #[default]
    Last,
    /// The mean of every real id's.
    Mean,
}

/// Settings of `cohort_tasks::imdb::ImdbTask` (`[task] kind = "imdb"`). Paths are relative to the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImdbTaskConfig {
    /// Directory with `train.tsv` and `test.tsv` (`LABEL<TAB>ID ID ...`; default
    /// `../../shared/data/imdb`, the shared data seen from `examples/`).
    pub data: PathBuf,
    /// Vocabulary: ids at or above it become 2, out of vocabulary: [4, 10000000] (default
    /// 500).
    pub num_words: u32,
    /// The classifier (default `bow`).
    pub model: ImdbModel,
    /// Last ids of each review the GPT reads: [1, 4096] (default 64).
    pub max_len: usize,
    /// Training reviews used, from the start of `train.tsv`: [0, 10000000] (default 2000; 0:
    /// all).
    pub train_samples: usize,
    /// Test reviews, from the start of `test.tsv`: [0, 10000000] (default 500; 0: all).
    pub test_samples: usize,
    /// Share of the training reviews held by the validators, split evenly: (0, 0.5) (default
    /// 0.1).
    pub holdout_fraction: f64,
    /// Dirichlet concentration of the label skew: (0, 1e6] (default 50: mild skew; smaller is more
    /// skewed, and below about 10 honest clients' single updates score as badly on the
    /// validators' balanced holdouts as label flippers' do; see docs/fl.md).
    pub alpha: f64,
    /// Fewest reviews a client holds (topped up from the largest client): [1, 1000000]
    /// (default 16).
    pub min_client_samples: usize,
    /// GPT width: [1, 4096] (default 32).
    pub d_model: usize,
    /// GPT blocks: [1, 64] (default 1).
    pub layers: usize,
    /// GPT attention heads: [1, 64], dividing `d_model` (default 2).
    pub heads: usize,
    /// The bag of words ignores ids below this: Keras' markers (0-2) and the most frequent
    /// words, which under label skew act as a second bias: [0, num_words - 1] (default 30).
    pub skip_top: usize,
    /// Whether the bag of words trains its bias (default false: under label skew the bias
    /// is what a client's class balance pulls hardest on, and the test set is balanced).
    pub train_bias: bool,
    /// Reviews per local step: [1, 4096] (default 16).
    pub batch: usize,
    /// Local steps per round: [1, 100000] (default 16).
    pub local_steps: usize,
    /// Local learning rate (constant): (0, 100] (default 5 for `bow` (SGD on features of norm 1), use
    /// about 3e-3 for `gpt` (AdamW)).
    pub lr: f64,
    /// FedProx's proximal coefficient mu: [0, 1000], with `lr * prox_mu` below 1 for `bow`
    /// (default 0).
    pub prox_mu: f64,
    /// `gpt` only: steps of causal language-model pretraining of the GPT, before federated
    /// training, on the id sequences of the public reviews, those of `train.tsv` after the
    /// first `train_samples` (never a client's, a validator's or a test review; refused with
    /// `train_samples = 0`, which leaves none): [0, 1000000] (default 0: no pretraining, the
    /// GPT starts from its seeded initialisation). Windows of `max_len` ids; deterministic
    /// from the seed, cached under the run's cache directory. Left out of the serialized
    /// config at its default, as are the other pretraining and LoRA fields, so that configs
    /// written before them keep their digest.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub pretrain_steps: usize,
    /// Peak pretraining learning rate: (0, 1] (default 3e-3, warm-up 10%, cosine to a tenth).
    #[serde(skip_serializing_if = "is_default_pretrain_lr")]
    pub pretrain_lr: f64,
    /// Windows per pretraining step: [1, 4096] (default 16).
    #[serde(skip_serializing_if = "is_default_batch")]
    pub pretrain_batch: usize,
    /// `gpt` only: LoRA rank: [0, 1024] and at most `d_model` (default 0: no adapter, every
    /// parameter of the GPT is trained and federated). Above 0, the GPT (pretrained or not) is
    /// frozen and the federated parameters are the adapter of `lora_targets` and the
    /// classification head (`score.weight`) only.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub lora_rank: usize,
    /// LoRA alpha: (0, 1e4] (default 8: scale alpha / rank).
    #[serde(skip_serializing_if = "is_default_lora_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the LoRA branch's input while training (PEFT's `lora_dropout`): [0, 1)
    /// (default 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub lora_dropout: f64,
    /// Modules LoRA adapts (PEFT suffixes, 1 to 32; default `c_attn`, `c_proj`, `c_fc`).
    #[serde(skip_serializing_if = "is_default_lora_targets")]
    pub lora_targets: Vec<String>,
    /// `gpt` only: which final hidden states the classification head reads: `last` (the
    /// last real id's, the default) or `mean` (the mean of every real id's; what a pretrained
    /// GPT with a frozen base needs to learn this task, see `cohort_tasks::imdb`).
    #[serde(skip_serializing_if = "is_default_pooling")]
    pub pooling: ImdbPooling,
}

fn is_default_pooling(x: &ImdbPooling) -> bool {
    *x == ImdbPooling::Last
}

fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}

fn is_default_pretrain_lr(x: &f64) -> bool {
    *x == ImdbTaskConfig::default().pretrain_lr
}

fn is_default_batch(x: &usize) -> bool {
    *x == ImdbTaskConfig::default().pretrain_batch
}

fn is_default_lora_alpha(x: &f64) -> bool {
    *x == ImdbTaskConfig::default().lora_alpha
}

fn is_default_lora_targets(x: &[String]) -> bool {
    x == ImdbTaskConfig::default().lora_targets.as_slice()
}

impl Default for ImdbTaskConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("../../shared/data/imdb"),
            num_words: 500,
            model: ImdbModel::Bow,
            max_len: 64,
            train_samples: 2000,
            test_samples: 500,
            holdout_fraction: 0.1,
            alpha: 50.0,
            min_client_samples: 16,
            d_model: 32,
            layers: 1,
            heads: 2,
            skip_top: 30,
            train_bias: false,
            batch: 16,
            local_steps: 16,
            lr: 5.0,
            prox_mu: 0.0,
            pretrain_steps: 0,
            pretrain_lr: 3e-3,
            pretrain_batch: 16,
            lora_rank: 0,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            lora_targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
            pooling: ImdbPooling::Last,
        }
    }
}

impl ImdbTaskConfig {
    /// Makes a relative `data` path relative to `dir` (the config file's directory).
    pub fn resolve(mut self, dir: &Path) -> Self {
        if self.data.is_relative() {
            self.data = dir.join(&self.data);
        }
        self
    }
}

/// Whether `x` is 0 (a field left out of the serialized config at its default).
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
