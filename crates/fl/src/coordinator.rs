//! The coordinator as a pure state machine.
//!
//! It decides *what* happens next and does no I/O: the runtime feeds it [`Event`]s (an update
//! arrived, a validator committed or revealed) and calls [`Coordinator::tick`] with the time
//! and the seed of the next cohort; the coordinator answers with the next [`Command`] for the runtime to
//! carry out (open a round on the ledger, ask clients to train, close a phase, aggregate,
//! settle). Phases advance when everyone expected has answered or the phase's timeout passes,
//! so a silent client or validator cannot stall a round. The same code drives the in-process
//! runtime, a networked coordinator and the tests, and a run replays from its seed.
//!
//! Cohorts are not the coordinator's choice: each is sampled by [`cohort_core::sample_cohort`]
//! from a 32-byte seed the runtime reads from the ledger (the coordinator's beacon, which only
//! the validators' revealed salts move on), exactly as the contract samples the cohort it then
//! enforces, so a coordinator cannot steer who is sampled and a client outside the cohort
//! cannot submit.
//!
//! ```text
//! Idle ─open→ Train ─(all updates | timeout)→ Commit ─(all commits | timeout)→ Reveal
//!   ↑                                                                           │
//!   └──── Settle ←── Aggregate ←─────────(all reveals | timeout)────────────────┘
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cohort_core::{B256, sample_cohort};
use serde::{Deserialize, Serialize};

use crate::{ClientUpdate, FlError, Layout, validate};

/// Timing and cohort settings of the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Rounds to run: [1, 10000].
    pub rounds: u64,
    /// Clients sampled per round (all when larger than the population): [1, 256], the
    /// protocol's most updates per round.
    pub clients_per_round: usize,
    /// Virtual seconds clients have to train and submit: [1, 604800] (a week; the run's
    /// clock moves 60 s per step).
    pub train_timeout: u64,
    /// Virtual seconds validators have to commit their scores: [1, 604800].
    pub commit_timeout: u64,
    /// Virtual seconds validators have to reveal: [1, 604800].
    pub reveal_timeout: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            rounds: 5,
            clients_per_round: 10,
            train_timeout: 600,
            commit_timeout: 120,
            reveal_timeout: 120,
        }
    }
}

/// Where a round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Between rounds.
    Idle,
    /// Clients train and submit.
    Train,
    /// Validators commit to scores.
    Commit,
    /// Validators reveal.
    Reveal,
    /// The accepted updates are aggregated.
    Aggregate,
    /// Rewards and slashes are applied.
    Settle,
    /// All rounds ran.
    Done,
}

/// Something that happened, reported by the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A client's update arrived (already recorded on the ledger by the client).
    Update(ClientUpdate),
    /// A client's update arrived (already recorded on the ledger) but cannot be read: its
    /// blob does not decode. Taken in as an update is (the same phase, cohort and
    /// once-per-client rules) and recorded as rejected with `reason`.
    Unreadable {
        /// The client.
        client: u32,
        /// The round the client's reply named.
        round: u64,
        /// Why it cannot be read.
        reason: String,
    },
    /// A validator committed its scores.
    Committed {
        /// The validator.
        validator: u32,
    },
    /// A validator revealed its scores.
    Revealed {
        /// The validator.
        validator: u32,
    },
}

/// What the runtime must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Open `round` on the ledger and ask `cohort` to train on the current global model.
    OpenRound {
        /// Round number, from 1.
        round: u64,
        /// Sampled clients, ascending.
        cohort: Vec<u32>,
    },
    /// Close submissions; validators score `updates` (in submission order) and commit.
    Score {
        /// The round.
        round: u64,
        /// Valid updates, in the order they arrived.
        updates: Vec<ClientUpdate>,
        /// Updates refused by validation, with the reason (recorded as rejected).
        rejected: Vec<(u32, String)>,
    },
    /// Close commitments; validators reveal.
    Reveal {
        /// The round.
        round: u64,
    },
    /// Tally on the ledger and aggregate the accepted updates.
    Aggregate {
        /// The round.
        round: u64,
    },
    /// Settle the round on the ledger.
    Settle {
        /// The round.
        round: u64,
    },
    /// Nothing left to do.
    Finished,
}

/// The coordinator's state.
#[derive(Debug, Clone)]
pub struct Coordinator {
    cfg: CoordinatorConfig,
    population: Vec<u32>,
    validators: BTreeSet<u32>,
    layout: Arc<Layout>,
    round: u64,
    phase: Phase,
    since: u64,
    cohort: BTreeSet<u32>,
    arrived: BTreeMap<u32, usize>,
    updates: Vec<ClientUpdate>,
    rejected: Vec<(u32, String)>,
    committed: BTreeSet<u32>,
    revealed: BTreeSet<u32>,
}

impl Coordinator {
    /// A coordinator over `clients` and `validators`, for a model of `layout` (the
    /// tensors every update must carry, by name and shape).
    pub fn new(
        cfg: CoordinatorConfig,
        clients: Vec<u32>,
        validators: Vec<u32>,
        layout: Arc<Layout>,
    ) -> Result<Self, FlError> {
        if clients.is_empty() || cfg.clients_per_round == 0 {
            return Err(FlError::InvalidConfig {
                what: "clients",
                reason: "need at least one client and clients_per_round >= 1".into(),
            });
        }
        if validators.is_empty() {
            return Err(FlError::InvalidConfig {
                what: "validators",
                reason: "need at least one validator".into(),
            });
        }
        let mut population = clients;
        population.sort_unstable();
        population.dedup();
        Ok(Self {
            cfg,
            population,
            validators: validators.into_iter().collect(),
            layout,
            round: 0,
            phase: Phase::Idle,
            since: 0,
            cohort: BTreeSet::new(),
            arrived: BTreeMap::new(),
            updates: Vec::new(),
            rejected: Vec::new(),
            committed: BTreeSet::new(),
            revealed: BTreeSet::new(),
        })
    }

    /// The coordinator of a run continued after `settled` rounds: between rounds, as it is
    /// once round `settled` is settled, so that the next tick opens round `settled + 1` (or
    /// finishes). Cohorts derive from the seed [`Coordinator::tick`] is given (the ledger's
    /// beacon), so nothing else carries over.
    pub fn after_round(mut self, settled: u64) -> Self {
        self.round = settled;
        self.phase = Phase::Idle;
        self
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The current round (0 before the first).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Takes in something that happened. Events that do not fit the current phase (a late
    /// update, a validator that is not one) are refused with an error and change nothing;
    /// an invalid update from a cohort member is recorded as rejected.
    pub fn handle(&mut self, event: Event) -> Result<(), FlError> {
        match event {
            Event::Update(u) => {
                self.expect_update(u.client, u.round)?;
                match validate(&u, self.round, &self.layout) {
                    Ok(()) => {
                        self.arrived.insert(u.client, self.updates.len());
                        self.updates.push(u);
                    }
                    Err(e) => {
                        self.arrived.insert(u.client, usize::MAX);
                        self.rejected.push((u.client, e.to_string()));
                    }
                }
                Ok(())
            }
            Event::Unreadable {
                client,
                round,
                reason,
            } => {
                self.expect_update(client, round)?;
                self.arrived.insert(client, usize::MAX);
                let e = FlError::UpdateRejected {
                    client,
                    round,
                    reason,
                };
                self.rejected.push((client, e.to_string()));
                Ok(())
            }
            Event::Committed { validator } => {
                self.expect_validator(validator, Phase::Commit)?;
                self.committed.insert(validator);
                Ok(())
            }
            Event::Revealed { validator } => {
                self.expect_validator(validator, Phase::Reveal)?;
                if !self.committed.contains(&validator) {
                    return Err(FlError::InvalidConfig {
                        what: "reveal",
                        reason: format!("validator {validator} reveals without a commitment"),
                    });
                }
                self.revealed.insert(validator);
                Ok(())
            }
        }
    }

    /// Whether an update from `client` for `round` may arrive now: submissions open, the
    /// client in the cohort and not yet heard from.
    fn expect_update(&self, client: u32, round: u64) -> Result<(), FlError> {
        let refuse = |reason: String| FlError::UpdateRejected {
            client,
            round,
            reason,
        };
        if self.phase != Phase::Train {
            return Err(refuse(format!("submissions are closed ({:?})", self.phase)));
        }
        if !self.cohort.contains(&client) {
            return Err(refuse("client is not in this round's cohort".into()));
        }
        if self.arrived.contains_key(&client) {
            return Err(refuse("client already submitted this round".into()));
        }
        Ok(())
    }

    fn expect_validator(&self, v: u32, phase: Phase) -> Result<(), FlError> {
        if !self.validators.contains(&v) {
            return Err(FlError::InvalidConfig {
                what: "validator",
                reason: format!("{v} is not a validator of this run"),
            });
        }
        if self.phase != phase {
            return Err(FlError::InvalidConfig {
                what: "validator message",
                reason: format!("expected in phase {phase:?}, now {:?}", self.phase),
            });
        }
        Ok(())
    }

    /// Advances if the current phase is complete or timed out, returning what to do next;
    /// `None` means wait for more events. `seed` samples the cohort of a round this tick
    /// opens (the coordinator's beacon on the ledger; ignored by every other tick): the
    /// cohort's clients are `population[i]` for the roster indices `i` that
    /// [`sample_cohort`]`(seed, population, clients_per_round)` draws, the population in
    /// ascending order being the ledger's roster.
    pub fn tick(&mut self, now: u64, seed: B256) -> Option<Command> {
        let elapsed = now.saturating_sub(self.since);
        match self.phase {
            Phase::Idle => {
                if self.round >= self.cfg.rounds {
                    self.phase = Phase::Done;
                    return Some(Command::Finished);
                }
                self.round += 1;
                self.cohort = self.sample(seed);
                self.arrived.clear();
                self.updates.clear();
                self.rejected.clear();
                self.committed.clear();
                self.revealed.clear();
                self.enter(Phase::Train, now);
                Some(Command::OpenRound {
                    round: self.round,
                    cohort: self.cohort.iter().copied().collect(),
                })
            }
            Phase::Train => {
                let all_in = self.arrived.len() == self.cohort.len();
                (all_in || elapsed >= self.cfg.train_timeout).then(|| {
                    self.enter(Phase::Commit, now);
                    Command::Score {
                        round: self.round,
                        updates: std::mem::take(&mut self.updates),
                        rejected: std::mem::take(&mut self.rejected),
                    }
                })
            }
            Phase::Commit => {
                let all_in = self.committed.len() == self.validators.len();
                (all_in || elapsed >= self.cfg.commit_timeout).then(|| {
                    self.enter(Phase::Reveal, now);
                    Command::Reveal { round: self.round }
                })
            }
            Phase::Reveal => {
                let all_in = self.revealed.len() == self.committed.len();
                (all_in || elapsed >= self.cfg.reveal_timeout).then(|| {
                    self.enter(Phase::Aggregate, now);
                    Command::Aggregate { round: self.round }
                })
            }
            Phase::Aggregate => {
                self.enter(Phase::Settle, now);
                Some(Command::Settle { round: self.round })
            }
            Phase::Settle => {
                self.enter(Phase::Idle, now);
                self.tick(now, seed)
            }
            Phase::Done => Some(Command::Finished),
        }
    }

    fn enter(&mut self, phase: Phase, now: u64) {
        self.phase = phase;
        self.since = now;
    }

    fn sample(&self, seed: B256) -> BTreeSet<u32> {
        let n = u32::try_from(self.population.len()).unwrap_or(u32::MAX);
        let k = u32::try_from(self.cfg.clients_per_round).unwrap_or(u32::MAX);
        sample_cohort(seed, n, k)
            .into_iter()
            .map(|i| self.population[i as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(s: u64) -> B256 {
        B256::from(cohort_core::U256::from(s))
    }

    fn coord(rounds: u64, per_round: usize) -> Coordinator {
        let cfg = CoordinatorConfig {
            rounds,
            clients_per_round: per_round,
            ..CoordinatorConfig::default()
        };
        Coordinator::new(
            cfg,
            (0..10).collect(),
            vec![100, 101],
            Arc::new(Layout::flat(3)),
        )
        .unwrap()
    }

    #[test]
    fn a_round_walks_every_phase() {
        let mut c = coord(1, 3);
        let Some(Command::OpenRound { round, cohort }) = c.tick(0, seed(7)) else {
            panic!()
        };
        assert_eq!((round, cohort.len()), (1, 3));
        assert_eq!(c.tick(1, seed(7)), None, "waits for updates");
        for &k in &cohort {
            c.handle(Event::Update(ClientUpdate::new(k, 1, vec![0.0; 3], 5)))
                .unwrap();
        }
        let Some(Command::Score {
            updates, rejected, ..
        }) = c.tick(2, seed(7))
        else {
            panic!()
        };
        assert_eq!((updates.len(), rejected.len()), (3, 0));
        c.handle(Event::Committed { validator: 100 }).unwrap();
        c.handle(Event::Committed { validator: 101 }).unwrap();
        assert_eq!(c.tick(3, seed(7)), Some(Command::Reveal { round: 1 }));
        c.handle(Event::Revealed { validator: 100 }).unwrap();
        assert_eq!(c.tick(4, seed(7)), None, "waits for the other reveal");
        assert_eq!(
            c.tick(4 + 120, seed(7)),
            Some(Command::Aggregate { round: 1 }),
            "timeout"
        );
        assert_eq!(c.tick(200, seed(7)), Some(Command::Settle { round: 1 }));
        assert_eq!(c.tick(201, seed(7)), Some(Command::Finished));
        assert_eq!(c.phase(), Phase::Done);
    }

    #[test]
    fn bad_and_late_input_is_refused_or_recorded() {
        let mut c = coord(2, 10);
        let Some(Command::OpenRound { .. }) = c.tick(0, seed(1)) else {
            panic!()
        };
        // Wrong shape, NaN, wrong round: recorded as rejected, not a panic.
        c.handle(Event::Update(ClientUpdate::new(0, 1, vec![0.0; 4], 5)))
            .unwrap();
        c.handle(Event::Update(ClientUpdate::new(
            1,
            1,
            vec![f32::NAN, 0.0, 0.0],
            5,
        )))
        .unwrap();
        c.handle(Event::Update(ClientUpdate::new(2, 9, vec![0.0; 3], 5)))
            .unwrap();
        // A blob that does not decode: recorded as rejected with its reason.
        c.handle(Event::Unreadable {
            client: 4,
            round: 1,
            reason: "malformed blob: no tensors".into(),
        })
        .unwrap();
        assert!(
            c.handle(Event::Unreadable {
                client: 4,
                round: 1,
                reason: "again".into()
            })
            .is_err(),
            "twice"
        );
        // Twice from one client, or from a stranger: refused.
        assert!(
            c.handle(Event::Update(ClientUpdate::new(0, 1, vec![0.0; 3], 5)))
                .is_err()
        );
        assert!(
            c.handle(Event::Update(ClientUpdate::new(77, 1, vec![0.0; 3], 5)))
                .is_err()
        );
        assert!(
            c.handle(Event::Committed { validator: 100 }).is_err(),
            "not commit phase"
        );
        let Some(Command::Score {
            updates, rejected, ..
        }) = c.tick(600, seed(1))
        else {
            panic!()
        };
        assert!(updates.is_empty());
        assert_eq!(rejected.len(), 4);
        assert!(rejected.iter().any(|(k, r)| *k == 1 && r.contains("NaN")));
        assert!(
            rejected
                .iter()
                .any(|(k, r)| *k == 4 && r.ends_with("rejected: malformed blob: no tensors"))
        );
        assert!(
            c.handle(Event::Update(ClientUpdate::new(3, 1, vec![0.0; 3], 5)))
                .is_err(),
            "late"
        );
        assert!(
            c.handle(Event::Committed { validator: 5 }).is_err(),
            "not a validator"
        );
        assert!(
            c.handle(Event::Revealed { validator: 100 }).is_err(),
            "reveal before commit"
        );
    }

    #[test]
    fn cohorts_come_from_the_seed_alone() {
        let cohorts = |seeds: [u64; 3]| {
            let mut c = coord(3, 4);
            let mut out = Vec::new();
            let mut now = 0;
            while let Some(cmd) = c.tick(now, seed(seeds[out.len().min(2)])) {
                now += 1_000;
                match cmd {
                    Command::OpenRound { cohort, .. } => out.push(cohort),
                    Command::Finished => break,
                    _ => {}
                }
            }
            out
        };
        let a = cohorts([1, 2, 3]);
        assert_eq!(a.len(), 3);
        assert_eq!(a, cohorts([1, 2, 3]));
        assert_ne!(a, cohorts([4, 2, 3]));
        assert!(a.windows(2).any(|w| w[0] != w[1]), "new seeds, new cohorts");
        // One seed, one cohort, whatever the round: a coordinator cannot re-draw by reopening.
        let same = cohorts([1, 1, 1]);
        assert!(same.windows(2).all(|w| w[0] == w[1]));
        // The roster indices `sample_cohort` draws, over the ascending population (0..10).
        let want: Vec<u32> = sample_cohort(seed(1), 10, 4);
        assert_eq!(a[0], want);
    }
}
