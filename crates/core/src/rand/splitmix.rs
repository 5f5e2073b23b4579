//! The model engine's stream: SplitMix64, a counter-based generator.

/// The increment of SplitMix64's counter (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 (Steele, Lea and Flood): tiny, fast and good enough for initialisation,
/// sampling and dropout, and the random source of `cohort-model`.
///
/// Its state is a counter advanced by a constant, and each output is a hash of the counter, so
/// draw number `i` is computable without the `i` before it ([`SplitMix64::draw_at`]): a
/// dropout mask computed in parallel chunks is the same on any number of threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for a named stream derived from `seed` (the seed XOR the FNV-1a hash of the
    /// name, one draw discarded), so that adding a stream does not shift the others.
    pub fn derive(seed: u64, stream: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stream.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Self::new(seed ^ h);
        r.next_u64();
        r
    }

    /// The generator's whole state (to save and resume a run).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// A generator continuing from a saved [`SplitMix64::state`].
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Draw number `i` (from 0) of the stream from here, without advancing it: what the
    /// `i + 1`-th call of [`SplitMix64::next_u64`] would return, in constant time.
    pub fn draw_at(&self, i: u64) -> u64 {
        Self::from_state(self.state.wrapping_add(i.wrapping_mul(GOLDEN))).next_u64()
    }

    /// Draw number `i` as a uniform in [0, 1), like [`SplitMix64::uniform`].
    pub fn uniform_at(&self, i: u64) -> f64 {
        to_unit(self.draw_at(i))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        to_unit(self.next_u64())
    }

    /// Uniform integer in [0, n) (Lemire's multiply-shift); `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` normal samples with standard deviation `std`, as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

/// The top 53 bits as a uniform in [0, 1).
fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(mut r: SplitMix64, n: usize) -> Vec<u64> {
        (0..n).map(|_| r.next_u64()).collect()
    }

    /// Known answers, taken from `cohort_model::rng::Rng` before the stream moved here: part
    /// of the replay contract (model initialisation, batches, dropout, generation).
    #[test]
    fn stream_is_fixed() {
        assert_eq!(
            draws(SplitMix64::new(0), 3),
            [
                16_294_208_416_658_607_535,
                7_960_286_522_194_355_700,
                487_617_019_471_545_679
            ]
        );
        let d = SplitMix64::derive(7, "init");
        assert_eq!(d.state(), 10_667_384_292_717_358_633);
        assert_eq!(
            draws(d, 4),
            [
                9_002_633_902_848_153_030,
                13_174_651_920_047_412_771,
                15_358_314_894_761_765_129,
                2_024_555_262_626_833_534
            ]
        );
        let mut r = SplitMix64::new(1);
        let u: Vec<u64> = (0..3).map(|_| r.uniform().to_bits()).collect();
        assert_eq!(
            u,
            [
                4_603_278_352_542_933_067,
                4_604_892_624_433_492_445,
                4_606_921_234_823_734_858
            ]
        );
        let mut r = SplitMix64::new(2);
        let b: Vec<usize> = (0..8).map(|_| r.below(7)).collect();
        assert_eq!(b, [4, 5, 4, 5, 2, 2, 5, 5]);
        let mut r = SplitMix64::new(3);
        let n: Vec<u64> = (0..3).map(|_| r.normal().to_bits()).collect();
        assert_eq!(
            n,
            [
                13_827_321_335_619_339_498,
                4_606_168_936_718_959_108,
                13_831_215_939_830_124_813
            ]
        );
        let v: Vec<u32> = SplitMix64::new(4)
            .normal_vec(3, 0.02)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(v, [1_017_493_150, 3_157_546_761, 3_166_639_544]);
    }

    #[test]
    fn draw_at_is_the_sequential_stream() {
        let r = SplitMix64::derive(11, "model.layers.0.self_attn.q_proj");
        let seq = draws(r.clone(), 64);
        for (i, &x) in seq.iter().enumerate() {
            assert_eq!(r.draw_at(i as u64), x, "draw {i}");
        }
        let mut s = r.clone();
        for i in 0..64 {
            assert_eq!(
                r.uniform_at(i).to_bits(),
                s.uniform().to_bits(),
                "uniform {i}"
            );
        }
        // Counter-based: no draw moves the generator it is computed from.
        assert_eq!(r.draw_at(5), r.draw_at(5));
    }

    #[test]
    fn state_round_trips_and_streams_differ() {
        let mut a = SplitMix64::derive(7, "init");
        a.next_u64();
        let mut b = SplitMix64::from_state(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(
            SplitMix64::derive(7, "init").next_u64(),
            SplitMix64::derive(7, "data").next_u64()
        );
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = SplitMix64::new(1);
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        assert!((0..1000).all(|_| r.below(7) < 7));
    }
}
