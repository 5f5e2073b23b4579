//! A ledger for `cohort stage` tests: the protocol deployed, parties with key files and
//! tokens, and fraud claims' evidence as `cohort model lora --evidence` writes it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256};
use cohort_core::{Identity, keyfile, sha256, tokens};
use cohort_ledger::protocol::Protocol;
use cohort_ledger::{EmbeddedLedger, LedgerConfig};
use cohort_net::stage::commitment_message;

/// The ledger's first entry's time.
pub const START: u64 = 1_800_000_000;

/// A party: its key file and identity.
pub struct Party {
    pub key: PathBuf,
    pub id: Identity,
}

impl Party {
    pub fn address(&self) -> Address {
        self.id.address()
    }

    /// The address as `--json` output writes it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(self.id.address()).unwrap()
    }

    /// The address as a command-line argument.
    pub fn addr(&self) -> String {
        self.id.address().to_string()
    }
}

pub struct StageWorld {
    pub ledger: PathBuf,
    pub contract: Address,
    /// Stage servers (not yet registered as such): the first and third honest, the second a
    /// cheat; a fourth for what a fixture needs.
    pub servers: Vec<Party>,
    /// A client with tokens.
    pub client: Party,
    /// The model's SHA-256, hex.
    pub model: String,
    pub gov: Identity,
}

/// Makes `root/ledger` with the protocol deployed and 5,000 tokens minted to four servers'
/// and a client's key files (`root/NAME.pem`).
pub fn world(root: &Path) -> StageWorld {
    let gov = Identity::from_seed(21, "governance");
    let ledger = root.join("ledger");
    let led = EmbeddedLedger::create(
        &ledger,
        LedgerConfig::new("cohort.local/stages", gov.clone()).with_start_time(START),
    )
    .unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    let party = |name: &str| {
        let id = Identity::from_seed(21, name);
        let key = root.join(format!("{name}.pem"));
        keyfile::write_new(&key, &id).unwrap();
        Party { key, id }
    };
    let servers: Vec<Party> = ["stage-1", "stage-2", "stage-3", "stage-4"]
        .iter()
        .map(|n| party(n))
        .collect();
    let client = party("client");
    for who in servers.iter().chain([&client]) {
        p.mint(&gov, who.address(), tokens(5_000)).unwrap();
    }
    let contract = p.address();
    drop(p);
    StageWorld {
        ledger,
        contract,
        servers,
        client,
        model: sha256(b"the model's files").to_hex(),
        gov,
    }
}

impl StageWorld {
    /// The protocol on the ledger, for setting up what the CLI does not (closed on drop).
    pub fn protocol(&self) -> Protocol<EmbeddedLedger> {
        Protocol::at(EmbeddedLedger::open(&self.ledger).unwrap(), self.contract)
    }

    /// Registers, stakes and declares servers `which` (layers 1..3) through the library.
    pub fn register(&self, which: &[usize]) {
        let mut p = self.protocol();
        let model: B256 = sha256(b"the model's files").into();
        for &i in which {
            let s = &self.servers[i].id;
            p.register(s, cohort_ledger::protocol::roles::VALIDATOR)
                .unwrap();
            p.stake(s, tokens(1_500)).unwrap();
            p.register_stage(s, model, 1..3).unwrap();
        }
    }
}

/// The call both evidence files are about, and the server's commitment to its four rows.
pub fn call() -> ([u8; 32], Vec<[u8; 32]>) {
    let call = sha256(b"a forward call of the cheat's").0;
    let rows = (0..4u8).map(|r| sha256(&[b'r', r]).0).collect();
    (call, rows)
}

/// The evidence a client writes when `verifier` recomputes rows `checked` of the call
/// `server` answered and row `bad` differs (the rows before it in `checked` match): an object
/// with `cohort model lora --evidence`'s fields, the recomputed digest of `bad` being
/// `sha256("honest row")`.
pub fn evidence(
    server: &Identity,
    verifier: &Identity,
    checked: &[usize],
    bad: usize,
) -> serde_json::Value {
    let (call, rows) = call();
    let honest = sha256(b"honest row").0;
    let server_sig = server.sign(&commitment_message(&call, &rows));
    let mut vcall = sha256(b"the verifier's call").0;
    vcall[0] = checked.len() as u8;
    let vrows: Vec<[u8; 32]> = checked
        .iter()
        .map(|&r| if r == bad { honest } else { rows[r] })
        .collect();
    let verifier_sig = verifier.sign(&commitment_message(&vcall, &vrows));
    serde_json::json!({
        "server": "http://127.0.0.1:7002",
        "verifier": "http://127.0.0.1:7012",
        "session": 1,
        "step": 3,
        "row": bad,
        "committed": hex::encode(rows[bad]),
        "recomputed": hex::encode(honest),
        "server_call": hex::encode(call),
        "server_rows": rows.iter().map(hex::encode).collect::<Vec<_>>(),
        "server_key": hex::encode(server.public_key()),
        "server_signature": hex::encode(server_sig),
        "verifier_call": hex::encode(vcall),
        "verifier_rows": checked,
        "verifier_key": hex::encode(verifier.public_key()),
        "verifier_signature": hex::encode(verifier_sig),
    })
}

/// Writes `value` to `path` as the pipeline does (a JSON array of claims).
pub fn write_claims(path: &Path, claims: &[serde_json::Value]) {
    std::fs::write(path, serde_json::to_string_pretty(claims).unwrap()).unwrap();
}
