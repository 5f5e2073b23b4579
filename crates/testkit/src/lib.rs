//! Test support for cohort's test suites: the real processes the tests run against, started
//! and stopped for them. A dev-dependency only; nothing here ships in a binary.
//!
//! [`Anvil`] is Foundry's local EVM node, for the tests that check the ledger, `cohort run
//! --chain-rpc` and the simulator's contracts on a real JSON-RPC chain against the embedded
//! revm:
//!
//! ```no_run
//! let Some(anvil) = cohort_testkit::Anvil::start("my_test") else {
//!     return; // no anvil and COHORT_SKIP_ANVIL=1: a printed skip
//! };
//! let block = anvil.result("eth_blockNumber", serde_json::json!([]));
//! assert!(block.is_some(), "{}", anvil.url());
//! ```

mod anvil;

pub use anvil::{Anvil, FUNDER_KEY, find_anvil, free_port};
