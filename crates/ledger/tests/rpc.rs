#![cfg(feature = "evm-rpc")]
//! The protocol on anvil over JSON-RPC, and the same scenario differentially against the
//! embedded ledger.
//!
//! Needs anvil (`npm ci` in `contracts/`, or `$COHORT_ANVIL`; cohort-testkit's `find_anvil`
//! says where it looks). Without it these tests fail, unless `COHORT_SKIP_ANVIL=1`, which
//! turns them into a printed skip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, Bytes, Log, keccak256};
use cohort_ledger::demo::{self, Cast, DemoReport};
use cohort_ledger::merkle::{MerkleTree, leaf_hash, verify_consistency, verify_inclusion};
use cohort_ledger::protocol::{
    Cohort, Cohort::CohortErrors, Cohort::CohortEvents, decode_events, roles,
};
use cohort_ledger::{
    EmbeddedLedger, EvmRpcLedger, LedgerBackend, LedgerConfig, LedgerError, Protocol,
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

/// EIP-2028 calldata gas: 4 per zero byte, 16 per other byte.
fn calldata_gas(data: &[u8]) -> u64 {
    data.iter().map(|&b| if b == 0 { 4 } else { 16 }).sum()
}

/// Replaces every backend-specific 32-byte word in the logs (topics and data words) by a
/// placeholder, then decodes: participant addresses become `0x…01`, `0x…02`, … in cast order,
/// the contract `0x…ff`; dataset ids and score commitments (hashes over a chain address)
/// become placeholders numbered in order of appearance.
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
            let hash = match e {
                CohortEvents::DatasetCommitted(d) => d.id,
                CohortEvents::ScoresCommitted(s) => s.commitment,
                _ => continue,
            };
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
/// score commitments are replaced by placeholders (see [`normalized`]); the protocol outcome
/// (accepted/rejected sets, consensus scores, balances and stakes by name).
///
/// Not compared: the raw addresses, dataset ids and commitments (they differ by construction:
/// ed25519-derived vs secp256k1-derived senders); positions (entry numbers vs block numbers);
/// timestamps (none is in an event of this scenario).
///
/// Gas: execution costs the same on both (same bytecode, same Osaka rules); the calldata can
/// differ where it carries an address or a hash over one (mint, approveCoordinator,
/// commitScores, submitUpdate's dataset id), and calldata costs 4 gas per zero byte and 16
/// per other byte. So per transaction `gas_used - calldata_gas(input)` must be equal, and the
/// raw difference must be exactly the calldata difference.
#[test]
fn differential_events_and_gas() {
    let Some(anvil) = Anvil::start("differential_events_and_gas") else {
        return;
    };
    let (emb, emb_report, _dir) = embedded_demo();
    let (p, rpc_report) = demo::run(ledger(&anvil), 1).expect("demo runs on anvil");
    let rpc = p.into_backend();
    let cast = Cast::new(1);

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

    let emb_ev = normalized(
        &emb_txs,
        emb_report.contract,
        &cast
            .everyone()
            .iter()
            .map(|id| emb.address_of(id))
            .collect::<Vec<_>>(),
    );
    let rpc_ev = normalized(
        &rpc_txs,
        rpc_report.contract,
        &cast
            .everyone()
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
        assert_eq!(
            e.gas_used - ce,
            r.gas_used - cr,
            "tx {i}: gas beyond calldata differs (embedded {} anvil {})",
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
