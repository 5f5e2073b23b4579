//! Signed checkpoints: C2SP `tlog-checkpoint` bodies in C2SP `signed-note`s ([`crate::note`]).
//!
//! A checkpoint of the log `cohort.local/demo` at size 42, signed by its operator (the key of
//! `Identity::from_seed(1, "operator")`, whose verifier key is
//! `cohort.local/demo+d536f769+AZcEpuQw+oGQA86HyfenlwOzHXMg1jMtQzWAyfNCELLu`):
//!
//! ```
//! use cohort_core::{Hash32, Identity};
//! use cohort_ledger::Checkpoint;
//!
//! let note = "cohort.local/demo\n\
//!             42\n\
//!             BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n\
//!             \n\
//!             — cohort.local/demo 1Tb3adoA+0pjvtX8hOXoys5HiFj86yKDkKGTrrjpe81v/gGAbVtlP8pKAgjofOji7T5n3/CuqmHrzis4yQm56NpkFg8=\n";
//! let key = Identity::from_seed(1, "operator").public_key();
//! let cp = Checkpoint::verify_log(note, "cohort.local/demo", &key)?;
//! assert_eq!((cp.size, cp.root), (42, Hash32([7; 32])));
//! // The same checkpoint signed again gives the same note (Ed25519 is deterministic).
//! assert_eq!(cp.sign(&Identity::from_seed(1, "operator")), note);
//! # Ok::<(), cohort_ledger::CheckpointError>(())
//! ```
//!
//! The body is the origin, the tree size and the base64 root hash, one per line (then optional
//! extension lines, which cohort never writes and ignores when reading). Each signature line is
//! an em dash, the signer's name and base64 of `key ID (4 bytes) || ed25519 signature`, where
//! `key ID = SHA-256(name || "\n" || 0x01 || public_key)[..4]`. Witnesses can add their own
//! signature lines to the same note ([`Checkpoint::cosign`]), which is how a split view is
//! noticed.
//!
//! Parsing is strict, as the specifications and Go's reference are: the note rules of
//! [`crate::note`], then a body of at least three non-empty lines, a tree size in canonical
//! decimal (no sign, no leading zero, at most `2^63 - 1`, as Go's `tlog.ParseTree`) and a root
//! of exactly 32 bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cohort_core::{Hash32, Identity, PublicKey};

use crate::note::{self, NoteVerifier};

/// Why a checkpoint (or any signed note) did not parse or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a well-formed signed note or checkpoint body.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature line is by the expected key(s), named here.
    #[error("checkpoint is not signed by {0}")]
    NotSigned(String),
    /// A signature line by an expected key does not verify; the whole note is refused.
    #[error("checkpoint carries an invalid signature by {name}+{key_id:08x}")]
    BadSignature {
        /// The key's name.
        name: String,
        /// The key's ID.
        key_id: u32,
    },
    /// A verifier key or key name does not parse, or its key ID does not match the key.
    #[error("bad verifier key: {0}")]
    BadVerifierKey(String),
    /// Two expected keys share a name and key ID.
    #[error("ambiguous key {name}+{key_id:08x}")]
    AmbiguousKey {
        /// The name.
        name: String,
        /// The key ID.
        key_id: u32,
    },
    /// The checkpoint is of another log.
    #[error("checkpoint is of log {found:?}, expected {expected:?}")]
    WrongOrigin {
        /// The origin expected.
        expected: String,
        /// The origin line found.
        found: String,
    },
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

/// The largest tree size a checkpoint may carry (Go's reference parses it as an `int64`).
pub const MAX_TREE_SIZE: u64 = i64::MAX as u64;

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

    /// Signs the checkpoint as `signer`, with the key named after the origin, giving the note
    /// text. The origin must be a valid key name (see [`LedgerConfig`](crate::LedgerConfig)).
    pub fn sign(&self, signer: &Identity) -> String {
        let body = self.body();
        note::sign(&body, &self.origin, signer).unwrap_or_else(|_| {
            // Only an origin that is not a key name gets here, which `EmbeddedLedger::create`
            // refuses; sign it the same way so that verification, not signing, reports it.
            let mut blob = note::key_id(&self.origin, &signer.public_key())
                .to_be_bytes()
                .to_vec();
            blob.extend_from_slice(&signer.sign(body.as_bytes()));
            format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
        })
    }

    /// Adds a cosignature line by `witness` (its key named `name`) to an existing note; an
    /// earlier line by the same key is replaced.
    pub fn cosign(note: &str, name: &str, witness: &Identity) -> Result<String, CheckpointError> {
        note::add_signature(note, name, witness)
    }

    /// Parses a note and checks that the key `public_key` named `name` signed it (and that no
    /// line by that key is a bad signature). The origin line is not compared with `name`: use
    /// [`Self::verify_log`] for a log's own checkpoint.
    pub fn verify(note: &str, name: &str, public_key: &PublicKey) -> Result<Self, CheckpointError> {
        let v = NoteVerifier::ed25519(name, public_key)?;
        let n = note::open(note.as_bytes(), &[v])?;
        Self::parse_body(&n.text)
    }

    /// Checks a log's own checkpoint: signed by the log's key, named after the origin, and
    /// with `origin` on its first line.
    pub fn verify_log(
        note: &str,
        origin: &str,
        public_key: &PublicKey,
    ) -> Result<Self, CheckpointError> {
        let cp = Self::verify(note, origin, public_key)?;
        if cp.origin != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_owned(),
                found: cp.origin,
            });
        }
        Ok(cp)
    }

    /// Parses a checkpoint body (the note text, ending in a newline) as C2SP `tlog-checkpoint`
    /// does, without checking any signature.
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let bad = |why: String| CheckpointError::Malformed(why);
        let Some(text) = text.strip_suffix('\n') else {
            return Err(bad("the body does not end in a newline".into()));
        };
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < 3 {
            return Err(bad(format!(
                "the body has {} line(s); a checkpoint has origin, size and root",
                lines.len()
            )));
        }
        if let Some(i) = lines.iter().position(|l| l.is_empty()) {
            return Err(bad(format!("line {} of the body is empty", i + 1)));
        }
        let size = parse_size(lines[1]).ok_or_else(|| {
            bad(format!(
                "tree size {:?} is not a decimal number without sign or leading zeros, at most {MAX_TREE_SIZE}",
                lines[1]
            ))
        })?;
        let root = note::decode_base64(lines[2])
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| {
                bad(format!(
                    "root hash {:?} is not base64 of 32 bytes",
                    lines[2]
                ))
            })?;
        Ok(Self {
            origin: lines[0].to_owned(),
            size,
            root: Hash32(root),
        })
    }
}

/// A tree size: ASCII digits, no leading zero unless it is `0`, at most [`MAX_TREE_SIZE`].
fn parse_size(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse::<u64>().ok().filter(|&n| n <= MAX_TREE_SIZE)
}

/// The 4-byte key ID of an ed25519 note key (big-endian bytes of [`note::key_id`]).
pub fn key_id(name: &str, pk: &PublicKey) -> [u8; 4] {
    note::key_id(name, pk).to_be_bytes()
}

/// The verifier key string `name+keyid+base64(0x01 || pk)` that clients configure.
pub fn verifier_key(name: &str, pk: &PublicKey) -> String {
    let mut k = vec![note::ED25519];
    k.extend_from_slice(pk);
    format!("{name}+{}+{}", hex::encode(key_id(name, pk)), B64.encode(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Identity {
        Identity::from_seed(1, "op")
    }

    fn cp(size: u64) -> Checkpoint {
        Checkpoint {
            origin: "cohort.local/test".into(),
            size,
            root: Hash32([7; 32]),
        }
    }

    fn verify(note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::verify_log(note, "cohort.local/test", &op().public_key())
    }

    /// A note over `body` with the operator's valid signature.
    fn signed(body: &str) -> String {
        note::sign(body, "cohort.local/test", &op()).unwrap()
    }

    #[test]
    fn sign_verify_cosign() {
        let note = cp(42).sign(&op());
        assert_eq!(verify(&note).unwrap(), cp(42));
        let w = Identity::from_seed(1, "witness");
        let cosigned = Checkpoint::cosign(&note, "witness.example", &w).unwrap();
        Checkpoint::verify(&cosigned, "witness.example", &w.public_key()).unwrap();
        assert_eq!(verify(&cosigned).unwrap(), cp(42));
        // Cosigning twice keeps one line per witness.
        let again = Checkpoint::cosign(&cosigned, "witness.example", &w).unwrap();
        assert_eq!(again, cosigned);
        // A wrong key or an edited body fails.
        assert!(Checkpoint::verify(&note, "cohort.local/test", &w.public_key()).is_err());
        let edited = note.replacen("42", "43", 1);
        assert!(matches!(
            verify(&edited),
            Err(CheckpointError::BadSignature { .. })
        ));
        // Another log's checkpoint, validly signed by the same key under this log's name.
        let other =
            signed("cohort.local/other\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n");
        assert!(matches!(
            verify(&other),
            Err(CheckpointError::WrongOrigin { .. })
        ));
    }

    #[test]
    fn verifier_key_shape() {
        let k = verifier_key("a/b", &op().public_key());
        let mut parts = k.splitn(3, '+');
        assert_eq!(parts.next(), Some("a/b"));
        assert_eq!(parts.next().map(str::len), Some(8));
        assert_eq!(parts.next().map(str::len), Some(44));
        let v = NoteVerifier::parse(&k).unwrap();
        assert_eq!(v.key(), &op().public_key());
    }

    /// Bodies that tlog-checkpoint (and Go's `tlog.ParseTree` for the size) rejects, each
    /// validly signed, so that only the parsing can refuse them.
    #[test]
    fn malformed_bodies_are_refused_even_when_signed() {
        let root = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let o = "cohort.local/test";
        for (what, body) in [
            ("leading zero", format!("{o}\n042\n{root}\n")),
            ("plus sign", format!("{o}\n+42\n{root}\n")),
            ("minus sign", format!("{o}\n-42\n{root}\n")),
            ("spaces around the size", format!("{o}\n 42\n{root}\n")),
            (
                "size past int64",
                format!("{o}\n9223372036854775808\n{root}\n"),
            ),
            (
                "size past u64",
                format!("{o}\n18446744073709551616\n{root}\n"),
            ),
            ("hex size", format!("{o}\n0x2a\n{root}\n")),
            ("empty size", format!("{o}\n\n{root}\n")),
            ("two lines", format!("{o}\n42\n")),
            ("short root", format!("{o}\n42\nBwcHBwcH\n")),
            ("long root", format!("{o}\n42\n{root}AAAA\n")),
            (
                "unpadded root",
                format!("{o}\n42\n{}\n", root.trim_end_matches('=')),
            ),
            (
                "url-safe root",
                format!("{o}\n42\n{}\n", "_w".repeat(21) + "c="),
            ),
            ("empty extension line", format!("{o}\n42\n{root}\n\nx\n")),
        ] {
            assert!(
                matches!(verify(&signed(&body)), Err(CheckpointError::Malformed(_))),
                "{what}: accepted"
            );
        }
        // The canonical forms are accepted, as are non-empty extension lines.
        assert_eq!(
            verify(&signed(&format!("{o}\n0\n{root}\n"))).unwrap().size,
            0
        );
        assert_eq!(
            verify(&signed(&format!("{o}\n9223372036854775807\n{root}\n")))
                .unwrap()
                .size,
            MAX_TREE_SIZE
        );
        assert_eq!(
            verify(&signed(&format!("{o}\n42\n{root}\nextension\n"))).unwrap(),
            cp(42)
        );
    }

    /// The note-level classes, on a real checkpoint: line endings and control characters,
    /// where the body ends, text after the signatures, malformed lines of other keys, and a bad
    /// signature by the log's own key beside a good one.
    #[test]
    fn malformed_notes_are_refused() {
        let note = cp(42).sign(&op());
        let w = Identity::from_seed(1, "witness");
        let cosigned = Checkpoint::cosign(&note, "witness.example", &w).unwrap();
        let sig_line = note.lines().last().unwrap().to_owned();
        let mut blob = B64.decode(sig_line.rsplit(' ').next().unwrap()).unwrap();
        blob[10] ^= 1;
        let bad_line = format!("\u{2014} cohort.local/test {}", B64.encode(&blob));
        for (what, n) in [
            ("CRLF", note.replace('\n', "\r\n")),
            ("a tab", note.replacen("42", "42\t", 1)),
            ("text after the signatures", format!("{note}hello\n")),
            ("an unterminated last line", note.trim_end().to_owned()),
            ("a blank line at the end", format!("{note}\n")),
            (
                "another key's line with bad base64",
                format!("{cosigned}— witness2.example ***\n"),
            ),
            (
                "another key's line too short",
                format!("{note}— witness2.example AAAA\n"),
            ),
            (
                "another key's line without a signature",
                format!("{note}— witness2.example\n"),
            ),
        ] {
            assert!(
                matches!(verify(&n), Err(CheckpointError::Malformed(_))),
                "{what}: accepted: {n:?}"
            );
        }
        // The body ends at the last blank line: a note whose own signature sits inside the
        // text (a second blank line after it) does not verify.
        let moved = format!("{note}\n{sig_line}\n");
        assert!(verify(&moved).is_err());
        // A bad signature by the log's own key beside a good one, before or after it.
        let body = cp(42).body();
        for n in [
            format!("{body}\n{bad_line}\n{sig_line}\n"),
            format!("{body}\n{sig_line}\n{bad_line}\n"),
        ] {
            assert!(
                matches!(verify(&n), Err(CheckpointError::BadSignature { .. })),
                "{n:?}: {:?}",
                verify(&n)
            );
        }
        // A line by the log's name with another key ID is another key's, and ignored.
        let mut blob = 0u32.to_be_bytes().to_vec();
        blob.extend_from_slice(&[1; 64]);
        let foreign = format!("{note}— cohort.local/test {}\n", B64.encode(blob));
        assert_eq!(verify(&foreign).unwrap(), cp(42));
    }

    /// The example in the module docs is this signature, recomputed.
    #[test]
    fn doc_example_is_current() {
        let id = Identity::from_seed(1, "operator");
        let c = Checkpoint {
            origin: "cohort.local/demo".into(),
            size: 42,
            root: Hash32([7; 32]),
        };
        let note = c.sign(&id);
        let doc = include_str!("checkpoint.rs");
        let sig = note.lines().last().unwrap();
        let vkey = verifier_key("cohort.local/demo", &id.public_key());
        assert!(
            doc.contains(&format!("//!             {sig}\\n\";")) && doc.contains(&vkey),
            "update the module docs to:\n{note}\nverifier key {vkey}"
        );
    }
}
