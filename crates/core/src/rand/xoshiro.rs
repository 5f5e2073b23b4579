//! The protocol's stream: xoshiro256** seeded through SplitMix64.
//!
//! External RNG crates may change their streams between versions; this one is written down
//! here, and will not.

/// xoshiro256** (Blackman and Vigna), seeded with SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// A generator for a named sub-stream of `seed` (e.g. one per client), independent of the
    /// order in which streams are created.
    pub fn derive(seed: u64, label: &str) -> Self {
        let h = crate::sha256_parts(&[b"cohort-rng-v1", &seed.to_be_bytes(), label.as_bytes()]);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.0[..8]);
        Self::new(u64::from_be_bytes(b))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang (shape > 0).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// A sample from the symmetric Dirichlet(alpha) over `k` outcomes.
    pub fn dirichlet(&mut self, alpha: f64, k: usize) -> Vec<f64> {
        let g: Vec<f64> = (0..k).map(|_| self.gamma(alpha)).collect();
        let s: f64 = g.iter().sum();
        g.into_iter().map(|x| x / s).collect()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_fixed() {
        // The first outputs for seed 0 are part of the replay contract: never change them.
        let mut r = Rng::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                11091344671253066420,
                13793997310169335082,
                1900383378846508768
            ]
        );
        assert_ne!(Rng::new(1).next_u64(), got[0]);
        assert_ne!(
            Rng::derive(0, "a").next_u64(),
            Rng::derive(0, "b").next_u64()
        );
    }

    /// Known answers, taken from `cohort_core::rng::Rng` before it moved into this module:
    /// every method the protocol draws with.
    #[test]
    fn methods_are_fixed() {
        let mut r = Rng::new(42);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                1_546_998_764_402_558_742,
                6_990_951_692_964_543_102,
                12_544_586_762_248_559_009,
                17_057_574_109_182_124_193
            ]
        );
        let mut r = Rng::derive(7, "cohort/round/3");
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                8_565_458_701_659_937_591,
                6_679_787_988_265_087_608,
                6_108_781_251_514_724_544,
                3_748_482_800_140_094_578
            ]
        );
        let mut r = Rng::new(1);
        let f: Vec<u64> = (0..3).map(|_| r.f64().to_bits()).collect();
        assert_eq!(
            f,
            [
                4_604_506_576_557_045_986,
                4_602_862_895_880_529_609,
                4_603_346_303_978_636_616
            ]
        );
        let mut r = Rng::new(2);
        let b: Vec<u64> = (0..8).map(|_| r.below(10)).collect();
        assert_eq!(b, [5, 2, 9, 3, 8, 2, 6, 7]);
        let mut r = Rng::new(3);
        let n: Vec<u64> = (0..3).map(|_| r.normal().to_bits()).collect();
        assert_eq!(
            n,
            [
                13_830_303_216_508_016_819,
                13_827_724_817_865_821_426,
                13_829_191_273_123_732_383
            ]
        );
        let mut r = Rng::new(4);
        assert_eq!(r.gamma(0.5).to_bits(), 4_586_869_651_740_164_250);
        assert_eq!(r.gamma(2.0).to_bits(), 4_616_880_805_879_456_063);
        let d: Vec<u64> = Rng::new(4)
            .dirichlet(0.3, 4)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(
            d,
            [
                4_576_647_619_352_193_121,
                4_601_646_068_992_875_296,
                4_601_665_988_442_775_333,
                4_592_159_994_605_345_238
            ]
        );
        let mut v: Vec<u32> = (0..10).collect();
        Rng::new(5).shuffle(&mut v);
        assert_eq!(v, [4, 2, 9, 3, 7, 1, 8, 6, 0, 5]);
    }

    #[test]
    fn moments_are_right() {
        let mut r = Rng::new(42);
        let n = 200_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let x = r.normal();
            s += x;
            s2 += x * x;
        }
        assert!((s / n as f64).abs() < 0.01);
        assert!((s2 / n as f64 - 1.0).abs() < 0.02);
        let g: f64 = (0..n).map(|_| r.gamma(0.5)).sum::<f64>() / n as f64;
        assert!((g - 0.5).abs() < 0.01, "gamma mean {g}");
        let d = r.dirichlet(0.3, 5);
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let mut hist = [0u32; 3];
        for _ in 0..30_000 {
            hist[r.below(3) as usize] += 1;
        }
        assert!(
            hist.iter().all(|&h| (9_500..10_500).contains(&h)),
            "{hist:?}"
        );
    }
}
