//! A short scenario through the whole protocol, on any backend: `cohort ledger demo` runs it,
//! and the backend test suites use it.
//!
//! Governance deploys and mints; a coordinator, three clients (alice, bob, mallory) and two
//! validators register and stake; each client commits a dataset; one round runs with two
//! honest updates and one harmful one, which the validators score below the acceptance
//! threshold; the round is tallied, finalized and settled.

use alloy_primitives::{Address, B256, U256};
use cohort_core::{Identity, Score, sha256, tokens};
use serde::Serialize;

use crate::backend::LedgerBackend;
use crate::merkle::{MerkleTree, leaf_hash};
use crate::protocol::{
    Cohort, Cohort::CohortEvents, Protocol, ProtocolError, accepted_set_hash, roles,
};

/// The cast of the demo, derived from a seed.
#[derive(Debug, Clone)]
pub struct Cast {
    /// Deploys the contract and mints.
    pub governance: Identity,
    /// Runs the round.
    pub coordinator: Identity,
    /// alice, bob (honest), mallory (harmful).
    pub clients: Vec<Identity>,
    /// Two validators.
    pub validators: Vec<Identity>,
}

impl Cast {
    /// The cast for `seed`.
    pub fn new(seed: u64) -> Self {
        let id = |n: &str| Identity::from_seed(seed, n);
        Self {
            governance: id("governance"),
            coordinator: id("coordinator"),
            clients: vec![id("alice"), id("bob"), id("mallory")],
            validators: vec![id("validator-1"), id("validator-2")],
        }
    }

    /// Everyone, governance first.
    pub fn everyone(&self) -> Vec<&Identity> {
        let mut v = vec![&self.governance, &self.coordinator];
        v.extend(self.clients.iter());
        v.extend(self.validators.iter());
        v
    }
}

/// One participant's standing after the demo.
#[derive(Debug, Clone, Serialize)]
pub struct Standing {
    /// Name.
    pub name: String,
    /// Address.
    pub address: Address,
    /// Free balance, whole tokens (floor).
    pub balance: String,
    /// Active stake, whole tokens (floor).
    pub stake: String,
}

/// What the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The contract address.
    pub contract: Address,
    /// Accepted update indices.
    pub accepted: Vec<u32>,
    /// Rejected update indices.
    pub rejected: Vec<u32>,
    /// Consensus score of each update.
    pub consensus: Vec<f64>,
    /// Every participant's balance and stake.
    pub standings: Vec<Standing>,
    /// Transactions sent.
    pub transactions: u64,
    /// Gas used by them.
    pub gas_used: u64,
    /// Whether `minted = balances + stakes + escrow + pools + treasury + burned`.
    pub supply_conserved: bool,
}

/// Formats base units as whole tokens with 4 decimals.
pub fn fmt_tokens(v: U256) -> String {
    let unit = U256::from(cohort_core::TOKEN);
    let whole = v / unit;
    let frac = (v % unit) / U256::from(100_000_000_000_000u64);
    format!("{whole}.{frac:0>4}")
}

/// The Merkle root over a dataset's shard hashes, as datasets are committed.
pub fn dataset_root(shards: &[&[u8]]) -> B256 {
    let mut t = MerkleTree::new();
    for s in shards {
        t.push_hash(leaf_hash(s));
    }
    t.root().into()
}

/// Deploys the protocol on `backend` and runs the demo round. Time advances one minute per
/// step from the backend's current time.
pub fn run<B: LedgerBackend>(
    backend: B,
    seed: u64,
) -> Result<(Protocol<B>, DemoReport), ProtocolError> {
    let cast = Cast::new(seed);
    let start = backend.head()?;
    let mut clock = start.time;
    let mut p = Protocol::deploy(backend, &cast.governance)?;
    let mut gas = 0u64;
    let mut tick = |p: &mut Protocol<B>| -> Result<(), ProtocolError> {
        clock = clock.saturating_add(60);
        p.backend_mut().set_time(clock)?;
        Ok(())
    };
    macro_rules! send {
        ($e:expr) => {{
            let s = $e?;
            gas += s.gas_used;
            s
        }};
    }
    let gov = cast.governance.clone();
    let coord = cast.coordinator.clone();
    for who in cast.everyone().into_iter().skip(1) {
        send!(p.mint(&gov, p.backend().address_of(who), tokens(10_000)));
    }
    send!(p.approve_coordinator(&gov, p.backend().address_of(&coord)));
    tick(&mut p)?;
    send!(p.register(&coord, roles::COORDINATOR));
    let mut datasets = Vec::new();
    for c in &cast.clients {
        send!(p.register(c, roles::CLIENT | roles::DATA_OWNER));
        send!(p.stake(c, tokens(500)));
        let shards: Vec<Vec<u8>> = (0..4)
            .map(|i| format!("{} shard {i}", c.name()).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
        let manifest = sha256(format!("manifest of {}", c.name()).as_bytes());
        let id = send!(p.commit_dataset(c, dataset_root(&refs), manifest.into(), 1_000)).value;
        datasets.push(id);
    }
    for v in &cast.validators {
        send!(p.register(v, roles::VALIDATOR));
        send!(p.stake(v, tokens(2_000)));
    }
    let roster: Vec<Address> = cast
        .clients
        .iter()
        .map(|c| p.backend().address_of(c))
        .collect();
    send!(p.send_unit(&coord, Cohort::extendRosterCall { clients: roster }));
    tick(&mut p)?;
    let global = sha256(b"global model, round 0");
    let round = send!(p.open_round(&coord, global.into(), tokens(100), false, 3)).value;
    for (c, d) in cast.clients.iter().zip(&datasets) {
        let blob = sha256(format!("lora delta of {}", c.name()).as_bytes());
        send!(p.submit_update(c, round, blob.into(), *d, 1_000));
    }
    tick(&mut p)?;
    send!(p.close_submissions(&coord, round));
    // Loss reductions each validator measured on its own held-out data.
    let scores = [
        vec![
            Score::from_f64(0.12),
            Score::from_f64(0.08),
            Score::from_f64(-0.30),
        ],
        vec![
            Score::from_f64(0.11),
            Score::from_f64(0.09),
            Score::from_f64(-0.25),
        ],
    ];
    let salts: Vec<B256> = cast
        .validators
        .iter()
        .map(|v| sha256(format!("salt of {}", v.name()).as_bytes()).into())
        .collect();
    for ((v, s), salt) in cast.validators.iter().zip(&scores).zip(&salts) {
        send!(p.commit_scores(v, round, s, *salt));
    }
    tick(&mut p)?;
    send!(p.close_commits(&coord, round));
    for ((v, s), salt) in cast.validators.iter().zip(&scores).zip(&salts) {
        send!(p.reveal_scores(v, round, s, *salt));
    }
    tick(&mut p)?;
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut consensus = vec![0.0; cast.clients.len()];
    for e in send!(p.tally_all(&coord, round, 64)).events {
        match e {
            CohortEvents::UpdateAccepted(a) => {
                accepted.push(a.index);
                consensus[a.index as usize] = Score(a.consensusScore).to_f64();
            }
            CohortEvents::UpdateRejected(r) => {
                rejected.push(r.index);
                consensus[r.index as usize] = Score(r.consensusScore).to_f64();
            }
            _ => {}
        }
    }
    accepted.sort_unstable();
    let aggregate = sha256(b"aggregate of the accepted updates, round 1");
    send!(p.finalize(
        &coord,
        round,
        aggregate.into(),
        accepted_set_hash(&accepted)
    ));
    tick(&mut p)?;
    send!(p.settle_all(&coord, round, 64));
    let mut standings = Vec::new();
    for who in cast.everyone() {
        let address = p.backend().address_of(who);
        let (active, _, _) = p.stake_of(address)?;
        standings.push(Standing {
            name: who.name().to_owned(),
            address,
            balance: fmt_tokens(p.balance_of(address)?),
            stake: fmt_tokens(active),
        });
    }
    let supply_conserved = p.supply()?.conserved();
    let report = DemoReport {
        contract: p.address(),
        accepted,
        rejected,
        consensus,
        standings,
        transactions: p.backend().head()?.size - start.size,
        gas_used: gas,
        supply_conserved,
    };
    Ok((p, report))
}

/// What [`forget`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// The request's id.
    pub request: u64,
    /// What was clawed back from alice (base units).
    pub clawed_back: U256,
    /// Executions the verifier rejected before one was verified.
    pub rejections: u32,
}

/// After [`run`]: alice asks for her dataset to be forgotten; the coordinator executes with
/// `retrain` and an evidence blob a validator rejects (the request reopens); the coordinator
/// executes again and the other validator accepts the evidence; the coordinator records that
/// alice's blobs were deleted. Every call succeeds, on any backend, so the same story can be
/// compared across backends.
pub fn forget<B: LedgerBackend>(
    p: &mut Protocol<B>,
    cast: &Cast,
) -> Result<ForgetReport, ProtocolError> {
    use crate::protocol::{UnlearningEvidence, unlearning};
    let alice = &cast.clients[0];
    let coord = &cast.coordinator;
    let owner = p.backend().address_of(alice);
    let (logs, _) = p.backend().logs_since(0)?;
    let logs: Vec<alloy_primitives::Log> = logs.into_iter().map(|(_, l)| l).collect();
    let dataset = crate::protocol::decode_events(p.address(), &logs)
        .into_iter()
        .find_map(|e| match e {
            CohortEvents::DatasetCommitted(d) if d.owner == owner => Some(d.id),
            _ => None,
        })
        .ok_or_else(|| {
            ProtocolError::Ledger(crate::LedgerError::Storage(
                "alice committed no dataset: run the demo first".into(),
            ))
        })?;
    let time = p.backend().head()?.time;
    p.backend_mut().set_time(time.saturating_add(60))?;
    let request = p
        .request_unlearning(
            alice,
            dataset,
            sha256(b"GDPR art. 17").into(),
            sha256(b"alice's forget set").into(),
        )?
        .value;
    let model = sha256(b"the model retrained without alice");
    let exec = p.record_unlearning(
        coord,
        request,
        unlearning::RETRAIN,
        model.into(),
        sha256(b"evidence, first try").into(),
    )?;
    let clawed_back = exec
        .events
        .iter()
        .find_map(|e| match e {
            CohortEvents::Clawback(c) => Some(c.amount),
            _ => None,
        })
        .unwrap_or_default();
    let measured = UnlearningEvidence {
        forgetMetric: Score::from_f64(0.51).0,
        miaAuc: Score::from_f64(0.50).0,
        testMetric: Score::from_f64(0.80).0,
        hasOracle: true,
        forgetGap: Score::from_f64(0.004).0,
        miaGap: Score::from_f64(-0.01).0,
    };
    p.verify_unlearning(
        &cast.validators[0],
        request,
        false,
        sha256(b"what the verifier measured").into(),
        measured.clone(),
        sha256(b"the forget metric is 30 points above the oracle's").into(),
    )?;
    let evidence = sha256(b"evidence, second try");
    p.record_unlearning(
        coord,
        request,
        unlearning::RETRAIN,
        model.into(),
        evidence.into(),
    )?;
    p.verify_unlearning(
        &cast.validators[1],
        request,
        true,
        evidence.into(),
        measured,
        B256::ZERO,
    )?;
    p.record_blob_deletion(coord, request, sha256(b"alice's blobs").into())?;
    let rejections = p.unlearning_request(request)?.rejections;
    Ok(ForgetReport {
        request,
        clawed_back,
        rejections,
    })
}

/// The parties of [`stages`], derived from a seed like [`Cast`].
#[derive(Debug, Clone)]
pub struct StageCast {
    /// Three stage servers of the same model and layers: the first honest, the second a
    /// cheat, the third honest; the first and third verify the second.
    pub servers: Vec<Identity>,
    /// A client that pays them.
    pub client: Identity,
}

impl StageCast {
    /// The stage cast for `seed`.
    pub fn new(seed: u64) -> Self {
        let id = |n: &str| Identity::from_seed(seed, n);
        Self {
            servers: vec![id("stage-1"), id("stage-2"), id("stage-3")],
            client: id("carol"),
        }
    }

    /// Everyone, the servers first.
    pub fn everyone(&self) -> Vec<&Identity> {
        let mut v: Vec<&Identity> = self.servers.iter().collect();
        v.push(&self.client);
        v
    }
}

/// What [`stages`] did.
#[derive(Debug, Clone, Serialize)]
pub struct StagesReport {
    /// The model the servers hold (the SHA-256 of its files).
    pub model: B256,
    /// Whether a release before the challenge window was refused.
    pub early_release_refused: bool,
    /// What the honest server was paid for period 1 (base units).
    pub released: U256,
    /// What was slashed from the cheat's stake.
    pub slashed: U256,
    /// Of that, what each of the two attesters got.
    pub attester_share: U256,
    /// What the client got back from the cheat's escrows (periods 1 and 2).
    pub refunded: U256,
    /// Whether the cheat is still active (it is not).
    pub cheat_active: bool,
    /// Whether `minted = balances + stakes + escrow + pools + treasury + burned` held.
    pub supply_conserved: bool,
}

/// After [`run`] (or on any fresh deployment), the stage servers' story: three servers of
/// the same model and layers 1..3 register, stake and declare themselves; a client escrows
/// pay for period 1 to the first and for periods 1 and 2 to the second; a release before the
/// challenge window is refused; the first and third server attest the same mismatch of the
/// second's (a quorum of two): it is slashed and inactive; after the window the first is paid
/// and the client takes back its pay to the second. Every recorded call succeeds, on any
/// backend, so the same story can be compared across backends.
pub fn stages<B: LedgerBackend>(
    p: &mut Protocol<B>,
    governance: &Identity,
    seed: u64,
) -> Result<StagesReport, ProtocolError> {
    let cast = StageCast::new(seed);
    let [honest, cheat, third] = [&cast.servers[0], &cast.servers[1], &cast.servers[2]];
    let client = &cast.client;
    let addr = |p: &Protocol<B>, id: &Identity| p.backend().address_of(id);
    let tick = |p: &mut Protocol<B>, secs: u64| -> Result<(), ProtocolError> {
        let t = p.backend().head()?.time;
        p.backend_mut().set_time(t.saturating_add(secs))?;
        Ok(())
    };
    tick(p, 60)?;
    for s in &cast.servers {
        p.mint(governance, addr(p, s), tokens(2_000))?;
    }
    p.mint(governance, addr(p, client), tokens(1_000))?;
    let model: B256 = sha256(b"the model's files").into();
    for s in &cast.servers {
        p.register(s, roles::VALIDATOR)?;
        p.stake(s, tokens(1_500))?;
        p.register_stage(s, model, 1..3)?;
    }
    tick(p, 60)?;
    let (h, c) = (addr(p, honest), addr(p, cheat));
    p.pay_stage(client, h, 1, 4_096, tokens(100))?;
    p.pay_stage(client, c, 1, 2_048, tokens(50))?;
    p.pay_stage(client, c, 2, 1_024, tokens(30))?;
    let early_release_refused = matches!(
        p.release_stage(honest, h, 1)
            .map_err(|e| e.revert().cloned()),
        Err(Some(Cohort::CohortErrors::EscrowLocked(_)))
    );
    tick(p, 60)?;
    let call: B256 = sha256(b"a forward call of the cheat's").into();
    let committed: B256 = sha256(b"the row it committed").into();
    let recomputed: B256 = sha256(b"the row the verifiers recomputed").into();
    p.attest_stage_fraud(honest, c, 1, call, committed, recomputed)?;
    let sent = p.attest_stage_fraud(third, c, 1, call, committed, recomputed)?;
    let (mut slashed, mut attester_share) = (U256::ZERO, U256::ZERO);
    for e in &sent.events {
        match e {
            CohortEvents::StageSlashed(s) => slashed = s.amount,
            CohortEvents::StageAttesterRewarded(r) => attester_share = r.amount,
            _ => {}
        }
    }
    let window = p.stage_params()?.stageChallengeWindow;
    tick(p, window)?;
    let released = p
        .release_stage(client, h, 1)?
        .events
        .iter()
        .find_map(|e| match e {
            CohortEvents::StageReleased(r) => Some(r.amount),
            _ => None,
        })
        .unwrap_or_default();
    let mut refunded = U256::ZERO;
    for period in [1, 2] {
        let who = addr(p, client);
        for e in p.refund_stage(honest, c, period, who)?.events {
            if let CohortEvents::StageRefunded(r) = e {
                refunded += r.amount;
            }
        }
    }
    Ok(StagesReport {
        model,
        early_release_refused,
        released,
        slashed,
        attester_share,
        refunded,
        cheat_active: p.stage_active(c)?,
        supply_conserved: p.supply()?.conserved(),
    })
}
