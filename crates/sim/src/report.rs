//! What a run reports (serialised as the `--json` file).

use std::collections::BTreeMap;

use crate::agent::{AgentKind, AgentSpec};
use crate::driver::Engine;
use crate::drt::{DAY, Drt, TOKEN_UNIT};

/// One participant's account of a run. Amounts in whole tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentReport {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Starting balance.
    pub start_balance: f64,
    /// Balance at the end.
    pub final_balance: f64,
    /// Balance at the end, % of the start.
    pub final_balance_pct: f64,
    /// Samples accepted.
    pub accepted: u64,
    /// Submissions the contract refused (cost above the offered deposit).
    pub refused_additions: u64,
    /// Refunds received.
    pub refunds: u64,
    /// Takes made (take-alls included).
    pub takes: u64,
    /// Of which take-alls.
    pub take_alls: u64,
    /// Good contributions counted by the contract.
    pub good_contributions: u64,
    /// Deposits paid, base units.
    #[serde(with = "u128_string")]
    pub deposited: u128,
    /// Refunds received, base units.
    #[serde(with = "u128_string")]
    pub refunded: u128,
    /// Taken from others (and own take-alls), base units.
    #[serde(with = "u128_string")]
    pub taken: u128,
    /// First simulated day the balance fell below 1% of the start.
    pub bankrupt_day: Option<f64>,
}

impl AgentReport {
    pub(crate) fn new(spec: &AgentSpec) -> Self {
        Self {
            name: spec.name.clone(),
            kind: spec.kind,
            start_balance: spec.start_balance as f64,
            final_balance: 0.0,
            final_balance_pct: 0.0,
            accepted: 0,
            refused_additions: 0,
            refunds: 0,
            takes: 0,
            take_alls: 0,
            good_contributions: 0,
            deposited: 0,
            refunded: 0,
            taken: 0,
            bankrupt_day: None,
        }
    }
}

pub(crate) mod u128_string {
    pub fn serialize<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Test accuracy at a time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccuracyPoint {
    /// Simulated seconds.
    pub t: u64,
    /// Simulated days.
    pub day: f64,
    /// Fraction of the test set predicted right.
    pub accuracy: f64,
}

impl AccuracyPoint {
    pub(crate) fn new(t: u64, accuracy: f64) -> Self {
        Self {
            t,
            day: t as f64 / DAY as f64,
            accuracy,
        }
    }
}

/// Every participant's balance at a time, in % of its start (order of `agents`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BalancePoint {
    /// Simulated seconds.
    pub t: u64,
    /// Simulated days.
    pub day: f64,
    /// Balance per participant, % of its start.
    pub pct: Vec<f64>,
}

impl BalancePoint {
    pub(crate) fn new<M>(t: u64, rules: &Drt<M>, agents: &[AgentSpec]) -> Self {
        Self {
            t,
            day: t as f64 / DAY as f64,
            pct: agents
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    100.0 * rules.balances.get(i).copied().unwrap_or(0) as f64
                        / (u128::from(a.start_balance) * TOKEN_UNIT) as f64
                })
                .collect(),
        }
    }
}

impl BalancePoint {
    /// A point from ready-made percentages.
    pub(crate) fn from_pct(t: u64, pct: Vec<f64>) -> Self {
        Self {
            t,
            day: t as f64 / DAY as f64,
            pct,
        }
    }
}

/// What the balances of a report count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BalanceUnit {
    /// Tokens: `final_balance` in whole tokens, `*_pct` and `balance_series` in % of the
    /// start.
    Tokens,
    /// Points (the Points mechanism, no money): `final_balance` is the agent's points,
    /// `*_pct` and `balance_series` are points in % of the agent's accepted contributions
    /// so far (100 = every contribution earned its point); nobody goes bankrupt.
    Points,
}

/// What a prediction-market run adds to the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MarketReport {
    /// The bounty, whole tokens.
    pub bounty: f64,
    /// Test reviews committed and revealed.
    pub test_size: usize,
    /// Pieces they were committed in.
    pub pieces: usize,
    /// Test accuracy (whole test file) of the model trained during participation, at its
    /// end; `final_accuracy` is the last reward round's model.
    pub participation_accuracy: f64,
    /// Day participation ended.
    pub participation_days: f64,
    /// Every reward round.
    pub rounds: Vec<crate::market::RoundOutcome>,
    /// What returned to the initiator after the last round, whole tokens.
    pub initiator_refund: f64,
    /// Contributions whose whole deposit was forfeited.
    pub forfeited: u64,
    /// Base units left in escrow after every claim (rounding of the pot shares).
    #[serde(with = "u128_string")]
    pub dust: u128,
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    /// `drt`, `points` or `market`.
    pub mechanism: String,
    /// `perceptron`, `nb` or `ncc`.
    pub model: String,
    /// What balances count: tokens, or points for the Points mechanism.
    pub balance_unit: BalanceUnit,
    /// The prediction market's rounds and pots (market runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<MarketReport>,
    /// Where the mechanism ran.
    pub engine: Engine,
    /// The seed.
    pub seed: u64,
    /// Features per sample.
    pub num_words: u32,
    /// Training reviews used (initial fit + contributions).
    pub train_size: usize,
    /// Test reviews.
    pub test_size: usize,
    /// The deposit's cost weight.
    pub cost_weight: f64,
    /// Samples the initial model was fit on.
    pub initial_samples: usize,
    /// Epochs of the initial fit.
    pub initial_fit_epochs: u32,
    /// Samples added through the mechanism.
    pub samples_added: usize,
    /// Test accuracy of the initial model.
    pub initial_accuracy: f64,
    /// Test accuracy at the end.
    pub final_accuracy: f64,
    /// `final_accuracy - initial_accuracy`.
    pub accuracy_gap: f64,
    /// Lowest evaluated accuracy (the initial one included).
    pub min_accuracy: f64,
    /// The day the last Bad agent's balance fell below 1% of its start; null if one never did.
    pub bad_bankrupt_day: Option<f64>,
    /// Good agents' balances at the end, % of their start (null without Good agents).
    pub good_final_balance_pct: Option<f64>,
    /// Bad agents' balances at the end, % of their start (null without Bad agents).
    pub bad_final_balance_pct: Option<f64>,
    /// Time of the last turn, days.
    pub simulated_days: f64,
    /// Samples accepted per participant.
    pub accepted: BTreeMap<String, u64>,
    /// Successful state-changing calls during the run (setup excluded).
    pub transactions: u64,
    /// Calls sent that reverted (only with `send_rejected`).
    pub reverted_transactions: u64,
    /// Calls the rules refused (sent or not).
    pub rejected_attempts: u64,
    /// Refusals by the contract error's name.
    pub rejections: BTreeMap<String, u64>,
    /// Gas of the run's transactions (setup excluded; 0 for the native engine).
    pub gas_used: u64,
    /// Deployment, weight loading and funding transactions.
    pub setup_transactions: u64,
    /// Read-only calls (the checks at every evaluation).
    pub views: u64,
    /// Wall time of the run: initial fit, deployment and simulation (not data loading).
    pub wall_seconds: f64,
    /// `(transactions + reverted_transactions) / wall_seconds`.
    pub transactions_per_second: f64,
    /// Contributions with something left to claim when the run stopped.
    pub unclaimed_at_end: usize,
    /// Everything the run depended on besides the data (agents, windows, cost weight as
    /// `cost_weight_e6`, fit and schedule): with the data and this, the run replays.
    pub config: crate::driver::SimConfig,
    /// Per participant.
    pub agents: Vec<AgentReport>,
    /// Accuracy over time.
    pub accuracy_series: Vec<AccuracyPoint>,
    /// Balances over time.
    pub balance_series: Vec<BalancePoint>,
}

impl RunReport {
    /// The report without its wall-clock fields, for comparing two runs.
    pub fn without_timing(&self) -> Self {
        Self {
            wall_seconds: 0.0,
            transactions_per_second: 0.0,
            ..self.clone()
        }
    }
}
