//! The participants of a simulation and how they draw deposits and waits.

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::SimError;

/// What a participant is, for the rules it follows and the figures it is counted in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Honest: true labels, a tiny mistake rate, submits with probability `accuracy + 0.15`.
    Good,
    /// Malicious: always submits the flipped label.
    Bad,
    /// Honest but sloppy: like Good with a large mistake rate.
    Careless,
    /// Random labels, tiny deposits, acts every minute.
    Spammer,
}

/// The largest start balance or deposit an agent may have, in whole tokens.
pub const MAX_AGENT_TOKENS: u64 = 1_000_000_000_000;
/// The longest wait an agent may draw, in seconds (100 years).
pub const MAX_AGENT_WAIT: u64 = 100 * 365 * 86_400;

/// One participant's behaviour. Amounts are whole tokens, times seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentSpec {
    /// Unique name (report keys and plot legends).
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Starting balance in whole tokens.
    pub start_balance: u64,
    /// Mean of the deposit offered with each sample (whole tokens; normal, truncated to an
    /// integer, redrawn until positive).
    pub deposit_mean: f64,
    /// Its standard deviation.
    pub deposit_std: f64,
    /// Mean wait between turns in seconds (normal, truncated, redrawn until at least 1).
    pub wait_mean: f64,
    /// Its standard deviation.
    pub wait_std: f64,
    /// Probability of flipping a label by mistake.
    pub mistake_rate: f64,
    /// Always submit the flipped label.
    pub flip_labels: bool,
    /// Submit every turn (else with probability `last accuracy + submit_bonus`).
    pub always_submit: bool,
    /// Colluding ring: agents with the same ring resubmit the ring's few target samples
    /// instead of new ones and never report each other (see `SimConfig::ring_targets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<u32>,
}

impl AgentSpec {
    /// The reference's Good agent: deposit N(50, 10), a turn every ~10 minutes, mistake
    /// rate 1e-4, balance 10,000.
    pub fn good(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: AgentKind::Good,
            start_balance: 10_000,
            deposit_mean: 50.0,
            deposit_std: 10.0,
            wait_mean: 600.0,
            wait_std: 1.0,
            mistake_rate: 1e-4,
            flip_labels: false,
            always_submit: false,
            ring: None,
        }
    }

    /// The reference's Bad agent: deposit N(100, 3), a turn every ~hour, always the flipped
    /// label, balance 10,000.
    pub fn bad(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: AgentKind::Bad,
            start_balance: 10_000,
            deposit_mean: 100.0,
            deposit_std: 3.0,
            wait_mean: 3600.0,
            wait_std: 1.0,
            mistake_rate: 0.0,
            flip_labels: true,
            always_submit: true,
            ring: None,
        }
    }

    /// A Bad agent in colluding ring `ring`.
    pub fn colluder(name: impl Into<String>, ring: u32) -> Self {
        Self {
            ring: Some(ring),
            ..Self::bad(name)
        }
    }

    /// A Good agent that flips each label with probability `rate`.
    pub fn careless(name: impl Into<String>, rate: f64) -> Self {
        Self {
            kind: AgentKind::Careless,
            mistake_rate: rate,
            ..Self::good(name)
        }
    }

    /// Random labels, deposits N(3, 1), a turn every ~minute, always submits.
    pub fn spammer(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: AgentKind::Spammer,
            start_balance: 10_000,
            deposit_mean: 3.0,
            deposit_std: 1.0,
            wait_mean: 60.0,
            wait_std: 10.0,
            mistake_rate: 0.5,
            flip_labels: false,
            always_submit: true,
            ring: None,
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |what: &str| Err(SimError::Config(format!("agent {:?}: {what}", self.name)));
        if !(1..=MAX_AGENT_TOKENS).contains(&self.start_balance) {
            return bad("start balance must be between 1 and 10^12 tokens");
        }
        if !(self.deposit_mean.is_finite()
            && self.deposit_std.is_finite()
            && self.deposit_std >= 0.0)
        {
            return bad("deposit mean and deviation must be finite, the deviation non-negative");
        }
        if !(self.wait_mean.is_finite() && self.wait_std.is_finite() && self.wait_std >= 0.0) {
            return bad("wait mean and deviation must be finite, the deviation non-negative");
        }
        // The draws are redrawn until positive: make sure that can happen.
        if self.deposit_mean + 6.0 * self.deposit_std < 1.0
            || self.wait_mean + 6.0 * self.wait_std < 1.0
        {
            return bad("deposit and wait means must allow draws of at least 1");
        }
        // Bounded so that balances, deposits and the clock stay far inside their integers.
        if self.deposit_mean + 6.0 * self.deposit_std > MAX_AGENT_TOKENS as f64 {
            return bad("deposits must stay below 10^12 tokens (mean + 6 deviations)");
        }
        if self.wait_mean + 6.0 * self.wait_std > MAX_AGENT_WAIT as f64 {
            return bad("waits must stay below 100 years (mean + 6 deviations)");
        }
        if !(0.0..=1.0).contains(&self.mistake_rate) {
            return bad("mistake rate must be in [0, 1]");
        }
        Ok(())
    }

    /// The next deposit offered, in whole tokens.
    pub fn next_deposit(&self, rng: &mut impl Rng) -> u64 {
        draw_at_least(self.deposit_mean, self.deposit_std, 1, rng)
    }

    /// The next wait, in seconds.
    pub fn next_wait(&self, rng: &mut impl Rng) -> u64 {
        draw_at_least(self.wait_mean, self.wait_std, 1, rng)
    }
}

/// `int(normal(mean, std))` (truncated toward zero, as Python's `int`), redrawn until it is at
/// least `min`.
fn draw_at_least(mean: f64, std: f64, min: i64, rng: &mut impl Rng) -> u64 {
    let Ok(dist) = Normal::new(mean, std) else {
        return min.max(mean as i64) as u64;
    };
    loop {
        let v = dist.sample(rng) as i64;
        if v >= min {
            return v as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use cohort_core::ChaCha8;
    use rand::Rng;
    use rand::seq::SliceRandom;
    use rand_distr::{Distribution, Normal};

    /// The draws the simulator makes (`rand`'s uniform f64, its shuffle, `rand_distr`'s normal)
    /// from cohort-core's ChaCha8: known answers computed with `rand_chacha::ChaCha8Rng`
    /// before the stream moved to cohort-core, so the simulator's figures are unchanged.
    #[test]
    fn the_simulators_draws_are_fixed() {
        let mut r = ChaCha8::new(7);
        let u: Vec<u64> = (0..3).map(|_| r.random::<f64>().to_bits()).collect();
        assert_eq!(
            u,
            [
                4_594_853_223_840_476_064,
                4_595_220_474_943_196_564,
                4_604_518_774_960_858_258
            ]
        );
        let mut v: Vec<u32> = (0..10).collect();
        v.shuffle(&mut r);
        assert_eq!(v, [3, 2, 5, 6, 4, 8, 1, 9, 0, 7]);
        let n = Normal::<f64>::new(10.0, 3.0).expect("valid normal");
        let x: Vec<u64> = (0..3).map(|_| n.sample(&mut r).to_bits()).collect();
        assert_eq!(
            x,
            [
                4_619_558_827_495_282_707,
                4_623_676_980_870_579_972,
                4_620_678_892_755_039_471
            ]
        );
    }
}
