//! Federated learning for cohort: the pure domain.
//!
//! The synchronous parts of the federated protocol: client updates, which carry a named delta
//! (tensors' names, shapes and values), and their validation against the model's layout
//! ([`update`]), the aggregation strategies ([`strategy`]), the coordinator state machine
//! ([`coordinator`]), partitions ([`partition`]), sharded training for exact unlearning
//! ([`shards`]), update and data attacks as transformations
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
pub mod compress;
pub mod config;
pub mod coordinator;
pub mod events;
pub mod learner;
pub mod partition;
pub mod shards;
pub mod strategy;
pub mod task;
pub mod unlearning;
pub mod update;

pub use attack::{AttackKind, DataAttack, DataProfile, UpdateAttack};
pub use config::{RunConfig, ValidConfig};
pub use coordinator::{Command, Coordinator, CoordinatorConfig, Event, Phase};
pub use learner::{Learner, Metrics};
pub use update::{ClientUpdate, Layout, NamedDelta, validate};

/// Errors of the federated runtime. Protocol rejections are values, never panics.
///
/// A task's failure keeps the error that caused it ([`FlError::TaskFailed`]): this crate knows
/// no model library, so the source travels as a boxed [`std::error::Error`], and
/// [`std::error::Error::source`] walks from the `FlError` to the model's (or the file system's)
/// own error.
#[derive(Debug, thiserror::Error)]
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
    /// A list of tensors that cannot be a model's layout (a name twice, a reserved name, more
    /// values than fit in memory).
    #[error("invalid layout: {reason}")]
    InvalidLayout {
        /// What is wrong with it.
        reason: String,
    },
    /// A blob is not a safetensors file of the expected layout.
    #[error("malformed blob: {reason}")]
    MalformedBlob {
        /// What is wrong with it.
        reason: String,
    },
    /// The learning task failed, with nothing more to say than this message (a learner
    /// without an underlying error value). Prefer [`FlError::TaskFailed`] when there is one.
    #[error("task: {0}")]
    Task(String),
    /// The learning task failed in an operation that returned an error (a model or tensor
    /// operation, a data file): what the task was doing, and that error as the
    /// [`source`](std::error::Error::source).
    #[error("task: {context}: {source}")]
    TaskFailed {
        /// What the task was doing (`"training client 3"`).
        context: String,
        /// The error the operation returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

impl FlError {
    /// A task failure in `context` caused by `source`, kept as the error's source.
    pub fn task_failed(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::TaskFailed {
            context: context.into(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::FlError;

    #[test]
    fn a_task_failure_keeps_its_source() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "the disk is full");
        let e = FlError::task_failed("writing the adapter", io);
        assert_eq!(e.to_string(), "task: writing the adapter: the disk is full");
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io::Error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        assert!(FlError::Task("plain".into()).source().is_none());
    }
}
