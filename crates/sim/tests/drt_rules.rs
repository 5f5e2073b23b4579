//! Every rule of Deposit-Refund-Take, on the contract in revm, with the Rust reference
//! checked against it at every step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_sim::chain::bindings::DepositRefundTake;
use cohort_sim::drt::{DAY, TOKEN_UNIT, Take};
use cohort_sim::perceptron::WEIGHT_SCALE;
use cohort_sim::{Drt, DrtParams, EtaSchedule, EvmDrt, Perceptron, Reject};

const T: u128 = TOKEN_UNIT;
/// The model says 1 for this sample, whatever it is trained with here.
const POS: &[u32] = &[0];
/// The model says 0 for this sample.
const NEG: &[u32] = &[1, 3];

/// The reference and the contract side by side: every call goes to both and must agree.
struct Both {
    rules: Drt<Perceptron>,
    evm: EvmDrt,
    agents: usize,
}

impl Both {
    fn new(params: DrtParams, agents: usize) -> Self {
        let mut model = Perceptron::new(4, EtaSchedule::default());
        model.weights = vec![1000 * WEIGHT_SCALE, -1000 * WEIGHT_SCALE, 0, 0];
        let funds = vec![10_000 * T; agents];
        let evm = EvmDrt::deploy(&params, &model, &funds, 0).unwrap();
        let mut rules = Drt::new(params, model, 0);
        for (i, &f) in funds.iter().enumerate() {
            rules.fund(i, f);
        }
        Self { rules, evm, agents }
    }

    fn reference() -> Self {
        Self::new(DrtParams::reference(), 4)
    }

    fn agree<T: std::fmt::Debug + PartialEq, U: std::fmt::Debug>(
        want: &Result<T, Reject>,
        got: &Result<U, cohort_sim::chain::Revert>,
        eq: impl Fn(&T, &U) -> bool,
    ) {
        match (want, got) {
            (Ok(a), Ok(b)) => assert!(eq(a, b), "reference {a:?}, chain {b:?}"),
            (Err(r), Err(v)) => assert_eq!(r.name(), v.name, "reference {r:?}, chain {}", v.detail),
            _ => panic!("reference {want:?}, chain {got:?}"),
        }
    }

    fn add(
        &mut self,
        now: u64,
        who: usize,
        f: &[u32],
        label: u8,
        max: u128,
    ) -> Result<(usize, u128), Reject> {
        let want = self.rules.add_data(now, who, f, label, max);
        let got = self.evm.add_data(now, who, f, label, max).unwrap();
        Self::agree(&want, &got, |a, b| a == b);
        self.balances_agree(now);
        want
    }

    fn refund(&mut self, now: u64, who: usize, id: usize, f: &[u32]) -> Result<u128, Reject> {
        let want = self.rules.refund(now, who, id, f);
        let got = self.evm.refund(now, who, id, f).unwrap();
        Self::agree(&want, &got, |a, b| a == b);
        self.balances_agree(now);
        want
    }

    fn report(&mut self, now: u64, who: usize, id: usize, f: &[u32]) -> Result<Take, Reject> {
        let want = self.rules.report(now, who, id, f);
        let got = self.evm.report(now, who, id, f).unwrap();
        Self::agree(&want, &got, |a, b| a.amount == *b);
        self.balances_agree(now);
        want
    }

    /// Balances, totals and the conservation invariant, on chain and in the reference.
    fn balances_agree(&mut self, now: u64) {
        let mut sum = 0;
        for i in 0..self.agents {
            let b = self.evm.balance(now, i).unwrap();
            assert_eq!(b, self.rules.balance(i), "balance of participant {i}");
            sum += b;
        }
        let (minted, escrowed, good) = self.evm.totals(now).unwrap();
        assert_eq!(
            (minted, escrowed, good),
            (
                self.rules.total_minted,
                self.rules.escrowed,
                self.rules.total_good
            )
        );
        assert_eq!(minted, sum + escrowed, "tokens are conserved on chain");
        assert!(self.rules.conserved());
    }
}

#[test]
fn deposit_cost_formula_rounding_and_minimum() {
    // cost = max(1, floor(w * 60 / floor(sqrt(dt)))) whole tokens.
    let p = DrtParams::reference();
    assert_eq!(p.cost(0), None);
    assert_eq!(p.cost(1), Some(60 * T));
    assert_eq!(p.cost(3), Some(60 * T)); // floor(sqrt(3)) = 1
    assert_eq!(p.cost(64), Some(7 * T)); // 60 / 8 = 7.5
    assert_eq!(p.cost(3599), Some(T)); // 60 / 59
    assert_eq!(p.cost(3600), Some(T));
    assert_eq!(p.cost(1_000_000), Some(T)); // 60 / 1000 rounds to 0: the minimum of 1
    let half = DrtParams::new(0.5, DAY, 9 * DAY).unwrap();
    assert_eq!(half.cost(4), Some(15 * T));
    let tenth = DrtParams::new(0.1, DAY, 9 * DAY).unwrap();
    assert_eq!(tenth.cost(100), Some(T)); // 6 / 10 rounds to 0

    // The contract charges exactly that, measured from the last accepted addition.
    let mut b = Both::reference();
    assert_eq!(b.add(64, 0, POS, 1, 100 * T), Ok((0, 7 * T)));
    assert_eq!(b.add(64 + 100, 1, POS, 1, 100 * T), Ok((1, 6 * T)));
    assert_eq!(b.add(64 + 100 + 3600, 1, NEG, 0, 100 * T), Ok((2, T)));
    assert_eq!(b.rules.balance(1), 10_000 * T - 7 * T);
}

#[test]
fn deposits_refused_too_soon_too_low_and_unfunded() {
    let mut b = Both::new(DrtParams::reference(), 5);
    // dt = 0 since the deployment.
    assert_eq!(b.add(0, 0, POS, 1, 100 * T), Err(Reject::TooSoon));
    assert_eq!(b.add(1, 0, POS, 1, 59 * T), Err(Reject::DepositTooLow));
    assert_eq!(b.add(1, 0, POS, 1, 60 * T), Ok((0, 60 * T)));
    // Same second as the last accepted addition.
    assert_eq!(b.add(1, 1, POS, 1, 100 * T), Err(Reject::TooSoon));
    // Participant 4 was funded but spends it all, then cannot pay.
    let mut now = 1;
    let mut spent = 0;
    while spent + 60 * T <= 10_000 * T {
        now += 1;
        b.add(now, 4, POS, 1, 100 * T).unwrap();
        spent += 60 * T;
    }
    now += 1;
    assert_eq!(
        b.add(now, 4, POS, 1, 100 * T),
        Err(Reject::InsufficientBalance)
    );
    // A refused addition leaves the clock alone: the next one one second later costs 60.
    now += 1;
    assert_eq!(b.add(now, 0, POS, 1, 100 * T).map(|x| x.1), Ok(60 * T));
}

#[test]
fn refund_branches_and_window() {
    let mut b = Both::reference();
    let t0 = 100;
    let (good, _) = b.add(t0, 0, POS, 1, 100 * T).unwrap();
    let (wrong, _) = b.add(t0 + 10, 0, NEG, 1, 100 * T).unwrap();
    let deposit = b.rules.contributions[good].initial_deposit;
    // Someone else cannot ask for it.
    assert_eq!(
        b.refund(t0 + DAY + 1, 1, good, POS),
        Err(Reject::NotSubmitter)
    );
    // Exactly one day old is not yet more than one day.
    assert_eq!(b.refund(t0 + DAY, 0, good, POS), Err(Reject::TooEarly));
    // The model disagrees with the label.
    assert_eq!(
        b.refund(t0 + 10 + DAY + 1, 0, wrong, NEG),
        Err(Reject::ModelDisagrees)
    );
    let before = b.rules.balance(0);
    assert_eq!(b.refund(t0 + DAY + 1, 0, good, POS), Ok(deposit));
    assert_eq!(b.rules.balance(0), before + deposit);
    assert_eq!((b.rules.good(0), b.rules.total_good), (1, 1));
    // Once only.
    assert_eq!(
        b.refund(t0 + DAY + 2, 0, good, POS),
        Err(Reject::AlreadyClaimed)
    );
    // Long after: still refundable while something is left (the refund has no upper window).
    let (late, _) = b.add(t0 + 20, 0, POS, 1, 100 * T).unwrap();
    assert!(b.refund(t0 + 20 + 8 * DAY, 0, late, POS).is_ok());
}

#[test]
fn refund_after_a_partial_take_pays_what_is_left_and_nothing_left_is_refused() {
    let mut b = Both::reference();
    // Reporter 1 earns a good contribution first.
    let (g, _) = b.add(1, 1, POS, 1, 100 * T).unwrap();
    b.refund(1 + DAY + 1, 1, g, POS).unwrap();
    // Participant 0 adds a sample the model disagrees with (cost 60 at dt... of 1 s).
    let (x, cost) = b.add(2, 0, NEG, 1, 100 * T).unwrap();
    let take = b.report(2 + DAY + 1, 1, x, NEG).unwrap();
    assert_eq!(
        take,
        Take {
            amount: cost,
            all: false
        },
        "sole reporter with all good contributions takes all"
    );
    assert_eq!(b.refund(2 + DAY + 2, 0, x, NEG), Err(Reject::NothingLeft));
    assert_eq!(b.report(2 + 9 * DAY, 2, x, NEG), Err(Reject::NothingLeft));
}

#[test]
fn take_branches_window_share_and_rounding() {
    // Participants: 0 and 1 good reporters, 2 bad, 3 without good contributions.
    let mut b = Both::reference();
    let mut now = 10;
    let mut goods = Vec::new();
    for who in [0, 0, 1] {
        now += 100;
        goods.push((who, b.add(now, who, POS, 1, 100 * T).unwrap().0));
    }
    // Bad sample at dt = 64: cost 7 tokens.
    now += 64;
    let added = now;
    let (bad, cost) = b.add(added, 2, NEG, 1, 100 * T).unwrap();
    assert_eq!(cost, 7 * T);
    now += DAY + 1;
    for (who, id) in goods {
        b.refund(now, who, id, POS).unwrap();
    }
    assert_eq!(
        (b.rules.good(0), b.rules.good(1), b.rules.total_good),
        (2, 1, 3)
    );

    // Too early: age == refund wait.
    assert_eq!(b.report(added + DAY, 0, bad, NEG), Err(Reject::TooEarly));
    // Own contribution before the take-all wait.
    assert_eq!(
        b.report(added + DAY + 1, 2, bad, NEG),
        Err(Reject::CannotTakeOwn)
    );
    // No good contributions.
    assert_eq!(
        b.report(added + DAY + 1, 3, bad, NEG),
        Err(Reject::NoGoodContributions)
    );
    // The model agrees with a (right) contribution: nothing to take.
    let (right, _) = b.add(added + 5, 2, POS, 1, 100 * T).unwrap();
    assert_eq!(
        b.report(added + 5 + DAY + 1, 0, right, POS),
        Err(Reject::ModelAgrees)
    );
    // Shares: 7e18 * 2 / 3 and 7e18 * 1 / 3, rounded down.
    let a = b.report(added + DAY + 1, 0, bad, NEG).unwrap();
    assert_eq!(
        a,
        Take {
            amount: 4_666_666_666_666_666_666,
            all: false
        }
    );
    assert_eq!(
        b.report(added + DAY + 2, 0, bad, NEG),
        Err(Reject::AlreadyClaimed)
    );
    let c = b.report(added + DAY + 2, 1, bad, NEG).unwrap();
    assert_eq!(c.amount, 2_333_333_333_333_333_333);
    // One base unit is left; at 9 days anyone, the submitter too, takes it.
    assert_eq!(b.rules.contributions[bad].claimable, 1);
    assert_eq!(
        b.report(added + 9 * DAY - 1, 2, bad, NEG),
        Err(Reject::CannotTakeOwn)
    );
    assert_eq!(
        b.report(added + 9 * DAY, 2, bad, NEG),
        Ok(Take {
            amount: 1,
            all: true
        })
    );
    assert_eq!(
        b.report(added + 9 * DAY, 0, bad, NEG),
        Err(Reject::NothingLeft)
    );
}

#[test]
fn a_share_larger_than_what_is_left_takes_what_is_left() {
    let mut b = Both::reference();
    let mut now = 10;
    let mut ids = Vec::new();
    for who in [0, 1, 1, 1] {
        now += 100;
        ids.push((who, b.add(now, who, POS, 1, 100 * T).unwrap().0));
    }
    now += 64;
    let added = now;
    let (bad, cost) = b.add(added, 2, NEG, 1, 100 * T).unwrap();
    // Goods 1:1 when 0 takes half...
    let t1 = added + DAY + 1;
    b.refund(t1, ids[0].0, ids[0].1, POS).unwrap();
    b.refund(t1, ids[1].0, ids[1].1, POS).unwrap();
    assert_eq!(b.report(t1, 0, bad, NEG).unwrap().amount, cost / 2);
    // ...then 1 earns two more (3 of 4): 3/4 of the deposit exceeds the half that is left.
    b.refund(t1, ids[2].0, ids[2].1, POS).unwrap();
    b.refund(t1, ids[3].0, ids[3].1, POS).unwrap();
    assert_eq!(
        b.report(t1 + 1, 1, bad, NEG).unwrap().amount,
        cost - cost / 2
    );
    assert_eq!(b.rules.contributions[bad].claimable, 0);
}

#[test]
fn take_all_wait_is_inclusive_and_open_to_everyone() {
    let mut b = Both::reference();
    let (id, cost) = b.add(50, 0, POS, 1, 100 * T).unwrap();
    // Before 9 days the submitter may only ask for a refund; at 9 days anyone takes all, even
    // a participant without good contributions, even though the model agrees.
    assert_eq!(
        b.report(50 + 9 * DAY - 1, 3, id, POS),
        Err(Reject::ModelAgrees)
    );
    assert_eq!(
        b.report(50 + 9 * DAY, 3, id, POS),
        Ok(Take {
            amount: cost,
            all: true
        })
    );
    assert_eq!(
        b.refund(50 + 9 * DAY + 1, 0, id, POS),
        Err(Reject::NothingLeft)
    );
}

#[test]
fn wrong_features_unknown_ids_and_bad_windows_are_refused_by_the_contract() {
    let mut b = Both::reference();
    let (id, _) = b.add(5, 0, POS, 1, 100 * T).unwrap();
    let r = b
        .evm
        .send_raw(
            5 + DAY + 1,
            0,
            &DepositRefundTake::refundCall {
                id: alloy_primitives::U256::from(id),
                features: cohort_sim::chain::pack(&[0, 2]),
            },
        )
        .unwrap();
    assert_eq!(r.unwrap_err().name, "DataMismatch");
    let r = b
        .evm
        .send_raw(
            5 + DAY + 1,
            0,
            &DepositRefundTake::reportCall {
                id: alloy_primitives::U256::from(7),
                features: cohort_sim::chain::pack(&[0]),
            },
        )
        .unwrap();
    assert_eq!(r.unwrap_err().name, "UnknownContribution");
    // Features must be strictly increasing and below num_features (the model checks).
    let r = b.evm.add_data(10, 0, &[2, 1], 1, 100 * T).unwrap();
    assert_eq!(r.unwrap_err().name, "BadFeature");
    let r = b.evm.add_data(10, 0, &[4], 1, 100 * T).unwrap();
    assert_eq!(r.unwrap_err().name, "BadFeature");
    let r = b.evm.add_data(10, 0, &[0], 2, 100 * T).unwrap();
    assert_eq!(r.unwrap_err().name, "BadLabel");
    // Nothing of that changed any state.
    b.balances_agree(10);

    // The claim windows: more than a week between the refund and the take-all waits.
    assert!(DrtParams::new(1.0, DAY, 8 * DAY).is_err());
    assert!(DrtParams::new(1.0, DAY, 8 * DAY + 1).is_ok());
    let unchecked = DrtParams {
        cost_weight_e6: 1,
        refund_wait: DAY,
        any_address_claim_wait: 8 * DAY,
    };
    let e = EvmDrt::deploy(
        &unchecked,
        &Perceptron::new(4, EtaSchedule::default()),
        &[],
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("InvalidWindows"), "{e}");
}

mod conservation {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Add {
            dt: u64,
            who: usize,
            pos: bool,
            label: u8,
            max: u128,
        },
        Refund {
            dt: u64,
            who: usize,
            id: usize,
        },
        Report {
            dt: u64,
            who: usize,
            id: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5_000u64, 0..4usize, any::<bool>(), 0..2u8, 1..80u128).prop_map(
                |(dt, who, pos, label, max)| Op::Add {
                    dt,
                    who,
                    pos,
                    label,
                    max: max * T
                }
            ),
            (0..3 * DAY, 0..4usize, 0..32usize).prop_map(|(dt, who, id)| Op::Refund {
                dt,
                who,
                id
            }),
            (0..3 * DAY, 0..4usize, 0..32usize).prop_map(|(dt, who, id)| Op::Report {
                dt,
                who,
                id
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Whatever the participants do, the contract's tokens are conserved (balances plus
        /// escrow equal what was minted) and the reference agrees with the contract on every
        /// call, balance and total.
        #[test]
        fn tokens_are_conserved_and_reference_agrees(ops in proptest::collection::vec(op(), 1..40)) {
            let mut b = Both::reference();
            let mut now = 0;
            let mut samples: Vec<&[u32]> = Vec::new();
            for o in ops {
                match o {
                    Op::Add { dt, who, pos, label, max } => {
                        now += dt;
                        let f = if pos { POS } else { NEG };
                        if b.add(now, who, f, label, max).is_ok() {
                            samples.push(f);
                        }
                    }
                    Op::Refund { dt, who, id } if !samples.is_empty() => {
                        now += dt;
                        let id = id % samples.len();
                        let _ = b.refund(now, who, id, samples[id]);
                    }
                    Op::Report { dt, who, id } if !samples.is_empty() => {
                        now += dt;
                        let id = id % samples.len();
                        let _ = b.report(now, who, id, samples[id]);
                    }
                    _ => {}
                }
            }
            b.balances_agree(now);
        }
    }
}
