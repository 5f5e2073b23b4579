//! Signed notes (C2SP `signed-note`), parsed and verified as the specification and Go's
//! reference implementation (`golang.org/x/mod/sumdb/note`) do.
//!
//! ```text
//! <text, one or more lines, each ending in a newline>
//!
//! — <key name> base64(key ID (4 bytes, big-endian) || signature)
//! — <another key name> ...
//! ```
//!
//! The rules, each enforced by [`open`]:
//! - the whole note is valid UTF-8 with no ASCII control character other than newline (so no
//!   `\r`, no tab);
//! - the text ends at the **last** blank line; everything after it is signature lines, each
//!   `— name base64` and each ending in a newline, with nothing else after them;
//! - every signature line is well-formed, whoever signed it: a valid key name (non-empty, no
//!   Unicode space, no `+`), non-empty standard base64 of at least 5 bytes;
//! - at most [`MAX_SIGNATURES`] signature lines;
//! - a line whose name and key ID match a known key must verify, or the whole note is rejected,
//!   even if another line by that key verifies; lines by unknown keys are kept, unverified;
//! - at least one line by a known key, or the note is rejected.
//!
//! Where the two references differ, the specification wins: Go verifies only the first of
//! several lines by the same known key and skips the rest, while the specification says a line
//! by a known key MUST be verified, so a bad one after a good one is rejected here. Signatures
//! are checked with `ed25519-dalek`'s `verify_strict` (Go uses RFC 8032's cofactorless check;
//! they differ only on deliberately malformed keys and signatures, which `verify_strict` refuses).

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use cohort_core::{Identity, PublicKey, sha256_parts};

use crate::CheckpointError;

/// The most signature lines [`open`] accepts, as in Go's reference (the specification asks for
/// at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// The signature type byte of Ed25519 note keys.
pub const ED25519: u8 = 0x01;

const SIG_PREFIX: &str = "\u{2014} ";

/// Base64 as Go's `base64.StdEncoding` decodes it: the standard alphabet, padding required,
/// non-zero trailing bits tolerated.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes standard base64 as Go's reference does.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    GO_STD.decode(s).ok()
}

/// Whether `name` may name a key: non-empty, no Unicode space, no `+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('+')
}

/// The key ID of an Ed25519 key named `name`: the first four bytes of
/// `SHA-256(name || "\n" || 0x01 || public_key)`, big-endian.
pub fn key_id(name: &str, public_key: &PublicKey) -> u32 {
    let h = sha256_parts(&[name.as_bytes(), b"\n", &[ED25519], public_key]);
    u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]])
}

/// A key that verifies note signatures: a name and an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: PublicKey,
}

impl NoteVerifier {
    /// The verifier of `name`'s Ed25519 key.
    pub fn ed25519(name: &str, key: &PublicKey) -> Result<Self, CheckpointError> {
        if !is_valid_name(name) {
            return Err(CheckpointError::BadVerifierKey(format!(
                "{name:?} is not a key name (non-empty, no spaces, no '+')"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, key),
            key: *key,
        })
    }

    /// Parses a verifier key `name+hex(key ID)+base64(0x01 || public key)`, checking that the
    /// key ID is the key's.
    pub fn parse(vkey: &str) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::BadVerifierKey(format!("{vkey:?}: {why}"));
        let (name, rest) = vkey.split_once('+').unwrap_or((vkey, ""));
        let (hash16, key64) = rest.split_once('+').unwrap_or((rest, ""));
        if hash16.len() != 8 || !hash16.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the key ID is not 8 hex digits"));
        }
        let id = u32::from_str_radix(hash16, 16).map_err(|_| bad("the key ID is not hex"))?;
        let key = decode_base64(key64).ok_or_else(|| bad("the key is not base64"))?;
        if !is_valid_name(name) {
            return Err(bad("the name is empty or has a space or '+'"));
        }
        let Some((&alg, raw)) = key.split_first() else {
            return Err(bad("the key is empty"));
        };
        let h = sha256_parts(&[name.as_bytes(), b"\n", &key]);
        if id != u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]]) {
            return Err(bad("the key ID does not match the key"));
        }
        if alg != ED25519 {
            return Err(bad(&format!("unknown signature type {alg:#04x}")));
        }
        let key: PublicKey = raw
            .try_into()
            .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
        Ok(Self {
            name: name.to_owned(),
            key_id: id,
            key,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The verifier key string `name+hex(key ID)+base64(0x01 || public key)`.
    pub fn vkey(&self) -> String {
        let mut k = vec![ED25519];
        k.extend_from_slice(&self.key);
        format!("{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(k))
    }

    fn verifies(&self, text: &[u8], sig: &[u8]) -> bool {
        <&[u8; 64]>::try_from(sig).is_ok_and(|sig| Identity::verify(&self.key, text, sig).is_ok())
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// The signer's key ID.
    pub key_id: u32,
    /// The base64 of `key ID || signature`, as written in the note.
    pub base64: String,
}

/// A note whose signatures were checked by [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Signatures by known keys, all verified (one per key).
    pub sigs: Vec<NoteSignature>,
    /// Signatures by keys not known to the caller, not checked (identical lines once).
    pub unverified: Vec<NoteSignature>,
}

/// A signature line split into its parts.
struct Line<'a> {
    raw: &'a str,
    sig: NoteSignature,
    /// The signature after the key ID.
    bytes: Vec<u8>,
}

/// Splits a note into its text and signature lines, checking the syntax of both.
fn split(msg: &[u8]) -> Result<(&str, Vec<Line<'_>>), CheckpointError> {
    let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
    let msg = std::str::from_utf8(msg).map_err(|_| bad("the note is not valid UTF-8"))?;
    if let Some(c) = msg.chars().find(|&c| c < ' ' && c != '\n') {
        return Err(CheckpointError::Malformed(format!(
            "control character {c:?} in the note (only newline is allowed)"
        )));
    }
    let split = msg
        .rfind("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let (text, sigs) = (&msg[..=split], &msg[split + 2..]);
    if sigs.is_empty() {
        return Err(bad("no signature lines after the blank line"));
    }
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(bad("the last signature line does not end in a newline"));
    };
    let mut lines = Vec::new();
    for raw in sigs.split('\n') {
        let Some(line) = raw.strip_prefix(SIG_PREFIX) else {
            return Err(CheckpointError::Malformed(format!(
                "{raw:?} after the blank line is not a signature line (\"— name signature\")"
            )));
        };
        let (name, b64) = line.split_once(' ').unwrap_or((line, ""));
        let blob = decode_base64(b64).unwrap_or_default();
        if !is_valid_name(name) || b64.is_empty() || blob.len() < 5 {
            return Err(CheckpointError::Malformed(format!(
                "bad signature line {raw:?} (a key name, a space, base64 of at least 5 bytes)"
            )));
        }
        lines.push(Line {
            raw,
            sig: NoteSignature {
                name: name.to_owned(),
                key_id: u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]),
                base64: b64.to_owned(),
            },
            bytes: blob[4..].to_vec(),
        });
        if lines.len() > MAX_SIGNATURES {
            return Err(CheckpointError::Malformed(format!(
                "more than {MAX_SIGNATURES} signature lines"
            )));
        }
    }
    Ok((text, lines))
}

/// Parses `msg` and checks its signatures against `known` keys (see the module docs for every
/// rule). Returns the note when at least one known key signed it and every line by a known key
/// verifies.
pub fn open(msg: &[u8], known: &[NoteVerifier]) -> Result<Note, CheckpointError> {
    let (text, lines) = split(msg)?;
    let mut note = Note {
        text: text.to_owned(),
        sigs: Vec::new(),
        unverified: Vec::new(),
    };
    let mut seen_unverified: Vec<&str> = Vec::new();
    for line in &lines {
        let s = &line.sig;
        let mut matching = known
            .iter()
            .filter(|v| v.name == s.name && v.key_id == s.key_id);
        let Some(v) = matching.next() else {
            if !seen_unverified.contains(&line.raw) {
                seen_unverified.push(line.raw);
                note.unverified.push(s.clone());
            }
            continue;
        };
        if matching.next().is_some() {
            return Err(CheckpointError::AmbiguousKey {
                name: s.name.clone(),
                key_id: s.key_id,
            });
        }
        if !v.verifies(text.as_bytes(), &line.bytes) {
            return Err(CheckpointError::BadSignature {
                name: s.name.clone(),
                key_id: s.key_id,
            });
        }
        if !note
            .sigs
            .iter()
            .any(|x| x.name == s.name && x.key_id == s.key_id)
        {
            note.sigs.push(s.clone());
        }
    }
    if note.sigs.is_empty() {
        let names: Vec<String> = known
            .iter()
            .map(|v| format!("{}+{:08x}", v.name, v.key_id))
            .collect();
        return Err(CheckpointError::NotSigned(names.join(", ")));
    }
    Ok(note)
}

/// The signature line of `signer`'s key, named `name`, over `text`.
fn signature_line(text: &str, name: &str, signer: &Identity) -> String {
    let mut blob = key_id(name, &signer.public_key()).to_be_bytes().to_vec();
    blob.extend_from_slice(&signer.sign(text.as_bytes()));
    format!("{SIG_PREFIX}{name} {}\n", STANDARD.encode(blob))
}

/// Signs `text` (which must end in a newline and hold no control character but newline) as
/// `name`, giving a note with one signature.
pub fn sign(text: &str, name: &str, signer: &Identity) -> Result<String, CheckpointError> {
    if !text.ends_with('\n') {
        return Err(CheckpointError::Malformed(
            "the text does not end in a newline".into(),
        ));
    }
    if !is_valid_name(name) {
        return Err(CheckpointError::BadVerifierKey(format!(
            "{name:?} is not a key name (non-empty, no spaces, no '+')"
        )));
    }
    let note = format!("{text}\n{}", signature_line(text, name, signer));
    split(note.as_bytes())?;
    Ok(note)
}

/// Adds `signer`'s signature (key named `name`) to a note, after the signatures already there;
/// an earlier line by the same key is replaced. The note's syntax is checked, not its
/// signatures.
pub fn add_signature(note: &str, name: &str, signer: &Identity) -> Result<String, CheckpointError> {
    if !is_valid_name(name) {
        return Err(CheckpointError::BadVerifierKey(format!(
            "{name:?} is not a key name (non-empty, no spaces, no '+')"
        )));
    }
    let (text, lines) = split(note.as_bytes())?;
    let id = key_id(name, &signer.public_key());
    let mut out = format!("{text}\n");
    for l in lines
        .iter()
        .filter(|l| !(l.sig.name == name && l.sig.key_id == id))
    {
        out.push_str(l.raw);
        out.push('\n');
    }
    out.push_str(&signature_line(text, name, signer));
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The vectors of Go's `golang.org/x/mod/sumdb/note` tests (note_test.go: TestNewVerifier,
    //! TestSign, TestOpen), and C2SP signed-note's example.
    use super::*;

    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> NoteVerifier {
        NoteVerifier::parse(PETER_VKEY).unwrap()
    }

    fn enoch() -> NoteVerifier {
        NoteVerifier::parse(ENOCH_VKEY).unwrap()
    }

    fn sig(name: &str, key_id: u32, b64: &str) -> NoteSignature {
        NoteSignature {
            name: name.into(),
            key_id,
            base64: b64.into(),
        }
    }

    fn peter_sig() -> NoteSignature {
        sig(
            "PeterNeumann",
            0xc74f20a3,
            "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        )
    }

    fn enoch_sig() -> NoteSignature {
        sig(
            "EnochRoot",
            0xaf0cfe78,
            "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=",
        )
    }

    /// Go: TestNewVerifier. Every proper substring and every one-byte change of a good key is
    /// refused, and so are a wrong-length key and an unknown algorithm with adjusted hashes.
    #[test]
    fn go_new_verifier() {
        let v = peter();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id(), 0xc74f20a3);
        assert_eq!(v.vkey(), PETER_VKEY);
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let k = String::from_utf8_lossy(&b[i..j]);
                    assert!(NoteVerifier::parse(&k).is_err(), "{k} accepted");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let k = String::from_utf8_lossy(&m);
            assert!(NoteVerifier::parse(&k).is_err(), "{k} accepted");
        }
        for bad in [
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad} accepted");
        }
    }

    /// Go: TestSign. Peter's private key signs the text into exactly the reference note.
    #[test]
    fn go_sign() {
        let seed = PETER_SKEY.splitn(5, '+').nth(4).unwrap();
        let seed = decode_base64(seed).unwrap();
        assert_eq!(seed[0], ED25519);
        let id = Identity::from_secret("PeterNeumann", seed[1..].try_into().unwrap());
        assert_eq!(id.public_key(), *peter().key());
        let note = sign(TEXT, "PeterNeumann", &id).unwrap();
        assert_eq!(note, format!("{TEXT}\n{PETER_SIG}"));
        // Re-signing replaces the earlier line by the same key.
        assert_eq!(add_signature(&note, "PeterNeumann", &id).unwrap(), note);
        assert!(matches!(
            sign("abc", "PeterNeumann", &id),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(sign(TEXT, "bad name", &id).is_err());
    }

    /// Go: TestOpen, every case that applies to a list of known keys.
    #[test]
    fn go_open() {
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        // One verified, one not.
        let n = open(msg.as_bytes(), &[peter()]).unwrap();
        assert_eq!(n.text, TEXT);
        assert_eq!(n.sigs, vec![peter_sig()]);
        assert_eq!(n.unverified, vec![enoch_sig()]);
        // Both verified.
        let n = open(msg.as_bytes(), &[peter(), enoch()]).unwrap();
        assert_eq!(n.sigs, vec![peter_sig(), enoch_sig()]);
        assert!(n.unverified.is_empty());
        // Neither known.
        assert!(matches!(
            open(msg.as_bytes(), &[]),
            Err(CheckpointError::NotSigned(_))
        ));
        // A known key listed twice is ambiguous when it signed, and harmless when it did not.
        let enoch_only = format!("{TEXT}\n{ENOCH_SIG}");
        assert!(matches!(
            open(enoch_only.as_bytes(), &[enoch(), peter(), enoch()]),
            Err(CheckpointError::AmbiguousKey {
                key_id: 0xaf0cfe78,
                ..
            })
        ));
        let peter_only = format!("{TEXT}\n{PETER_SIG}");
        open(peter_only.as_bytes(), &[enoch(), peter(), enoch()]).unwrap();
        // Too many signatures, known or not.
        let many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
        for known in [vec![peter()], vec![]] {
            assert!(matches!(
                open(many.as_bytes(), &known),
                Err(CheckpointError::Malformed(_))
            ));
        }
        // An invalid signature by a known key.
        let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert!(matches!(
            open(bad.as_bytes(), &[peter()]),
            Err(CheckpointError::BadSignature {
                key_id: 0xc74f20a3,
                ..
            })
        ));
        // Duplicated verified and unverified signatures.
        let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let dup = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_abcd}");
        let n = open(dup.as_bytes(), &[peter()]).unwrap();
        assert_eq!(n.sigs, vec![peter_sig()]);
        let abcd = sig(
            "EnochRoot",
            0xaf0cfe78,
            "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5nABCD2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=",
        );
        assert_eq!(n.unverified, vec![enoch_sig(), abcd]);
        // Invalid encoded message syntax.
        let bad_msgs: Vec<Vec<u8>> = vec![
            TEXT.into(),
            format!("{TEXT}\n").into(),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]).into(),
            format!("\x01{TEXT}\n{PETER_SIG}").into(),
            [b"\xff".as_slice(), TEXT.as_bytes(), b"\n", PETER_SIG.as_bytes()].concat(),
            format!("{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=").into(),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n").into(),
        ];
        for m in bad_msgs {
            assert!(
                matches!(open(&m, &[peter()]), Err(CheckpointError::Malformed(_))),
                "accepted {:?}",
                String::from_utf8_lossy(&m)
            );
        }
        // The example note of Go's package documentation.
        let doc = "If you think cryptography is the answer to your problem,\n\
                   then you don't know what your problem is.\n\
                   \n\
                   — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        open(doc.as_bytes(), &[peter()]).unwrap();
    }

    /// C2SP signed-note's example verifier key and note.
    #[test]
    fn c2sp_example() {
        let v = NoteVerifier::parse(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .unwrap();
        let note = "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        let n = open(note.as_bytes(), std::slice::from_ref(&v)).unwrap();
        assert_eq!(n.text, "This is an example message.\n");
        // One changed byte of the text, and the note is refused.
        let edited = note.replace("example message", "example massage");
        assert!(matches!(
            open(edited.as_bytes(), &[v]),
            Err(CheckpointError::BadSignature { .. })
        ));
    }

    /// The classes Go's reference rejects, each with its own case beyond Go's vectors.
    #[test]
    fn rejected_classes() {
        let good = format!("{TEXT}\n{PETER_SIG}");
        open(good.as_bytes(), &[peter()]).unwrap();
        let cases: Vec<(&str, String)> = vec![
            ("CRLF line endings", good.replace('\n', "\r\n")),
            ("CR in the text", good.replacen("problem,", "problem,\r", 1)),
            ("tab in the text", good.replacen("think ", "think\t", 1)),
            ("NUL at the end", format!("{good}\0")),
            ("text after the signatures", format!("{good}trailer\n")),
            ("a blank line after the signatures", format!("{good}\n")),
            (
                "no newline after the last signature",
                good.trim_end().to_owned(),
            ),
            (
                "a signature line of another key with bad base64",
                format!("{good}— other.example/key !!!notbase64\n"),
            ),
            (
                "a signature line of another key that is too short",
                format!("{good}— other.example/key AAAA\n"),
            ),
            (
                "a signature line of another key with an empty signature",
                format!("{good}— other.example/key \n"),
            ),
            (
                "a signature line of another key with '+' in its name",
                format!("{good}— other+key AAAAAAAAAA==\n"),
            ),
            (
                "a signature line without the em dash",
                format!("{good}- other.example/key AAAAAAAAAA==\n"),
            ),
            (
                "a signature line with a non-breaking space in the name",
                format!("{good}— other\u{a0}key AAAAAAAAAA==\n"),
            ),
        ];
        for (what, note) in cases {
            assert!(
                matches!(
                    open(note.as_bytes(), &[peter()]),
                    Err(CheckpointError::Malformed(_))
                ),
                "{what}: accepted"
            );
        }
        // Where the text ends: at the last blank line, so a second blank-line split that would
        // make the signature lines part of the text is not a shortcut to acceptance.
        let two = format!("{TEXT}\n{PETER_SIG}\n{PETER_SIG}");
        let n = open(two.as_bytes(), &[peter()]);
        assert!(
            matches!(n, Err(CheckpointError::BadSignature { .. })),
            "{n:?}"
        );
        // A bad signature by the known key beside a good one, before or after it.
        let bad = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        for note in [
            format!("{TEXT}\n{bad}{PETER_SIG}"),
            format!("{TEXT}\n{PETER_SIG}{bad}"),
        ] {
            assert!(matches!(
                open(note.as_bytes(), &[peter()]),
                Err(CheckpointError::BadSignature { .. })
            ));
        }
        // A signature of the wrong length by the known key is a bad signature, not skipped.
        let mut blob = 0xc74f20a3u32.to_be_bytes().to_vec();
        blob.extend_from_slice(&[7; 63]);
        let short = format!(
            "{TEXT}\n{PETER_SIG}— PeterNeumann {}\n",
            STANDARD.encode(&blob)
        );
        assert!(matches!(
            open(short.as_bytes(), &[peter()]),
            Err(CheckpointError::BadSignature { .. })
        ));
        // Unknown keys that share only the name or only the key ID are ignored, not verified.
        let mut blob = 0xc74f20a4u32.to_be_bytes().to_vec();
        blob.extend_from_slice(&[7; 64]);
        let other_id = format!(
            "{good}— PeterNeumann {}\n— PeterNeuman {}\n",
            STANDARD.encode(&blob),
            &PETER_SIG["— PeterNeumann ".len()..PETER_SIG.len() - 1]
        );
        let n = open(other_id.as_bytes(), &[peter()]).unwrap();
        assert_eq!(n.unverified.len(), 2);
    }
}
