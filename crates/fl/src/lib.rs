//! Federated learning for cohort: the pure domain.
//!
//! The synchronous parts of the federated protocol: client updates and their validation
//! ([`update`]), the aggregation strategies ([`strategy`]), the coordinator state machine
//! ([`coordinator`]), partitions ([`partition`]), update and data attacks as transformations
//! ([`attack`]), a run's checked configuration ([`config`], with the task settings in
//! [`task`]), update blobs ([`blob`]) and the [`Learner`](learner::Learner) trait a task
//! implements. None of them does I/O, reads a clock or touches a tensor library: this crate
//! depends on neither candle, cohort-model nor the ledger (a test checks it), so the same code
//! serves the in-process runtime, a networked coordinator and the tests. The tasks are in
//! `cohort-tasks`; the parties and the runtime over a ledger are in `cohort-node`.
//!
//! Strategies compose by wrapping: robustness is a wrapper around any aggregator.
//!
//! ```
//! use cohort_fl::strategy::{Clipped, Krum, Strategy};
//! use cohort_fl::ClientUpdate;
//!
//! let updates: Vec<ClientUpdate> = (0..7)
//!     .map(|i| ClientUpdate::new(i, 1, vec![0.1 * i as f32; 4], 10))
//!     .collect();
//! let mut s = Clipped::new(Krum::new(2), 1.0);
//! let delta = s.aggregate(&updates).unwrap();
//! assert_eq!(delta.len(), 4);
//! ```

pub mod attack;
pub mod blob;
pub mod config;
pub mod coordinator;
pub mod events;
pub mod learner;
pub mod partition;
pub mod strategy;
pub mod task;
pub mod update;

pub use attack::{AttackKind, DataAttack, UpdateAttack};
pub use config::{RunConfig, ValidConfig};
pub use coordinator::{Command, Coordinator, CoordinatorConfig, Event, Phase};
pub use learner::{Learner, Metrics};
pub use update::{ClientUpdate, validate};

/// Errors of the federated runtime. Protocol rejections are values, never panics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlError {
    /// An update failed validation; it is recorded as rejected.
    #[error("update from client {client} for round {round} rejected: {reason}")]
    UpdateRejected {
        /// The client.
        client: u32,
        /// The round the update claims.
        round: u64,
        /// Why.
        reason: String,
    },
    /// A strategy was given too few updates for its guarantees.
    #[error("{strategy} needs at least {need} updates, got {got}")]
    NotEnoughUpdates {
        /// The strategy.
        strategy: String,
        /// How many it needs.
        need: usize,
        /// How many it got.
        got: usize,
    },
    /// Updates of different lengths reached a strategy.
    #[error("updates have different lengths ({a} and {b})")]
    ShapeMismatch {
        /// One length.
        a: usize,
        /// Another.
        b: usize,
    },
    /// A blob is not a safetensors file of the expected layout.
    #[error("malformed blob: {reason}")]
    MalformedBlob {
        /// What is wrong with it.
        reason: String,
    },
    /// The learning task failed (a model operation, a data file).
    #[error("task: {0}")]
    Task(String),
    /// A config value is out of range (`what` is its dotted path, `task.lr`).
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The parameter.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An honest client's local training gave non-finite values: the task's settings (a
    /// learning rate too high for the data) cannot train. The run stops instead of rejecting
    /// and slashing the client for the operator's choice.
    #[error(
        "local training diverged (non-finite values in an honest client's update): the task's \
         settings cannot train this data (a learning rate too high?); the run stops instead \
         of rejecting and slashing an honest client"
    )]
    Diverged,
    /// A file of a run's saved state ([`resume`]) is missing or damaged.
    #[error("{}: {reason}", path.display())]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}
