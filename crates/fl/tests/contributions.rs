//! What each strategy says it did with each update (`Strategy::contributions`): hand-checked
//! cases per strategy, and the properties provenance relies on. A weighted strategy's
//! aggregate is `sum_i weight_i * clip_scale_i * delta_i` with weights summing to 1; Krum's
//! shares sum to 1 over the selected; a coordinate-wise statistic's shares lie in [0, 1] and
//! sum to the number of values it reads per coordinate; contributions follow the input order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::Score;
use cohort_fl::ClientUpdate;
use cohort_fl::strategy::{
    Clipped, Contribution, CoordinateMedian, FedAvg, FedOpt, Krum, MedianClipped, ScoreWeighted,
    ServerOpt, Strategy, TrimmedMean,
};
use proptest::prelude::*;

/// Updates of clients 0, 1, ... with these deltas and sample counts, unscored.
fn ups(rows: &[&[f32]], samples: &[u64]) -> Vec<ClientUpdate> {
    rows.iter()
        .zip(samples)
        .enumerate()
        .map(|(i, (r, &s))| ClientUpdate::new(i as u32, 1, r.to_vec(), s))
        .collect()
}

fn scored(mut u: Vec<ClientUpdate>, scores: &[Option<f64>]) -> Vec<ClientUpdate> {
    for (u, s) in u.iter_mut().zip(scores) {
        u.score = s.map(Score::from_f64);
    }
    u
}

fn weighted(weight: f64, clip_scale: f64) -> Contribution {
    Contribution::Weighted {
        weight,
        clip_scale,
        via_server_optimizer: false,
    }
}

/// `(weight, clip_scale, via_server_optimizer)` of a weighted contribution.
fn parts(c: &Contribution) -> (f64, f64, bool) {
    match *c {
        Contribution::Weighted {
            weight,
            clip_scale,
            via_server_optimizer,
        } => (weight, clip_scale, via_server_optimizer),
        ref other => panic!("not weighted: {other:?}"),
    }
}

fn near(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Contributions equal up to float rounding in their numbers.
fn same(a: &Contribution, b: &Contribution) -> bool {
    use Contribution::*;
    match (a, b) {
        (
            Weighted {
                weight: w1,
                clip_scale: c1,
                via_server_optimizer: v1,
            },
            Weighted {
                weight: w2,
                clip_scale: c2,
                via_server_optimizer: v2,
            },
        ) => near(*w1, *w2, 1e-12) && near(*c1, *c2, 1e-12) && v1 == v2,
        (Selected { share: a }, Selected { share: b }) => a == b,
        (Excluded, Excluded) => true,
        (Coordinatewise { kept_share: a }, Coordinatewise { kept_share: b }) => a == b,
        _ => false,
    }
}

/// `sum_i weight_i * clip_scale_i * delta_i`, in f64.
fn reconstruct(updates: &[ClientUpdate], contributions: &[Contribution]) -> Vec<f64> {
    assert_eq!(updates.len(), contributions.len());
    let mut acc = vec![0f64; updates[0].delta.values.len()];
    for (u, c) in updates.iter().zip(contributions) {
        let (w, s, _) = parts(c);
        for (a, &x) in acc.iter_mut().zip(&u.delta.values) {
            *a += w * s * f64::from(x);
        }
    }
    acc
}

/// The aggregate is the weighted sum its contributions describe, and the weights sum to 1.
fn assert_weighted_sum(name: &str, updates: &[ClientUpdate], out: &[f32], c: &[Contribution]) {
    let total: f64 = c.iter().map(|c| parts(c).0).sum();
    assert!(near(total, 1.0, 1e-12), "{name}: weights sum to {total}");
    let r = reconstruct(updates, c);
    for (j, (&o, &r)) in out.iter().zip(&r).enumerate() {
        assert!(
            near(f64::from(o), r, 1e-5),
            "{name}: coordinate {j} is {o}, the contributions give {r}"
        );
    }
}

fn kept_shares(c: &[Contribution]) -> Vec<f64> {
    c.iter()
        .map(|c| match *c {
            Contribution::Coordinatewise { kept_share } => kept_share,
            ref other => panic!("not coordinate-wise: {other:?}"),
        })
        .collect()
}

#[test]
fn fedavg_weighs_each_update_by_its_share_of_the_samples() {
    let u = ups(&[&[1.0, 0.0], &[0.0, 1.0], &[2.0, 2.0]], &[1, 3, 4]);
    let mut s = FedAvg::new();
    assert!(
        s.contributions().is_empty(),
        "nothing before the first round"
    );
    let out = s.aggregate(&u).unwrap();
    assert_eq!(out, vec![1.125, 1.375]);
    assert_eq!(
        s.contributions(),
        vec![
            weighted(0.125, 1.0),
            weighted(0.375, 1.0),
            weighted(0.5, 1.0)
        ]
    );
    assert_weighted_sum("fedavg", &u, &out, &s.contributions());
}

#[test]
fn score_weighting_gives_negative_and_missing_scores_weight_zero() {
    let u = scored(
        ups(&[&[4.0], &[8.0], &[100.0], &[-100.0]], &[1, 1, 1, 1]),
        &[Some(0.1), Some(0.3), Some(-0.2), None],
    );
    let mut s = ScoreWeighted::new();
    let out = s.aggregate(&u).unwrap();
    let c = s.contributions();
    let w: Vec<f64> = c.iter().map(|c| parts(c).0).collect();
    assert!(near(w[0], 0.25, 1e-9) && near(w[1], 0.75, 1e-9), "{w:?}");
    assert_eq!(&w[2..], &[0.0, 0.0]);
    assert!((out[0] - 7.0).abs() < 1e-5, "{out:?}");
    assert_weighted_sum("score-weighted", &u, &out, &c);

    // Times the sample counts: 0.1 * 3 against 0.3 * 1, even.
    let u = scored(ups(&[&[4.0], &[8.0]], &[3, 1]), &[Some(0.1), Some(0.3)]);
    let mut s = ScoreWeighted::by_samples();
    let out = s.aggregate(&u).unwrap();
    let w: Vec<f64> = s.contributions().iter().map(|c| parts(c).0).collect();
    assert!(near(w[0], 0.5, 1e-9) && near(w[1], 0.5, 1e-9), "{w:?}");
    assert_weighted_sum("score-weighted×samples", &u, &out, &s.contributions());
}

#[test]
fn clipping_records_each_updates_clip_factor() {
    // Norms 5, 1 and 0 against a bound of 2: factors 0.4, 1 (short enough), 1 (zero).
    let u = ups(&[&[3.0, 4.0], &[0.6, 0.8], &[0.0, 0.0]], &[1, 1, 2]);
    let mut s = Clipped::new(FedAvg::new(), 2.0);
    let out = s.aggregate(&u).unwrap();
    let c = s.contributions();
    assert_eq!(
        c,
        vec![weighted(0.25, 0.4), weighted(0.25, 1.0), weighted(0.5, 1.0)]
    );
    // 0.25 * 0.4 * (3, 4) + 0.25 * (0.6, 0.8)
    assert!(
        (out[0] - 0.45).abs() < 1e-6 && (out[1] - 0.6).abs() < 1e-6,
        "{out:?}"
    );
    assert_weighted_sum("clip∘fedavg", &u, &out, &c);
}

#[test]
fn clipped_score_weighting_weighs_by_the_clipped_score() {
    // The long update (norm 5) is clipped to 1, factor 0.2, and its score 0.4 with it to
    // 0.08: both updates then weigh the same.
    let u = scored(
        ups(&[&[3.0, 4.0], &[0.0, 0.5]], &[1, 1]),
        &[Some(0.4), Some(0.08)],
    );
    let mut s = Clipped::new(ScoreWeighted::new(), 1.0);
    let out = s.aggregate(&u).unwrap();
    let c = s.contributions();
    let p: Vec<(f64, f64, bool)> = c.iter().map(parts).collect();
    assert!(near(p[0].0, 0.5, 1e-9) && near(p[1].0, 0.5, 1e-9), "{p:?}");
    assert!(near(p[0].1, 0.2, 1e-12) && p[1].1 == 1.0, "{p:?}");
    // 0.5 * 0.2 * (3, 4) + 0.5 * (0, 0.5)
    assert!(
        (out[0] - 0.3).abs() < 1e-6 && (out[1] - 0.65).abs() < 1e-6,
        "{out:?}"
    );
    assert_weighted_sum("clip∘score-weighted", &u, &out, &c);
}

#[test]
fn median_clipping_records_the_factor_against_the_median_norm() {
    // Norms 1, 2 and 10: the bound is 2, the boosted update is scaled by 0.2.
    let u = ups(&[&[1.0, 0.0], &[0.0, 2.0], &[6.0, 8.0]], &[1, 1, 2]);
    let mut s = MedianClipped::new(FedAvg::new());
    let out = s.aggregate(&u).unwrap();
    let c = s.contributions();
    assert_eq!(
        c,
        vec![weighted(0.25, 1.0), weighted(0.25, 1.0), weighted(0.5, 0.2)]
    );
    assert_weighted_sum("clip(median)∘fedavg", &u, &out, &c);

    // All zero: nothing is clipped.
    let z = ups(&[&[0.0], &[0.0]], &[1, 1]);
    s.aggregate(&z).unwrap();
    assert_eq!(
        s.contributions(),
        vec![weighted(0.5, 1.0), weighted(0.5, 1.0)]
    );
}

#[test]
fn a_server_optimizer_passes_the_inner_contributions_on_marked() {
    let u = ups(&[&[3.0, 4.0], &[0.6, 0.8], &[-1.0, 0.5]], &[2, 1, 1]);
    for opt in [ServerOpt::Adam, ServerOpt::Yogi, ServerOpt::Adagrad] {
        let mut s = FedOpt::new(Clipped::new(FedAvg::new(), 1.0), opt, 0.1);
        let mut plain = Clipped::new(FedAvg::new(), 1.0);
        for round in 0..2 {
            s.aggregate(&u).unwrap();
            let pseudo_gradient = plain.aggregate(&u).unwrap();
            let c = s.contributions();
            assert_eq!(c.len(), 3);
            for (a, b) in c.iter().zip(plain.contributions()) {
                let (w, cs, via) = parts(a);
                assert!(via, "{opt:?} round {round}: {a:?}");
                assert_eq!((w, cs, false), parts(&b));
            }
            // The weights describe the pseudo-gradient, not the step.
            let r = reconstruct(&u, &c);
            for (&g, &r) in pseudo_gradient.iter().zip(&r) {
                assert!(near(f64::from(g), r, 1e-6), "{g} vs {r}");
            }
        }
    }
    // Kinds other than weighted pass through as they are.
    let k = ups(&[&[1.0], &[1.1], &[0.9], &[1.0], &[50.0]], &[1, 1, 1, 1, 1]);
    let mut s = FedOpt::adam(Krum::new(1), 0.1);
    s.aggregate(&k).unwrap();
    let mut plain = Krum::new(1);
    plain.aggregate(&k).unwrap();
    assert_eq!(s.contributions(), plain.contributions());
}

#[test]
fn krum_selects_the_cluster_and_excludes_the_outlier() {
    let u = ups(
        &[
            &[1.0, 1.0],
            &[1.1, 0.9],
            &[0.9, 1.1],
            &[1.0, 1.05],
            &[100.0, -100.0],
            &[1.02, 1.0],
        ],
        &[1; 6],
    );
    let mut s = Krum::new(1);
    let out = s.aggregate(&u).unwrap();
    let c = s.contributions();
    assert_eq!(c[4], Contribution::Excluded);
    let chosen: Vec<usize> = (0..6)
        .filter(|&i| c[i] == Contribution::Selected { share: 1.0 })
        .collect();
    assert_eq!(chosen.len(), 1, "{c:?}");
    assert_eq!(
        out, u[chosen[0]].delta.values,
        "Krum returns the one it selected"
    );
    assert_eq!(
        c.iter().filter(|c| **c == Contribution::Excluded).count(),
        5
    );

    let mut s = Krum::multi(1, 3);
    let out = s.aggregate(&u).unwrap();
    let c = s.contributions();
    assert_eq!(c[4], Contribution::Excluded);
    let selected: Vec<usize> = (0..6)
        .filter(|&i| matches!(c[i], Contribution::Selected { .. }))
        .collect();
    assert_eq!(selected.len(), 3, "{c:?}");
    let shares: f64 = selected
        .iter()
        .map(|&i| match c[i] {
            Contribution::Selected { share } => share,
            _ => 0.0,
        })
        .sum();
    assert!(near(shares, 1.0, 1e-12), "shares sum to {shares}");
    for j in 0..2 {
        let mean: f64 = selected
            .iter()
            .map(|&i| f64::from(u[i].delta.values[j]) / 3.0)
            .sum();
        assert!(near(f64::from(out[j]), mean, 1e-6), "{out:?} vs {mean}");
    }
}

#[test]
fn the_median_credits_the_middle_values() {
    // Coordinate 0: 1 < 2 < 3, update 1 is the middle; coordinate 1: 4 < 5 < 6, update 0.
    let u = ups(&[&[1.0, 5.0], &[2.0, 4.0], &[3.0, 6.0]], &[1; 3]);
    let mut s = CoordinateMedian::new();
    assert_eq!(s.aggregate(&u).unwrap(), vec![2.0, 5.0]);
    assert_eq!(kept_shares(&s.contributions()), vec![0.5, 0.5, 0.0]);

    // An even count: the two middle values, of updates 1 and 2 (in sorted order 2 and 3).
    let u = ups(&[&[1.0], &[3.0], &[2.0], &[4.0]], &[1; 4]);
    assert_eq!(s.aggregate(&u).unwrap(), vec![2.5]);
    assert_eq!(kept_shares(&s.contributions()), vec![0.0, 1.0, 1.0, 0.0]);
}

#[test]
fn equal_values_are_credited_in_client_order_whatever_the_input_order() {
    // Three equal values from clients 5, 2 and 9: in client order 2, 5, 9 the middle one is
    // client 5's.
    let u: Vec<ClientUpdate> = [5u32, 2, 9]
        .iter()
        .map(|&c| ClientUpdate::new(c, 1, vec![7.0], 1))
        .collect();
    let mut s = CoordinateMedian::new();
    s.aggregate(&u).unwrap();
    assert_eq!(kept_shares(&s.contributions()), vec![1.0, 0.0, 0.0]);
    let reversed: Vec<ClientUpdate> = u.iter().rev().cloned().collect();
    s.aggregate(&reversed).unwrap();
    assert_eq!(kept_shares(&s.contributions()), vec![0.0, 0.0, 1.0]);

    // Trimmed mean, k = 1: client 2's value is trimmed as the lowest, client 9's as the
    // highest.
    let mut t = TrimmedMean::new(1);
    t.aggregate(&u).unwrap();
    assert_eq!(kept_shares(&t.contributions()), vec![1.0, 0.0, 0.0]);
}

#[test]
fn the_trimmed_mean_credits_the_values_it_keeps() {
    // k = 1 of 4: per coordinate the lowest and highest value are dropped.
    //   coordinate 0: 0 1 2 3 -> keeps updates 1, 2
    //   coordinate 1: 9 8 7 6 -> keeps updates 1, 2
    //   coordinate 2: 5 0 5 0 -> sorted 0(u1) 0(u3) 5(u0) 5(u2): keeps updates 3, 0
    //   coordinate 3: 1 2 3 4 -> keeps updates 1, 2
    let u = ups(
        &[
            &[0.0, 9.0, 5.0, 1.0],
            &[1.0, 8.0, 0.0, 2.0],
            &[2.0, 7.0, 5.0, 3.0],
            &[3.0, 6.0, 0.0, 4.0],
        ],
        &[1; 4],
    );
    let mut s = TrimmedMean::new(1);
    assert_eq!(s.aggregate(&u).unwrap(), vec![1.5, 7.5, 2.5, 2.5]);
    let k = kept_shares(&s.contributions());
    assert_eq!(k, vec![0.25, 0.75, 0.75, 0.25]);
    assert_eq!(k.iter().sum::<f64>(), 2.0);

    // k = 1 of 5, where most values are kept (counted by those trimmed):
    //   coordinate 0: 0 1 2 3 4 -> keeps updates 1, 2, 3
    //   coordinate 1: 2 0 4 1 3 -> sorted 0(u1) 1(u3) 2(u0) 3(u4) 4(u2): keeps 3, 0, 4
    let u = ups(
        &[
            &[0.0, 2.0],
            &[1.0, 0.0],
            &[2.0, 4.0],
            &[3.0, 1.0],
            &[4.0, 3.0],
        ],
        &[1; 5],
    );
    assert_eq!(s.aggregate(&u).unwrap(), vec![2.0, 2.0]);
    let k = kept_shares(&s.contributions());
    assert_eq!(k, vec![0.5, 0.5, 0.5, 1.0, 0.5]);
}

#[test]
fn a_failed_aggregate_leaves_no_stale_contributions() {
    let good = ups(&[&[1.0], &[2.0], &[3.0]], &[1, 1, 1]);
    let short = ups(&[&[1.0]], &[1]);
    let unscored = ups(&[&[1.0], &[2.0]], &[1, 1]);
    let mismatched = ups(&[&[1.0], &[2.0, 3.0]], &[1, 1]);
    let cases: Vec<(Box<dyn Strategy>, Vec<ClientUpdate>)> = vec![
        (Box::new(FedAvg::new()), mismatched.clone()),
        (Box::new(ScoreWeighted::new()), unscored.clone()),
        (Box::new(Clipped::new(ScoreWeighted::new(), 1.0)), unscored),
        (Box::new(TrimmedMean::new(1)), short.clone()),
        (Box::new(Krum::new(0)), short),
        (Box::new(CoordinateMedian::new()), mismatched.clone()),
        (
            Box::new(FedOpt::adam(MedianClipped::new(FedAvg::new()), 0.1)),
            mismatched,
        ),
    ];
    for (mut s, bad) in cases {
        let good = scored(good.clone(), &[Some(0.1); 3]);
        s.aggregate(&good).unwrap();
        assert_eq!(s.contributions().len(), 3, "{}", s.name());
        assert!(s.aggregate(&bad).is_err(), "{}", s.name());
        assert!(s.contributions().is_empty(), "{} kept stale ones", s.name());
    }
    // A FedAvg round without samples is refused, not averaged into NaN.
    let err = FedAvg::new()
        .aggregate(&ups(&[&[1.0], &[2.0]], &[0, 0]))
        .unwrap_err();
    assert!(err.to_string().contains("FedAvg"), "{err}");
}

/// Every strategy, boxed, fresh.
fn all() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(FedAvg::new()),
        Box::new(ScoreWeighted::new()),
        Box::new(ScoreWeighted::by_samples()),
        Box::new(Clipped::new(FedAvg::new(), 1.0)),
        Box::new(Clipped::new(ScoreWeighted::by_samples(), 0.5)),
        Box::new(MedianClipped::new(FedAvg::new())),
        Box::new(MedianClipped::new(ScoreWeighted::new())),
        Box::new(FedOpt::adam(Clipped::new(FedAvg::new(), 1.0), 0.1)),
        Box::new(FedOpt::yogi(MedianClipped::new(TrimmedMean::new(1)), 0.1)),
        Box::new(CoordinateMedian::new()),
        Box::new(TrimmedMean::new(1)),
        Box::new(TrimmedMean::new(2)),
        Box::new(Krum::new(1)),
        Box::new(Krum::multi(1, 3)),
        Box::new(Clipped::new(Krum::multi(1, 2), 1.0)),
    ]
}

/// Weighted strategies (no server optimizer): their aggregate is the weighted sum.
fn weighted_strategies(bound: f64) -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(FedAvg::new()),
        Box::new(ScoreWeighted::new()),
        Box::new(ScoreWeighted::by_samples()),
        Box::new(Clipped::new(FedAvg::new(), bound)),
        Box::new(Clipped::new(ScoreWeighted::new(), bound)),
        Box::new(Clipped::new(ScoreWeighted::by_samples(), bound)),
        Box::new(MedianClipped::new(FedAvg::new())),
        Box::new(MedianClipped::new(ScoreWeighted::by_samples())),
        Box::new(Clipped::new(MedianClipped::new(FedAvg::new()), bound)),
    ]
}

/// Updates of distinct clients (ids scattered, not in input order) with the given deltas,
/// sample counts 1..=5 and scores in [-0.05, 0.25].
fn updates_from(rows: &[Vec<f32>], seed: u64) -> Vec<ClientUpdate> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let x = seed
                .wrapping_add(i as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ClientUpdate::new(
                (i as u32 * 7919 + 13) % 1000,
                1,
                r.clone(),
                1 + (x >> 60) % 5,
            )
            .with_score(Score::from_f64(((x >> 32) % 31) as f64 / 100.0 - 0.05))
        })
        .collect()
}

/// `updates` shuffled by `seed`, and for each new position the old one.
fn shuffle(updates: &[ClientUpdate], seed: u64) -> (Vec<ClientUpdate>, Vec<usize>) {
    let mut perm: Vec<usize> = (0..updates.len()).collect();
    let mut x = seed | 1;
    for i in (1..perm.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        perm.swap(i, (x % (i as u64 + 1)) as usize);
    }
    (perm.iter().map(|&i| updates[i].clone()).collect(), perm)
}

/// For each update, the coordinates where its value sits at a sorted position in `used`,
/// found the slow way: sort the update indices of each coordinate by (value, client id).
fn brute_force_shares(updates: &[ClientUpdate], used: std::ops::Range<usize>) -> Vec<f64> {
    let d = updates[0].delta.values.len();
    let mut counts = vec![0usize; updates.len()];
    for j in 0..d {
        let mut order: Vec<usize> = (0..updates.len()).collect();
        order.sort_by(|&a, &b| {
            updates[a].delta.values[j]
                .total_cmp(&updates[b].delta.values[j])
                .then(updates[a].client.cmp(&updates[b].client))
        });
        for &i in &order[used.clone()] {
            counts[i] += 1;
        }
    }
    counts.iter().map(|&c| c as f64 / d as f64).collect()
}

proptest! {
    /// Weighted strategies: weights sum to 1 and the aggregate is sum w_i s_i delta_i, with
    /// s_i = min(1, bound / norm_i) under a fixed bound.
    #[test]
    fn a_weighted_aggregate_is_the_sum_its_contributions_describe(
        rows in prop::collection::vec(prop::collection::vec(-3.0f32..3.0, 5), 1..9),
        seed in any::<u64>(),
        bound in 0.1f64..5.0,
    ) {
        let u = updates_from(&rows, seed);
        for mut s in weighted_strategies(bound) {
            let Ok(out) = s.aggregate(&u) else {
                // Only score weighting may refuse: no positive score this time.
                prop_assert!(s.name().contains("score-weighted"), "{} failed", s.name());
                continue;
            };
            let c = s.contributions();
            prop_assert_eq!(c.len(), u.len());
            assert_weighted_sum(&s.name(), &u, &out, &c);
            // A fixed bound alone (not nested around median clipping): s_i = min(1, bound/|u_i|).
            if s.name().starts_with(&format!("clip({bound})")) && !s.name().contains("median") {
                for (u, c) in u.iter().zip(&c) {
                    let expect = (bound / u.norm()).min(1.0);
                    prop_assert!(near(parts(c).1, expect, 1e-12), "{c:?} vs {expect}");
                }
            }
        }
    }

    /// Shuffling the input shuffles the contributions the same way, for every strategy.
    #[test]
    fn contributions_follow_the_input_order(
        rows in prop::collection::vec(prop::collection::vec(-3.0f32..3.0, 4), 7..11),
        seed in any::<u64>(),
        perm_seed in any::<u64>(),
    ) {
        let u = updates_from(&rows, seed);
        let (shuffled, perm) = shuffle(&u, perm_seed);
        for (mut a, mut b) in all().into_iter().zip(all()) {
            if a.aggregate(&u).is_err() {
                prop_assert!(b.aggregate(&shuffled).is_err());
                continue;
            }
            b.aggregate(&shuffled).unwrap();
            let (ca, cb) = (a.contributions(), b.contributions());
            prop_assert_eq!(ca.len(), u.len(), "{}", a.name());
            for (k, &i) in perm.iter().enumerate() {
                prop_assert!(same(&cb[k], &ca[i]), "{}: {:?} vs {:?}", a.name(), cb[k], ca[i]);
            }
        }
    }

    /// Krum: the selected have equal shares summing to 1, the rest are excluded.
    #[test]
    fn krum_shares_sum_to_one_over_the_selected(
        rows in prop::collection::vec(prop::collection::vec(-3.0f32..3.0, 4), 7..11),
        m in 1usize..5,
        seed in any::<u64>(),
    ) {
        let u = updates_from(&rows, seed);
        let mut s = Krum::multi(2, m);
        s.aggregate(&u).unwrap();
        let c = s.contributions();
        let shares: Vec<f64> = c.iter().filter_map(|c| match *c {
            Contribution::Selected { share } => Some(share),
            Contribution::Excluded => None,
            ref other => panic!("{other:?}"),
        }).collect();
        prop_assert_eq!(shares.len(), m);
        prop_assert!(shares.iter().all(|&s| s == 1.0 / m as f64));
        prop_assert!(near(shares.iter().sum(), 1.0, 1e-12));
    }

    /// Median and trimmed mean, with many ties (values from a small set): shares in [0, 1],
    /// summing to the values read per coordinate, and equal to a brute-force count.
    #[test]
    fn coordinatewise_shares_are_the_kept_values(
        rows in prop::collection::vec(
            prop::collection::vec(prop::sample::select(vec![-1.0f32, -0.0, 0.0, 0.5, 2.0]), 6),
            1..10,
        ),
        k in 0usize..4,
        seed in any::<u64>(),
    ) {
        let u = updates_from(&rows, seed);
        let n = u.len();
        let mut median = CoordinateMedian::new();
        median.aggregate(&u).unwrap();
        let used = if n % 2 == 1 { n / 2..n / 2 + 1 } else { n / 2 - 1..n / 2 + 1 };
        let shares = kept_shares(&median.contributions());
        prop_assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)));
        prop_assert!(near(shares.iter().sum(), used.len() as f64, 1e-12));
        prop_assert_eq!(&shares, &brute_force_shares(&u, used));

        let mut trimmed = TrimmedMean::new(k);
        if n <= 2 * k {
            prop_assert!(trimmed.aggregate(&u).is_err());
            prop_assert!(trimmed.contributions().is_empty());
        } else {
            trimmed.aggregate(&u).unwrap();
            let shares = kept_shares(&trimmed.contributions());
            prop_assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)));
            prop_assert!(near(shares.iter().sum(), (n - 2 * k) as f64, 1e-12));
            prop_assert_eq!(&shares, &brute_force_shares(&u, k..n - k));
        }
    }
}
