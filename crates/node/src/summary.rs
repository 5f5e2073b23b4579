//! The round summaries a run reports, folded from its [`RunEvent`]s alone.
//!
//! The coordinator emits every fact of a round as an event and builds its own
//! [`RoundSummary`] by feeding those events to a [`SummaryBuilder`]; anyone holding the event
//! stream (`cohort run --events FILE`, a dashboard) rebuilds the same summaries with the same
//! fold ([`rounds_from_events`]). Only the wall seconds per phase are not events (they are not
//! part of the replay contract): a rebuilt summary has them at zero.

use std::collections::BTreeMap;

use cohort_fl::events::RunEvent;

use crate::runtime::{PhaseSeconds, RoundSummary, UpdateFacts};

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
            RunEvent::UpdateReceived {
                round,
                client,
                address,
                blob,
                bytes,
                samples,
                entry,
                norm,
            } if *round == s.round => {
                s.bytes += bytes;
                s.submitted.push(*client);
                s.updates.push(UpdateFacts {
                    client: *client,
                    samples: *samples,
                    update_norm: *norm,
                    bytes: *bytes,
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
            RunEvent::Evaluated { round, test } if *round == s.round => s.test = *test,
            RunEvent::Holdings { round, holdings } if *round == s.round => {
                s.holdings = holdings.clone();
            }
            RunEvent::Revealed { .. }
            | RunEvent::UpdateReceived { .. }
            | RunEvent::Consensus { .. }
            | RunEvent::Aggregated { .. }
            | RunEvent::Settled { .. }
            | RunEvent::Evaluated { .. }
            | RunEvent::Holdings { .. } => {}
        }
    }

    /// The summary of the open round, as its events so far make it (wall seconds at zero);
    /// `None` when no round is open.
    pub fn finish_round(&mut self) -> Option<RoundSummary> {
        self.open.take().map(|o| o.s)
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
        submitted: Vec::new(),
        scores: Vec::new(),
        holdings: BTreeMap::new(),
        seconds: PhaseSeconds::default(),
        updates: Vec::new(),
        payouts: BTreeMap::new(),
        provenance: Vec::new(),
        legacy_rewards: (),
    }
}

/// The summary of every round the events settle, in order: each round ends at its
/// `Checkpoint` (a round opened and never checkpointed, as in a run stopped part-way, is left
/// out). Wall seconds are zero.
pub fn rounds_from_events<'a>(
    validators: u32,
    events: impl IntoIterator<Item = &'a RunEvent>,
) -> Vec<RoundSummary> {
    let mut b = SummaryBuilder::new(validators);
    let mut out = Vec::new();
    for e in events {
        b.apply(e);
        let ends_open_round = matches!(e, RunEvent::Checkpoint { round, .. }
            if b.open.as_ref().is_some_and(|o| o.s.round == *round));
        if ends_open_round {
            out.extend(b.finish_round());
        }
    }
    out
}
