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

//!
//! [`S3Server`] (feature `s3`) is a real S3 server (`s3s-fs`) for the blob store's tests and
//! `cohort run --blobs s3://…`:
//!
//! ```no_run
//! # #[cfg(feature = "s3")] {
//! let s3 = cohort_testkit::S3Server::start();
//! let url = format!("s3://{}/prefix", cohort_testkit::s3::BUCKET);
//! // give a client s3.env() (credentials, endpoint) and the url
//! # let _ = (url, s3.env());
//! # }
//! ```

//!
//! [`netns::Lab`] (Linux) is several hosts on one machine: network namespaces joined by veth
//! pairs, with packet loss and delay on chosen links, for the multi-host federation tests.

mod anvil;
#[cfg(target_os = "linux")]
pub mod netns;
#[cfg(feature = "s3")]
pub mod s3;

pub use anvil::{Anvil, FUNDER_KEY, find_anvil, free_port};
#[cfg(feature = "s3")]
pub use s3::S3Server;
