//! Attacks on the update itself, for experiments on robustness and incentives.
//!
//! Data-level attacks (label flipping, backdoor triggers) change what a client trains on and
//! live with the training pipeline; the ones here change what a client sends. Validator-side
//! attacks (collusion) and Sybils are protocol-level and are configured in the runtime.

use cohort_core::Rng;
use serde::{Deserialize, Serialize};

use crate::ClientUpdate;

/// How a malicious client corrupts its update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UpdateAttack {
    /// Sends Gaussian noise with standard deviation `std` instead of its update.
    RandomNoise {
        /// Noise scale.
        std: f64,
    },
    /// Sends `-scale` times its honest update.
    SignFlip {
        /// Scale of the flipped update.
        scale: f64,
    },
    /// Model replacement (Bagdasaryan et al. 2020): boosts its update by `factor` (about the
    /// number of clients per round) so that it survives averaging.
    ScaledReplacement {
        /// Boost factor.
        factor: f64,
    },
    /// A free-rider: trains nothing, returns the global model (a zero delta), and claims
    /// `fake_samples` samples.
    FreeRider {
        /// The sample count it claims.
        fake_samples: u64,
    },
}

impl UpdateAttack {
    /// Turns an honest update into the attacker's; `seed` and the client id drive any noise.
    pub fn apply(&self, honest: &ClientUpdate, seed: u64) -> ClientUpdate {
        let mut u = honest.clone();
        match *self {
            Self::RandomNoise { std } => {
                let mut rng = Rng::derive(seed, &format!("noise-attack/{}/{}", u.client, u.round));
                for x in &mut u.delta {
                    *x = (rng.normal() * std) as f32;
                }
            }
            Self::SignFlip { scale } => {
                for x in &mut u.delta {
                    *x = (-(f64::from(*x)) * scale) as f32;
                }
            }
            Self::ScaledReplacement { factor } => {
                for x in &mut u.delta {
                    *x = (f64::from(*x) * factor) as f32;
                }
            }
            Self::FreeRider { fake_samples } => {
                u.delta.iter_mut().for_each(|x| *x = 0.0);
                u.num_samples = fake_samples;
            }
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_do_what_they_say() {
        let h = ClientUpdate::new(4, 2, vec![1.0, -2.0, 0.5], 10);
        let flip = UpdateAttack::SignFlip { scale: 2.0 }.apply(&h, 0);
        assert_eq!(flip.delta, vec![-2.0, 4.0, -1.0]);
        let boost = UpdateAttack::ScaledReplacement { factor: 10.0 }.apply(&h, 0);
        assert_eq!(boost.delta, vec![10.0, -20.0, 5.0]);
        let free = UpdateAttack::FreeRider {
            fake_samples: 1_000,
        }
        .apply(&h, 0);
        assert!(free.delta.iter().all(|&x| x == 0.0));
        assert_eq!(free.num_samples, 1_000);
        let n1 = UpdateAttack::RandomNoise { std: 1.0 }.apply(&h, 1);
        assert_eq!(n1, UpdateAttack::RandomNoise { std: 1.0 }.apply(&h, 1));
        assert_ne!(
            n1.delta,
            UpdateAttack::RandomNoise { std: 1.0 }.apply(&h, 2).delta
        );
        assert_ne!(n1.delta, h.delta);
    }

    #[test]
    fn attacks_parse_from_config() {
        let a: UpdateAttack = serde_json::from_str(r#"{"kind":"sign-flip","scale":1.5}"#).unwrap();
        assert_eq!(a, UpdateAttack::SignFlip { scale: 1.5 });
        assert!(serde_json::from_str::<UpdateAttack>(r#"{"kind":"nope"}"#).is_err());
    }
}
