//! Attacks on the update itself, for experiments on robustness and incentives.
//!
//! [`UpdateAttack`]s change what a client sends; [`DataAttack`]s (label flipping, backdoor
//! triggers) change what a client trains on and are applied by the task
//! ([`crate::learner::Learner::poison`]). [`AttackKind`] is either, as a run's config names
//! it. Validator-side attacks (collusion) are protocol-level and configured in the runtime.

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

/// How a malicious client poisons its own training data (classification tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataAttack {
    /// Trains on every sample with its label flipped (binary labels: `1 - y`).
    LabelFlip,
    /// Inserts `trigger` (a token-id sequence) at the end of a `poison_fraction` share of its
    /// samples and sets their label to `target` (Gu et al. 2017, BadNets; Bagdasaryan et al.
    /// 2020 for federated learning).
    Backdoor {
        /// The trigger's token ids.
        trigger: Vec<u32>,
        /// The label the trigger should produce.
        target: u32,
        /// Share of the attacker's samples that carry the trigger.
        poison_fraction: f64,
    },
}

impl DataAttack {
    /// The attack's config name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::LabelFlip => "label-flip",
            Self::Backdoor { .. } => "backdoor",
        }
    }
}

/// What a client profile does to a client's own data (`[[profile]] data = {...}`), for
/// graded experiments on contribution: each task that supports it reshapes the client's
/// training data at construction ([`crate::learner::Learner::reshape`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataProfile {
    /// A `share` of its samples get a random label (the linear task: a target drawn with the
    /// targets' spread, unrelated to the features).
    LabelNoise {
        /// Share of its samples, (0, 1].
        share: f64,
    },
    /// Its data is a copy of client `of`'s, as that client holds it.
    Duplicate {
        /// The client copied.
        of: u32,
    },
    /// It keeps only a `share` of its samples (at least one).
    Subsample {
        /// Share kept, (0, 1].
        share: f64,
    },
}

impl DataProfile {
    /// The profile's config name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::LabelNoise { .. } => "label-noise",
            Self::Duplicate { .. } => "duplicate",
            Self::Subsample { .. } => "subsample",
        }
    }
}

/// Any attack a run's config can select: `attack = { kind = "sign-flip", scale = 3.0 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AttackKind {
    /// [`UpdateAttack::RandomNoise`].
    RandomNoise {
        /// Noise scale.
        std: f64,
    },
    /// [`UpdateAttack::SignFlip`].
    SignFlip {
        /// Scale of the flipped update.
        scale: f64,
    },
    /// [`UpdateAttack::ScaledReplacement`].
    ScaledReplacement {
        /// Boost factor.
        factor: f64,
    },
    /// [`UpdateAttack::FreeRider`].
    FreeRider {
        /// The sample count it claims.
        fake_samples: u64,
    },
    /// [`DataAttack::LabelFlip`].
    LabelFlip,
    /// [`DataAttack::Backdoor`].
    Backdoor {
        /// The trigger's token ids.
        trigger: Vec<u32>,
        /// The label the trigger should produce.
        target: u32,
        /// Share of the attacker's samples that carry the trigger (default 0.5).
        #[serde(default = "half")]
        poison_fraction: f64,
    },
}

fn half() -> f64 {
    0.5
}

impl AttackKind {
    /// The update-level part, if this is one.
    pub fn update(&self) -> Option<UpdateAttack> {
        Some(match *self {
            Self::RandomNoise { std } => UpdateAttack::RandomNoise { std },
            Self::SignFlip { scale } => UpdateAttack::SignFlip { scale },
            Self::ScaledReplacement { factor } => UpdateAttack::ScaledReplacement { factor },
            Self::FreeRider { fake_samples } => UpdateAttack::FreeRider { fake_samples },
            Self::LabelFlip | Self::Backdoor { .. } => return None,
        })
    }

    /// The data-level part, if this is one.
    pub fn data(&self) -> Option<DataAttack> {
        match self {
            Self::LabelFlip => Some(DataAttack::LabelFlip),
            Self::Backdoor {
                trigger,
                target,
                poison_fraction,
            } => Some(DataAttack::Backdoor {
                trigger: trigger.clone(),
                target: *target,
                poison_fraction: *poison_fraction,
            }),
            _ => None,
        }
    }
}

impl From<UpdateAttack> for AttackKind {
    fn from(a: UpdateAttack) -> Self {
        match a {
            UpdateAttack::RandomNoise { std } => Self::RandomNoise { std },
            UpdateAttack::SignFlip { scale } => Self::SignFlip { scale },
            UpdateAttack::ScaledReplacement { factor } => Self::ScaledReplacement { factor },
            UpdateAttack::FreeRider { fake_samples } => Self::FreeRider { fake_samples },
        }
    }
}

impl From<DataAttack> for AttackKind {
    fn from(a: DataAttack) -> Self {
        match a {
            DataAttack::LabelFlip => Self::LabelFlip,
            DataAttack::Backdoor {
                trigger,
                target,
                poison_fraction,
            } => Self::Backdoor {
                trigger,
                target,
                poison_fraction,
            },
        }
    }
}

impl UpdateAttack {
    /// Turns an honest update into the attacker's; `seed` and the client id drive any noise.
    /// The attack changes the values and keeps the layout (the tensors' names and shapes).
    pub fn apply(&self, honest: &ClientUpdate, seed: u64) -> ClientUpdate {
        let mut u = honest.clone();
        match *self {
            Self::RandomNoise { std } => {
                let mut rng = Rng::derive(seed, &format!("noise-attack/{}/{}", u.client, u.round));
                for x in &mut u.delta.values {
                    *x = (rng.normal() * std) as f32;
                }
            }
            Self::SignFlip { scale } => {
                for x in &mut u.delta.values {
                    *x = (-(f64::from(*x)) * scale) as f32;
                }
            }
            Self::ScaledReplacement { factor } => {
                for x in &mut u.delta.values {
                    *x = (f64::from(*x) * factor) as f32;
                }
            }
            Self::FreeRider { fake_samples } => {
                u.delta.values.iter_mut().for_each(|x| *x = 0.0);
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
        assert_eq!(flip.delta.values, vec![-2.0, 4.0, -1.0]);
        let boost = UpdateAttack::ScaledReplacement { factor: 10.0 }.apply(&h, 0);
        assert_eq!(boost.delta.values, vec![10.0, -20.0, 5.0]);
        let free = UpdateAttack::FreeRider {
            fake_samples: 1_000,
        }
        .apply(&h, 0);
        assert!(free.delta.values.iter().all(|&x| x == 0.0));
        assert_eq!(free.num_samples, 1_000);
        let n1 = UpdateAttack::RandomNoise { std: 1.0 }.apply(&h, 1);
        assert_eq!(n1, UpdateAttack::RandomNoise { std: 1.0 }.apply(&h, 1));
        assert_ne!(
            n1.delta.values,
            UpdateAttack::RandomNoise { std: 1.0 }
                .apply(&h, 2)
                .delta
                .values
        );
        assert_ne!(n1.delta.values, h.delta.values);
        assert_eq!(n1.delta.layout, h.delta.layout, "the layout is kept");
    }

    #[test]
    fn attacks_parse_from_config() {
        let a: UpdateAttack = serde_json::from_str(r#"{"kind":"sign-flip","scale":1.5}"#).unwrap();
        assert_eq!(a, UpdateAttack::SignFlip { scale: 1.5 });
        assert!(serde_json::from_str::<UpdateAttack>(r#"{"kind":"nope"}"#).is_err());
        let k: AttackKind =
            serde_json::from_str(r#"{"kind":"backdoor","trigger":[7,8],"target":1}"#).unwrap();
        assert_eq!(
            k.data(),
            Some(DataAttack::Backdoor {
                trigger: vec![7, 8],
                target: 1,
                poison_fraction: 0.5
            })
        );
        assert_eq!(k.update(), None);
        let k: AttackKind = serde_json::from_str(r#"{"kind":"label-flip"}"#).unwrap();
        assert_eq!(k.data(), Some(DataAttack::LabelFlip));
        let k: AttackKind = UpdateAttack::SignFlip { scale: 2.0 }.into();
        assert_eq!(k.update(), Some(UpdateAttack::SignFlip { scale: 2.0 }));
        assert_eq!(k.data(), None);
    }
}
