//! The parties of a cohort run as units, and their composition.
//!
//! - [`coordinator`]: the coordinator, holding only its own key and the parties' public
//!   [`Roster`](coordinator::Roster): opens rounds, relays what the parties signed, validates,
//!   aggregates, finalizes, settles.
//! - [`party`]: a [`Client`](party::Client) and a [`Validator`](party::Validator), each owning
//!   its key, its data (its view of the task) and its state, signing its own ledger calls.
//! - [`attack`]: attackers as wrappers around a client or a validator.
//! - [`market`]: a run's training recipe, what a data market listing allows.
//! - [`transport`]: the messages between them and the port they travel through, with
//!   [`Queues`], the in-process adapter.
//! - [`runtime`]: `cohort run`'s composition of all of them in one process, and what a run
//!   reports; [`resume`]: the saved state a stopped run continues from.
//!
//! The crate takes the learning task as any [`Learner`](cohort_fl::learner::Learner) and does
//! not depend on `cohort-tasks` (nor on candle): the binary composes the two.

pub mod attack;
pub mod coordinator;
pub mod market;
pub mod party;
pub mod resume;
pub mod runtime;
pub mod summary;
pub mod transport;

pub use coordinator::{Coordinator, Member, Roster};
pub use party::{Client, PartyError, PartyNode, Validator};
pub use runtime::{
    LocalParties, RunError, RunOptions, RunSummary, run, run_in_process, run_with, run_with_options,
};
pub use transport::{Queues, Transport};
