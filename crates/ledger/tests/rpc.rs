#![cfg(feature = "evm-rpc")]
//! The protocol on anvil over JSON-RPC, the same scenario differentially against the embedded
//! ledger, and parties that sign their own calls for a relay to carry.
//!
//! Needs anvil (`npm ci` in `contracts/`, or `$COHORT_ANVIL`; cohort-testkit's `find_anvil`
//! says where it looks). Without it these tests fail, unless `COHORT_SKIP_ANVIL=1`, which
//! turns them into a printed skip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, Bytes, Log, U256, keccak256};
use alloy_sol_types::SolCall;
use cohort_core::{Identity, sha256, tokens};
use cohort_ledger::demo::{self, Cast, DemoReport};
use cohort_ledger::evm::{ExecError, TX_GAS_CAP};
use cohort_ledger::merkle::{MerkleTree, leaf_hash, verify_consistency, verify_inclusion};
use cohort_ledger::protocol::{
    Cohort, Cohort::CohortErrors, Cohort::CohortEvents, ProtocolError, decode_events, roles,
};
use cohort_ledger::{
    EmbeddedLedger, EvmRpcLedger, LedgerBackend, LedgerConfig, LedgerError, Protocol, SignedCall,
    TxContext,
};
use cohort_testkit::{Anvil, FUNDER_KEY, free_port};

/// A JSON-RPC ledger on `anvil`, funded by anvil's first default account.
fn ledger(anvil: &Anvil) -> EvmRpcLedger {
    let funder: PrivateKeySigner = FUNDER_KEY.parse().expect("anvil key parses");
    EvmRpcLedger::connect(anvil.url(), Some(funder)).expect("connects to anvil")
}

/// Start time of the embedded ledgers.
const EMBEDDED_START: u64 = 1_700_000_000;

fn embedded(dir: &std::path::Path) -> EmbeddedLedger {
    let op = Cast::new(1).governance;
    EmbeddedLedger::create(
        dir,
        LedgerConfig::new("cohort.local/test", op).with_start_time(EMBEDDED_START),
    )
    .expect("create ledger")
}

fn embedded_demo() -> (EmbeddedLedger, DemoReport, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, report) = demo::run(embedded(dir.path()), 1).expect("demo runs embedded");
    (p.into_backend(), report, dir)
}

#[test]
fn demo_on_anvil() {
    let Some(anvil) = Anvil::start("demo_on_anvil") else {
        return;
    };
    let (emb, expected, _dir) = embedded_demo();
    let ledger = ledger(&anvil);
    let t0 = ledger.head().expect("head").time;
    let (mut p, report) = demo::run(ledger, 1).expect("demo runs on anvil");

    assert_eq!(report.accepted, expected.accepted);
    assert_eq!(report.rejected, expected.rejected);
    assert_eq!(report.consensus, expected.consensus);
    assert!(report.supply_conserved, "supply not conserved on anvil");
    assert_eq!(report.transactions, expected.transactions);
    let cast = Cast::new(1);
    for (got, want) in report.standings.iter().zip(&expected.standings) {
        assert_eq!(
            (&got.name, &got.balance, &got.stake),
            (&want.name, &want.balance, &want.stake)
        );
    }
    // On chain the sender is the derived secp256k1 address, not the ed25519 one.
    for (who, s) in cast.everyone().into_iter().zip(&report.standings) {
        assert_eq!(s.address, p.backend().chain_address(who));
        assert_ne!(s.address, who.address());
    }
    let alice = &cast.clients[0];
    assert!(p.balance_of(alice.address()).expect("balance").is_zero());

    // Blocks run at the clock `set_time` set, as embedded entries do: everyone registered at
    // the same offset from the start on both, and the clock moved as far.
    let mut pe = Protocol::at(emb, expected.contract);
    for id in cast.everyone().into_iter().skip(1) {
        let who = p.backend().chain_address(id);
        let on_chain = p
            .view(Cohort::participantCall { who })
            .expect("participant")
            .registeredAt;
        let who = id.address();
        let embedded = pe
            .view(Cohort::participantCall { who })
            .expect("participant")
            .registeredAt;
        assert_eq!(
            on_chain - t0,
            embedded - EMBEDDED_START,
            "{} registered",
            id.name()
        );
    }
    let emb_elapsed = pe.backend().head().expect("head").time - EMBEDDED_START;
    assert_eq!(p.backend().head().expect("head").time - t0, emb_elapsed);

    // A revert at estimation comes back as the contract's decoded custom error.
    let err = p
        .register(alice, roles::CLIENT)
        .expect_err("registering twice reverts");
    match err.revert() {
        Some(CohortErrors::AlreadyRegistered(e)) => {
            assert_eq!(e.who, p.backend().chain_address(alice))
        }
        other => panic!("expected AlreadyRegistered, got {other:?} ({err})"),
    }

    // Time does not go back.
    let now = p.backend().head().expect("head").time;
    match p.backend_mut().set_time(now - 1) {
        Err(LedgerError::TimeWentBackwards { last, got }) => {
            assert_eq!((last, got), (now, now - 1))
        }
        other => panic!("expected TimeWentBackwards, got {other:?}"),
    }

    // The local log: one leaf per protocol transaction, proofs verify against the head.
    let led = p.into_backend();
    let head = led.head().expect("head");
    assert_eq!(head.size, led.recorded().len() as u64);
    assert_eq!(
        head.size, report.transactions,
        "the deployment and the demo's transactions"
    );
    let mut tree = MerkleTree::new();
    for (i, r) in led.recorded().iter().enumerate() {
        let leaf = leaf_hash(&r.encode(led.chain_id()));
        tree.push_hash(leaf);
        let proof = led
            .inclusion_proof(i as u64, head.size)
            .expect("inclusion proof");
        verify_inclusion(&leaf, i as u64, head.size, &proof, &head.root)
            .expect("inclusion verifies");
    }
    assert_eq!(tree.root(), head.root);
    let old = head.size / 2;
    let proof = led
        .consistency_proof(old, head.size)
        .expect("consistency proof");
    verify_consistency(
        old,
        head.size,
        &tree.root_at(old).expect("old root"),
        &head.root,
        &proof,
    )
    .expect("consistency verifies");
    let (logs, next) = led.logs_since(0).expect("logs");
    assert_eq!(
        logs.len(),
        led.recorded().iter().map(|r| r.logs.len()).sum::<usize>()
    );
    assert_eq!(next, led.recorded().last().expect("recorded").block + 1);
}

/// One transaction as both backends saw it.
struct Seen {
    input: Bytes,
    gas_used: u64,
    logs: Vec<Log>,
}

/// The gas `g` before a refund capped at a fifth of it (EIP-3529) that leaves `used`:
/// `g - floor(g / 5) == used`.
fn pre_refund(used: u64) -> impl Iterator<Item = u64> {
    let g = used / 4 * 5;
    (g.saturating_sub(5)..g + 10).filter(move |g| g - g / 5 == used)
}

/// EIP-2028 calldata gas: 4 per zero byte, 16 per other byte.
fn calldata_gas(data: &[u8]) -> u64 {
    data.iter().map(|&b| if b == 0 { 4 } else { 16 }).sum()
}

/// Replaces every backend-specific 32-byte word in the logs (topics and data words) by a
/// placeholder, then decodes: participant addresses become `0x…01`, `0x…02`, … in cast order,
/// the contract `0x…ff`; dataset ids, score commitments and stage claim ids (hashes over a
/// chain address) become placeholders numbered in order of appearance.
fn normalized(txs: &[Seen], contract: Address, participants: &[Address]) -> Vec<Vec<CohortEvents>> {
    let word = |a: Address| B256::left_padding_from(a.as_slice());
    let mut subst: HashMap<B256, B256> = HashMap::new();
    for (i, a) in participants.iter().enumerate() {
        subst.insert(word(*a), word(Address::with_last_byte(i as u8 + 1)));
    }
    subst.insert(word(contract), word(Address::with_last_byte(0xff)));
    let mut derived = 0u32;
    for t in txs {
        for e in decode_events(contract, &t.logs) {
            // Hashes over an address: dataset ids, commitments, and the beacon (a hash chain
            // of the roster's addresses and the revealers' salts) with the seeds drawn from it.
            let hash = match e {
                CohortEvents::DatasetCommitted(d) => d.id,
                CohortEvents::ScoresCommitted(s) => s.commitment,
                CohortEvents::RosterExtended(r) => r.beacon,
                CohortEvents::CohortSampled(c) => c.seed,
                CohortEvents::BeaconAdvanced(b) => b.beacon,
                // A stage fraud claim's id is a hash over the accused server's address.
                CohortEvents::StageFraudAttested(a) => a.claimId,
                CohortEvents::StageSlashed(s) => s.claimId,
                _ => continue,
            };
            if subst.contains_key(&hash) {
                continue;
            }
            derived += 1;
            subst.insert(hash, keccak256(format!("derived {derived}")));
        }
    }
    let swap = |w: B256| subst.get(&w).copied().unwrap_or(w);
    txs.iter()
        .map(|t| {
            let logs: Vec<Log> = t
                .logs
                .iter()
                .map(|l| {
                    let topics: Vec<B256> = l.data.topics().iter().map(|w| swap(*w)).collect();
                    let mut data = l.data.data.to_vec();
                    for chunk in data.chunks_exact_mut(32) {
                        let w = swap(B256::from_slice(chunk));
                        chunk.copy_from_slice(w.as_slice());
                    }
                    Log::new_unchecked(swap_addr(l.address, contract), topics, data.into())
                })
                .collect();
            decode_events(Address::with_last_byte(0xff), &logs)
        })
        .collect()
}

fn swap_addr(a: Address, contract: Address) -> Address {
    if a == contract {
        Address::with_last_byte(0xff)
    } else {
        a
    }
}

/// The same demo on both backends, transaction by transaction.
///
/// Compared exactly: the number of transactions; per transaction, the decoded events (kind,
/// order and every field) after participant addresses, the contract address, dataset ids and
/// score commitments, and the cohort beacon and seeds, are replaced by placeholders (see
/// [`normalized`]); the protocol outcome
/// (accepted/rejected sets, consensus scores, balances and stakes by name).
///
/// Not compared: the raw addresses, dataset ids and commitments (they differ by construction:
/// ed25519-derived vs secp256k1-derived senders); positions (entry numbers vs block numbers);
/// timestamps (none is in an event of this scenario).
///
/// Gas: execution costs the same on both (same bytecode, same Osaka rules); the calldata can
/// differ where it carries an address or a hash over one (mint, approveCoordinator,
/// extendRoster, commitScores, submitUpdate's dataset id, the stage calls' server and payer),
/// and calldata costs 4 gas per zero byte and 16 per other byte. So per transaction
/// `gas_used - calldata_gas(input)` must be equal, and the raw difference must be exactly the
/// calldata difference; where the refund cap binds, the same holds of the gas before the
/// refund.
#[test]
fn differential_events_and_gas() {
    let Some(anvil) = Anvil::start("differential_events_and_gas") else {
        return;
    };
    let cast = Cast::new(1);
    let stage_cast = demo::StageCast::new(1);
    let runs_cast = demo::RunsCast::new(1);
    // The demo round, then the unlearning story (a rejected execution, a verified one, the
    // blobs' deletion recorded), then the stage servers' (escrowed pay, a quorum's fraud claim
    // and slash, a release after the window, refunds).
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut p, emb_report) = demo::run(embedded(dir.path()), 1).expect("demo runs embedded");
    let emb_forget = demo::forget(&mut p, &cast).expect("unlearning embedded");
    let emb_stages = demo::stages(&mut p, &cast.governance, 1).expect("stages embedded");
    let emb_runs = demo::runs(&mut p, &cast, 1).expect("governance and market embedded");
    let emb = p.into_backend();
    let (mut p, rpc_report) = demo::run(ledger(&anvil), 1).expect("demo runs on anvil");
    let rpc_forget = demo::forget(&mut p, &cast).expect("unlearning on anvil");
    let rpc_stages = demo::stages(&mut p, &cast.governance, 1).expect("stages on anvil");
    let rpc_runs = demo::runs(&mut p, &cast, 1).expect("governance and market on anvil");
    let rpc = p.into_backend();
    // Per-run governance and the market: the same outcome on both, and the one expected.
    let runs_outcome = |r: &demo::RunsReport| {
        (
            r.minority_refused,
            r.newcomer_admitted,
            r.early_execution_refused,
            r.recipe_refused,
            r.royalty,
            r.second_royalty_refused,
            r.supply_conserved,
        )
    };
    assert_eq!(runs_outcome(&emb_runs), runs_outcome(&rpc_runs));
    assert_eq!(
        runs_outcome(&emb_runs),
        (
            true,
            true,
            true,
            true,
            [
                tokens(85) / U256::from(10),
                tokens(1),
                tokens(1) / U256::from(2)
            ],
            true,
            true
        ),
        "the governance and market story's outcome"
    );
    let outcome = |r: &demo::StagesReport| {
        (
            r.early_release_refused,
            r.released,
            r.slashed,
            r.attester_share,
            r.refunded,
            r.cheat_active,
            r.supply_conserved,
        )
    };
    assert_eq!(outcome(&emb_stages), outcome(&rpc_stages));
    assert_eq!(
        outcome(&emb_stages),
        (
            true,
            tokens(100),
            tokens(750),
            tokens(75) / U256::from(2),
            tokens(80),
            false,
            true
        ),
        "the stage story's outcome"
    );
    assert_eq!(
        (
            emb_forget.request,
            emb_forget.clawed_back,
            emb_forget.rejections
        ),
        (
            rpc_forget.request,
            rpc_forget.clawed_back,
            rpc_forget.rejections
        )
    );
    assert_eq!(emb_forget.rejections, 1);
    assert!(emb_forget.clawed_back > U256::ZERO);

    let emb_txs: Vec<Seen> = (0..emb.len())
        .map(|i| {
            let e = emb.entry(i).expect("entry");
            Seen {
                input: e.tx.tx.data,
                gas_used: e.receipt.gas_used,
                logs: e.receipt.logs,
            }
        })
        .collect();
    let rpc_txs: Vec<Seen> = rpc
        .recorded()
        .iter()
        .map(|r| Seen {
            input: r.input.clone(),
            gas_used: r.gas_used,
            logs: r.logs.clone(),
        })
        .collect();
    assert_eq!(emb_txs.len(), rpc_txs.len(), "transaction count");
    assert_eq!(emb_report.accepted, rpc_report.accepted);

    let everyone: Vec<&Identity> = cast
        .everyone()
        .into_iter()
        .chain(stage_cast.everyone())
        .chain(runs_cast.everyone())
        .collect();
    let emb_ev = normalized(
        &emb_txs,
        emb_report.contract,
        &everyone
            .iter()
            .map(|id| emb.address_of(id))
            .collect::<Vec<_>>(),
    );
    let rpc_ev = normalized(
        &rpc_txs,
        rpc_report.contract,
        &everyone
            .iter()
            .map(|id| rpc.address_of(id))
            .collect::<Vec<_>>(),
    );
    let events: usize = emb_ev.iter().map(Vec::len).sum();
    assert!(events > 30, "the demo emits events ({events})");
    for (i, (a, b)) in emb_ev.iter().zip(&rpc_ev).enumerate() {
        assert_eq!(a, b, "events of transaction {i}");
    }
    assert!(
        emb_ev
            .iter()
            .flatten()
            .any(|e| matches!(e, CohortEvents::RoundSettled(_))),
        "the round settles"
    );
    for (what, n) in [
        (
            "a rejected unlearning",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::UnlearningRejected(_)))
                .count(),
        ),
        (
            "a verified unlearning",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::UnlearningVerified(_)))
                .count(),
        ),
        (
            "the blobs' deletion",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::UnlearningBlobsDeleted(_)))
                .count(),
        ),
        (
            "a stage server slashed",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::StageSlashed(_)))
                .count(),
        ),
        (
            "a royalty paid",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::RoyaltyPaid(_)))
                .count(),
        ),
        (
            "a client admitted by a vote",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::ClientAdmitted(_)))
                .count(),
        ),
        (
            "a round refused for its recipe",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::RoundRefused(_)))
                .count(),
        ),
        (
            "a stage server paid",
            emb_ev
                .iter()
                .flatten()
                .filter(|e| matches!(e, CohortEvents::StageReleased(_)))
                .count(),
        ),
    ] {
        assert_eq!(n, 1, "{what}");
    }
    let count = |f: fn(&CohortEvents) -> bool| emb_ev.iter().flatten().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, CohortEvents::StageFraudAttested(_))),
        2,
        "two attestations"
    );
    assert_eq!(
        count(|e| matches!(e, CohortEvents::StageRefunded(_))),
        2,
        "two refunds"
    );

    let (mut equal, mut total_emb, mut total_rpc, mut other_input) = (0, 0u64, 0u64, 0);
    for (i, (e, r)) in emb_txs.iter().zip(&rpc_txs).enumerate() {
        total_emb += e.gas_used;
        total_rpc += r.gas_used;
        let (ce, cr) = (calldata_gas(&e.input), calldata_gas(&r.input));
        other_input += usize::from(e.input != r.input);
        let selector = |d: &Bytes| d.get(..4).map(hex::encode).unwrap_or_default();
        if e.gas_used == r.gas_used {
            equal += 1;
        } else {
            eprintln!(
                "tx {i} (selector {}): embedded {} anvil {} (calldata gas {ce} vs {cr})",
                selector(&e.input),
                e.gas_used,
                r.gas_used
            );
        }
        // Where the refund cap binds (EIP-3529: a refund of at most a fifth of the gas used,
        // as when refundStage clears storage slots), the calldata difference reaches the gas
        // used only four fifths of it: compare the gas before the refund, g with
        // g - floor(g / 5) = gas used.
        let capped = || {
            pre_refund(e.gas_used).any(|ge| {
                pre_refund(r.gas_used).any(|gr| ge.wrapping_sub(ce) == gr.wrapping_sub(cr))
            })
        };
        assert!(
            e.gas_used.wrapping_sub(ce) == r.gas_used.wrapping_sub(cr) || capped(),
            "tx {i} (selector {}): gas beyond calldata differs (embedded {} anvil {}, calldata \
             gas {ce} vs {cr})",
            selector(&e.input),
            e.gas_used,
            r.gas_used
        );
    }
    eprintln!(
        "{} transactions ({other_input} with backend-specific calldata), {equal} with equal gas; \
         total gas embedded {total_emb}, anvil {total_rpc}; {events} events, equal after \
         normalization",
        emb_txs.len()
    );
}

#[test]
fn endpoint_down_is_a_clear_error() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let err = EvmRpcLedger::connect(&url, None).expect_err("nobody listens there");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, LedgerError::Rpc(_)), "{err:?}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("cannot reach"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");

    let err = EvmRpcLedger::connect("https://example.invalid", None).expect_err("no TLS");
    eprintln!("{err}");
    assert!(err.to_string().contains("https://example.invalid"), "{err}");
}

/// What an outsider sees of the chain, through its own connection: the block height and an
/// account's nonces (mined and pending), to show that a refused call left no trace.
struct ChainView {
    rt: tokio::runtime::Runtime,
    provider: alloy::providers::RootProvider,
}

impl ChainView {
    fn new(url: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let provider = alloy::providers::RootProvider::new_http(url.parse().expect("url"));
        Self { rt, provider }
    }

    /// (block number, mined nonce, pending nonce) of `who`.
    fn state_of(&self, who: Address) -> (u64, u64, u64) {
        use alloy::providers::Provider;
        self.rt.block_on(async {
            let block = self
                .provider
                .get_block_number()
                .await
                .expect("block number");
            let mined = self
                .provider
                .get_transaction_count(who)
                .latest()
                .await
                .expect("nonce");
            let pending = self
                .provider
                .get_transaction_count(who)
                .pending()
                .await
                .expect("pending nonce");
            (block, mined, pending)
        })
    }

    /// `who`'s balance, wei.
    fn balance_of(&self, who: Address) -> U256 {
        use alloy::providers::Provider;
        self.rt
            .block_on(async { self.provider.get_balance(who).latest().await })
            .expect("balance")
    }

    /// The sender the chain recovered for transaction `hash`.
    fn sender_of(&self, hash: B256) -> Address {
        use alloy::network::TransactionResponse;
        use alloy::providers::Provider;
        self.rt
            .block_on(self.provider.get_transaction_by_hash(hash))
            .expect("transaction")
            .expect("the transaction is on chain")
            .from()
    }
}

/// A party's side: it asks the relay for its context and signs with its own key. The relay
/// (`p`) never sees the party's key.
fn party_signs<C: SolCall>(p: &Protocol<EvmRpcLedger>, who: &Identity, call: &C) -> SignedCall {
    let ctx = p.context_for(p.backend().address_of(who)).expect("context");
    let signed = SignedCall::sign_sol(who, p.address(), call, &ctx).expect("signs");
    // What a transport carries: the bytes.
    SignedCall::decode(&signed.encode()).expect("decodes")
}

/// A transaction signed by hand with `id`'s chain key: what a party could send that
/// [`SignedCall::sign`] never makes.
fn hand_signed<T>(id: &Identity, mut tx: T) -> SignedCall
where
    T: alloy::consensus::SignableTransaction<alloy::primitives::Signature>,
    alloy::consensus::TxEnvelope: From<alloy::consensus::Signed<T>>,
{
    use alloy::eips::eip2718::Encodable2718;
    use alloy::network::TxSignerSync;
    let signer = cohort_ledger::rpc::evm_signer(id);
    let sig = signer.sign_transaction_sync(&mut tx).expect("signs");
    SignedCall::Chain {
        from: signer.address(),
        raw: alloy::consensus::TxEnvelope::from(tx.into_signed(sig))
            .encoded_2718()
            .into(),
    }
}

/// `signed` with its claimed sender replaced.
fn claiming(signed: SignedCall, from: Address) -> SignedCall {
    match signed {
        SignedCall::Chain { raw, .. } => SignedCall::Chain { from, raw },
        other => panic!("a chain call expected, got {other:?}"),
    }
}

fn raw_of(signed: &SignedCall) -> Vec<u8> {
    match signed {
        SignedCall::Chain { raw, .. } => raw.to_vec(),
        other => panic!("a chain call expected, got {other:?}"),
    }
}

/// Relays `signed` straight to the backend (below `Protocol::relay`'s target and selector
/// check) and expects a refusal that leaves no trace: the local log, the block height and the
/// claimed author's nonces are as they were.
fn refused(p: &mut Protocol<EvmRpcLedger>, chain: &ChainView, signed: SignedCall) -> LedgerError {
    let author = signed.author();
    let before = (p.backend().head().expect("head"), chain.state_of(author));
    let err = match p.backend_mut().relay(signed) {
        Err(e) => e,
        Ok(o) => panic!("expected a refusal, got {o:?}"),
    };
    let after = (p.backend().head().expect("head"), chain.state_of(author));
    assert_eq!(after, before, "a refused call ({err}) left a trace");
    err
}

/// Parties sign their own calls on a real chain and the relay carries them: registration,
/// stake, dataset commitment, the coordinator's round and a client's update all land with the
/// party as the chain's sender. A call signed by the wrong key, a tampered raw transaction, a
/// call for another chain and a reused or skipped nonce are refused by name before anything is
/// sent; in a batch, the bad calls are refused and the good ones go through.
#[test]
fn parties_sign_and_the_relay_carries_their_calls_on_anvil() {
    let Some(anvil) = Anvil::start("parties_sign_and_the_relay_carries_their_calls_on_anvil")
    else {
        return;
    };
    let chain = ChainView::new(anvil.url());
    let gov = Identity::from_seed(5, "governance");
    let coordinator = Identity::from_seed(5, "coordinator");
    let alice = Identity::from_seed(5, "alice");
    let bob = Identity::from_seed(5, "bob");
    let mallory = Identity::from_seed(5, "mallory");
    let mut p = Protocol::deploy(ledger(&anvil), &gov).expect("deploys");
    let contract = p.address();
    let chain_id = p.backend().chain_id();
    let addr = |p: &Protocol<EvmRpcLedger>, id: &Identity| p.backend().address_of(id);
    for who in [&coordinator, &alice, &bob] {
        let to = addr(&p, who);
        p.mint(&gov, to, tokens(1_000)).expect("mint");
    }
    let to = addr(&p, &coordinator);
    p.approve_coordinator(&gov, to).expect("approve");

    // Relayed calls run at the clock `set_time` set, as the backend's own do.
    let clock = p.backend().head().expect("head").time + 3_600;
    p.backend_mut().set_time(clock).expect("set time");

    // Every party registers, stakes and commits its dataset itself.
    let reg = party_signs(
        &p,
        &coordinator,
        &Cohort::registerCall {
            roles: roles::COORDINATOR,
            keyHash: coordinator.key_hash(),
        },
    );
    p.relay::<Cohort::registerCall>(reg)
        .expect("coordinator registers");
    let mut datasets = Vec::new();
    for c in [&alice, &bob] {
        let reg = party_signs(
            &p,
            c,
            &Cohort::registerCall {
                roles: roles::CLIENT | roles::DATA_OWNER,
                keyHash: c.key_hash(),
            },
        );
        p.relay::<Cohort::registerCall>(reg).expect("registers");
        let stake = party_signs(
            &p,
            c,
            &Cohort::stakeCall {
                amount: tokens(100),
            },
        );
        p.relay::<Cohort::stakeCall>(stake).expect("stakes");
        let commit = party_signs(
            &p,
            c,
            &Cohort::commitDatasetCall {
                merkleRoot: sha256(format!("shards of {}", c.name()).as_bytes()).into(),
                manifestHash: sha256(b"manifest").into(),
                size: 100,
            },
        );
        datasets.push(
            p.relay::<Cohort::commitDatasetCall>(commit)
                .expect("commits")
                .value,
        );
        let who = addr(&p, c);
        let me = p
            .view(Cohort::participantCall { who })
            .expect("participant");
        assert_eq!(me.roles, roles::CLIENT | roles::DATA_OWNER);
        assert_eq!(
            me.keyHash,
            c.key_hash(),
            "the chain key is bound to the identity"
        );
        assert_eq!(me.registeredAt, clock, "registered at the ledger's clock");
        let last = p.backend().recorded().last().expect("recorded").tx_hash;
        assert_eq!(
            chain.sender_of(last),
            who,
            "the party is the chain's sender"
        );
    }
    assert_eq!(p.stake_of(addr(&p, &alice)).expect("stake").0, tokens(100));
    // The coordinator's roster: both clients, both sampled (a cohort of 2).
    let roster = party_signs(
        &p,
        &coordinator,
        &Cohort::extendRosterCall {
            clients: vec![addr(&p, &alice), addr(&p, &bob)],
        },
    );
    p.relay::<Cohort::extendRosterCall>(roster)
        .expect("the roster");
    let open = party_signs(
        &p,
        &coordinator,
        &Cohort::openRoundCall {
            globalModelHash: sha256(b"global").into(),
            rewardPool: tokens(10),
            fromTreasury: false,
            cohortSize: 2,
        },
    );
    let round = p
        .relay::<Cohort::openRoundCall>(open)
        .expect("opens a round")
        .value;
    let submit = |dataset: B256| Cohort::submitUpdateCall {
        roundId: round,
        blobHash: sha256(b"alice's delta").into(),
        datasetId: dataset,
        numSamples: 100,
    };

    // Alice's submission, signed by her and relayed.
    let ctx = p.context_for(addr(&p, &alice)).expect("context");
    let good = SignedCall::sign_sol(&alice, contract, &submit(datasets[0]), &ctx).expect("signs");
    let alice_addr = addr(&p, &alice);
    assert_eq!(good.author(), alice_addr);

    // Signed by another key (mallory's) but claiming to be alice's.
    let forged = claiming(
        SignedCall::sign_sol(&mallory, contract, &submit(datasets[0]), &ctx).expect("signs"),
        alice_addr,
    );
    let e = refused(&mut p, &chain, forged.clone());
    assert!(
        matches!(e, LedgerError::BadSignature { author } if author == alice_addr),
        "{e}"
    );
    let before = p.backend().head().expect("head");
    match p.relay::<Cohort::submitUpdateCall>(forged) {
        Err(ProtocolError::Ledger(LedgerError::BadSignature { author })) => {
            assert_eq!(author, alice_addr)
        }
        other => panic!("expected BadSignature through the protocol, got {other:?}"),
    }
    assert_eq!(p.backend().head().expect("head"), before);

    // Any flipped bit of the raw transaction: it no longer decodes, or it no longer recovers
    // to alice.
    let raw = raw_of(&good);
    let (mut bad_sig, mut malformed) = (0, 0);
    for at in 0..raw.len() {
        let mut r = raw.clone();
        r[at] ^= 1;
        let tampered = SignedCall::Chain {
            from: alice_addr,
            raw: Bytes::from(r),
        };
        match refused(&mut p, &chain, tampered) {
            LedgerError::BadSignature { author } if author == alice_addr => bad_sig += 1,
            LedgerError::Invalid { what, .. } => {
                assert!(what.contains("transaction"), "{what}");
                malformed += 1
            }
            other => panic!("byte {at} of {}: unexpected refusal {other}", raw.len()),
        }
    }
    eprintln!(
        "{} tampered raw transactions refused: {bad_sig} BadSignature, {malformed} malformed",
        raw.len()
    );
    assert!(
        bad_sig > raw.len() / 2,
        "the signed fields are most of the bytes"
    );

    // Signed for another chain.
    let TxContext::Chain {
        nonce,
        gas_limit,
        max_fee_per_gas,
        max_priority_fee_per_gas,
        ..
    } = ctx.clone()
    else {
        panic!("a chain context expected, got {ctx:?}")
    };
    let other_chain = TxContext::Chain {
        chain_id: chain_id + 1,
        nonce,
        gas_limit,
        max_fee_per_gas,
        max_priority_fee_per_gas,
    };
    let foreign =
        SignedCall::sign_sol(&alice, contract, &submit(datasets[0]), &other_chain).expect("signs");
    let e = refused(&mut p, &chain, foreign);
    assert!(
        matches!(e, LedgerError::WrongChain { expected, got } if expected == chain_id && got == chain_id + 1),
        "{e}"
    );

    // A skipped nonce.
    let ahead = SignedCall::sign_sol(
        &alice,
        contract,
        &submit(datasets[0]),
        &ctx.ahead(1).expect("fits"),
    )
    .expect("signs");
    let e = refused(&mut p, &chain, ahead);
    assert!(
        matches!(e, LedgerError::Nonce { author, expected, got } if author == alice_addr && got == expected + 1),
        "{e}"
    );

    // An embedded-ledger call.
    let embedded_ctx = TxContext::Embedded {
        origin: "cohort.local/other".into(),
        nonce: 0,
        time: 1,
    };
    let e = refused(
        &mut p,
        &chain,
        SignedCall::sign_sol(&alice, contract, &submit(datasets[0]), &embedded_ctx).expect("signs"),
    );
    assert!(matches!(e, LedgerError::Invalid { .. }), "{e}");

    // A call that reverts (alice registers again): the contract's error, and nothing is sent.
    let again = party_signs(
        &p,
        &alice,
        &Cohort::registerCall {
            roles: roles::CLIENT,
            keyHash: alice.key_hash(),
        },
    );
    let e = refused(&mut p, &chain, again.clone());
    assert!(
        matches!(e, LedgerError::Exec(ExecError::Reverted { .. })),
        "{e}"
    );
    match p.relay::<Cohort::registerCall>(again) {
        Err(e) => match e.revert() {
            Some(CohortErrors::AlreadyRegistered(r)) => assert_eq!(r.who, alice_addr),
            other => panic!("expected AlreadyRegistered, got {other:?} ({e})"),
        },
        Ok(_) => panic!("registering twice went through"),
    }

    // Signed by alice's own key, but not as `SignedCall::sign` signs: with ether attached to a
    // contract that takes none (it would revert on chain, at alice's cost, had the relay
    // simulated it without the value); a replayable pre-EIP-155 legacy transaction; a gas
    // limit above the protocol's cap.
    let by_hand = |value: U256, gas_limit: u64| alloy::consensus::TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas,
        max_priority_fee_per_gas,
        to: alloy::primitives::TxKind::Call(contract),
        value,
        access_list: Default::default(),
        input: submit(datasets[0]).abi_encode().into(),
    };
    let e = refused(
        &mut p,
        &chain,
        hand_signed(&alice, by_hand(U256::from(1), gas_limit)),
    );
    assert!(
        matches!(e, LedgerError::Exec(ExecError::Reverted { .. })),
        "{e}"
    );
    let legacy = alloy::consensus::TxLegacy {
        chain_id: None,
        nonce,
        gas_price: max_fee_per_gas,
        gas_limit,
        to: alloy::primitives::TxKind::Call(contract),
        value: U256::ZERO,
        input: submit(datasets[0]).abi_encode().into(),
    };
    let e = refused(&mut p, &chain, hand_signed(&alice, legacy));
    assert!(
        matches!(&e, LedgerError::Invalid { reason, .. } if reason.contains("Legacy") && reason.contains("EIP-1559")),
        "{e}"
    );
    let e = refused(
        &mut p,
        &chain,
        hand_signed(&alice, by_hand(U256::ZERO, TX_GAS_CAP + 1)),
    );
    assert!(
        matches!(&e, LedgerError::Invalid { reason, .. } if reason.contains("gas limit")),
        "{e}"
    );

    // The genuine call goes through, once: the update is alice's, sent by alice.
    let sent = p
        .relay::<Cohort::submitUpdateCall>(good.clone())
        .expect("alice's update is relayed");
    let upd = p.update(round, sent.value).expect("update");
    assert_eq!(upd.client, alice_addr);
    assert!(
        sent.events
            .iter()
            .any(|e| matches!(e, CohortEvents::UpdateSubmitted(u) if u.client == alice_addr))
    );
    let last = p.backend().recorded().last().expect("recorded").tx_hash;
    assert_eq!(chain.sender_of(last), alice_addr);
    // Its replay is refused: it is recorded already.
    let e = refused(&mut p, &chain, good);
    assert!(
        matches!(&e, LedgerError::Invalid { reason, .. } if reason.contains("recorded already")),
        "{e}"
    );
    // Another call under the same nonce is refused by its nonce.
    let reused = SignedCall::sign_sol(
        &alice,
        contract,
        &Cohort::stakeCall { amount: tokens(1) },
        &ctx,
    )
    .expect("signs");
    let e = refused(&mut p, &chain, reused);
    assert!(
        matches!(e, LedgerError::Nonce { author, expected, got } if author == alice_addr && expected == got + 1),
        "{e}"
    );

    // A batch: each call on its own merits.
    let bob_addr = addr(&p, &bob);
    let alice_stake = party_signs(&p, &alice, &Cohort::stakeCall { amount: tokens(1) });
    let bob_ctx = p.context_for(bob_addr).expect("context");
    let forged_bob = claiming(
        SignedCall::sign_sol(
            &mallory,
            contract,
            &Cohort::stakeCall { amount: tokens(50) },
            &bob_ctx,
        )
        .expect("signs"),
        bob_addr,
    );
    let bob_stake = SignedCall::sign_sol(
        &bob,
        contract,
        &Cohort::stakeCall { amount: tokens(2) },
        &bob_ctx,
    )
    .expect("signs");
    let size = p.backend().head().expect("head").size;
    let out = p
        .relay_batch::<Cohort::stakeCall>(vec![
            alice_stake.clone(),
            forged_bob,
            bob_stake,
            alice_stake,
        ])
        .expect("the batch is relayed");
    assert!(out[0].is_ok(), "{:?}", out[0].as_ref().err());
    assert!(
        matches!(&out[1], Err(ProtocolError::Ledger(LedgerError::BadSignature { author })) if *author == bob_addr),
        "{:?}",
        out[1].as_ref().err()
    );
    assert!(out[2].is_ok(), "{:?}", out[2].as_ref().err());
    // The same call twice in a batch: recorded once.
    assert!(
        matches!(&out[3], Err(ProtocolError::Ledger(LedgerError::Invalid { reason, .. })) if reason.contains("recorded already")),
        "{:?}",
        out[3].as_ref().err()
    );
    assert_eq!(p.backend().head().expect("head").size, size + 2);
    assert_eq!(p.stake_of(alice_addr).expect("stake").0, tokens(101));
    assert_eq!(p.stake_of(bob_addr).expect("stake").0, tokens(102));

    // The local log holds exactly the calls that went through, and its proofs verify.
    let led = p.into_backend();
    let head = led.head().expect("head");
    assert_eq!(head.size, led.recorded().len() as u64);
    for i in 0..head.size {
        let leaf = leaf_hash(&led.recorded()[i as usize].encode(led.chain_id()));
        let proof = led.inclusion_proof(i, head.size).expect("proof");
        verify_inclusion(&leaf, i, head.size, &proof, &head.root).expect("verifies");
    }
}

/// On a chain whose base fee is high, a party's context covers the most its call can cost:
/// the funder tops the party up to that, so the call the party signs is one the node accepts.
#[test]
fn a_relayed_call_is_paid_for_at_a_high_base_fee() {
    // 200 gwei: a call signed with the protocol's gas cap (2^24) may cost several ether, a
    // deployment about one.
    let Some(anvil) = Anvil::start_with(
        "a_relayed_call_is_paid_for_at_a_high_base_fee",
        &["--block-base-fee-per-gas", "200000000000"],
    ) else {
        return;
    };
    let chain = ChainView::new(anvil.url());
    let gov = Identity::from_seed(6, "governance");
    let alice = Identity::from_seed(6, "alice");
    let mut p = Protocol::deploy(ledger(&anvil), &gov).expect("deploys");
    let contract = p.address();
    let alice_addr = p.backend().address_of(&alice);
    p.mint(&gov, alice_addr, tokens(10)).expect("mints");
    for call in [
        Cohort::registerCall {
            roles: roles::CLIENT,
            keyHash: alice.key_hash(),
        }
        .abi_encode(),
        Cohort::stakeCall { amount: tokens(1) }.abi_encode(),
    ] {
        let ctx = p.context_for(alice_addr).expect("context");
        assert!(
            chain.balance_of(alice_addr) >= ctx.max_cost(),
            "alice cannot pay the most her call may cost"
        );
        let signed = SignedCall::sign(&alice, Some(contract), call.into(), &ctx).expect("signs");
        p.backend_mut()
            .relay(signed)
            .expect("the party's call is relayed");
    }
    assert_eq!(p.stake_of(alice_addr).expect("stake").0, tokens(1));
}

/// A party that puts its own signed calls on the chain (`ChainSubmitter`, what `cohort client
/// --chain-rpc` uses) before the relay sees them: the relay records each once, from its
/// receipt, with the values the protocol reads (a dataset's id, an update's index) recovered
/// from its events; the same call relayed again is refused, submitted again is waited for, not
/// sent. A call for another chain or ledger, or one that would revert, is not sent.
#[test]
fn a_party_submits_its_own_calls_and_the_relay_records_each_once() {
    let Some(anvil) = Anvil::start("a_party_submits_its_own_calls") else {
        return;
    };
    let chain = ChainView::new(anvil.url());
    let own = cohort_ledger::ChainSubmitter::connect(anvil.url()).expect("connects");
    let gov = Identity::from_seed(7, "governance");
    let coordinator = Identity::from_seed(7, "coordinator");
    let alice = Identity::from_seed(7, "alice");
    let mut p = Protocol::deploy(ledger(&anvil), &gov).expect("deploys");
    assert_eq!(
        cohort_ledger::ChainSubmit::chain_id(&own),
        p.backend().chain_id()
    );
    let contract = p.address();
    let addr = |p: &Protocol<EvmRpcLedger>, id: &Identity| p.backend().address_of(id);
    let alice_addr = addr(&p, &alice);
    for who in [&coordinator, &alice] {
        let to = addr(&p, who);
        p.mint(&gov, to, tokens(1_000)).expect("mint");
    }
    let to = addr(&p, &coordinator);
    p.approve_coordinator(&gov, to).expect("approve");
    let clock = p.backend().head().expect("head").time + 3_600;
    p.backend_mut().set_time(clock).expect("set time");

    // Alice registers, stakes and commits her dataset through her own node; the relay finds
    // each on chain.
    let register = party_signs(
        &p,
        &alice,
        &Cohort::registerCall {
            roles: roles::CLIENT | roles::DATA_OWNER,
            keyHash: alice.key_hash(),
        },
    );
    let sent = own.submit_blocking(&register).expect("submitted");
    assert!(!sent.known);
    assert_eq!(chain.sender_of(sent.tx_hash), alice_addr);
    let again = own.submit_blocking(&register).expect("known");
    assert!(again.known, "sent once");
    assert_eq!(again.tx_hash, sent.tx_hash);
    p.relay::<Cohort::registerCall>(register.clone())
        .expect("recorded from its receipt");
    assert_eq!(
        p.backend().recorded().last().expect("recorded").tx_hash,
        sent.tx_hash
    );
    let before = p.backend().head().expect("head");
    let e = p.backend_mut().relay(register).expect_err("recorded once");
    assert!(e.to_string().contains("recorded already"), "{e}");
    assert_eq!(p.backend().head().expect("head"), before);

    let stake = party_signs(
        &p,
        &alice,
        &Cohort::stakeCall {
            amount: tokens(100),
        },
    );
    own.submit_blocking(&stake).expect("submitted");
    p.relay::<Cohort::stakeCall>(stake).expect("recorded");
    let (root, manifest) = (sha256(b"alice's shards"), sha256(b"manifest"));
    let commit = party_signs(
        &p,
        &alice,
        &Cohort::commitDatasetCall {
            merkleRoot: root.into(),
            manifestHash: manifest.into(),
            size: 100,
        },
    );
    own.submit_blocking(&commit).expect("submitted");
    let dataset = p
        .relay::<Cohort::commitDatasetCall>(commit)
        .expect("recorded")
        .value;
    // The id the contract computed, recovered from DatasetCommitted.
    use alloy_sol_types::SolValue;
    assert_eq!(
        dataset,
        keccak256((alice_addr, B256::from(root), B256::from(manifest), 100u64).abi_encode_params())
    );

    // The coordinator's round (relayed), and alice's update through her own node.
    let register = party_signs(
        &p,
        &coordinator,
        &Cohort::registerCall {
            roles: roles::COORDINATOR,
            keyHash: coordinator.key_hash(),
        },
    );
    p.relay::<Cohort::registerCall>(register)
        .expect("registers");
    let roster = party_signs(
        &p,
        &coordinator,
        &Cohort::extendRosterCall {
            clients: vec![alice_addr],
        },
    );
    p.relay::<Cohort::extendRosterCall>(roster).expect("roster");
    let open = party_signs(
        &p,
        &coordinator,
        &Cohort::openRoundCall {
            globalModelHash: sha256(b"global").into(),
            rewardPool: tokens(10),
            fromTreasury: false,
            cohortSize: 1,
        },
    );
    let round = p.relay::<Cohort::openRoundCall>(open).expect("opens").value;
    let update = party_signs(
        &p,
        &alice,
        &Cohort::submitUpdateCall {
            roundId: round,
            blobHash: sha256(b"alice's delta").into(),
            datasetId: dataset,
            numSamples: 100,
        },
    );
    own.submit_blocking(&update).expect("submitted");
    let index = p
        .relay::<Cohort::submitUpdateCall>(update)
        .expect("recorded")
        .value;
    assert_eq!(index, 0, "recovered from UpdateSubmitted");

    // Not sent: a call that would revert (alice registers again), one signed for another
    // chain, one signed for an embedded ledger.
    let state = chain.state_of(alice_addr);
    let twice = party_signs(
        &p,
        &alice,
        &Cohort::registerCall {
            roles: roles::CLIENT,
            keyHash: alice.key_hash(),
        },
    );
    let e = own.submit_blocking(&twice).expect_err("reverts");
    assert!(
        matches!(e, LedgerError::Exec(ExecError::Reverted { .. })),
        "{e}"
    );
    let ctx = p.context_for(alice_addr).expect("context");
    let TxContext::Chain {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas,
        max_priority_fee_per_gas,
    } = ctx
    else {
        panic!("a chain context expected, got {ctx:?}")
    };
    let foreign = SignedCall::sign_sol(
        &alice,
        contract,
        &Cohort::stakeCall { amount: tokens(1) },
        &TxContext::Chain {
            chain_id: chain_id + 1,
            nonce,
            gas_limit,
            max_fee_per_gas,
            max_priority_fee_per_gas,
        },
    )
    .expect("signs");
    let e = own.submit_blocking(&foreign).expect_err("another chain");
    assert!(
        matches!(e, LedgerError::WrongChain { expected, got } if expected == chain_id && got == chain_id + 1),
        "{e}"
    );
    let embedded = SignedCall::sign_sol(
        &alice,
        contract,
        &Cohort::stakeCall { amount: tokens(1) },
        &TxContext::Embedded {
            origin: "cohort.local/other".into(),
            nonce: 0,
            time: 1,
        },
    )
    .expect("signs");
    let e = own
        .submit_blocking(&embedded)
        .expect_err("an embedded call");
    assert!(e.to_string().contains("embedded ledger"), "{e}");
    assert_eq!(chain.state_of(alice_addr), state, "nothing was sent");
}
