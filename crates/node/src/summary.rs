//! What a run reports, folded from its [`RunEvent`]s alone.
//!
//! The coordinator emits every fact of the run as an event and builds the [`RunSummary`] it
//! returns (`summary.json`'s `summary`, which `report.html` draws) by feeding those events to
//! a [`RunSummaryBuilder`]: the initial model's metrics and the holdings after the set-up
//! (`evaluated` and `holdings` for round 0), one [`RoundSummary`] per checkpointed round
//! (each folded by a [`SummaryBuilder`]), and the final holdings, ledger size and root
//! (`finished`). Anyone holding the event stream (`cohort run --events FILE`, a dashboard)
//! rebuilds the same summary with the same fold ([`summary_from_events`],
//! [`rounds_from_events`]). Only the wall seconds per phase are not events (they are not part
//! of the replay contract): a rebuilt summary has them at zero.
//!
//! A resumed run appends to its events file: the stream then holds what the run said before
//! the stop (a round cut short, maybe a whole set-up that was started again), a `resumed`
//! event naming the last durable round, and the rest. The fold follows: a `set-up` starts the
//! run over, and `resumed` keeps the rounds up to the one it names and drops the rest, so the
//! fold of the whole file is the summary of the finished run.

use std::collections::BTreeMap;

/// The version of `summary.json`'s layout, its top-level `schema` field: raised when a field
/// changes meaning or goes away (a field added is not a new version). Absent in files written
/// before it existed.
pub const SCHEMA_VERSION: u32 = 1;

use alloy_primitives::U256;
use cohort_core::Hash32;
use cohort_fl::events::RunEvent;
use cohort_fl::learner::Metrics;

use crate::runtime::{PhaseSeconds, RoundSummary, RunSummary, UpdateBytes, UpdateFacts};

/// Folds a run's events into one [`RoundSummary`] per round: [`apply`](Self::apply) every
/// event in order; [`finish_round`](Self::finish_round) hands out the round opened last.
#[derive(Debug, Clone)]
pub struct SummaryBuilder {
    validators: u32,
    open: Option<Open>,
}

/// The round being folded.
#[derive(Debug, Clone)]
struct Open {
    s: RoundSummary,
    ledger_round: u64,
    global_before: cohort_core::Hash32,
    /// Validators' revealed scores.
    revealed: BTreeMap<u32, Vec<f64>>,
}

impl SummaryBuilder {
    /// A builder for a run with `validators` validators (the rows of the score matrix).
    pub fn new(validators: u32) -> Self {
        Self {
            validators,
            open: None,
        }
    }

    /// Whether a round is open (between its `RoundOpened` and [`Self::finish_round`]).
    pub fn in_round(&self) -> bool {
        self.open.is_some()
    }

    /// Takes in one event. A `RoundOpened` starts a new round (dropping one left unfinished);
    /// events of another round than the open one, and events outside a round, change nothing.
    pub fn apply(&mut self, event: &RunEvent) {
        if let RunEvent::RoundOpened {
            round,
            ledger_round,
            global,
            ..
        } = event
        {
            self.open = Some(Open {
                s: empty_round(*round),
                ledger_round: *ledger_round,
                global_before: *global,
                revealed: BTreeMap::new(),
            });
            return;
        }
        let Some(o) = self.open.as_mut() else {
            return;
        };
        let s = &mut o.s;
        match event {
            RunEvent::SetUp { .. } | RunEvent::RoundOpened { .. } => {}
            RunEvent::Committed { .. } | RunEvent::Checkpoint { .. } => {}
            RunEvent::Resumed { .. } | RunEvent::Finished { .. } => {}
            RunEvent::UpdateReceived {
                round,
                client,
                address,
                blob,
                bytes,
                dense_bytes,
                samples,
                entry,
                norm,
            } if *round == s.round => {
                s.bytes += bytes;
                s.dense_bytes += dense_bytes.unwrap_or(0);
                s.submitted.push(*client);
                s.updates.push(UpdateFacts {
                    client: *client,
                    samples: *samples,
                    update_norm: *norm,
                    bytes: *bytes,
                    dense_bytes: *dense_bytes,
                    refused: None,
                });
                s.provenance.push(cohort_fl::events::ProvenanceRecord {
                    round: *round,
                    ledger_round: o.ledger_round,
                    client: *client,
                    address: *address,
                    blob: *blob,
                    entry: *entry,
                    samples: *samples,
                    accepted: false,
                    consensus: -1.0,
                    contribution: None,
                    global_before: o.global_before,
                    global_after: o.global_before,
                });
            }
            RunEvent::UpdateValidated {
                round,
                client,
                refused: Some(reason),
            } if *round == s.round => {
                if !s.rejected.contains(client) {
                    s.rejected.push(*client);
                }
                if let Some(f) = s.updates.iter_mut().find(|f| f.client == *client) {
                    f.refused = Some(reason.clone());
                }
            }
            RunEvent::UpdateValidated { .. } => {}
            RunEvent::Revealed {
                round,
                validator,
                scores,
            } if *round == s.round => {
                o.revealed.insert(*validator, scores.clone());
                // The score matrix as revealed; a validator that did not reveal has an empty
                // row.
                s.scores = (0..self.validators)
                    .map(|v| o.revealed.get(&v).cloned().unwrap_or_default())
                    .collect();
            }
            RunEvent::Consensus {
                round,
                client,
                score,
                accepted,
            } if *round == s.round => {
                s.consensus.insert(*client, *score);
                let refused = s
                    .updates
                    .iter()
                    .any(|f| f.client == *client && f.refused.is_some());
                if *accepted && !refused {
                    s.accepted.push(*client);
                } else if !s.rejected.contains(client) {
                    s.rejected.push(*client);
                }
                for p in s.provenance.iter_mut().filter(|p| p.client == *client) {
                    p.accepted = *accepted;
                    p.consensus = *score;
                }
            }
            RunEvent::Aggregated {
                round,
                contributions,
                global_before,
                global_after,
                ..
            } if *round == s.round => {
                for p in &mut s.provenance {
                    p.contribution = contributions
                        .iter()
                        .find(|c| c.client == p.client)
                        .map(|c| c.contribution.clone());
                    p.global_before = *global_before;
                    p.global_after = *global_after;
                }
            }
            RunEvent::Settled { round, payouts } if *round == s.round => {
                s.payouts = payouts.clone();
            }
            RunEvent::Refused { round, client } if *round == s.round => s.refused.push(*client),
            RunEvent::Royalties { round, paid } if *round == s.round => {
                for (name, amount) in paid {
                    *s.royalties.entry(name.clone()).or_default() += *amount;
                }
            }
            RunEvent::Evaluated { round, test } if *round == s.round => s.test = *test,
            RunEvent::Holdings { round, holdings } if *round == s.round => {
                s.holdings = holdings.clone();
            }
            RunEvent::Revealed { .. }
            | RunEvent::UpdateReceived { .. }
            | RunEvent::Consensus { .. }
            | RunEvent::Aggregated { .. }
            | RunEvent::Settled { .. }
            | RunEvent::Refused { .. }
            | RunEvent::Royalties { .. }
            | RunEvent::Evaluated { .. }
            | RunEvent::Holdings { .. } => {}
        }
    }

    /// The summary of the open round, as its events so far make it (wall seconds at zero);
    /// `None` when no round is open.
    pub fn finish_round(&mut self) -> Option<RoundSummary> {
        self.open.take().map(|o| o.s)
    }

    /// The open round as its events so far make it, left open; `None` when no round is open.
    pub fn round(&self) -> Option<&RoundSummary> {
        self.open.as_ref().map(|o| &o.s)
    }
}

fn empty_round(round: u64) -> RoundSummary {
    RoundSummary {
        round,
        test: cohort_fl::learner::Metrics::loss(f64::NAN),
        accepted: Vec::new(),
        rejected: Vec::new(),
        consensus: BTreeMap::new(),
        bytes: 0,
        dense_bytes: 0,
        submitted: Vec::new(),
        scores: Vec::new(),
        holdings: BTreeMap::new(),
        seconds: PhaseSeconds::default(),
        updates: Vec::new(),
        payouts: BTreeMap::new(),
        provenance: Vec::new(),
        refused: Vec::new(),
        royalties: BTreeMap::new(),
        legacy_rewards: (),
    }
}

/// The summary of every round the events settle, in order: each round ends at its
/// `Checkpoint` (a round opened and never checkpointed, as in a run stopped part-way, is left
/// out; one that a later `Resumed` names as durable is kept). Wall seconds are zero.
pub fn rounds_from_events<'a>(
    validators: u32,
    events: impl IntoIterator<Item = &'a RunEvent>,
) -> Vec<RoundSummary> {
    let mut b = RunSummaryBuilder::new(validators);
    for e in events {
        b.apply(e);
    }
    b.rounds
}

/// The whole [`RunSummary`] the events make (what `summary.json` holds as `summary`, wall
/// seconds at zero), or why they make none.
pub fn summary_from_events<'a>(
    validators: u32,
    events: impl IntoIterator<Item = &'a RunEvent>,
) -> Result<RunSummary, Incomplete> {
    let mut b = RunSummaryBuilder::new(validators);
    for e in events {
        b.apply(e);
    }
    b.summary()
}

/// Why a stream of events makes no [`RunSummary`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incomplete {
    /// No `evaluated` event for round 0 (the initial model): the stream does not start at the
    /// run's set-up, nor does the fold continue a saved run.
    #[error(
        "the events hold no evaluation of the initial model (an `evaluated` event for round 0)"
    )]
    NoInitialModel,
    /// No `finished` event: the run stopped, or is still going.
    #[error("the events do not say that the run finished (no `finished` event)")]
    NotFinished,
    /// The `finished` event counts other rounds than the stream settles.
    #[error(
        "the run finished after {finished} rounds, the events settle {settled:?} (a round's \
         events are missing)"
    )]
    MissingRounds {
        /// Rounds the `finished` event counts.
        finished: u64,
        /// The rounds the events settle, in order.
        settled: Vec<u64>,
    },
}

/// The end of a run, from its `Finished` event.
#[derive(Debug, Clone)]
struct End {
    rounds: u64,
    holdings: BTreeMap<String, U256>,
    ledger_entries: u64,
    ledger_root: Hash32,
}

/// Folds a whole run's events into its [`RunSummary`]: [`apply`](Self::apply) every event in
/// order, then [`summary`](Self::summary). The rounds are folded by a [`SummaryBuilder`], each
/// ending at its `Checkpoint`.
///
/// - `SetUp` starts the run over (a set-up that was stopped and started again);
/// - `Evaluated` and `Holdings` for round 0: the initial model's metrics, the holdings after
///   the set-up;
/// - `Resumed { round }`: rounds after `round` are void; the round `round` itself, if open
///   (its state was saved and made durable, and the stop came before its `Checkpoint`), is
///   complete and kept;
/// - `Finished`: the final holdings, ledger size and root.
#[derive(Debug, Clone)]
pub struct RunSummaryBuilder {
    round: SummaryBuilder,
    initial: Option<Metrics>,
    initial_holdings: BTreeMap<String, U256>,
    rounds: Vec<RoundSummary>,
    end: Option<End>,
}

impl RunSummaryBuilder {
    /// A builder for a run with `validators` validators (the rows of the score matrices).
    pub fn new(validators: u32) -> Self {
        Self {
            round: SummaryBuilder::new(validators),
            initial: None,
            initial_holdings: BTreeMap::new(),
            rounds: Vec::new(),
            end: None,
        }
    }

    /// A builder that continues the fold of a stopped run from what was saved of it: the
    /// initial model's metrics, the holdings after the set-up and the summaries of its settled
    /// rounds (themselves folded from the run's events before the stop, wall seconds kept).
    pub fn resuming(
        validators: u32,
        initial: Metrics,
        initial_holdings: BTreeMap<String, U256>,
        rounds: Vec<RoundSummary>,
    ) -> Self {
        Self {
            initial: Some(initial),
            initial_holdings,
            rounds,
            ..Self::new(validators)
        }
    }

    /// Takes in one event; returns the round it completed, if it completed one (a round's
    /// `Checkpoint`, or a `Resumed` that names the open round).
    pub fn apply(&mut self, event: &RunEvent) -> Option<&RoundSummary> {
        match event {
            RunEvent::SetUp { .. } => {
                *self = Self::new(self.round.validators);
                return None;
            }
            RunEvent::Evaluated { round: 0, test } => self.initial = Some(*test),
            RunEvent::Holdings { round: 0, holdings } => self.initial_holdings = holdings.clone(),
            RunEvent::Checkpoint { round, .. } if self.open_round() == Some(*round) => {
                return self.close();
            }
            RunEvent::Resumed { round, .. } => {
                let round = *round;
                self.end = None;
                if self.open_round() == Some(round) {
                    return self.close();
                }
                self.round.finish_round();
                self.rounds.retain(|r| r.round <= round);
                return None;
            }
            RunEvent::Finished {
                rounds,
                holdings,
                ledger_entries,
                ledger_root,
            } => {
                self.end = Some(End {
                    rounds: *rounds,
                    holdings: holdings.clone(),
                    ledger_entries: *ledger_entries,
                    ledger_root: *ledger_root,
                });
                return None;
            }
            _ => {}
        }
        self.round.apply(event);
        None
    }

    fn open_round(&self) -> Option<u64> {
        self.round.round().map(|r| r.round)
    }

    /// Closes the open round into the run's rounds, replacing an earlier summary of the same
    /// round.
    fn close(&mut self) -> Option<&RoundSummary> {
        let r = self.round.finish_round()?;
        self.rounds.retain(|x| x.round < r.round);
        self.rounds.push(r);
        self.rounds.last()
    }

    /// Whether a round is open (between its `RoundOpened` and its `Checkpoint`).
    pub fn in_round(&self) -> bool {
        self.round.in_round()
    }

    /// The open round as its events so far make it; `None` between rounds.
    pub fn open(&self) -> Option<&RoundSummary> {
        self.round.round()
    }

    /// The initial model's metrics, once known.
    pub fn initial(&self) -> Option<&Metrics> {
        self.initial.as_ref()
    }

    /// The holdings after the set-up (empty until known).
    pub fn initial_holdings(&self) -> &BTreeMap<String, U256> {
        &self.initial_holdings
    }

    /// The rounds completed so far, in order.
    pub fn rounds(&self) -> &[RoundSummary] {
        &self.rounds
    }

    /// Sets the wall seconds of the completed round `round` (the runtime times its phases;
    /// they are not events). Returns whether there is such a round.
    pub fn time_round(&mut self, round: u64, seconds: PhaseSeconds) -> bool {
        match self.rounds.iter_mut().rev().find(|r| r.round == round) {
            Some(r) => {
                r.seconds = seconds;
                true
            }
            None => false,
        }
    }

    /// The run's summary: the initial model, every round in order (1 to the number the
    /// `Finished` event counts), the final holdings, ledger size and root.
    pub fn summary(&self) -> Result<RunSummary, Incomplete> {
        let initial = self.initial.ok_or(Incomplete::NoInitialModel)?;
        let end = self.end.as_ref().ok_or(Incomplete::NotFinished)?;
        let settled: Vec<u64> = self.rounds.iter().map(|r| r.round).collect();
        if !settled.iter().copied().eq(1..=end.rounds) {
            return Err(Incomplete::MissingRounds {
                finished: end.rounds,
                settled,
            });
        }
        Ok(RunSummary {
            initial,
            update_bytes: UpdateBytes::of(&self.rounds),
            initial_holdings: self.initial_holdings.clone(),
            rounds: self.rounds.clone(),
            final_holdings: end.holdings.clone(),
            ledger_root: end.ledger_root,
            ledger_entries: end.ledger_entries,
            absent: BTreeMap::new(),
            set_aside: BTreeMap::new(),
        })
    }
}
