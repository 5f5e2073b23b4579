//! The parties of a cohort run and their composition.
//!
//! [`runtime`] runs a federated experiment over any [`LedgerBackend`](cohort_ledger::LedgerBackend):
//! the coordinator state machine of `cohort-fl` driven on the ledger's virtual clock, the
//! clients and validators reached through the [`transport`] port (with [`InProcess`], the
//! adapter that runs them in this process), and [`resume`], the saved state a stopped run
//! continues from. This crate holds the party and I/O side of the protocol: it signs and sends
//! ledger transactions and writes blobs and state files. It takes the learning task as any
//! [`Learner`](cohort_fl::learner::Learner) and does not depend on `cohort-tasks` (nor on
//! candle): the binary composes the two.

pub mod resume;
pub mod runtime;
pub mod transport;

pub use runtime::{RunError, RunOptions, RunSummary, run, run_in_process, run_with};
pub use transport::{InProcess, Transport};
