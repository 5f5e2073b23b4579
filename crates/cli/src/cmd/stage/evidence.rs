//! A fraud claim's evidence, as `cohort model lora --evidence FILE` writes it (a JSON array of
//! claims, or one claim), read and checked before anything is written.
//!
//! A claim is of a forward row (`"phase": "forward"`, or no phase: files written before
//! backward claims) or of a whole backward (`"phase": "backward"`).
//!
//! What is checked of a forward claim, where everything the contract cannot check (ed25519,
//! SHA-256) can be:
//! every digest is 32 bytes of hex; the row is within the server's commitment and the
//! commitment's digest of it is `committed`; `recomputed` differs from it; the verifier
//! recomputed that row; the server's signature over its call digest and its rows' digests
//! verifies against its key, so the claim is bound to the server. The verifier's signature is
//! checked when its rows' digests can be known: given (`verifier_row_sha256`), or when the row
//! is the last the verifier recomputed (the rows before it matched the server's commitment).
//!
//! Of a backward claim: every digest is 32 bytes of hex; the server's backward digest is that
//! of its session, the step, the gradient it was given and its answer's digests, and its
//! signature over it verifies against its key; the verifier's likewise, in the verifier's
//! session, for the same gradient; the two answers differ. On the ledger the claim names the
//! call [`backward_claim_call`] (the forward call's digest and the gradient's) and sets the
//! answers' digests ([`BackwardOutcome::digest`]) side by side, so every verifier that
//! recomputed the same backward attests the same claim.

use std::path::Path;

use alloy_primitives::{Address, B256};
use anyhow::{Context, bail};
use cohort_core::{Identity, PublicKey};
use cohort_net::stage::{
    BackwardOutcome, backward_claim_call, backward_digest_of, commitment_message,
};
use serde::{Deserialize, Serialize};

use super::hash32;

/// An evidence file larger than this is not one (a claim is a few kilobytes).
const MAX_LEN: u64 = 16 << 20;

/// One claim as the file holds it.
#[derive(Debug, Clone, Deserialize)]
struct Raw {
    /// The server's and the verifier's URLs (not checked).
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    verifier: Option<String>,
    session: u64,
    step: u64,
    row: u64,
    committed: String,
    recomputed: String,
    server_call: String,
    server_rows: Vec<String>,
    server_key: Option<String>,
    server_signature: Option<String>,
    verifier_call: String,
    verifier_rows: Vec<u64>,
    verifier_key: Option<String>,
    verifier_signature: Option<String>,
    /// The verifier's digests of the rows it recomputed, in `verifier_rows`' order (when the
    /// file has them).
    #[serde(default)]
    verifier_row_sha256: Option<Vec<String>>,
}

/// A backward claim as the file holds it.
#[derive(Debug, Clone, Deserialize)]
struct RawBackward {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    verifier: Option<String>,
    session: u64,
    step: u64,
    /// What differs, as the client saw it (not checked).
    #[serde(default)]
    differs: Option<String>,
    call: String,
    grad_sha256: String,
    server_digest: String,
    server_key: Option<String>,
    server_signature: Option<String>,
    server_outcome: BackwardOutcome,
    verifier_session: u64,
    verifier_digest: String,
    verifier_key: Option<String>,
    verifier_signature: Option<String>,
    verifier_outcome: BackwardOutcome,
}

/// What a claim accuses: a forward row's output, or a whole backward's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Forward,
    Backward,
}

/// A claim whose evidence checked out.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    /// A forward row's or a backward's.
    pub phase: Phase,
    /// Its index in the file, and how many the file holds.
    pub index: usize,
    pub of: usize,
    /// The server's URL as the client knew it.
    pub server_url: Option<String>,
    pub verifier_url: Option<String>,
    /// The server's key, and its address (on the embedded ledger, derived from the key; `cohort
    /// stage attest` reports the address it found where it attested).
    #[serde(with = "hex_key")]
    pub server_key: PublicKey,
    pub server: Address,
    /// The verifier's key.
    #[serde(with = "hex_key")]
    pub verifier_key: PublicKey,
    pub session: u64,
    pub step: u64,
    /// The row of a forward claim (none for a backward: a whole call's).
    pub row: Option<u64>,
    /// What the ledger's claim names: for a forward claim the server's call digest, its
    /// digest of the row and the verifier's; for a backward claim the call of
    /// [`backward_claim_call`] and the two answers' [`BackwardOutcome::digest`]s.
    pub call: B256,
    pub committed: B256,
    pub recomputed: B256,
    /// A backward claim's forward call digest (the call's inputs), and what differs as the
    /// client saw it.
    pub forward_call: Option<B256>,
    pub differs: Option<String>,
    /// Whether the verifier's own signature could be checked (it verified), or not (its rows'
    /// digests are not all in the file).
    pub verifier_signature_checked: bool,
}

mod hex_key {
    pub fn serialize<S: serde::Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }
}

/// Reads claim `index` of the evidence file at `path` (the only one when `index` is `None`)
/// and checks it. Every refusal names the file, the claim and the field.
pub fn load(path: &Path, index: Option<usize>) -> anyhow::Result<Claim> {
    let file = format!("--evidence {}", path.display());
    let len = std::fs::metadata(path).with_context(|| file.clone())?.len();
    if len > MAX_LEN {
        bail!("{file}: {len} bytes is too large for an evidence file (at most {MAX_LEN})");
    }
    let bytes = std::fs::read(path).with_context(|| file.clone())?;
    parse(&bytes, index, &file)
}

/// [`load`] on the bytes of an evidence file (or of one claim, as a client sends a verifier
/// to attest: [`cohort_net::stage::StageClient::attest`]); `file` names them in refusals.
pub fn parse(bytes: &[u8], index: Option<usize>, file: &str) -> anyhow::Result<Claim> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{file}: not JSON ({e}); expected the fraud claims `cohort model lora --evidence` \
             writes"
        )
    })?;
    let mut claims = match value {
        serde_json::Value::Array(v) => v,
        v @ serde_json::Value::Object(_) => vec![v],
        _ => bail!("{file}: expected a claim (a JSON object) or an array of claims"),
    };
    let of = claims.len();
    let i = match (index, of) {
        (_, 0) => bail!("{file}: holds no claim"),
        (None, 1) => 0,
        (None, n) => bail!(
            "{file}: holds {n} claims; choose one with --claim INDEX (0 to {})",
            n - 1
        ),
        (Some(i), n) if i >= n => bail!("--claim {i}: {file} holds {n} claim(s) (0 to {})", n - 1),
        (Some(i), _) => i,
    };
    let what = format!("{file}: claim {i}");
    let claim = claims.swap_remove(i);
    let phase = match claim.get("phase") {
        None => Phase::Forward,
        Some(serde_json::Value::String(p)) if p == "forward" => Phase::Forward,
        Some(serde_json::Value::String(p)) if p == "backward" => Phase::Backward,
        Some(p) => bail!("{what}: phase {p}: expected \"forward\" or \"backward\""),
    };
    // serde names no field when a number does not fit: say which.
    for f in ["session", "step", "row", "verifier_session"] {
        if let Some(v) = claim.get(f)
            && !v.is_u64()
        {
            bail!("{what}: {f} {v}: not a whole number in [0, 2^64)");
        }
    }
    match phase {
        Phase::Forward => {
            let raw: Raw =
                serde_json::from_value(claim).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            check(raw, i, of)
        }
        Phase::Backward => {
            let raw: RawBackward =
                serde_json::from_value(claim).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            check_backward(raw, i, of)
        }
    }
    .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn digest(field: &str, v: &str) -> anyhow::Result<B256> {
    hash32(v).with_context(|| format!("{field} {v:?} is not 32 bytes of hex (64 digits)"))
}

fn key(field: &str, v: &Option<String>) -> anyhow::Result<PublicKey> {
    let v = v.as_deref().with_context(|| {
        format!(
            "{field} is missing: a server or verifier without a key signs nothing, and a claim \
             needs both signatures"
        )
    })?;
    let mut k = [0u8; 32];
    hex::decode_to_slice(v.trim(), &mut k)
        .ok()
        .with_context(|| format!("{field} {v:?} is not an ed25519 public key (64 hex digits)"))?;
    Ok(k)
}

fn signature(field: &str, v: &Option<String>) -> anyhow::Result<[u8; 64]> {
    let v = v
        .as_deref()
        .with_context(|| format!("{field} is missing: the statement is not signed"))?;
    let mut s = [0u8; 64];
    hex::decode_to_slice(v.trim(), &mut s)
        .ok()
        .with_context(|| format!("{field} {v:?} is not an ed25519 signature (128 hex digits)"))?;
    Ok(s)
}

fn check_backward(raw: RawBackward, index: usize, of: usize) -> anyhow::Result<Claim> {
    let forward_call = digest("call", &raw.call)?;
    let grad = digest("grad_sha256", &raw.grad_sha256)?;
    let server_digest = digest("server_digest", &raw.server_digest)?;
    let verifier_digest = digest("verifier_digest", &raw.verifier_digest)?;
    let server_key = key("server_key", &raw.server_key)?;
    let server_sig = signature("server_signature", &raw.server_signature)?;
    let verifier_key = key("verifier_key", &raw.verifier_key)?;
    let verifier_sig = signature("verifier_signature", &raw.verifier_signature)?;
    let committed = raw.server_outcome.digest();
    let recomputed = raw.verifier_outcome.digest();
    if committed == recomputed {
        bail!("server_outcome and verifier_outcome are equal: the evidence shows no mismatch");
    }
    // What each signed is the digest of its session, the step, the gradient and its answer.
    let sides = [
        (
            "server",
            raw.session,
            &raw.server_outcome,
            server_digest,
            &server_key,
            &server_sig,
        ),
        (
            "verifier",
            raw.verifier_session,
            &raw.verifier_outcome,
            verifier_digest,
            &verifier_key,
            &verifier_sig,
        ),
    ];
    for (who, session, outcome, signed, key, sig) in sides {
        let want = backward_digest_of(session, raw.step, &grad.0, outcome);
        if want != signed.0 {
            bail!(
                "{who}_digest {signed} is not the backward digest of its session ({session}), \
                 step {}, grad_sha256 and {who}_outcome ({})",
                raw.step,
                B256::from(want)
            );
        }
        Identity::verify(key, &signed.0, sig).map_err(|_| {
            anyhow::anyhow!(
                "{who}_signature does not verify against {who}_key over {who}_digest: the \
                 answer is not the {who}'s"
            )
        })?;
    }
    Ok(Claim {
        phase: Phase::Backward,
        index,
        of,
        server_url: raw.server,
        verifier_url: raw.verifier,
        server: cohort_core::address_of(&server_key),
        server_key,
        verifier_key,
        session: raw.session,
        step: raw.step,
        row: None,
        call: B256::from(backward_claim_call(&forward_call.0, &grad.0)),
        committed: B256::from(committed),
        recomputed: B256::from(recomputed),
        forward_call: Some(forward_call),
        differs: raw.differs,
        verifier_signature_checked: true,
    })
}

fn check(raw: Raw, index: usize, of: usize) -> anyhow::Result<Claim> {
    let h = digest;
    let committed = h("committed", &raw.committed)?;
    let recomputed = h("recomputed", &raw.recomputed)?;
    let call = h("server_call", &raw.server_call)?;
    let verifier_call = h("verifier_call", &raw.verifier_call)?;
    let server_rows = raw
        .server_rows
        .iter()
        .enumerate()
        .map(|(k, v)| h(&format!("server_rows[{k}]"), v))
        .collect::<anyhow::Result<Vec<B256>>>()?;
    let n = server_rows.len() as u64;
    let row = raw.row;
    let Some(at_row) = usize::try_from(row).ok().and_then(|r| server_rows.get(r)) else {
        bail!("row {row} is outside the server's commitment ({n} rows in server_rows)");
    };
    if *at_row != committed {
        bail!(
            "committed {committed} is not the server's digest of row {row} in server_rows ({at_row})"
        );
    }
    if committed == recomputed {
        bail!("committed and recomputed are equal: the evidence shows no mismatch");
    }
    let Some(pos) = raw.verifier_rows.iter().position(|&r| r == row) else {
        bail!(
            "the verifier did not recompute row {row} (verifier_rows {:?})",
            raw.verifier_rows
        );
    };
    if let Some(&r) = raw.verifier_rows.iter().find(|&&r| r >= n) {
        bail!("verifier_rows holds row {r}, outside the server's commitment ({n} rows)");
    }
    let server_key = key("server_key", &raw.server_key)?;
    let server_sig = signature("server_signature", &raw.server_signature)?;
    let verifier_key = key("verifier_key", &raw.verifier_key)?;
    let verifier_sig = signature("verifier_signature", &raw.verifier_signature)?;
    let digests = |v: &[B256]| -> Vec<[u8; 32]> { v.iter().map(|d| d.0).collect() };
    Identity::verify(
        &server_key,
        &commitment_message(&call.0, &digests(&server_rows)),
        &server_sig,
    )
    .map_err(|_| {
        anyhow::anyhow!(
            "server_signature does not verify against server_key over server_call and \
             server_rows: the commitment is not the server's"
        )
    })?;
    // The verifier's rows' digests: given, or known when `row` is the last it recomputed.
    let verifier_rows: Option<Vec<B256>> = match &raw.verifier_row_sha256 {
        Some(v) => {
            if v.len() != raw.verifier_rows.len() {
                bail!(
                    "verifier_row_sha256 has {} digests for {} verifier_rows",
                    v.len(),
                    raw.verifier_rows.len()
                );
            }
            let v = v
                .iter()
                .enumerate()
                .map(|(k, d)| h(&format!("verifier_row_sha256[{k}]"), d))
                .collect::<anyhow::Result<Vec<B256>>>()?;
            if v[pos] != recomputed {
                bail!(
                    "recomputed {recomputed} is not verifier_row_sha256[{pos}] ({})",
                    v[pos]
                );
            }
            Some(v)
        }
        None if pos + 1 == raw.verifier_rows.len() => Some(
            raw.verifier_rows
                .iter()
                .map(|&r| {
                    if r == row {
                        recomputed
                    } else {
                        server_rows[r as usize]
                    }
                })
                .collect(),
        ),
        None => None,
    };
    if let Some(v) = &verifier_rows {
        Identity::verify(
            &verifier_key,
            &commitment_message(&verifier_call.0, &digests(v)),
            &verifier_sig,
        )
        .map_err(|_| {
            anyhow::anyhow!(
                "verifier_signature does not verify against verifier_key over verifier_call and \
                 the verifier's rows' digests"
            )
        })?;
    }
    Ok(Claim {
        phase: Phase::Forward,
        index,
        of,
        server_url: raw.server,
        verifier_url: raw.verifier,
        server: cohort_core::address_of(&server_key),
        server_key,
        verifier_key,
        session: raw.session,
        step: raw.step,
        row: Some(row),
        call,
        committed,
        recomputed,
        forward_call: None,
        differs: None,
        verifier_signature_checked: verifier_rows.is_some(),
    })
}
