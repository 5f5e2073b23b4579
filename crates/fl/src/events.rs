//! What a run reports as it goes: typed [`RunEvent`]s, and the [`ProvenanceRecord`] of every
//! update. Progress lines, `summary.json`, `provenance.jsonl` and `cohort run --events FILE`
//! (one JSON object per line, tagged by `"event"`) all come from these; a dashboard reads the
//! same stream. Token amounts are integers in base units (10^18 per token), written as
//! decimal strings.

use std::collections::BTreeMap;

use cohort_core::{Address, Hash32, U256};
use serde::{Deserialize, Serialize};

use crate::learner::Metrics;
use crate::strategy::Contribution;

/// The version of the event stream's layout, carried by its `set-up` event: raised when an
/// event or field changes meaning or goes away (one added is not a new version).
pub const SCHEMA_VERSION: u32 = 1;

/// One thing that happened in a run, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RunEvent {
    /// The set-up is on the ledger: every party registered, staked and (clients) committed
    /// its dataset, each signing its own calls.
    SetUp {
        /// The version of the event stream's layout ([`SCHEMA_VERSION`]; 0 in a stream
        /// written before it existed).
        #[serde(default)]
        schema: u32,
        /// Clients enrolled.
        clients: u32,
        /// Validators enrolled.
        validators: u32,
    },
    /// A round opened on the ledger.
    RoundOpened {
        /// The coordinator's round number (from 1).
        round: u64,
        /// The round's id on the ledger.
        ledger_round: u64,
        /// SHA-256 of the global model the round trains from.
        global: Hash32,
        /// The clients asked to train.
        cohort: Vec<u32>,
    },
    /// A client's update and its signed submission were recorded on the ledger.
    UpdateReceived {
        /// Round.
        round: u64,
        /// The client.
        client: u32,
        /// The address it signed its submission from.
        address: Address,
        /// SHA-256 of its blob.
        blob: Hash32,
        /// Bytes of the blob.
        bytes: u64,
        /// Bytes the decoded update would have taken as an uncompressed f32 blob (the blob of
        /// the `none` codec); `None` when the blob does not decode (absent in events written
        /// before compressed updates existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dense_bytes: Option<u64>,
        /// Samples it claims.
        samples: u64,
        /// Its submission's position on the ledger (entry, or block on a chain).
        entry: u64,
        /// L2 norm of the decoded update; `None` when the blob does not decode or holds
        /// non-finite values.
        norm: Option<f64>,
    },
    /// The coordinator's validation of an update (shape, finite values, round).
    UpdateValidated {
        /// Round.
        round: u64,
        /// The client.
        client: u32,
        /// Why it was refused, if it was (it is then scored -1).
        refused: Option<String>,
    },
    /// A validator's commitment was recorded.
    Committed {
        /// Round.
        round: u64,
        /// The validator.
        validator: u32,
    },
    /// A validator's reveal was recorded.
    Revealed {
        /// Round.
        round: u64,
        /// The validator.
        validator: u32,
        /// Its scores, in submission order (loss units).
        scores: Vec<f64>,
    },
    /// The contract's consensus on one update.
    Consensus {
        /// Round.
        round: u64,
        /// The client.
        client: u32,
        /// The stake-weighted median score.
        score: f64,
        /// Accepted or rejected.
        accepted: bool,
    },
    /// The round's aggregate was finalized on the ledger.
    Aggregated {
        /// Round.
        round: u64,
        /// The strategy, as it names itself.
        strategy: String,
        /// What the strategy did with each update that entered the aggregate, in the order
        /// the strategy received them. (A list, not a map by client: integer map keys do not
        /// read back inside a tagged enum.)
        contributions: Vec<ClientContribution>,
        /// The global model before.
        global_before: Hash32,
        /// The global model after.
        global_after: Hash32,
    },
    /// The round was settled: rewards and slashes by participant name, base units.
    Settled {
        /// Round.
        round: u64,
        /// Reward and slash per participant paid or slashed.
        payouts: BTreeMap<String, Amounts>,
    },
    /// A client whose listed dataset does not allow the round's training recipe sat the
    /// round out; its signed refusal is on the ledger (`[market]`).
    Refused {
        /// Round.
        round: u64,
        /// The client.
        client: u32,
    },
    /// The royalties a round paid its listed datasets' owners from the run's fund
    /// (`[market]`), by owner name, in base units (the owner's part; the coordinator's and the
    /// treasury's fees under `coordinator` and `treasury`).
    Royalties {
        /// Round.
        round: u64,
        /// By name.
        #[serde(with = "cohort_core::amount::decimal_map")]
        paid: BTreeMap<String, U256>,
    },
    /// Test metrics of the global model after a round (round 0: the initial model).
    Evaluated {
        /// Round.
        round: u64,
        /// The metrics.
        test: Metrics,
    },
    /// Balance + stake of every participant after a round (round 0: after the set-up), base
    /// units (decimal strings).
    Holdings {
        /// Round.
        round: u64,
        /// By participant name.
        #[serde(with = "cohort_core::amount::decimal_map")]
        holdings: BTreeMap<String, U256>,
    },
    /// The round is durable: the ledger's size and root after it.
    Checkpoint {
        /// Round.
        round: u64,
        /// Entries on the ledger.
        ledger_entries: u64,
        /// The ledger's root.
        ledger_root: Hash32,
    },
    /// The run continues after a stop (a kill, an error) from its last durable round: the
    /// ledger holds the set-up and rounds 1 to `round` (0: the set-up only), at this size and
    /// root. What the stream said of later rounds before the stop is void: they run again.
    Resumed {
        /// The last settled round the run continues after.
        round: u64,
        /// Entries on the ledger.
        ledger_entries: u64,
        /// The ledger's root.
        ledger_root: Hash32,
    },
    /// The run is over: the last event of a finished run.
    Finished {
        /// Rounds settled.
        rounds: u64,
        /// Balance + stake of every participant at the end, base units (decimal strings).
        #[serde(with = "cohort_core::amount::decimal_map")]
        holdings: BTreeMap<String, U256>,
        /// Entries on the ledger.
        ledger_entries: u64,
        /// The ledger's root.
        ledger_root: Hash32,
    },
}

/// What the strategy did with one client's update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientContribution {
    /// The client.
    pub client: u32,
    /// What the strategy did with its update.
    pub contribution: Contribution,
}

/// A reward and a slash, in base units (decimal strings in JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    /// Tokens rewarded, base units.
    #[serde(with = "cohort_core::amount::decimal")]
    pub reward: U256,
    /// Tokens slashed, base units.
    #[serde(with = "cohort_core::amount::decimal")]
    pub slash: U256,
}

/// Where one update came from and what became of it: one line of `DIR/provenance.jsonl`.
/// `cohort provenance DIR` rebuilds every field but `contribution` from the ledger and the
/// blob store alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceRecord {
    /// The coordinator's round number.
    pub round: u64,
    /// The round's id on the ledger.
    pub ledger_round: u64,
    /// The client's index in the run.
    pub client: u32,
    /// The address it signed from.
    pub address: Address,
    /// SHA-256 of its update blob.
    pub blob: Hash32,
    /// Its submission's position on the ledger (entry, or block on a chain).
    pub entry: u64,
    /// Samples it claimed.
    pub samples: u64,
    /// The consensus verdict.
    pub accepted: bool,
    /// The consensus score (loss units).
    pub consensus: f64,
    /// What the strategy did with it; `None` when it did not enter the aggregate (rejected,
    /// or too few updates for the strategy).
    pub contribution: Option<Contribution>,
    /// The global model the round started from.
    pub global_before: Hash32,
    /// The global model the round finalized.
    pub global_after: Hash32,
}
