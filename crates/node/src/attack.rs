//! Attackers as wrappers around the honest parties: an adversarial client is a [`Client`]
//! whose update is transformed before it signs, a Sybil shares one update with the other
//! Sybils of its ring, a colluding validator is a [`Validator`] that commits to the scores
//! its ring wants instead of the ones its held-out data gives. Each still signs with its own
//! key: the protocol sees a registered party misbehaving, which is what the validators, the
//! consensus and the slashing must catch.
//!
//! Attacks on a client's data (label flipping, backdoors) are not wrappers: they change the
//! client's data, which the task does at construction (`Learner::poison`); the client itself
//! is then an ordinary [`Client`] that does not stop the run if its training diverges.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use cohort_core::Score;
use cohort_fl::learner::Learner;
use cohort_fl::{ClientUpdate, UpdateAttack};

use crate::party::{Client, PartyError, PartyNode, Validator, wrong_request};
use crate::transport::{Party, Reply, Request};

/// What the Sybils of one ring share: the update the first of them to train in a round
/// made, which the others send as their own.
#[derive(Debug, Clone, Default)]
pub struct SybilRing(Rc<RefCell<Option<ClientUpdate>>>);

impl SybilRing {
    /// A new ring with nothing shared yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A client that sends a transformed update ([`UpdateAttack`]) and/or, in a Sybil ring, the
/// update the ring's first member made this round.
pub struct AdversarialClient<'a, L: Learner + ?Sized> {
    client: Client<'a, L>,
    attack: Option<UpdateAttack>,
    ring: Option<SybilRing>,
    seed: u64,
    /// It attacks in every `every`-th round only, from the first (1: every round).
    every: u64,
}

impl<L: Learner + ?Sized> std::fmt::Debug for AdversarialClient<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdversarialClient")
            .field("client", &self.client)
            .field("attack", &self.attack)
            .field("sybil", &self.ring.is_some())
            .finish()
    }
}

impl<'a, L: Learner + ?Sized> AdversarialClient<'a, L> {
    /// `client`, whose honest update `attack` transforms (its noise from `seed`), and which
    /// shares its update with `ring` when it is a Sybil.
    pub fn new(
        client: Client<'a, L>,
        attack: Option<UpdateAttack>,
        ring: Option<SybilRing>,
        seed: u64,
    ) -> Self {
        Self {
            client,
            attack,
            ring,
            seed,
            every: 1,
        }
    }

    /// Attacks in every `every`-th round only (rounds 1, 1 + every, ...), honest in the
    /// others: an intermittent attacker (`[[profile]] every`). 0 counts as 1.
    pub fn every(mut self, every: u64) -> Self {
        self.every = every.max(1);
        self
    }
}

impl<L: Learner + ?Sized> PartyNode for AdversarialClient<'_, L> {
    fn party(&self) -> Party {
        self.client.party()
    }

    fn session_signer(&self) -> crate::party::SessionSigner {
        self.client.session_signer()
    }

    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        let Request::Train(r) = request else {
            return self.client.handle(request);
        };
        if let Some(refusal) = self.client.refusal(r)? {
            return Ok(Reply::Refusal(refusal));
        }
        let shared = self.ring.as_ref().and_then(|ring| {
            ring.0
                .borrow()
                .as_ref()
                .filter(|u| u.round == r.round)
                .cloned()
        });
        let u = match shared {
            Some(first) => ClientUpdate {
                client: self.client.index(),
                ..first
            },
            None => {
                let mut u = self.client.train(r)?;
                let now = r.round.saturating_sub(1) % self.every == 0;
                if let Some(a) = self.attack.as_ref().filter(|_| now) {
                    u = a.apply(&u, self.seed);
                }
                if let Some(ring) = &self.ring {
                    *ring.0.borrow_mut() = Some(u.clone());
                }
                u
            }
        };
        self.client.submit(r, &u).map(Reply::Update)
    }
}

/// A validator that commits to the scores its ring wants: the best for the ring's clients,
/// the worst for everyone else, whatever its held-out data says.
pub struct CollusiveValidator<'a, L: Learner + ?Sized> {
    validator: Validator<'a, L>,
    ring: BTreeSet<u32>,
}

impl<L: Learner + ?Sized> std::fmt::Debug for CollusiveValidator<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollusiveValidator")
            .field("validator", &self.validator)
            .field("ring", &self.ring)
            .finish()
    }
}

impl<'a, L: Learner + ?Sized> CollusiveValidator<'a, L> {
    /// `validator`, colluding with the clients in `ring`.
    pub fn new(validator: Validator<'a, L>, ring: BTreeSet<u32>) -> Self {
        Self { validator, ring }
    }
}

impl<L: Learner + ?Sized> PartyNode for CollusiveValidator<'_, L> {
    fn party(&self) -> Party {
        self.validator.party()
    }

    fn session_signer(&self) -> crate::party::SessionSigner {
        self.validator.session_signer()
    }

    fn handle(&mut self, request: &Request) -> Result<Reply, PartyError> {
        match request {
            Request::Score(r) => {
                let scores = r
                    .updates
                    .iter()
                    .map(|item| {
                        Score::from_f64(if self.ring.contains(&item.client) {
                            1.0
                        } else {
                            -1.0
                        })
                    })
                    .collect();
                self.validator.commit(r, scores).map(Reply::Commit)
            }
            Request::Train(_) => Err(wrong_request(self.party(), request)),
            _ => self.validator.handle(request),
        }
    }
}
