//! `cohort gov` and `cohort market` on the embedded ledger: a run's members bond, propose,
//! vote and execute after the timelock (a 40% coalition neither passes nor blocks a proposal);
//! a dataset is listed with a recipe, a round trains on it and pays its royalty once, another
//! listed dataset sits the round out for its recipe. What the CLI does not do (registrations,
//! the roster, the rounds) is set up through the library, as `cohort run` would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, U256};
use cohort_core::{Identity, Score, keyfile, sha256, tokens};
use cohort_ledger::protocol::{Protocol, accepted_set_hash, roles};
use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig, LedgerReader};
use common::{cohort, p, text};
use serde_json::Value;

const START: u64 = 1_800_000_000;

/// The tests of this file run one at a time (each opens its ledger in this process too).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Party {
    key: PathBuf,
    id: Identity,
}

impl Party {
    fn addr(&self) -> String {
        self.id.address().to_string()
    }
}

/// A ledger with the protocol, an approved coordinator with a roster of four clients (each with
/// a dataset), an outsider client, two validators and a sponsor, all with key files.
struct World {
    ledger: PathBuf,
    contract: Address,
    coord: Party,
    clients: Vec<Party>,
    outsider: Party,
    validators: Vec<Party>,
    sponsor: Party,
    datasets: Vec<B256>,
}

fn world(root: &Path) -> World {
    let gov = Identity::from_seed(29, "governance");
    let ledger = root.join("ledger");
    let led = EmbeddedLedger::create(
        &ledger,
        LedgerConfig::new("cohort.local/gov", gov.clone()).with_start_time(START),
    )
    .unwrap();
    let mut p = Protocol::deploy(led, &gov).unwrap();
    let party = |name: &str| {
        let id = Identity::from_seed(29, name);
        let key = root.join(format!("{name}.pem"));
        keyfile::write_new(&key, &id).unwrap();
        Party { key, id }
    };
    let coord = party("coordinator");
    let clients: Vec<Party> = (1..=4).map(|i| party(&format!("client-{i}"))).collect();
    let outsider = party("outsider");
    let validators: Vec<Party> = (1..=2).map(|i| party(&format!("validator-{i}"))).collect();
    let sponsor = party("sponsor");
    let everyone = [&coord, &outsider, &sponsor]
        .into_iter()
        .chain(&clients)
        .chain(&validators);
    for who in everyone {
        p.mint(&gov, who.id.address(), tokens(5_000)).unwrap();
    }
    p.approve_coordinator(&gov, coord.id.address()).unwrap();
    p.register(&coord.id, roles::COORDINATOR).unwrap();
    let mut datasets = Vec::new();
    for c in clients.iter().chain([&outsider]) {
        p.register(&c.id, roles::CLIENT | roles::DATA_OWNER)
            .unwrap();
        p.stake(&c.id, tokens(500)).unwrap();
        let root = sha256(c.id.name().as_bytes()).into();
        datasets.push(
            p.commit_dataset(&c.id, root, B256::ZERO, 100)
                .unwrap()
                .value,
        );
    }
    for v in &validators {
        p.register(&v.id, roles::VALIDATOR).unwrap();
        p.stake(&v.id, tokens(2_000)).unwrap();
    }
    let roster: Vec<Address> = clients.iter().map(|c| c.id.address()).collect();
    p.extend_roster(&coord.id, &roster).unwrap();
    let contract = p.address();
    World {
        ledger,
        contract,
        coord,
        clients,
        outsider,
        validators,
        sponsor,
        datasets,
    }
}

impl World {
    fn protocol(&self) -> Protocol<EmbeddedLedger> {
        Protocol::at(EmbeddedLedger::open(&self.ledger).unwrap(), self.contract)
    }

    fn entries(&self) -> u64 {
        LedgerReader::open(&self.ledger)
            .unwrap()
            .replay()
            .unwrap()
            .len()
    }

    /// `cohort ARGS --ledger L --json`; panics with the output if it fails.
    fn ok(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--ledger", p(&self.ledger), "--json"]);
        let o = cohort(&a);
        assert!(o.status.success(), "cohort {}: {}", a.join(" "), text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `cohort ARGS --ledger L` that must fail with exit code 2 naming `why`, writing nothing.
    fn refused(&self, args: &[&str], why: &str) {
        let before = self.entries();
        let mut a = args.to_vec();
        a.extend(["--ledger", p(&self.ledger)]);
        let o = cohort(&a);
        assert_eq!(
            o.status.code(),
            Some(2),
            "cohort {}: {}",
            a.join(" "),
            text(&o)
        );
        assert!(
            text(&o).contains(why),
            "cohort {}: {}",
            a.join(" "),
            text(&o)
        );
        assert_eq!(
            self.entries(),
            before,
            "a refused command wrote to the ledger"
        );
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn at(t: u64) -> String {
    (START + t).to_string()
}

#[test]
fn a_run_governs_itself_and_a_forty_percent_coalition_neither_passes_nor_blocks() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let run = w.coord.addr();
    let key = |p: &Party| p.key.to_str().unwrap().to_owned();
    let d: Vec<String> = w.datasets.iter().map(ToString::to_string).collect();
    let out = w.ok(&[
        "gov",
        "enable",
        "--key",
        &key(&w.coord),
        "--voting-period",
        "1h",
        "--timelock",
        "10m",
        "--dataset",
        &d[0],
        "--dataset",
        &d[1],
        "--dataset",
        &d[2],
        "--dataset",
        &d[3],
        "--at",
        &at(10),
    ]);
    assert_eq!(
        (
            &out["quorum_bps"],
            &out["majority_bps"],
            &out["voting_period"],
            &out["timelock"]
        ),
        (
            &Value::from(5_000),
            &Value::from(5_000),
            &Value::from(3_600),
            &Value::from(600)
        )
    );
    w.refused(
        &["gov", "enable", "--key", &key(&w.coord), "--at", &at(11)],
        "has governance already",
    );
    // Clients 1 and 2 bond 40% of the stake; 3 and 4 the other 60%. A non-member cannot.
    for (i, amount) in [(0, "20"), (1, "20"), (2, "30"), (3, "30")] {
        w.ok(&[
            "gov",
            "bond",
            "--key",
            &key(&w.clients[i]),
            "--run",
            &run,
            "--amount",
            amount,
            "--at",
            &at(20),
        ]);
    }
    w.refused(
        &[
            "gov",
            "bond",
            "--key",
            &key(&w.sponsor),
            "--run",
            &run,
            "--amount",
            "5",
            "--at",
            &at(21),
        ],
        "is no member of the run",
    );
    // Proposal 1: the coalition admits the outsider alone. Proposal 2: the 60% do, against
    // the coalition.
    let outsider = w.outsider.addr();
    let prop = |who: &Party| {
        w.ok(&[
            "gov",
            "propose",
            "--key",
            &key(who),
            "--run",
            &run,
            "--admit-client",
            &outsider,
            "--at",
            &at(30),
        ])
    };
    let first = prop(&w.clients[0]);
    assert_eq!(first["proposal"], 1);
    assert_eq!(first["voting_ends"], START + 30 + 3_600);
    assert_eq!(first["executable_at"], START + 30 + 3_600 + 600);
    assert_eq!(prop(&w.clients[2])["proposal"], 2);
    let vote = |who: &Party, n: &str, side: &str| {
        w.ok(&[
            "gov",
            "vote",
            "--key",
            &key(who),
            "--run",
            &run,
            "--proposal",
            n,
            side,
            "--at",
            &at(40),
        ])
    };
    vote(&w.clients[0], "1", "--for");
    let v = vote(&w.clients[1], "1", "--for");
    assert_eq!(v["passing"], false, "40% is below the quorum: {v}");
    vote(&w.clients[0], "2", "--against");
    vote(&w.clients[1], "2", "--against");
    vote(&w.clients[2], "2", "--for");
    let v = vote(&w.clients[3], "2", "--for");
    assert_eq!(v["passing"], true, "60% for, 40% against passes: {v}");
    w.refused(
        &[
            "gov",
            "vote",
            "--key",
            &key(&w.clients[3]),
            "--run",
            &run,
            "--proposal",
            "2",
            "--against",
            "--at",
            &at(41),
        ],
        "voted on proposal 2 already",
    );
    // Not before voting ends, nor before the timelock; then proposal 1 fails and 2 executes.
    let exec = |n: &str, t: u64| -> Vec<String> {
        vec![
            "gov".into(),
            "execute".into(),
            "--key".into(),
            key(&w.sponsor),
            "--run".into(),
            run.clone(),
            "--proposal".into(),
            n.into(),
            "--at".into(),
            at(t),
        ]
    };
    w.refused(&strs(&exec("2", 100)), "still being voted on");
    w.refused(&strs(&exec("2", 30 + 3_600 + 10)), "timelocked until");
    w.refused(&strs(&exec("1", 30 + 3_600 + 600)), "did not pass");
    let out = w.ok(&strs(&exec("2", 30 + 3_600 + 600)));
    assert_eq!(out["kind"], "admit-client");
    w.refused(&strs(&exec("2", 30 + 3_600 + 601)), "executed already");
    // The coordinator can now add the outsider to the roster; the contract agrees.
    let mut pr = w.protocol();
    pr.extend_roster(&w.coord.id, &[w.outsider.id.address()])
        .unwrap();
    drop(pr);

    // `show` reads without writing: the statuses and each vote.
    let before = w.entries();
    let show = w.ok(&["gov", "show", "--run", &run]);
    let statuses: Vec<&str> = show["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["rejected", "executed"], "{show}");
    assert_eq!(show["members"].as_array().unwrap().len(), 4);
    assert_eq!(show["bonded"], tokens(100).to_string());
    assert_eq!(
        show["admitted_clients"],
        serde_json::json!([w.outsider.id.address()])
    );
    let one = w.ok(&["gov", "show", "--run", &run, "--proposal", "2"]);
    let votes = one["proposals"][0]["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 4, "{one}");
    assert_eq!(
        votes.iter().filter(|v| v["support"] == true).count(),
        2,
        "{one}"
    );
    let o = cohort(&["gov", "show", "--run", &run, "--ledger", p(&w.ledger)]);
    assert!(o.status.success());
    assert!(text(&o).contains("admit client"), "{}", text(&o));
    assert_eq!(w.entries(), before, "show wrote to the ledger");
    w.refused(
        &["gov", "show", "--run", &run, "--proposal", "9"],
        "has 2 proposal(s)",
    );

    // Hyperparameters by file: a file that is not TOML is refused before anything opens.
    let hp = dir.path().join("hp.toml");
    std::fs::write(&hp, "[task]\nlr = 0.02\n").unwrap();
    let out = w.ok(&[
        "gov",
        "propose",
        "--key",
        &key(&w.clients[2]),
        "--run",
        &run,
        "--hyperparams",
        p(&hp),
        "--at",
        &at(5_000),
    ]);
    assert_eq!(
        out["payload"],
        serde_json::json!(B256::from(sha256(b"[task]\nlr = 0.02\n")))
    );
    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "= = =").unwrap();
    w.refused(
        &[
            "gov",
            "propose",
            "--key",
            &key(&w.clients[2]),
            "--run",
            &run,
            "--hyperparams",
            p(&garbage),
        ],
        "not TOML",
    );
    // Unbonding waits for the end of the votes cast.
    w.ok(&[
        "gov",
        "unbond",
        "--key",
        &key(&w.clients[0]),
        "--run",
        &run,
        "--amount",
        "20",
        "--at",
        &at(5_001),
    ]);
    // --check sends nothing.
    let out = w.ok(&[
        "gov",
        "bond",
        "--key",
        &key(&w.clients[0]),
        "--run",
        &run,
        "--amount",
        "1",
        "--check",
        "--at",
        &at(5_002),
    ]);
    assert_eq!(out["checked_only"], true);
    let before = w.entries();
    assert_eq!(w.entries(), before);

    // Bad arguments are refused by name before any work.
    for (args, why) in [
        (vec!["--quorum", "0"], "--quorum"),
        (vec!["--majority", "40%"], "--majority"),
        (vec!["--majority", "nan"], "--majority"),
        (vec!["--voting-period", "0"], "--voting-period"),
        (vec!["--voting-period=-1"], "--voting-period"),
        (vec!["--voting-period", "400d"], "--voting-period"),
        (vec!["--timelock", "1e9"], "--timelock"),
        (vec!["--dataset", "zz"], "--dataset"),
    ] {
        let mut a = vec!["gov", "enable", "--key", p(&w.coord.key)];
        a.extend(args);
        w.refused(&a, why);
    }
    for (args, why) in [
        (vec!["bond", "--run", &run, "--amount", "0"], "--amount"),
        (vec!["bond", "--run", &run, "--amount=-3"], "--amount"),
        (vec!["bond", "--run", "garbage", "--amount", "3"], "--run"),
        (
            vec!["vote", "--run", &run, "--proposal", "0", "--for"],
            "--proposal",
        ),
        (vec!["vote", "--run", &run, "--proposal", "1"], "--for"),
        (
            vec![
                "vote",
                "--run",
                &run,
                "--proposal",
                "1",
                "--for",
                "--against",
            ],
            "--against",
        ),
        (vec!["propose", "--run", &run], "--admit-client"),
        (
            vec!["propose", "--run", &run, "--approve-unlearning", "0"],
            "--approve-unlearning",
        ),
        (
            vec!["propose", "--run", &run, "--admit-dataset", "0x12"],
            "--admit-dataset",
        ),
    ] {
        let mut a = vec!["gov"];
        a.extend(args);
        a.extend(["--key", p(&w.clients[1].key)]);
        w.refused(&a, why);
    }
}

#[test]
fn a_listed_dataset_is_paid_once_per_round_and_another_sits_out_for_its_recipe() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let run = w.coord.addr();
    let key = |p: &Party| p.key.to_str().unwrap().to_owned();
    let d: Vec<String> = w.datasets.iter().map(ToString::to_string).collect();
    // The recipe of the README's run config (reads only the config).
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/lm-attack.toml");
    let o = cohort(&["market", "recipe", p(&config), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let recipe_out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let recipe = recipe_out["recipe"].as_str().unwrap().to_owned();
    assert_eq!(recipe_out["parts"]["cohort"], env!("CARGO_PKG_VERSION"));
    assert!(recipe_out["parts"]["adapter_targets"].is_array());
    // The same config gives the same recipe; another config another.
    let o2 = cohort(&["market", "recipe", p(&config), "--json"]);
    assert_eq!(o.stdout, o2.stdout);
    let other_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/graded.toml");
    let o3 = cohort(&["market", "recipe", p(&other_config), "--json"]);
    assert!(o3.status.success(), "{}", text(&o3));
    let other: Value = serde_json::from_slice(&o3.stdout).unwrap();
    let other = other["recipe"].as_str().unwrap().to_owned();
    assert_ne!(recipe, other);

    // Client 1 lists at 10 tokens a round for the recipe; client 2 at 5, for the other only.
    let out = w.ok(&[
        "market",
        "offer",
        "--key",
        &key(&w.clients[0]),
        "--dataset",
        &d[0],
        "--price",
        "10",
        "--recipe",
        &recipe,
        "--at",
        &at(10),
    ]);
    assert_eq!(
        (out["recipes"].as_u64(), out["active"].as_bool()),
        (Some(1), Some(true))
    );
    w.ok(&[
        "market",
        "offer",
        "--key",
        &key(&w.clients[1]),
        "--dataset",
        &d[1],
        "--price",
        "5",
        "--at",
        &at(10),
    ]);
    w.ok(&[
        "market",
        "allow",
        "--key",
        &key(&w.clients[1]),
        "--dataset",
        &d[1],
        "--recipe",
        &other,
        "--at",
        &at(11),
    ]);
    w.refused(
        &[
            "market",
            "offer",
            "--key",
            &key(&w.clients[1]),
            "--dataset",
            &d[0],
            "--price",
            "1",
        ],
        "does not own dataset",
    );
    w.refused(
        &[
            "market",
            "fees",
            "--key",
            &key(&w.coord),
            "--coordinator",
            "60%",
            "--treasury",
            "50%",
        ],
        "more than 100%",
    );
    w.ok(&[
        "market",
        "fees",
        "--key",
        &key(&w.coord),
        "--coordinator",
        "10%",
        "--treasury",
        "5%",
        "--at",
        &at(12),
    ]);
    w.ok(&[
        "market",
        "fund",
        "--key",
        &key(&w.sponsor),
        "--run",
        &run,
        "--amount",
        "12",
        "--at",
        &at(13),
    ]);

    // A round under the recipe (the coordinator's part through the library).
    let mut pr = w.protocol();
    pr.backend_mut().set_time(START + 20).unwrap();
    let round = pr
        .open_round(&w.coord.id, sha256(b"model").into(), tokens(50), false, 4)
        .unwrap()
        .value;
    let recipe_hash: B256 = recipe.parse().unwrap();
    pr.set_round_recipe(&w.coord.id, round, recipe_hash)
        .unwrap();
    let blob = |i: usize| sha256(format!("update {i}").as_bytes()).into();
    let refusal = pr
        .submit_update(&w.clients[1].id, round, blob(1), w.datasets[1], 50)
        .unwrap_err();
    assert!(
        refusal.to_string().contains("RecipeNotAllowed"),
        "{refusal}"
    );
    pr.submit_update(&w.clients[0].id, round, blob(0), w.datasets[0], 50)
        .unwrap();
    pr.submit_update(&w.clients[2].id, round, blob(2), w.datasets[2], 50)
        .unwrap();
    drop(pr);
    // Client 2 records that it sits the round out; client 1 cannot (its recipe is allowed).
    let out = w.ok(&[
        "market",
        "refuse",
        "--key",
        &key(&w.clients[1]),
        "--round",
        &round.to_string(),
        "--dataset",
        &d[1],
        "--at",
        &at(21),
    ]);
    assert_eq!(out["recipe"], serde_json::json!(recipe_hash));
    w.refused(
        &[
            "market",
            "refuse",
            "--key",
            &key(&w.clients[0]),
            "--round",
            &round.to_string(),
            "--dataset",
            &d[0],
        ],
        "nothing to refuse",
    );
    let r = round.to_string();
    w.refused(
        &["market", "pay", "--key", &key(&w.sponsor), "--round", &r],
        "owes no royalty",
    );
    let mut pr = w.protocol();
    pr.close_submissions(&w.coord.id, round).unwrap();
    let scores = [Score(50_000), Score(40_000)];
    for v in &w.validators {
        let salt = B256::from(sha256(v.id.name().as_bytes()));
        pr.commit_scores(&v.id, round, &scores, salt).unwrap();
    }
    pr.close_commits(&w.coord.id, round).unwrap();
    for v in &w.validators {
        let salt = B256::from(sha256(v.id.name().as_bytes()));
        pr.reveal_scores(&v.id, round, &scores, salt).unwrap();
    }
    pr.tally_all(&w.coord.id, round, 8).unwrap();
    pr.finalize(&w.coord.id, round, B256::ZERO, accepted_set_hash(&[0, 1]))
        .unwrap();
    pr.settle_all(&w.coord.id, round, 8).unwrap();
    drop(pr);

    // The royalty: 85% to the owner, 10% to the coordinator, 5% to the treasury; once.
    let out = w.ok(&[
        "market",
        "pay",
        "--key",
        &key(&w.sponsor),
        "--round",
        &r,
        "--at",
        &at(100),
    ]);
    let paid = out["paid"].as_array().unwrap();
    assert_eq!(paid.len(), 1, "{out}");
    assert_eq!(paid[0]["dataset"], serde_json::json!(w.datasets[0]));
    assert_eq!(
        paid[0]["to_owner"],
        (tokens(85) / U256::from(10)).to_string()
    );
    assert_eq!(paid[0]["to_coordinator"], tokens(1).to_string());
    assert_eq!(
        paid[0]["to_treasury"],
        (tokens(1) / U256::from(2)).to_string()
    );
    w.refused(
        &["market", "pay", "--key", &key(&w.sponsor), "--round", &r],
        "owes no royalty",
    );
    w.refused(
        &["market", "pay", "--key", &key(&w.sponsor), "--round", "99"],
        "no such round",
    );

    // list and show read without writing.
    let before = w.entries();
    let list = w.ok(&["market", "list"]);
    let rows = list["listings"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[0]["royalties"], tokens(10).to_string());
    assert_eq!(rows[1]["royalties"], "0");
    let show = w.ok(&["market", "show", "--dataset", &d[1]]);
    assert_eq!(show["refused"][0]["round"], round);
    assert_eq!(
        show["recipes"],
        serde_json::json!([other.parse::<B256>().unwrap()])
    );
    let show = w.ok(&["market", "show", "--dataset", &d[0]]);
    assert_eq!(show["paid"][0]["round"], round);
    assert_eq!(w.entries(), before, "list or show wrote to the ledger");
    w.refused(&["market", "show", "--dataset", &d[3]], "not listed");
    let o = cohort(&["market", "list", "--ledger", p(&w.ledger)]);
    assert!(text(&o).contains("listed"), "{}", text(&o));

    // Withdrawn, a listing is shown as such.
    w.ok(&[
        "market",
        "withdraw",
        "--key",
        &key(&w.clients[0]),
        "--dataset",
        &d[0],
        "--at",
        &at(200),
    ]);
    let show = w.ok(&["market", "show", "--dataset", &d[0]]);
    assert_eq!(show["active"], false);

    // Bad arguments are refused by name before any work.
    let k = key(&w.clients[0]);
    for (args, why) in [
        (vec!["offer", "--dataset", &d[0], "--price", "0"], "--price"),
        (
            vec!["offer", "--dataset", &d[0], "--price", "nan"],
            "--price",
        ),
        (
            vec![
                "offer",
                "--dataset",
                &d[0],
                "--price",
                "1",
                "--recipe",
                "xyz",
            ],
            "--recipe",
        ),
        (
            vec!["offer", "--dataset", "0x00", "--price", "1"],
            "--dataset",
        ),
        (
            vec!["fees", "--coordinator=-1", "--treasury", "0"],
            "--coordinator",
        ),
        (
            vec!["fees", "--coordinator", "101%", "--treasury", "0"],
            "--coordinator",
        ),
        (vec!["fund", "--run", &run, "--amount", "1e3"], "--amount"),
        (vec!["pay", "--round", "0"], "--round"),
        (vec!["pay", "--round=-1"], "--round"),
    ] {
        let mut a = vec!["market"];
        a.extend(args);
        a.extend(["--key", k.as_str()]);
        w.refused(&a, why);
    }
    let o = cohort(&["market", "recipe", "/nonexistent.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("nonexistent.toml"), "{}", text(&o));
}

/// `cohort run examples/market.toml`: the listed clients that allow the run's recipe are paid
/// a royalty every round that aggregates their update, split with the coordinator and the
/// treasury; the one that allows none sits every round out, each refusal on the ledger; `cohort
/// market list|show` read the same from the run's ledger.
#[test]
fn a_run_pays_its_listed_datasets_and_records_the_refusals() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/market.toml");
    let o = cohort(&["run", p(&config), "--out", p(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("client-2 sat out 5 round(s)"),
        "{}",
        text(&o)
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let rounds = summary["summary"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 5);
    let mut total = std::collections::BTreeMap::<String, U256>::new();
    for r in rounds {
        assert_eq!(r["refused"], serde_json::json!([2]), "{r}");
        let accepted: Vec<u64> = r["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let royalties = r["royalties"].as_object().unwrap();
        for k in [0u64, 1] {
            let name = format!("client-{k}");
            // 10 tokens a round, 85% to the owner, when its update was aggregated.
            let want = accepted.contains(&k).then(|| tokens(85) / U256::from(10));
            let got = royalties
                .get(&name)
                .map(|v| v.as_str().unwrap().parse::<U256>().unwrap());
            assert_eq!(got, want, "round {}: {name}", r["round"]);
            if let Some(g) = got {
                *total.entry(name).or_default() += g;
            }
        }
        assert!(!royalties.contains_key("client-2"));
    }
    assert!(!total.is_empty(), "no royalty was paid");
    // The market commands read the same from the run's ledger, and write nothing.
    let ledger = out.join("ledger");
    let size = || LedgerReader::open(&ledger).unwrap().replay().unwrap().len();
    let before = size();
    let o = cohort(&["market", "list", "--ledger", p(&ledger), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = list["listings"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{list}");
    let listed: U256 = rows
        .iter()
        .map(|r| r["royalties"].as_str().unwrap().parse::<U256>().unwrap())
        .fold(U256::ZERO, |a, b| a + b);
    let owners: U256 = total.values().fold(U256::ZERO, |a, b| a + *b);
    // What the owners got is 85% of what the datasets earned.
    assert_eq!(owners * U256::from(100), listed * U256::from(85));
    let unpaid = rows.iter().find(|r| r["recipes"] == 0).unwrap();
    let o = cohort(&[
        "market",
        "show",
        "--ledger",
        p(&ledger),
        "--dataset",
        unpaid["dataset"].as_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let show: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(show["refused"].as_array().unwrap().len(), 5, "{show}");
    assert_eq!(show["paid"].as_array().unwrap().len(), 0);
    assert_eq!(size(), before);
    // The market commands take the run's directory too (its ledger, with the operator key the
    // run keeps): client 0 (its key derived from the run's seed, 3) withdraws its listing.
    let key = dir.path().join("client-0.pem");
    keyfile::write_new(&key, &Identity::from_seed(3, "client-0")).unwrap();
    let paid = rows.iter().find(|r| r["royalties"] != "0").unwrap();
    let d0 = paid["dataset"].as_str().unwrap();
    let o = cohort(&[
        "market",
        "withdraw",
        "--ledger",
        p(&out),
        "--key",
        p(&key),
        "--dataset",
        d0,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&[
        "market",
        "show",
        "--ledger",
        p(&out),
        "--dataset",
        d0,
        "--json",
    ]);
    let show: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(show["active"], false, "{show}");
    assert_eq!(size(), before + 1);
    let o = cohort(&["ledger", "verify", p(&ledger)]);
    assert!(o.status.success(), "{}", text(&o));
}

/// `[governance]` for examples/market.toml: bonds of 50, votes open 10 minutes, a minute of
/// timelock.
const GOVERNED: [&str; 6] = [
    "--set",
    "governance.bond=50",
    "--set",
    "governance.voting_period=600",
    "--set",
    "governance.timelock=60",
];

/// `cohort ARGS --json`, which must succeed: its JSON.
fn json_of(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = cohort(&a);
    assert!(o.status.success(), "cohort {a:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `cohort run examples/market.toml --out OUT` with `[governance]` and `extra`: its output.
fn governed_run(out: &Path, extra: &[&str]) -> String {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/market.toml");
    let mut args = vec!["run", p(&config), "--out", p(out)];
    args.extend(GOVERNED);
    args.extend(extra);
    let o = cohort(&args);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

/// The key files of the run's clients 0..n (`cohort keys export`), in `dir`.
fn client_keys(run: &Path, dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|k| {
            let f = dir.join(format!("client-{k}.pem"));
            let party = format!("client-{k}");
            json_of(&["keys", "export", p(run), "--party", &party, "--out", p(&f)]);
            f
        })
        .collect()
}

/// Client 0 proposes `what` on the run's directory, every one of `keys` votes for it, and it
/// is executed once its timelock has run out; the proposal's JSON.
fn pass(run: &Path, keys: &[PathBuf], what: &[&str]) -> Value {
    let mut args = vec!["gov", "propose", "--ledger", p(run), "--key", p(&keys[0])];
    args.extend(what);
    let prop = json_of(&args);
    let id = prop["proposal"].to_string();
    for k in keys {
        let vote = [
            "gov",
            "vote",
            "--ledger",
            p(run),
            "--key",
            p(k),
            "--proposal",
            &id,
        ];
        json_of(&[&vote[..], &["--for"]].concat());
    }
    let after = (prop["executable_at"].as_u64().unwrap() + 1).to_string();
    let exec = ["gov", "execute", "--ledger", p(run), "--key", p(&keys[0])];
    json_of(&[&exec[..], &["--proposal", &id, "--at", &after]].concat());
    prop
}

/// A run with `[governance]`: every client bonds at enrolment; `cohort unlearn` records the
/// request and stops, before any work, until the members approve it; they do with `cohort gov`
/// on the run's directory (their keys from `cohort keys export`), after which the execution
/// and verification go through and `cohort run --resume` continues the run, the listed clients
/// still training under the same recipe.
#[test]
fn a_governed_run_forgets_a_client_only_once_its_members_approve() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    governed_run(&out, &[]);
    let run = p(&out);
    let show = json_of(&["gov", "show", "--ledger", run]);
    assert_eq!(show["members"].as_array().unwrap().len(), 8, "{show}");
    assert_eq!(
        show["members"][0]["name"], "client-0",
        "named on a run's directory: {show}"
    );
    assert_eq!(show["bonded"], tokens(400).to_string());
    let ledger = out.join("ledger");
    let size = || LedgerReader::open(&ledger).unwrap().replay().unwrap().len();
    let before = size();
    let o = cohort(&[
        "unlearn", run, "--client", "client-3", "--method", "retrain",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("waits for the approval"), "{}", text(&o));
    assert_eq!(size(), before + 1, "only the request is recorded");
    // The members approve it: 5 of 8 equal bonds vote for.
    let keys = client_keys(&out, dir.path(), 5);
    pass(&out, &keys, &["--approve-unlearning", "1"]);
    let o = cohort(&[
        "unlearn",
        "execute",
        run,
        "--request",
        "1",
        "--method",
        "retrain",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cohort(&[
        "unlearn",
        "verify",
        run,
        "--request",
        "1",
        "--as",
        "validator-1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // The run goes on from the unlearned model; its listed clients train under the same recipe.
    governed_run(&out, &["--resume", "--set", "coordinator.rounds=6"]);
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let last = &summary["summary"]["rounds"][5];
    assert_eq!(last["round"], 6, "{last}");
    assert_eq!(last["refused"], serde_json::json!([2]), "{last}");
    assert!(last["royalties"]["client-0"].is_string(), "{last}");
    // Refusals by name: a party the run does not have, an existing file.
    let x = dir.path().join("x.pem");
    let o = cohort(&[
        "keys",
        "export",
        run,
        "--party",
        "client-99",
        "--out",
        p(&x),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--party"), "{}", text(&o));
    let o = cohort(&[
        "keys",
        "export",
        run,
        "--party",
        "client-1",
        "--out",
        p(&keys[0]),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

/// Hyperparameters adopted by vote apply from the run's next round: `cohort gov propose
/// --hyperparams FILE` on the run's directory (the file goes into its blob store), the members
/// pass it, and `cohort run --resume` for more rounds adopts it (run.json records it; a later
/// resume keeps it). A file that changes what is not a hyperparameter is refused before
/// anything is written.
#[test]
fn hyperparameters_adopted_by_vote_apply_from_the_next_round() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    governed_run(&out, &[]);
    let run = p(&out);
    let keys = client_keys(&out, dir.path(), 5);
    let ledger = out.join("ledger");
    let size = || LedgerReader::open(&ledger).unwrap().replay().unwrap().len();
    let before = size();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[task]\ndim = 3\n").unwrap();
    let k0 = p(&keys[0]);
    let o = cohort(&[
        "gov",
        "propose",
        "--ledger",
        run,
        "--key",
        k0,
        "--hyperparams",
        p(&bad),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("task.dim is not a hyperparameter"), "{said}");
    assert_eq!(size(), before);
    let hp = dir.path().join("hp.toml");
    std::fs::write(&hp, "[task]\nlr = 0.02\n").unwrap();
    pass(&out, &keys, &["--hyperparams", p(&hp)]);
    let said = governed_run(&out, &["--resume", "--set", "coordinator.rounds=6"]);
    let adopting = "adopting the hyperparameters of proposal 1 from the next round: task.lr = 0.02";
    assert!(said.contains(adopting), "{said}");
    let record = || -> Value {
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap()
    };
    assert_eq!(record()["adopted_hyperparameters"], serde_json::json!([1]));
    assert_eq!(record()["config"]["task"]["lr"], 0.02);
    // The recipe changed with the config: the listed clients sit the new round out until
    // their owners allow it (deny by default).
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let refused = &summary["summary"]["rounds"][5]["refused"];
    assert_eq!(refused, &serde_json::json!([0, 1, 2]));
    // A later resume, with the config the run started with, keeps the adopted settings.
    let said = governed_run(&out, &["--resume", "--set", "coordinator.rounds=7"]);
    assert!(!said.contains("adopting"), "{said}");
    assert_eq!(record()["config"]["task"]["lr"], 0.02);
    assert_eq!(record()["config"]["coordinator"]["rounds"], 7);
}

/// `[market] source = "round"`: with no sponsor's fund, the royalties come out of each round's
/// reward pool: every round pays them, and the round's rewards share what is left.
#[test]
fn royalties_from_the_rounds_pool() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/market.toml");
    let o = cohort(&[
        "run",
        p(&config),
        "--out",
        p(&out),
        "--set",
        "market.source=\"round\"",
        "--set",
        "market.fund=0",
        "--set",
        "incentives.reward_per_round=100",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let tok = |v: &Value| v.as_str().unwrap().parse::<U256>().unwrap();
    for r in summary["summary"]["rounds"].as_array().unwrap() {
        let royalties: U256 = r["royalties"]
            .as_object()
            .unwrap()
            .values()
            .map(tok)
            .fold(U256::ZERO, |a, b| a + b);
        // Clients 0 and 1 trained: 2 * 10 tokens from the pool of 100.
        assert_eq!(royalties, tokens(20), "{r}");
        let rewards: U256 = r["payouts"]
            .as_object()
            .unwrap()
            .values()
            .map(|x| tok(&x["reward"]))
            .fold(U256::ZERO, |a, b| a + b);
        assert!(
            rewards <= tokens(80),
            "round {} paid {rewards} of an 80-token pool",
            r["round"]
        );
    }
    // A pool that cannot cover a round's royalties is refused by name before anything starts.
    let o = cohort(&[
        "run",
        p(&config),
        "--out",
        p(&dir.path().join("small")),
        "--set",
        "market.source=\"round\"",
        "--set",
        "incentives.reward_per_round=10",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("market.source"), "{}", text(&o));
    assert!(!dir.path().join("small").exists());
}
