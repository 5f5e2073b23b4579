//! Every random stream of cohort, in one place.
//!
//! cohort promises that a run replays bit for bit from its seed, so each stream is fixed: the
//! generators are written down here (or, for the simulator's ChaCha, pinned with the `rand`
//! crates in the workspace's lock file), and known-answer tests hold their first outputs.
//! Changing any of them changes published figures and ledger roots: never do it silently.
//!
//! Three kinds, for three needs:
//!
//! | type | algorithm | used for |
//! | --- | --- | --- |
//! | [`Rng`] | xoshiro256\*\* seeded by SplitMix64; [`Rng::derive`] names sub-streams by SHA-256 | the federated protocol: partitions, client sampling, attacks, the linear and IMDB tasks |
//! | [`SplitMix64`] | SplitMix64, counter-based ([`SplitMix64::draw_at`]); [`SplitMix64::derive`] names sub-streams by FNV-1a | the model engine: initialisation, batches, generation, and dropout masks that do not depend on how the work is split across threads |
//! | [`ChaCha8`] | ChaCha8 (`rand_chacha`), used through the `rand` traits | the economics simulator, whose figures reproduce the original study |
//!
//! A round's cohort is not drawn from any of them: [`sample_cohort`] derives it from the
//! ledger's beacon with keccak-256, the way the contract does.
//!
//! None of them is cryptographic: keys come from [`crate::Identity`] and key files.

mod chacha;
mod cohort;
mod splitmix;
mod xoshiro;

pub use chacha::ChaCha8;
pub use cohort::sample_cohort;
pub use splitmix::SplitMix64;
pub use xoshiro::Rng;
