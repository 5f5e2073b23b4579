//! Properties of the aggregation strategies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cohort_core::Score;
use cohort_fl::ClientUpdate;
use cohort_fl::strategy::{
    Clipped, CoordinateMedian, FedAvg, FedOpt, Krum, MedianClipped, ScoreWeighted, Strategy,
    TrimmedMean,
};
use proptest::prelude::*;

const D: usize = 6;

fn updates_from(rows: &[Vec<f32>]) -> Vec<ClientUpdate> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            ClientUpdate::new(i as u32, 1, r.clone(), 1 + (i as u64 * 7) % 5)
                .with_score(Score::from_f64(0.01 * (i % 4) as f64))
        })
        .collect()
}

fn all() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(FedAvg::new()),
        Box::new(ScoreWeighted::by_samples()),
        Box::new(CoordinateMedian::new()),
        Box::new(TrimmedMean::new(2)),
        Box::new(Krum::new(2)),
        Box::new(Krum::multi(2, 3)),
        Box::new(Clipped::new(FedAvg::new(), 1.0)),
        Box::new(FedOpt::adam(TrimmedMean::new(1), 0.1)),
    ]
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs().max(y.abs())))
}

fn dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

proptest! {
    /// Shuffling the clients does not change any aggregate.
    #[test]
    fn permutation_invariant(
        rows in prop::collection::vec(prop::collection::vec(-5.0f32..5.0, D), 7..12),
        perm_seed in any::<u64>(),
    ) {
        let ups = updates_from(&rows);
        let mut shuffled = ups.clone();
        let mut x = perm_seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for (mut a, mut b) in all().into_iter().zip(all()) {
            let ra = a.aggregate(&ups).unwrap();
            let rb = b.aggregate(&shuffled).unwrap();
            prop_assert!(close(&ra, &rb), "{}: {ra:?} vs {rb:?}", a.name());
        }
    }

    /// With f arbitrary clients among n > 2f + 2, median, trimmed mean (k = f) and Krum stay
    /// within the honest clients' range, while the plain mean is dragged away.
    #[test]
    fn robust_strategies_are_bounded_under_f_outliers(
        honest in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, D), 7..11),
        f in 1usize..3,
        attack in prop::collection::vec(prop::sample::select(vec![-1e4f32, 1e4, 3e3, -7e3]), D),
    ) {
        let mut rows = honest.clone();
        for _ in 0..f {
            rows.push(attack.clone());
        }
        let ups = updates_from(&rows);
        let lo: Vec<f32> = (0..D).map(|j| honest.iter().map(|r| r[j]).fold(f32::INFINITY, f32::min)).collect();
        let hi: Vec<f32> = (0..D).map(|j| honest.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max)).collect();
        let within = |v: &[f32]| v.iter().enumerate().all(|(j, &x)| x >= lo[j] - 1e-5 && x <= hi[j] + 1e-5);
        for mut s in [Box::new(CoordinateMedian::new()) as Box<dyn Strategy>, Box::new(TrimmedMean::new(f)), Box::new(Krum::new(f)), Box::new(Krum::multi(f, 2))] {
            let out = s.aggregate(&ups).unwrap();
            prop_assert!(within(&out), "{} left the honest range: {out:?}", s.name());
        }
        let mean = FedAvg::new().aggregate(&ups).unwrap();
        prop_assert!(!within(&mean), "the attack should move plain FedAvg: {mean:?}");
    }

    /// Clipping bounds the aggregate's norm for any convex inner strategy.
    #[test]
    fn clipping_bounds_the_norm(
        rows in prop::collection::vec(prop::collection::vec(-100.0f32..100.0, D), 1..10),
        bound in 0.1f64..10.0,
    ) {
        let ups = updates_from(&rows);
        let out = Clipped::new(FedAvg::new(), bound).aggregate(&ups).unwrap();
        prop_assert!(dist(&out, &[0.0; D]) <= bound * (1.0 + 1e-5));
    }
}

#[test]
fn fedavg_weights_by_samples_and_scores_ignore_negative() {
    let a = ClientUpdate::new(0, 1, vec![1.0, 0.0], 3).with_score(Score::from_f64(0.2));
    let b = ClientUpdate::new(1, 1, vec![0.0, 1.0], 1).with_score(Score::from_f64(-0.5));
    let c = ClientUpdate::new(2, 1, vec![0.0, 0.0], 4).with_score(Score::from_f64(0.2));
    let avg = FedAvg::new().aggregate(&[a.clone(), b.clone()]).unwrap();
    assert!(close(&avg, &[0.75, 0.25]));
    let sw = ScoreWeighted::new()
        .aggregate(&[a.clone(), b.clone(), c])
        .unwrap();
    assert!(close(&sw, &[0.5, 0.0]), "{sw:?}");
    assert!(ScoreWeighted::new().aggregate(&[b]).is_err());
}

#[test]
fn krum_needs_enough_clients_and_picks_the_cluster() {
    let mut rows = vec![
        vec![0.0f32, 0.0],
        vec![0.1, 0.0],
        vec![0.0, 0.1],
        vec![0.1, 0.1],
        vec![0.05, 0.05],
    ];
    rows.push(vec![50.0, 50.0]);
    let ups = updates_from(&rows);
    let out = Krum::new(1).aggregate(&ups).unwrap();
    assert!(dist(&out, &[0.05, 0.05]) < 0.1);
    assert!(Krum::new(2).aggregate(&ups[..5]).is_err());
    assert!(TrimmedMean::new(3).aggregate(&ups).is_err());
}

#[test]
fn server_optimizers_step_along_the_pseudo_gradient() {
    let ups = updates_from(&[vec![1.0, -2.0, 0.0], vec![1.0, -2.0, 0.0]]);
    for mut s in [
        FedOpt::adam(FedAvg::new(), 0.1),
        FedOpt::yogi(FedAvg::new(), 0.1),
    ] {
        let mut last = vec![0.0f32; 3];
        for _ in 0..3 {
            last = s.aggregate(&ups).unwrap();
        }
        assert!(
            last[0] > 0.0 && last[1] < 0.0 && last[2] == 0.0,
            "{}: {last:?}",
            s.name()
        );
        // Adaptive: the step's size does not depend on the gradient's scale (1 vs -2).
        assert!(
            (last[0].abs() - last[1].abs()).abs() < 0.01 * last[0].abs(),
            "{last:?}"
        );
        assert!(last[0] < 0.2, "steps stay near lr: {last:?}");
    }
}

#[test]
fn shape_mismatch_and_bad_config_are_errors() {
    let a = ClientUpdate::new(0, 1, vec![1.0, 0.0], 3);
    let b = ClientUpdate::new(1, 1, vec![0.0], 1);
    assert!(FedAvg::new().aggregate(&[a.clone(), b]).is_err());
    assert!(Clipped::new(FedAvg::new(), -1.0).aggregate(&[a]).is_err());
    assert!(FedAvg::new().aggregate(&[]).is_err());
}

#[test]
fn median_clipping_bounds_boosted_updates_by_an_honest_norm() {
    // 7 honest updates of norm 1 to 2, 3 boosted ones (model replacement) of norm 100.
    let mut rows: Vec<Vec<f32>> = (0..7)
        .map(|i| vec![1.0 + i as f32 / 7.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        .collect();
    rows.extend((0..3).map(|_| vec![0.0, 100.0, 0.0, 0.0, 0.0, 0.0]));
    let ups = updates_from(&rows);
    let norm = |d: &[f32]| d.iter().map(|x| x * x).sum::<f32>().sqrt();
    let plain = FedAvg::new().aggregate(&ups).unwrap();
    let clipped = MedianClipped::new(FedAvg::new()).aggregate(&ups).unwrap();
    assert!(norm(&plain) > 20.0, "{plain:?}");
    assert!(norm(&clipped) <= 2.0, "{clipped:?}");
    // Nothing to clip when every update has the same norm: the inner strategy's result.
    let same = updates_from(&[
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
    ]);
    assert_eq!(
        MedianClipped::new(FedAvg::new()).aggregate(&same).unwrap(),
        FedAvg::new().aggregate(&same).unwrap()
    );
}

/// Regression: on IMDB, a boosted update (scaled model replacement, x10) that the validators
/// accepted with a high score (a longer step in a sensible direction cuts their loss more)
/// was clipped to an honest length but kept the weight its boosted length had earned, and
/// dominated the score-weighted mean. A clipped update's score is now scaled with it.
#[test]
fn clipping_scales_the_score_so_a_boosted_update_weighs_as_an_honest_one() {
    // Four honest updates along x of norm 1, score 0.01; one boosted one along y of norm 10,
    // score 0.1 (ten times the honest score, as its ten-fold step earned).
    let mut ups: Vec<ClientUpdate> = (0..4)
        .map(|i| {
            ClientUpdate::new(i, 1, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 10)
                .with_score(Score::from_f64(0.01))
        })
        .collect();
    ups.push(
        ClientUpdate::new(4, 1, vec![0.0, 10.0, 0.0, 0.0, 0.0, 0.0], 10)
            .with_score(Score::from_f64(0.1)),
    );
    // Median clipping, then score weighting: the boosted update, clipped to norm 1 with
    // score 0.01, counts as one of five equal updates.
    let out = MedianClipped::new(ScoreWeighted::by_samples())
        .aggregate(&ups)
        .unwrap();
    assert!((out[0] - 0.8).abs() < 1e-6, "{out:?}");
    assert!((out[1] - 0.2).abs() < 1e-6, "{out:?}");
    // A fixed bound does the same.
    let fixed = Clipped::new(ScoreWeighted::by_samples(), 1.0)
        .aggregate(&ups)
        .unwrap();
    assert_eq!(fixed, out);
    // Unscaled, the clipped boosted update would have weighed 0.1 / 0.14: y = 0.71.
    let plain = ScoreWeighted::by_samples().aggregate(&ups).unwrap();
    assert!(plain[1] > 7.0, "{plain:?}");
}

/// Zero updates (free-riders returning the global model) have no say in the median bound: if
/// they did, a round where most accepted updates are zero would clip everything to 0.
#[test]
fn median_clipping_ignores_zero_updates() {
    let mut ups: Vec<ClientUpdate> = (0..3)
        .map(|i| ClientUpdate::new(i, 1, vec![0.0; D], 10).with_score(Score::from_f64(0.0)))
        .collect();
    ups.push(
        ClientUpdate::new(3, 1, vec![2.0, 0.0, 0.0, 0.0, 0.0, 0.0], 10)
            .with_score(Score::from_f64(0.02)),
    );
    ups.push(
        ClientUpdate::new(4, 1, vec![0.0, 4.0, 0.0, 0.0, 0.0, 0.0], 10)
            .with_score(Score::from_f64(0.02)),
    );
    // The median of the non-zero norms (2 and 4) is 2: the second update is clipped to norm 2
    // (and its score halved), the first kept; score weighting gives the free-riders weight 0.
    let out = MedianClipped::new(ScoreWeighted::by_samples())
        .aggregate(&ups)
        .unwrap();
    let w = 0.02 / (0.02 + 0.01);
    assert!((f64::from(out[0]) - w * 2.0).abs() < 1e-5, "{out:?}");
    assert!(
        (f64::from(out[1]) - (1.0 - w) * 2.0).abs() < 1e-5,
        "{out:?}"
    );
}

proptest! {
    /// A strategy restored from another's saved state aggregates as that one would have, bit
    /// for bit: what a resumed run relies on.
    #[test]
    fn a_restored_state_aggregates_exactly_as_the_saved_one(
        rounds in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(-1.0f32..1.0, D), 3..8),
            2..5,
        )
    ) {
        let make = || -> Vec<Box<dyn Strategy>> {
            vec![
                Box::new(MedianClipped::new(FedOpt::adam(Clipped::new(FedAvg::new(), 0.5), 0.1))),
                Box::new(FedOpt::yogi(TrimmedMean::new(1), 0.05)),
                Box::new(ScoreWeighted::by_samples()),
            ]
        };
        for (mut a, mut b) in make().into_iter().zip(make()) {
            let (last, first) = rounds.split_last().unwrap();
            for r in first {
                a.aggregate(&updates_from(r)).unwrap();
            }
            b.restore(&a.state()).unwrap();
            let x = a.aggregate(&updates_from(last)).unwrap();
            let y = b.aggregate(&updates_from(last)).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&x), bits(&y), "{}", a.name());
        }
    }
}

#[test]
fn a_state_of_another_shape_is_refused() {
    let mut stateless = FedAvg::new();
    assert!(stateless.restore(&[vec![1.0]]).is_err());
    let mut adam = FedOpt::adam(FedAvg::new(), 0.1);
    assert!(adam.restore(&[vec![1.0]]).is_err());
    assert!(adam.restore(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    adam.restore(&[vec![0.5], vec![0.25]]).unwrap();
    assert_eq!(adam.state(), vec![vec![0.5], vec![0.25]]);
}

/// Regression: a huge trim count or Byzantine bound overflowed `2k + 1` / `2f + 3` (a panic in
/// debug builds) instead of being refused for want of updates.
#[test]
fn huge_trim_and_byzantine_counts_are_refused_not_overflowed() {
    let ups = updates_from(&[vec![1.0; D], vec![2.0; D], vec![3.0; D]]);
    for mut s in [
        Box::new(TrimmedMean::new(usize::MAX)) as Box<dyn Strategy>,
        Box::new(TrimmedMean::new(usize::MAX / 2 + 1)),
        Box::new(Krum::new(usize::MAX)),
        Box::new(Krum::multi(usize::MAX / 2, usize::MAX)),
    ] {
        let err = s.aggregate(&ups).unwrap_err().to_string();
        assert!(err.contains("got 3"), "{}: {err}", s.name());
        assert!(s.contributions().is_empty());
    }
}
