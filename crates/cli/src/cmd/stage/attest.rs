use std::path::PathBuf;
use std::process::ExitCode;

use alloy_primitives::{Address, B256, U256};
use anyhow::bail;
use cohort_ledger::protocol::Cohort::CohortEvents;
use cohort_ledger::protocol::{CohortStages, stage_claim_id};
use serde::Serialize;

use super::{Recorded, Session, Signer, amount, evidence, recorded_lines};
use crate::args::int_in;

/// Attest a stage server's mismatch as its verifier, from a fraud claim's evidence file.
///
/// The file is what `cohort model lora --evidence FILE` writes: the server's signed commitment
/// to a forward call's rows and your recomputation of one of them, or the server's signed
/// answer to a backward and your recomputation of it. It is checked first (the digests, the
/// row, both signatures; see the evidence's checks in docs/stages-ledger.md) and refused by name if it does not hold; your key must be the
/// evidence's verifier key: each verifier attests its own recomputation. On the ledger you
/// must be an active, staked stage server of the same model and layers as the accused. When
/// `stageQuorum` verifiers have attested the same claim, the server is slashed.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    signer: Signer,
    /// The evidence file (a JSON claim, or an array of them).
    #[arg(long, value_name = "FILE")]
    evidence: PathBuf,
    /// Which claim of the file, from 0 (needed when it holds several).
    #[arg(long, value_name = "INDEX", value_parser = int_in(0..=1_000_000usize))]
    claim: Option<usize>,
    /// The period the call was paid under (default: the evidence's session); recorded with
    /// the attestation.
    #[arg(long, value_name = "N", value_parser = int_in(0..=u64::MAX))]
    period: Option<u64>,
}

#[derive(Serialize)]
struct Out {
    claim_id: B256,
    evidence: evidence::Claim,
    period: u64,
    verifier: Address,
    /// Attestations of this claim so far, and how many slash.
    attestations: String,
    quorum: u16,
    /// Whether this attestation slashed the server, what was slashed and each attester's
    /// share (base units).
    slashed: bool,
    slashed_amount: String,
    attester_share: String,
    checked_only: bool,
    calls: Vec<Recorded>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut claim = evidence::load(&self.evidence, self.claim)?;
        let mut s = self.signer.open()?;
        if s.me.public_key() != claim.verifier_key {
            bail!(
                "--key {}: its public key {} is not the evidence's verifier key {}: each \
                 verifier attests its own recomputation",
                self.signer_key(),
                hex::encode(s.me.public_key()),
                hex::encode(claim.verifier_key)
            );
        }
        let period = self.period.unwrap_or(claim.session);
        let Attestation {
            server,
            claim_id,
            count,
            quorum,
            slashed,
            share,
            recorded,
        } = attest(&mut s, &claim, period)?;
        claim.server = server;
        let me = s.address();
        let calls: Vec<Recorded> = recorded.into_iter().collect();
        let mut lines = vec![match (claim.row, claim.forward_call) {
            (Some(row), _) => format!(
                "claim {claim_id}: {server} committed {} for row {row} of call {} (session {}, \
                 step {}); recomputed {}",
                claim.committed, claim.call, claim.session, claim.step, claim.recomputed
            ),
            (None, forward) => format!(
                "claim {claim_id}: {server} answered the backward of call {} (session {}, step \
                 {}) with {}; recomputed {}{}",
                forward.unwrap_or_default(),
                claim.session,
                claim.step,
                claim.committed,
                claim.recomputed,
                claim
                    .differs
                    .as_deref()
                    .map(|d| format!(" ({d} differs)"))
                    .unwrap_or_default()
            ),
        }];
        if !claim.verifier_signature_checked {
            lines.push(
                "note: the verifier's signature was not checked (the file lacks the digests of \
                 the rows it recomputed after this one)"
                    .to_owned(),
            );
        }
        lines.extend(recorded_lines(&calls, s.check));
        if !s.check {
            lines.push(match slashed {
                Some(a) => format!(
                    "attestation {count} of {quorum}: {server} is slashed ({} tokens of its \
                     stake; {} to you) and inactive; its payers may take back its unreleased \
                     pay (cohort stage refund)",
                    cohort_ledger::demo::fmt_tokens(a),
                    cohort_ledger::demo::fmt_tokens(share)
                ),
                None => format!(
                    "attestation {count} of {quorum}: {server} is slashed when {quorum} \
                     verifiers have attested this claim"
                ),
            });
        }
        let out = Out {
            claim_id,
            evidence: claim,
            period,
            verifier: me,
            attestations: count.to_string(),
            quorum,
            slashed: slashed.is_some(),
            slashed_amount: amount(slashed.unwrap_or_default()),
            attester_share: amount(share),
            checked_only: s.check,
            calls,
        };
        s.report(&out, &lines)
    }

    fn signer_key(&self) -> String {
        self.signer.key_path().display().to_string()
    }
}

/// What an attestation recorded.
pub struct Attestation {
    /// The accused's address where the claim was attested.
    pub server: Address,
    pub claim_id: B256,
    /// Attestations of the claim so far, and how many slash.
    pub count: U256,
    pub quorum: u16,
    /// What was slashed, when this attestation slashed the server; the attester's share.
    pub slashed: Option<U256>,
    pub share: U256,
    pub recorded: Option<Recorded>,
}

/// Attests `claim` (checked evidence) in `s`, for pay `period`: the accused must be a stage
/// server on the ledger under the key that signed its commitment.
pub fn attest(
    s: &mut Session,
    claim: &evidence::Claim,
    period: u64,
) -> anyhow::Result<Attestation> {
    let me = s.address();
    // The accused must be a stage server on this ledger, under the key that signed (on a
    // chain, the address that registered that key).
    let server = super::resolve(&s.p, &super::Party::Key(claim.server_key))?;
    let rec = s.p.stage_server(server)?;
    if rec.modelHash == B256::ZERO {
        bail!(
            "the evidence's server (key {}, address {server}) is no stage server on this \
             ledger",
            hex::encode(claim.server_key)
        );
    }
    let registered =
        s.p.view(cohort_ledger::protocol::Cohort::participantCall { who: server })?;
    if registered.keyHash != cohort_core::key_hash(&claim.server_key) {
        bail!(
            "the evidence's server key {} is not the key {server} registered",
            hex::encode(claim.server_key)
        );
    }
    let quorum = s.p.stage_params()?.stageQuorum;
    let call = CohortStages::attestStageFraudCall {
        server,
        period,
        callDigest: claim.call,
        committedRow: claim.committed,
        recomputedRow: claim.recomputed,
    };
    let claim_id = stage_claim_id(server, claim.call, claim.committed, claim.recomputed);
    let recorded = s.send(call)?;
    let (mut slashed, mut share, mut count) = (None, U256::ZERO, U256::ZERO);
    for e in recorded.iter().flat_map(|r| &r.decoded) {
        match e {
            CohortEvents::StageFraudAttested(a) => count = a.count,
            CohortEvents::StageSlashed(x) => slashed = Some(x.amount),
            CohortEvents::StageAttesterRewarded(r) if r.verifier == me => share = r.amount,
            _ => {}
        }
    }
    Ok(Attestation {
        server,
        claim_id,
        count,
        quorum,
        slashed,
        share,
        recorded,
    })
}
