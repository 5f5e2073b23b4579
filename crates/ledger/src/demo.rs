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
    Cohort, Cohort::CohortEvents, Protocol, ProtocolError, Sent, accepted_set_hash, roles,
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

/// The parties of the governance and market story, derived from a seed.
#[derive(Debug, Clone)]
pub struct RunsCast {
    /// The run's coordinator.
    pub coordinator: Identity,
    /// Three clients: two founding members (60% and 40% of the bonded stake) and one the run
    /// admits by a vote.
    pub members: Vec<Identity>,
    /// Funds the run's royalties.
    pub sponsor: Identity,
}

impl RunsCast {
    /// The cast for `seed`.
    pub fn new(seed: u64) -> Self {
        let id = |n: &str| Identity::from_seed(seed, n);
        Self {
            coordinator: id("run-coordinator"),
            members: vec![id("member-1"), id("member-2"), id("newcomer")],
            sponsor: id("sponsor"),
        }
    }

    /// Everyone in it.
    pub fn everyone(&self) -> Vec<&Identity> {
        let mut v = vec![&self.coordinator];
        v.extend(self.members.iter());
        v.push(&self.sponsor);
        v
    }
}

/// What the governance and market story did.
#[derive(Debug, Clone, Serialize)]
pub struct RunsReport {
    /// The run (its coordinator's address).
    pub run: Address,
    /// Whether a proposal backed by the 40% member alone was refused at execution.
    pub minority_refused: bool,
    /// Whether the newcomer was admitted (60% for, 40% against) and joined the roster.
    pub newcomer_admitted: bool,
    /// Whether an execution before the timelock was refused.
    pub early_execution_refused: bool,
    /// Whether the round refused the update of a listed dataset under a recipe it does not
    /// allow.
    pub recipe_refused: bool,
    /// The royalty paid to the listed dataset's owner, to the coordinator, to the treasury.
    pub royalty: [U256; 3],
    /// Whether a second payment for the same round and dataset was refused.
    pub second_royalty_refused: bool,
    /// Whether the token supply is conserved at the end.
    pub supply_conserved: bool,
}

/// Per-run governance and the data market, after [`run`] (it uses `cast`'s governance and
/// validators): a coordinator enables its run's governance with two founding members; a
/// proposal the 40% member alone backs is refused; the newcomer is admitted 60% to 40% after
/// the timelock and joins the roster; its dataset is admitted; a founding member lists its
/// dataset with a recipe; a round trains under it (the other member's listed dataset, which
/// allows another recipe, is refused and sits it out), and the royalty is paid, split and
/// refused a second time.
pub fn runs<B: LedgerBackend>(
    p: &mut Protocol<B>,
    cast: &Cast,
    seed: u64,
) -> Result<RunsReport, ProtocolError> {
    use crate::protocol::GovParams;
    use crate::runs::{address_target, kind};
    let rc = RunsCast::new(seed);
    let gov = &cast.governance;
    let coord = &rc.coordinator;
    let [m1, m2, newcomer] = [&rc.members[0], &rc.members[1], &rc.members[2]];
    let addr = |p: &Protocol<B>, id: &Identity| p.backend().address_of(id);
    let tick = |p: &mut Protocol<B>, secs: u64| -> Result<(), ProtocolError> {
        let t = p.backend().head()?.time;
        p.backend_mut().set_time(t.saturating_add(secs))?;
        Ok(())
    };
    let refused = |r: Result<Sent<()>, ProtocolError>, f: fn(&Cohort::CohortErrors) -> bool| matches!(r.map_err(|e| e.revert().cloned()), Err(Some(e)) if f(&e));
    tick(p, 60)?;
    for who in rc.everyone() {
        p.mint(gov, addr(p, who), tokens(1_000))?;
    }
    let run = addr(p, coord);
    p.approve_coordinator(gov, run)?;
    p.register(coord, roles::COORDINATOR)?;
    let mut datasets = Vec::new();
    for m in &rc.members {
        p.register(m, roles::CLIENT | roles::DATA_OWNER)?;
        p.stake(m, tokens(100))?;
        let root = sha256(format!("the data of {}", m.name()).as_bytes()).into();
        datasets.push(p.commit_dataset(m, root, B256::ZERO, 500)?.value);
    }
    let founders = vec![addr(p, m1), addr(p, m2)];
    p.extend_roster(coord, &founders)?;
    let (voting, timelock) = (120, 60);
    p.enable_run_governance(
        coord,
        GovParams {
            quorumBps: 5_000,
            majorityBps: 5_000,
            votingPeriod: voting,
            timelock,
        },
        &datasets[..2],
    )?;
    p.set_market_fees(coord, 1_000, 500)?;
    p.gov_bond(m1, run, tokens(60))?;
    p.gov_bond(m2, run, tokens(40))?;
    tick(p, 10)?;
    // The 40% member alone cannot pass a proposal.
    let payload = sha256(b"learning_rate = 0.02").into();
    let lone = p
        .propose(m2, run, kind::HYPERPARAMS, B256::ZERO, payload)?
        .value;
    p.vote(m2, run, lone, true)?;
    // 60% admit the newcomer against the 40%.
    let target = address_target(addr(p, newcomer));
    let admit = p
        .propose(m1, run, kind::ADMIT_CLIENT, target, B256::ZERO)?
        .value;
    p.vote(m1, run, admit, true)?;
    p.vote(m2, run, admit, false)?;
    tick(p, voting)?;
    let early_execution_refused = refused(p.execute_proposal(m1, run, admit), |e| {
        matches!(e, Cohort::CohortErrors::Timelocked(_))
    });
    tick(p, timelock)?;
    let minority_refused = refused(p.execute_proposal(m1, run, lone), |e| {
        matches!(e, Cohort::CohortErrors::ProposalRejected(_))
    });
    p.execute_proposal(m1, run, admit)?;
    let nc = addr(p, newcomer);
    p.extend_roster(coord, &[nc])?;
    let admit_data = p
        .propose(m1, run, kind::ADMIT_DATASET, datasets[2], B256::ZERO)?
        .value;
    p.vote(m1, run, admit_data, true)?;
    tick(p, voting + timelock)?;
    p.execute_proposal(m2, run, admit_data)?;
    let admitted = p.view(crate::protocol::CohortRuns::admittedCall {
        run,
        client: nc,
        datasetId: datasets[2],
    })?;
    let newcomer_admitted = admitted.clientAdmitted && admitted.datasetAdmitted;

    // The market: member 1 lists its data for recipe A at 10 tokens a round, member 2 for
    // recipe B only; the sponsor funds the run.
    let recipe: B256 = sha256(b"recipe A: cohort 0.1, lm-attack.toml, q,v").into();
    let other: B256 = sha256(b"recipe B").into();
    p.list_dataset(m1, datasets[0], tokens(10), &[recipe])?;
    p.list_dataset(m2, datasets[1], tokens(5), &[other])?;
    let sponsor = &rc.sponsor;
    p.fund_royalties(sponsor, run, tokens(50))?;
    tick(p, 10)?;
    let round = p
        .open_round(
            coord,
            sha256(b"the run's model").into(),
            U256::ZERO,
            false,
            3,
        )?
        .value;
    p.set_round_recipe(coord, round, recipe)?;
    let blob = |m: &Identity| sha256(format!("update of {}", m.name()).as_bytes()).into();
    let recipe_refused = matches!(
        p.submit_update(m2, round, blob(m2), datasets[1], 500)
            .map_err(|e| e.revert().cloned()),
        Err(Some(Cohort::CohortErrors::RecipeNotAllowed(_)))
    );
    p.refuse_round(m2, round, datasets[1])?;
    let i1 = p
        .submit_update(m1, round, blob(m1), datasets[0], 500)?
        .value;
    p.submit_update(newcomer, round, blob(newcomer), datasets[2], 500)?;
    tick(p, 10)?;
    p.close_submissions(coord, round)?;
    let scores = [Score::from_f64(0.05), Score::from_f64(0.04)];
    let salt = |v: &Identity| B256::from(sha256(format!("salt of {}", v.name()).as_bytes()));
    for v in &cast.validators {
        p.commit_scores(v, round, &scores, salt(v))?;
    }
    p.close_commits(coord, round)?;
    for v in &cast.validators {
        p.reveal_scores(v, round, &scores, salt(v))?;
    }
    p.tally_all(coord, round, 8)?;
    p.finalize(coord, round, B256::ZERO, accepted_set_hash(&[0, 1]))?;
    p.settle_all(coord, round, 8)?;
    let mut royalty = [U256::ZERO; 3];
    for e in p.pay_royalty(sponsor, round, i1)?.events {
        if let CohortEvents::RoyaltyPaid(r) = e {
            royalty = [r.toOwner, r.toCoordinator, r.toTreasury];
        }
    }
    let second_royalty_refused = refused(p.pay_royalty(sponsor, round, i1), |e| {
        matches!(e, Cohort::CohortErrors::RoyaltyAlreadyPaid(_))
    });
    Ok(RunsReport {
        run,
        minority_refused,
        newcomer_admitted,
        early_execution_refused,
        recipe_refused,
        royalty,
        second_royalty_refused,
        supply_conserved: p.supply()?.conserved(),
    })
}
