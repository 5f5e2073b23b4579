//! Signed checkpoints in the C2SP `tlog-checkpoint` + `signed-note` formats.
//!
//! ```text
//! cohort.local/demo
//! 42
//! qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=
//!
//! — cohort.local/demo Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
//! ```
//!
//! The body is the origin, the tree size and the base64 root hash, one per line. Each signature
//! line is an em dash, the signer's name and base64 of `key_id (4 bytes) || ed25519 signature`,
//! where `key_id = SHA-256(name || "\n" || 0x01 || public_key)[..4]`. Witnesses can add their
//! own signature lines to the same note (cosigning), which is how a split view is noticed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cohort_core::{Hash32, Identity, PublicKey, sha256_parts};

const ED25519_ALG: u8 = 0x01;

/// Why a checkpoint did not parse or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a well-formed signed note.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature line by the expected key verifies.
    #[error("checkpoint has no valid signature by {0}")]
    BadSignature(String),
}

/// A log's signed statement of its size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, e.g. `cohort.local/demo`.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root over the first `size` entries.
    pub root: Hash32,
}

impl Checkpoint {
    /// The note body (what is signed), ending with a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    /// Signs the checkpoint as `signer` (named `self.origin`), giving the note text.
    pub fn sign(&self, signer: &Identity) -> String {
        let body = self.body();
        let sig = signer.sign(body.as_bytes());
        let mut blob = key_id(&self.origin, &signer.public_key()).to_vec();
        blob.extend_from_slice(&sig);
        format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }

    /// Adds a cosignature line by `witness` (named `name`) to an existing note.
    pub fn cosign(note: &str, name: &str, witness: &Identity) -> Result<String, CheckpointError> {
        let (body, _) = split_note(note)?;
        let sig = witness.sign(body.as_bytes());
        let mut blob = key_id(name, &witness.public_key()).to_vec();
        blob.extend_from_slice(&sig);
        Ok(format!("{note}\u{2014} {name} {}\n", B64.encode(blob)))
    }

    /// Parses a note and checks that `name` with key `public_key` signed it.
    pub fn verify(note: &str, name: &str, public_key: &PublicKey) -> Result<Self, CheckpointError> {
        let (body, sigs) = split_note(note)?;
        let cp = Self::parse_body(body)?;
        let id = key_id(name, public_key);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(CheckpointError::Malformed(format!(
                    "signature line without em dash: {line:?}"
                )));
            };
            let Some((signer, b64)) = rest.split_once(' ') else {
                return Err(CheckpointError::Malformed(format!(
                    "bad signature line {line:?}"
                )));
            };
            if signer != name {
                continue;
            }
            let blob = B64
                .decode(b64)
                .map_err(|e| CheckpointError::Malformed(format!("signature base64: {e}")))?;
            if blob.len() != 68 || blob[..4] != id {
                continue;
            }
            let sig: [u8; 64] = blob[4..]
                .try_into()
                .map_err(|_| CheckpointError::Malformed("signature length".into()))?;
            if Identity::verify(public_key, body.as_bytes(), &sig).is_ok() {
                return Ok(cp);
            }
        }
        Err(CheckpointError::BadSignature(name.to_owned()))
    }

    fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| CheckpointError::Malformed("missing origin line".into()))?;
        let size = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| CheckpointError::Malformed("missing or bad size line".into()))?;
        let root = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| CheckpointError::Malformed("missing or bad root line".into()))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root: Hash32(root),
        })
    }
}

/// The 4-byte key id of an ed25519 note key.
pub fn key_id(name: &str, pk: &PublicKey) -> [u8; 4] {
    let h = sha256_parts(&[name.as_bytes(), b"\n", &[ED25519_ALG], pk]);
    [h.0[0], h.0[1], h.0[2], h.0[3]]
}

/// The verifier key string `name+keyid+base64(0x01 || pk)` that clients configure.
pub fn verifier_key(name: &str, pk: &PublicKey) -> String {
    let mut k = vec![ED25519_ALG];
    k.extend_from_slice(pk);
    format!("{name}+{}+{}", hex::encode(key_id(name, pk)), B64.encode(k))
}

fn split_note(note: &str) -> Result<(&str, &str), CheckpointError> {
    let idx = note
        .find("\n\n")
        .ok_or_else(|| CheckpointError::Malformed("no blank line before signatures".into()))?;
    Ok((&note[..=idx], &note[idx + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_cosign() {
        let op = Identity::from_seed(1, "op");
        let cp = Checkpoint {
            origin: "cohort.local/test".into(),
            size: 42,
            root: Hash32([7; 32]),
        };
        let note = cp.sign(&op);
        assert_eq!(
            Checkpoint::verify(&note, "cohort.local/test", &op.public_key()).unwrap(),
            cp
        );
        let w = Identity::from_seed(1, "witness");
        let cosigned = Checkpoint::cosign(&note, "witness.example", &w).unwrap();
        Checkpoint::verify(&cosigned, "witness.example", &w.public_key()).unwrap();
        Checkpoint::verify(&cosigned, "cohort.local/test", &op.public_key()).unwrap();
        // A wrong key or an edited body fails.
        assert!(Checkpoint::verify(&note, "cohort.local/test", &w.public_key()).is_err());
        let edited = note.replacen("42", "43", 1);
        assert!(Checkpoint::verify(&edited, "cohort.local/test", &op.public_key()).is_err());
    }

    #[test]
    fn verifier_key_shape() {
        let op = Identity::from_seed(1, "op");
        let k = verifier_key("a/b", &op.public_key());
        let mut parts = k.splitn(3, '+');
        assert_eq!(parts.next(), Some("a/b"));
        assert_eq!(parts.next().map(str::len), Some(8));
        assert_eq!(parts.next().map(str::len), Some(44));
    }
}
