//! cohort's collaborative-learning economics simulator.
//!
//! Researchers and protocol designers ask, before deploying an incentive for a shared model:
//! does it keep the model accurate while honest contributors profit and malicious ones go
//! broke? This crate answers for **Deposit, Refund and Take** (Microsoft's "Sharing Updatable
//! Models on Blockchain", 0xDeCA10B, as studied by Ding & Hu, arXiv 2209.05017) on IMDB
//! reviews, and for the system's two other mechanisms, Points and the prediction market —
//! executing the very contract bytecode that would be deployed (`contracts/src/Sim*.sol`) in
//! revm, not a model of it.
//!
//! - [`data`]: the IMDB TSV files as sparse binary bags of words;
//! - [`perceptron`]: the sparse perceptron in the contract's fixed point, with sklearn's
//!   `fit` for the initial model; [`naive_bayes`] and [`centroid`]: multinomial Naive Bayes
//!   (fixed-point log2) and nearest centroid (exact integers); [`model`]: the closed set of
//!   them and what a mechanism needs of one ([`ChainModel`]);
//! - [`drt`]: the mechanism's rules in Rust ([`drt::Drt`], the contract's reference) and on
//!   chain ([`drt::EvmDrt`]); [`points`] and [`market`]: Points and the prediction market, the
//!   same way;
//! - [`agent`], [`driver`]: agents on a virtual clock, deterministic from a seed;
//! - [`report`], [`plot`], [`sweep`]: what a run and a grid of runs report, as JSON, CSV and
//!   SVG.
//!
//! ```no_run
//! use cohort_sim::{Dataset, SimConfig, run};
//!
//! # fn main() -> Result<(), cohort_sim::SimError> {
//! let data = Dataset::load("../shared/data/imdb".as_ref(), 500, None)?;
//! let report = run(&SimConfig::reference(1), &data)?;
//! println!("{} -> {}", report.initial_accuracy, report.final_accuracy);
//! # Ok(()) }
//! ```

pub mod agent;
pub mod centroid;
pub mod chain;
pub mod data;
pub mod driver;
pub mod drt;
pub mod market;
pub mod model;
pub mod naive_bayes;
pub mod perceptron;
pub mod plot;
pub mod points;
pub mod report;
pub mod sweep;

use std::path::PathBuf;

pub use agent::{AgentKind, AgentSpec};
pub use centroid::NearestCentroid;
pub use data::{Dataset, Sample};
pub use driver::{Engine, InitialPortion, SimConfig, run};
pub use drt::{Drt, DrtParams, EvmDrt, Reject};
pub use market::{EvmMarket, Market, MarketParams};
pub use model::{ChainModel, Model, ModelKind};
pub use naive_bayes::NaiveBayes;
pub use perceptron::{EtaSchedule, FitConfig, Perceptron};
pub use points::{EvmPoints, PointsRules};
pub use report::RunReport;

/// A binary classifier over sparse binary features.
pub trait Classifier {
    /// The predicted label, 0 or 1.
    fn predict(&self, features: &[u32]) -> u8;
    /// Trains with one labelled sample; false if that left the model exactly as it was (the
    /// contract's `update` returns the same).
    fn update(&mut self, features: &[u32], label: u8) -> bool;
}

/// Everything that can go wrong in a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A data file is missing or malformed (its line and what is wrong).
    #[error(transparent)]
    Data(#[from] cohort_data::DataError),
    /// A parameter is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The EVM failed to run a call, or a result did not decode.
    #[error("chain: {0}")]
    Chain(String),
    /// A chart could not be drawn or written.
    #[error("{path}: {reason}")]
    Plot {
        /// The chart's file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The contract and the Rust reference disagreed.
    #[error(
        "the contract and the Rust reference disagree on {call}: reference {reference}, chain {chain}"
    )]
    Diverged {
        /// The call or state compared.
        call: String,
        /// What the reference says.
        reference: String,
        /// What the chain says.
        chain: String,
    },
}
