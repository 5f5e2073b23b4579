//! The cohort of a round: which clients of a roster may submit, sampled from a 32-byte seed
//! (the coordinator's beacon on the ledger) the same way the contract samples it, so the
//! coordinator's plan and the contract's check agree bit for bit.

use alloy_primitives::{B256, U256, keccak256};

/// The roster indices of `min(k, n)` clients out of `n`, ascending, sampled from `seed` by
/// Floyd's algorithm exactly as `CohortRounds._sampleCohort` does: for `j` from `n - k` to
/// `n - 1`, `t = uint256(keccak256(abi.encode(seed, j))) mod (j + 1)`; take `t`, or `j` when
/// `t` is already taken. Every `k`-subset is equally likely; `O(k log k)` work.
pub fn sample_cohort(seed: B256, n: u32, k: u32) -> Vec<u32> {
    let k = k.min(n);
    let mut taken = std::collections::BTreeSet::new();
    for j in n - k..n {
        let mut word = [0u8; 64];
        word[..32].copy_from_slice(seed.as_slice());
        word[32..].copy_from_slice(&U256::from(j).to_be_bytes::<32>());
        let draw = U256::from_be_bytes(keccak256(word).0) % U256::from(u64::from(j) + 1);
        // < j + 1 <= u32::MAX + 1, so it fits.
        let t = draw.to::<u32>();
        taken.insert(if taken.contains(&t) { j } else { t });
    }
    taken.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_bounds_and_distinctness() {
        let seed = keccak256(b"cohort");
        for (n, k) in [
            (0, 0),
            (0, 5),
            (1, 1),
            (5, 0),
            (10, 3),
            (10, 10),
            (10, 25),
            (1000, 100),
        ] {
            let c = sample_cohort(seed, n, k);
            assert_eq!(c.len(), k.min(n) as usize, "n {n} k {k}");
            assert!(
                c.windows(2).all(|w| w[0] < w[1]),
                "ascending, distinct: {c:?}"
            );
            assert!(c.iter().all(|&i| i < n));
        }
        assert_eq!(sample_cohort(seed, 10, 10), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_seed_decides() {
        let a = sample_cohort(keccak256(b"a"), 100, 10);
        assert_eq!(a, sample_cohort(keccak256(b"a"), 100, 10));
        assert_ne!(a, sample_cohort(keccak256(b"b"), 100, 10));
    }

    #[test]
    fn every_client_is_about_equally_likely() {
        // 4,000 cohorts of 3 out of 12: each index expected 1,000 times; a 6-sigma band.
        let mut counts = [0u32; 12];
        for s in 0u32..4000 {
            for i in sample_cohort(keccak256(s.to_be_bytes()), 12, 3) {
                counts[i as usize] += 1;
            }
        }
        let sd = (4000.0f64 * 0.25 * 0.75).sqrt();
        for (i, &c) in counts.iter().enumerate() {
            assert!(
                (f64::from(c) - 1000.0).abs() < 6.0 * sd,
                "index {i}: {c} of 4000 draws"
            );
        }
    }

    #[test]
    fn known_answer() {
        // Pinned: changing the algorithm changes every run's cohorts and ledger roots.
        assert_eq!(sample_cohort(B256::ZERO, 20, 5), vec![0, 1, 5, 7, 8]);
    }
}
