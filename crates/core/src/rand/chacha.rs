//! The simulator's stream: ChaCha8 as `rand_chacha` implements it.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// ChaCha8 (8 rounds; Bernstein's ChaCha with `rand_chacha`'s seeding and word order), the
/// random source of the collaborative-learning simulator (`cohort-sim`).
///
/// It implements `rand`'s [`RngCore`], so `rand::Rng`'s methods, `rand::seq` and `rand_distr`
/// draw from it exactly as from `rand_chacha::ChaCha8Rng` (this type only forwards): the
/// simulator's figures, which reproduce the original study's, stay the same. The stream is
/// fixed by `rand_chacha` 0.9 (locked in the workspace); the known-answer tests below fail if
/// an upgrade changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaCha8(ChaCha8Rng);

impl ChaCha8 {
    /// The stream for `seed` (`rand`'s `SeedableRng::seed_from_u64`, which expands the seed
    /// with PCG32).
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl RngCore for ChaCha8 {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers, taken from `rand_chacha::ChaCha8Rng::seed_from_u64` (rand_chacha 0.9.0)
    /// before the stream moved here: part of the replay contract of `cohort sim`.
    #[test]
    fn stream_is_fixed() {
        let mut r = ChaCha8::new(1);
        let a: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            a,
            [
                7_424_550_030_962_593_201,
                1_482_817_706_323_250_795,
                11_004_592_982_271_133_285
            ]
        );
        let b: Vec<u32> = (0..2).map(|_| r.next_u32()).collect();
        assert_eq!(b, [1_661_472_066, 941_991_900]);
        let mut bytes = [0u8; 12];
        r.fill_bytes(&mut bytes);
        assert_eq!(hex::encode(bytes), "e5cb1bd553f29f485820e2e9");
        assert_ne!(ChaCha8::new(2).next_u64(), a[0]);
    }

    #[test]
    fn clones_continue_the_same_stream() {
        let mut a = ChaCha8::new(9);
        a.next_u32();
        let mut b = a.clone();
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
