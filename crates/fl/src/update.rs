//! Client updates and their validation.

use cohort_core::Score;
use serde::{Deserialize, Serialize};

use crate::FlError;

/// One client's contribution to a round: the change it proposes to the trainable parameters
/// (a flat vector in the model's canonical parameter order), and how many samples it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientUpdate {
    /// The client.
    pub client: u32,
    /// The round the update was trained for.
    pub round: u64,
    /// Proposed change to the flat trainable parameters.
    pub delta: Vec<f32>,
    /// Samples the client claims to have trained on.
    pub num_samples: u64,
    /// Consensus score from the validators, once known.
    pub score: Option<Score>,
}

impl ClientUpdate {
    /// An update without a score yet.
    pub fn new(client: u32, round: u64, delta: Vec<f32>, num_samples: u64) -> Self {
        Self {
            client,
            round,
            delta,
            num_samples,
            score: None,
        }
    }

    /// Sets the consensus score.
    pub fn with_score(mut self, s: Score) -> Self {
        self.score = Some(s);
        self
    }

    /// Euclidean norm of the delta.
    pub fn norm(&self) -> f64 {
        self.delta
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }
}

/// Checks an update before it can be scored or aggregated: the right round, the right
/// length, finite values, a positive sample count.
pub fn validate(u: &ClientUpdate, round: u64, expected_len: usize) -> Result<(), FlError> {
    let reject = |reason: String| FlError::UpdateRejected {
        client: u.client,
        round: u.round,
        reason,
    };
    if u.round != round {
        return Err(reject(format!(
            "it is for round {}, the open round is {round}",
            u.round
        )));
    }
    if u.delta.len() != expected_len {
        return Err(reject(format!(
            "it has {} parameters, the model has {expected_len}",
            u.delta.len()
        )));
    }
    if let Some(i) = u.delta.iter().position(|x| !x.is_finite()) {
        return Err(reject(format!("parameter {i} is {}", u.delta[i])));
    }
    if u.num_samples == 0 {
        return Err(reject("it claims zero samples".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let ok = ClientUpdate::new(3, 2, vec![0.0; 4], 10);
        assert!(validate(&ok, 2, 4).is_ok());
        let msg = |u: &ClientUpdate| validate(u, 2, 4).unwrap_err().to_string();
        assert!(msg(&ClientUpdate::new(3, 1, vec![0.0; 4], 10)).contains("round 1"));
        assert!(msg(&ClientUpdate::new(3, 2, vec![0.0; 5], 10)).contains("5 parameters"));
        assert!(
            msg(&ClientUpdate::new(3, 2, vec![0.0, f32::NAN, 0.0, 0.0], 10))
                .contains("parameter 1")
        );
        assert!(msg(&ClientUpdate::new(3, 2, vec![0.0; 4], 0)).contains("zero samples"));
    }
}
