//! An RFC 6962 / RFC 9162 Merkle tree with inclusion and consistency proofs.
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, interior node `SHA-256(0x01 || left || right)`, the tree
//! over `n` leaves split at the largest power of two below `n`. [`MerkleTree`] caches every
//! complete subtree, so a root or a proof at any past size costs `O(log n)` hashes; the
//! verification functions are free-standing so that a client holding only a checkpoint can use
//! them.

use cohort_core::{Hash32, sha256, sha256_parts};

/// Hash of a leaf's bytes: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash32 {
    sha256_parts(&[&[0u8], data])
}

/// Hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    sha256_parts(&[&[1u8], &left.0, &right.0])
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash32 {
    sha256(b"")
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes are out of range for a proof.
    #[error("proof parameters out of range: {0}")]
    OutOfRange(String),
    /// The proof has the wrong number of hashes for its parameters.
    #[error("proof has the wrong length: {0}")]
    WrongLength(String),
    /// The recomputed root differs from the expected one.
    #[error("root mismatch: proof gives {computed}, expected {expected}")]
    RootMismatch {
        /// Root computed from the proof.
        computed: Hash32,
        /// Root the verifier expected.
        expected: Hash32,
    },
}

/// An append-only Merkle tree holding every complete subtree hash in memory
/// (`32 * 2n` bytes for `n` leaves).
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[k][i]` is the hash of leaves `[i * 2^k, (i + 1) * 2^k)`.
    levels: Vec<Vec<Hash32>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf given its leaf hash (see [`leaf_hash`]).
    pub fn push_hash(&mut self, h: Hash32) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(h);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// Drops every leaf past `size` (used to roll back an uncommitted batch).
    pub fn truncate(&mut self, size: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> k) as usize);
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash32> {
        self.levels.first()?.get(index as usize).copied()
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash32, ProofError> {
        if size > self.len() {
            return Err(ProofError::OutOfRange(format!(
                "size {size} exceeds tree size {}",
                self.len()
            )));
        }
        Ok(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash32 {
        if self.is_empty() {
            empty_root()
        } else {
            self.subtree(0, self.len())
        }
    }

    /// MTH(D[lo..hi]) for a range whose left edges follow the RFC's splits.
    fn subtree(&self, lo: u64, hi: u64) -> Hash32 {
        let n = hi - lo;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            return self.levels[n.trailing_zeros() as usize][(lo / n) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(lo, lo + k), &self.subtree(lo + k, hi))
    }

    /// Inclusion proof (audit path) of leaf `index` in the tree of the first `size` leaves,
    /// ordered from the leaf upwards.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, ProofError> {
        if size > self.len() || index >= size {
            return Err(ProofError::OutOfRange(format!(
                "leaf {index} in tree of size {size} (have {})",
                self.len()
            )));
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Ok(path)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash32>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.subtree(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.subtree(lo, lo + k));
        }
    }

    /// Consistency proof between the trees of the first `old` and the first `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash32>, ProofError> {
        if old > new || new > self.len() {
            return Err(ProofError::OutOfRange(format!(
                "consistency {old} -> {new} (have {})",
                self.len()
            )));
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out);
        }
        Ok(out)
    }

    fn subproof(&self, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash32>) {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(self.subtree(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, complete, out);
            out.push(self.subtree(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.subtree(lo, lo + k));
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Verifies that `leaf` (a leaf hash) sits at `index` of the tree of `size` leaves with `root`
/// (RFC 9162, section 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!(
            "leaf {index} in tree of size {size}"
        )));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength(format!(
                "{} hashes is too many for leaf {index} of {size}",
                proof.len()
            )));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength(format!(
            "{} hashes is too few for leaf {index} of {size}",
            proof.len()
        )));
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// Verifies that the tree of `new_size` leaves with `new_root` extends the tree of `old_size`
/// leaves with `old_root` (RFC 9162, section 2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash32,
    new_root: &Hash32,
    proof: &[Hash32],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OutOfRange(format!(
            "old size {old_size} > new size {new_size}"
        )));
    }
    if old_size == new_size || old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength("expected an empty proof".into()));
        }
        if old_size == new_size && old_root != new_root {
            return Err(ProofError::RootMismatch {
                computed: *new_root,
                expected: *old_root,
            });
        }
        return Ok(());
    }
    let mut path: Vec<Hash32> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength("empty proof".into()));
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength("too many hashes".into()));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength("too few hashes".into()));
    }
    if fr != *old_root {
        return Err(ProofError::RootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC's recursive definition, as the oracle.
    fn naive_root(leaves: &[Hash32]) -> Hash32 {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> (MerkleTree, Vec<Hash32>) {
        let mut t = MerkleTree::new();
        let leaves: Vec<Hash32> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for l in &leaves {
            t.push_hash(*l);
        }
        (t, leaves)
    }

    #[test]
    fn known_answer_single_and_empty() {
        // RFC 6962 test vectors (certificate-transparency-go testdata): empty root and the root
        // of the one-leaf tree over the empty leaf.
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut t = MerkleTree::new();
        t.push_hash(leaf_hash(b""));
        assert_eq!(
            t.root().to_hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn roots_match_definition_at_every_size() {
        let (t, leaves) = tree(70);
        for n in 0..=70u64 {
            assert_eq!(
                t.root_at(n).unwrap(),
                naive_root(&leaves[..n as usize]),
                "n={n}"
            );
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies() {
        let (t, leaves) = tree(40);
        for n in 1..=40u64 {
            let root = t.root_at(n).unwrap();
            for i in 0..n {
                let p = t.inclusion_proof(i, n).unwrap();
                verify_inclusion(&leaves[i as usize], i, n, &p, &root).unwrap();
                if i + 1 < n {
                    assert!(verify_inclusion(&leaves[i as usize], i + 1, n, &p, &root).is_err());
                }
            }
            for m in 0..=n {
                let p = t.consistency_proof(m, n).unwrap();
                verify_consistency(m, n, &t.root_at(m).unwrap(), &root, &p).unwrap();
            }
        }
    }

    #[test]
    fn truncate_rolls_back() {
        let (mut t, _) = tree(37);
        let r20 = t.root_at(20).unwrap();
        t.truncate(20);
        assert_eq!(t.len(), 20);
        assert_eq!(t.root(), r20);
        t.push_hash(leaf_hash(b"x"));
        assert_eq!(t.len(), 21);
    }

    proptest! {
        #[test]
        fn tampered_proofs_fail(n in 2u64..200, i in 0u64..200, which in 0usize..32, bit in 0u8..8) {
            let i = i % n;
            let (t, leaves) = tree(n);
            let root = t.root();
            let mut p = t.inclusion_proof(i, n).unwrap();
            let j = which % p.len();
            p[j].0[bit as usize % 32] ^= 1 << bit;
            prop_assert!(verify_inclusion(&leaves[i as usize], i, n, &p, &root).is_err());
            let m = 1 + i % (n - 1);
            let mut c = t.consistency_proof(m, n).unwrap();
            if !c.is_empty() {
                let j = which % c.len();
                c[j].0[0] ^= 1 << bit;
                prop_assert!(verify_consistency(m, n, &t.root_at(m).unwrap(), &root, &c).is_err());
            }
        }
    }
}
