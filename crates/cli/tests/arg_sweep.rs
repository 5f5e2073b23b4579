//! Every argument of every subcommand, as an attacker would set it: zero, negative, NaN,
//! infinite, huge and garbage values. Whatever `cohort` does with them, it must never panic
//! (exit 101), abort (134) or die on a signal, and never hang; a value it refuses is refused by
//! name. The subcommands and their flags are read from `--help`, so a new flag is swept without
//! touching this file, and a new subcommand fails here until it has a base invocation below.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/stages.rs"]
mod stages;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{cohort, p, text};

/// The values every flag that takes one is tried with.
const BAD: &[&str] = &[
    "0",
    "-1",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "18446744073709551616",
    "x",
    "",
];

/// Values tried, besides `BAD` and every time, on flags whose value has a form of its own:
/// (subcommand, flag, values). Each must be refused, naming the flag (exit 2).
const EXTRA: &[(&str, &str, &[&str])] = &[(
    "serve-layers",
    "--misbehave",
    &[
        "crash-forward=0",
        "crash-forward=-1",
        "crash-forward=abc",
        "crash-forward=1e308",
        "crash-forward=18446744073709551616",
        "crash-forward=1000000001",
        "crash-forward=",
        "crash-backward=0",
        "crash-backward=-1",
        "crash-backward=nan",
        "crash-backward=18446744073709551615",
        "crash-sideways=1",
        "noise=nan",
        "noise=0",
        "stale=1",
    ],
)];

/// `BAD` split in three classes of one value of each kind; by default each flag is tried with
/// one class, chosen by the sweep's seed (so the classes rotate between flags and between
/// runs), which keeps the suite's sweep to about a minute. `COHORT_SWEEP=full` tries every
/// value on every flag.
fn values_for(flag_index: usize, seed: usize) -> Vec<&'static str> {
    if std::env::var("COHORT_SWEEP").as_deref() == Ok("full") {
        return BAD.to_vec();
    }
    let class = (flag_index + seed) % 3;
    BAD.iter().skip(class).step_by(3).copied().collect()
}

/// A command that accepts a value must still finish within this (debug build, shared CPU).
const TIMEOUT: Duration = Duration::from_secs(180);

/// Fixtures the base invocations refer to.
struct Fixtures {
    root: PathBuf,
    ledger: PathBuf,
    model: PathBuf,
    text: PathBuf,
    imdb: PathBuf,
    linear: PathBuf,
    key: PathBuf,
    run: PathBuf,
    /// `run` with unlearning request 1 filed (`requested`), and executed too (`executed`).
    requested: PathBuf,
    executed: PathBuf,
    /// An admission list for `linear` with 6 clients (the party key is client 0).
    admit: PathBuf,
    /// A ledger with stage servers, escrows, a slashed server and an evidence file.
    stage: StageFixture,
    /// A governed run with a proposal, listings and a round owing a royalty.
    gov: GovFixture,
}

/// What the `cohort stage` bases need: four stage servers of layers 1..3, the fourth slashed;
/// the client's pay escrowed for period 1 to the first, second and fourth; the first's evidence
/// against the second. The bases run with `--check`, so the sweep leaves the ledger as it is.
struct StageFixture {
    ledger: PathBuf,
    model: String,
    client: PathBuf,
    client_addr: String,
    /// The governance's key file.
    governance: PathBuf,
    verifier: PathBuf,
    honest: String,
    slashed: String,
    evidence: PathBuf,
}

impl StageFixture {
    fn new(root: &Path) -> Self {
        use cohort_core::tokens;
        std::fs::create_dir_all(root).unwrap();
        let w = stages::world(root);
        w.register(&[0, 1, 2, 3]);
        let mut p = w.protocol();
        for s in [0, 1, 3] {
            p.pay_stage(&w.client.id, w.servers[s].address(), 1, 10, tokens(10))
                .unwrap();
        }
        let (call, rows) = stages::call();
        for v in [0, 2] {
            p.attest_stage_fraud(
                &w.servers[v].id,
                w.servers[3].address(),
                1,
                call.into(),
                rows[0].into(),
                alloy_primitives::B256::repeat_byte(7),
            )
            .unwrap();
        }
        assert!(!p.stage_active(w.servers[3].address()).unwrap());
        drop(p);
        let evidence = root.join("evidence.json");
        stages::write_claims(
            &evidence,
            &[stages::evidence(
                &w.servers[1].id,
                &w.servers[0].id,
                &[0, 2],
                2,
            )],
        );
        let governance = root.join("governance.pem");
        cohort_core::keyfile::write_new(&governance, &w.gov).unwrap();
        Self {
            governance,
            model: w.model.clone(),
            client_addr: w.client.addr(),
            honest: w.servers[0].addr(),
            slashed: w.servers[3].addr(),
            ledger: w.ledger,
            client: w.client.key,
            verifier: w.servers[0].key.clone(),
            evidence,
        }
    }
}

/// What the `cohort gov` and `cohort market` bases need: a governed run (coordinator, two
/// bonded clients with datasets, proposal 1 made and voted for by the first, passing), another
/// coordinator without governance or rounds, an outsider client; the first client's dataset
/// listed for recipe R, the second's for another; round 1 of the run trained under R on the
/// first's data, finalized, its royalty funded and unpaid.
struct GovFixture {
    ledger: PathBuf,
    coord: String,
    coord_key: PathBuf,
    other_coord: PathBuf,
    clients: [PathBuf; 2],
    outsider: String,
    datasets: [String; 2],
    recipe: String,
}

impl GovFixture {
    /// The ledger's time when the fixture is made.
    const T: u64 = stages::START + 10;

    fn new(root: &Path) -> Self {
        use alloy_primitives::B256;
        use cohort_core::{Identity, Score, keyfile, sha256, tokens};
        use cohort_ledger::protocol::{GovParams, Protocol, accepted_set_hash, roles};
        use cohort_ledger::runs::kind;
        use cohort_ledger::{EmbeddedLedger, LedgerBackend, LedgerConfig};
        std::fs::create_dir_all(root).unwrap();
        let gov = Identity::from_seed(31, "governance");
        let ledger = root.join("ledger");
        let led = EmbeddedLedger::create(
            &ledger,
            LedgerConfig::new("cohort.local/gov-sweep", gov.clone()).with_start_time(stages::START),
        )
        .unwrap();
        let mut p = Protocol::deploy(led, &gov).unwrap();
        let party = |name: &str| {
            let id = Identity::from_seed(31, name);
            let key = root.join(format!("{name}.pem"));
            keyfile::write_new(&key, &id).unwrap();
            (key, id)
        };
        let (coord_key, coord) = party("coordinator");
        let (other_key, other) = party("other-coordinator");
        let (k1, c1) = party("client-1");
        let (k2, c2) = party("client-2");
        let (_, outsider) = party("outsider");
        let (_, v1) = party("validator-1");
        let (_, v2) = party("validator-2");
        for who in [&coord, &other, &c1, &c2, &outsider, &v1, &v2] {
            p.mint(&gov, who.address(), tokens(5_000)).unwrap();
        }
        for c in [&coord, &other] {
            p.approve_coordinator(&gov, c.address()).unwrap();
            p.register(c, roles::COORDINATOR).unwrap();
        }
        let mut datasets = Vec::new();
        for c in [&c1, &c2, &outsider] {
            p.register(c, roles::CLIENT | roles::DATA_OWNER).unwrap();
            p.stake(c, tokens(500)).unwrap();
            let root = sha256(c.name().as_bytes()).into();
            datasets.push(p.commit_dataset(c, root, B256::ZERO, 100).unwrap().value);
        }
        for v in [&v1, &v2] {
            p.register(v, roles::VALIDATOR).unwrap();
            p.stake(v, tokens(2_000)).unwrap();
        }
        p.extend_roster(&coord, &[c1.address(), c2.address()])
            .unwrap();
        let params = GovParams {
            quorumBps: 5_000,
            majorityBps: 5_000,
            votingPeriod: 1_000,
            timelock: 0,
        };
        p.enable_run_governance(&coord, params, &datasets[..2])
            .unwrap();
        let run = coord.address();
        p.backend_mut().set_time(Self::T).unwrap();
        p.gov_bond(&c1, run, tokens(10)).unwrap();
        p.gov_bond(&c2, run, tokens(10)).unwrap();
        let id = p
            .propose(
                &c1,
                run,
                kind::HYPERPARAMS,
                B256::ZERO,
                B256::repeat_byte(1),
            )
            .unwrap()
            .value;
        p.vote(&c1, run, id, true).unwrap();
        let recipe: B256 = sha256(b"recipe R").into();
        p.list_dataset(&c1, datasets[0], tokens(1), &[recipe])
            .unwrap();
        p.list_dataset(&c2, datasets[1], tokens(1), &[B256::repeat_byte(9)])
            .unwrap();
        p.fund_royalties(&c1, run, tokens(5)).unwrap();
        let round = p
            .open_round(&coord, sha256(b"model").into(), tokens(10), false, 2)
            .unwrap()
            .value;
        p.set_round_recipe(&coord, round, recipe).unwrap();
        p.submit_update(&c1, round, sha256(b"update").into(), datasets[0], 50)
            .unwrap();
        p.close_submissions(&coord, round).unwrap();
        let scores = [Score(10_000)];
        for v in [&v1, &v2] {
            let salt = B256::from(sha256(v.name().as_bytes()));
            p.commit_scores(v, round, &scores, salt).unwrap();
        }
        p.close_commits(&coord, round).unwrap();
        for v in [&v1, &v2] {
            let salt = B256::from(sha256(v.name().as_bytes()));
            p.reveal_scores(v, round, &scores, salt).unwrap();
        }
        p.tally_all(&coord, round, 8).unwrap();
        p.finalize(&coord, round, B256::ZERO, accepted_set_hash(&[0]))
            .unwrap();
        drop(p);
        Self {
            ledger,
            coord: run.to_string(),
            coord_key,
            other_coord: other_key,
            clients: [k1, k2],
            outsider: outsider.address().to_string(),
            datasets: [datasets[0].to_string(), datasets[1].to_string()],
            recipe: recipe.to_string(),
        }
    }

    /// A `cohort gov` or `cohort market` base: `cmd` with the ledger and `key`, at `dt` seconds
    /// after the fixture's time, checked only.
    fn line(&self, cmd: &str, key: &Path, dt: u64, rest: &str) -> String {
        format!(
            "{cmd} --ledger {} --key {} --at {} --check {rest}",
            p(&self.ledger),
            p(key),
            Self::T + dt
        )
    }
}

/// Copies the directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

impl Fixtures {
    fn new(root: &Path) -> Fixtures {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let data = repo.join("../shared/data");
        // A small corpus: the first 20,000 characters of Tiny Shakespeare.
        let corpus = std::fs::read_to_string(data.join("tinyshakespeare/input.txt")).unwrap();
        let text = root.join("text.txt");
        std::fs::write(&text, &corpus[..20_000]).unwrap();
        let ledger = root.join("ledger");
        let o = cohort(&["ledger", "demo", p(&ledger)]);
        assert!(o.status.success(), "{}", common::text(&o));
        let model = root.join("model");
        let o = cohort(&[
            "model",
            "pretrain",
            "--corpus",
            p(&text),
            "--preset",
            "test",
            "--out",
            p(&model),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "2",
        ]);
        assert!(o.status.success(), "{}", common::text(&o));
        let key = root.join("party.pem");
        let o = cohort(&["keys", "new", "--out", p(&key)]);
        assert!(o.status.success(), "{}", common::text(&o));
        let linear = repo.join("examples/attack-linear.toml");
        // Six clients and three validators (attack-linear's), the first client's key the
        // fixture's.
        let mut lines = Vec::new();
        for i in 0..9 {
            let file = if i == 0 {
                key.clone()
            } else {
                root.join(format!("admitted-{i}.pem"))
            };
            if i > 0 {
                let o = cohort(&["keys", "new", "--out", p(&file)]);
                assert!(o.status.success(), "{}", common::text(&o));
            }
            let o = cohort(&["keys", "show", p(&file), "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let role = if i < 6 { "client" } else { "validator" };
            lines.push(format!("{role} {}", v["public_key"].as_str().unwrap()));
        }
        let admit = root.join("admit.txt");
        std::fs::write(&admit, lines.join("\n") + "\n").unwrap();
        let run = root.join("run");
        let o = cohort(&[
            "run",
            p(&linear),
            "--out",
            p(&run),
            "--set",
            "clients=6",
            "--set",
            "coordinator.rounds=1",
        ]);
        assert!(o.status.success(), "{}", common::text(&o));
        // Copies with an unlearning request filed, and filed and executed, for `unlearn
        // execute` and `unlearn verify`.
        let requested = root.join("run-requested");
        copy_dir(&run, &requested);
        let o = cohort(&["unlearn", "request", p(&requested), "--client", "client-1"]);
        assert!(o.status.success(), "{}", common::text(&o));
        let executed = root.join("run-executed");
        copy_dir(&requested, &executed);
        let o = cohort(&["unlearn", "execute", p(&executed), "--request", "1"]);
        assert!(o.status.success(), "{}", common::text(&o));
        let stage = StageFixture::new(&root.join("stages"));
        let gov = GovFixture::new(&root.join("gov"));
        Fixtures {
            stage,
            gov,
            key,
            run,
            requested,
            executed,
            admit,
            root: root.to_path_buf(),
            ledger,
            model,
            text,
            imdb: data.join("imdb"),
            linear,
        }
    }

    /// A quick, valid invocation of `cmd` (`{fresh}` becomes a path that does not exist yet).
    fn base(&self, cmd: &str) -> Option<Vec<String>> {
        let l = p(&self.ledger);
        let m = p(&self.model);
        let t = p(&self.text);
        let i = p(&self.imdb);
        let sim = |m: &str| format!("sim {m} --data {i} --num-words 20 --train-size 200 --seed 1");
        let g = &self.gov;
        let line = match cmd {
            "ledger demo" => "ledger demo {fresh}".to_owned(),
            "keys new" => "keys new --out {fresh}".to_owned(),
            "keys show" => format!("keys show {}", p(&self.key)),
            "keys export" => format!(
                "keys export {} --party client-1 --out {{fresh}}",
                p(&self.run)
            ),
            "keys tls" => "keys tls --out {fresh} --name 127.0.0.1".to_owned(),
            "provenance" => format!("provenance {}", p(&self.run)),
            "value" => format!(
                "value {} --method tmc-shapley --permutations 4",
                p(&self.run)
            ),
            "unlearn" => format!("unlearn {} --client client-0 --check", p(&self.run)),
            "unlearn request" => {
                format!("unlearn request {} --client client-0 --check", p(&self.run))
            }
            "unlearn execute" => format!(
                "unlearn execute {} --request 1 --method retrain --check",
                p(&self.requested)
            ),
            "unlearn verify" => format!(
                "unlearn verify {} --request 1 --as validator-1 --check",
                p(&self.executed)
            ),
            "ledger show" => format!("ledger show {l}"),
            "ledger verify" => format!("ledger verify {l}"),
            "ledger prove" => format!("ledger prove {l} --entry 0"),
            "ledger deploy" => format!(
                "ledger deploy --ledger {{fresh}} --governance-key {}",
                p(&self.stage.governance)
            ),
            "ledger mint" => format!(
                "ledger mint --ledger {} --key {} --to {} --amount 1 --check",
                p(&self.stage.ledger),
                p(&self.stage.governance),
                self.stage.client_addr
            ),
            "run" => format!(
                "run {} --out {{fresh}} --set clients=6 --set coordinator.rounds=1",
                p(&self.linear)
            ),
            // The network's commands check everything a start would and exit (--check): a
            // start would listen, or dial a coordinator.
            "coordinator" => format!(
                "coordinator {} --out {{fresh}} --listen 127.0.0.1:0 --admit {} --insecure \
                 --set clients=6 --set coordinator.rounds=1 --check",
                p(&self.linear),
                p(&self.admit)
            ),
            "client" | "validator" => format!(
                "{cmd} --coordinator http://127.0.0.1:9 --insecure --key {} --config {} \
                 --set clients=6 --index 0 --give-up 1 --check",
                p(&self.key),
                p(&self.linear)
            ),
            "model pretrain" => format!(
                "model pretrain --corpus {t} --preset test --out {{fresh}} --steps 2 --warmup 1 --batch 2"
            ),
            "model eval" => format!("model eval {m} --data {t} --max-windows 2 --batch 2"),
            "model generate" => format!("model generate {m} --prompt To --max-new 4"),
            "model lora" => {
                format!("model lora {m} --data {t} --out {{fresh}} --steps 2 --batch 2")
            }
            "model svd" => format!("model svd {m} --rank 2"),
            "model calibrate" => {
                format!("model calibrate {m} --data {t} --batches 1 --batch 2 --seq-len 8 --force")
            }
            "serve-layers" => {
                format!("serve-layers {m} --layers 0..1 --listen 127.0.0.1:0 --insecure --check")
            }
            "bench ledger" => "bench ledger --entries 50 --batch 10 --proofs 5".to_owned(),
            "bench net" => format!(
                "bench net --config {lin} --set clients=4 --set coordinator.rounds=1 --repeats 1 \
                 --blob-mib 1 --fleet 6 --fleet-sampled 3 --fleet-rounds 1 --fleet-config {lin}",
                lin = p(&self.linear)
            ),
            "bench train" => "bench train --preset test --steps 1 --warmup 0 --batch 2".to_owned(),
            "bench pipeline" => {
                "bench pipeline --preset test --stages 2 --steps 1 --batch 2".to_owned()
            }
            "bench verify" => "bench verify --preset test --trials 1 --calls 3 --honest-calls 2 \
                               --cost-calls 1 --batch 2 --tokens 8"
                .to_owned(),
            "stage register" => format!(
                "stage register --ledger {} --key {} --model {} --layers 0..2 --stake 1500 --check",
                p(&self.stage.ledger),
                p(&self.stage.client),
                self.stage.model
            ),
            "stage pay" => format!(
                "stage pay --ledger {} --key {} --server {} --period 1 --tokens 10 --amount 1 \
                 --check",
                p(&self.stage.ledger),
                p(&self.stage.client),
                self.stage.honest
            ),
            "stage attest" => format!(
                "stage attest --ledger {} --key {} --evidence {} --claim 0 --period 1 --check",
                p(&self.stage.ledger),
                p(&self.stage.verifier),
                p(&self.stage.evidence)
            ),
            "stage release" => format!(
                "stage release --ledger {} --key {} --server {} --period 1 --at {} --check",
                p(&self.stage.ledger),
                p(&self.stage.client),
                self.stage.honest,
                stages::START + 100_000
            ),
            "stage refund" => format!(
                "stage refund --ledger {} --key {} --server {} --period 1 --payer {} --check",
                p(&self.stage.ledger),
                p(&self.stage.client),
                self.stage.slashed,
                self.stage.client_addr
            ),
            "stage show" => format!(
                "stage show --ledger {} --server {} --period 1 --payer {}",
                p(&self.stage.ledger),
                self.stage.honest,
                self.stage.client_addr
            ),
            "gov enable" => g.line(cmd, &g.other_coord, 1, "--dataset") + " " + &g.datasets[0],
            "gov bond" => g.line(
                cmd,
                &g.clients[0],
                1,
                &format!("--run {} --amount 1", g.coord),
            ),
            "gov unbond" => g.line(
                cmd,
                &g.clients[0],
                5_000,
                &format!("--run {} --amount 1", g.coord),
            ),
            "gov propose" => g.line(
                cmd,
                &g.clients[0],
                1,
                &format!("--run {} --admit-client {}", g.coord, g.outsider),
            ),
            "gov vote" => g.line(
                cmd,
                &g.clients[1],
                1,
                &format!("--run {} --proposal 1 --for", g.coord),
            ),
            "gov execute" => g.line(
                cmd,
                &g.clients[1],
                5_000,
                &format!("--run {} --proposal 1", g.coord),
            ),
            "gov show" => format!(
                "gov show --ledger {} --run {} --proposal 1",
                p(&g.ledger),
                g.coord
            ),
            "market recipe" => format!("market recipe {}", p(&self.linear)),
            "market offer" => g.line(
                cmd,
                &g.clients[0],
                1,
                &format!(
                    "--dataset {} --price 2 --recipe {}",
                    g.datasets[0], g.recipe
                ),
            ),
            "market allow" => g.line(
                cmd,
                &g.clients[1],
                1,
                &format!("--dataset {} --recipe {}", g.datasets[1], g.recipe),
            ),
            "market withdraw" => g.line(
                cmd,
                &g.clients[1],
                1,
                &format!("--dataset {}", g.datasets[1]),
            ),
            "market fees" => g.line(cmd, &g.other_coord, 1, "--coordinator 10 --treasury 5"),
            "market fund" => g.line(
                cmd,
                &g.clients[0],
                1,
                &format!("--run {} --amount 1", g.coord),
            ),
            "market refuse" => g.line(
                cmd,
                &g.clients[1],
                1,
                &format!("--round 1 --dataset {}", g.datasets[1]),
            ),
            "market pay" => g.line(cmd, &g.coord_key, 1, "--round 1"),
            "market list" => format!("market list --ledger {}", p(&g.ledger)),
            "market show" => format!(
                "market show --ledger {} --dataset {}",
                p(&g.ledger),
                g.datasets[0]
            ),
            "sim drt" | "sim points" => sim(&cmd[4..]),
            "sim market" => sim("market") + " --rounds 1 --init-samples 50 --market-test-size 50",
            "sim baseline" => format!("sim baseline --data {i} --num-words 20 --train-size 200"),
            "sim sweep" => format!(
                "sim sweep --data {i} --num-words 20 --train-size 200 --seeds 1 --engine native \
                 --mechanisms drt --models perceptron --threads 1"
            ),
            _ => return None,
        };
        Some(line.split_whitespace().map(str::to_owned).collect())
    }
}

/// The leaf subcommands, from the help of `cohort` and of each group.
fn subcommands() -> Vec<String> {
    let mut leaves = Vec::new();
    for group in commands_in(&[]) {
        let inner = commands_in(&[group.as_str()]);
        if inner.is_empty() {
            leaves.push(group);
        } else {
            leaves.extend(inner.into_iter().map(|c| format!("{group} {c}")));
        }
    }
    leaves
}

fn commands_in(path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = String::from_utf8(cohort(&args).stdout).unwrap();
    let Some((_, rest)) = help.split_once("Commands:\n") else {
        return Vec::new();
    };
    rest.lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The flags of `cmd` that take a value (`--name <VALUE>`).
fn value_flags(cmd: &str) -> Vec<String> {
    let mut args: Vec<&str> = cmd.split(' ').collect();
    args.push("--help");
    let help = String::from_utf8(cohort(&args).stdout).unwrap();
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let rest = l.strip_prefix("--")?;
            let (name, after) = rest.split_once(' ')?;
            after.starts_with('<').then(|| format!("--{name}"))
        })
        .collect();
    flags.dedup();
    flags
}

struct Outcome {
    cmd: String,
    args: Vec<String>,
    seconds: f64,
    code: Option<i32>,
    output: String,
    timed_out: bool,
}

fn run_with_timeout(args: &[String], cwd: &Path) -> (Option<i32>, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cohort starts");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ho = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).ok();
        b
    });
    let he = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).ok();
        b
    });
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break (s, false);
        }
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            break (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = std::process::Output {
        status,
        stdout: ho.join().unwrap(),
        stderr: he.join().unwrap(),
    };
    (o.status.code(), text(&o), timed_out)
}

#[test]
fn no_argument_makes_cohort_panic_abort_or_hang() {
    let seed: usize = std::env::var("COHORT_SWEEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>() as usize % 3);
    eprintln!("sweep seed {seed} (COHORT_SWEEP_SEED={seed} repeats this sweep)");
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixtures::new(dir.path());
    let leaves = subcommands();
    assert!(leaves.len() >= 15, "found only {leaves:?}");
    let mut jobs = VecDeque::new();
    let mut missing = Vec::new();
    let mut fresh = 0usize;
    for cmd in &leaves {
        let Some(base) = fx.base(cmd) else {
            missing.push(cmd.clone());
            continue;
        };
        for (fi, flag) in value_flags(cmd).into_iter().enumerate() {
            let extra = EXTRA
                .iter()
                .filter(|(c, f, _)| c == cmd && *f == flag)
                .flat_map(|(_, _, v)| v.iter().copied());
            for v in values_for(fi, seed).into_iter().chain(extra) {
                let mut args = base.clone();
                // Replace the base's value of this flag, if it has one, so clap does not refuse a
                // repeated flag before the value is even looked at.
                if let Some(k) = args.iter().position(|a| *a == flag) {
                    args.remove(k);
                    args.remove(k);
                }
                args.push(format!("{flag}={v}"));
                for a in &mut args {
                    if a.contains("{fresh}") {
                        fresh += 1;
                        *a = a.replace("{fresh}", p(&fx.root.join(format!("fresh-{fresh}"))));
                    }
                }
                jobs.push_back((cmd.clone(), args));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "subcommands without a base invocation in arg_sweep.rs: {missing:?}"
    );
    for (cmd, flag, _) in EXTRA {
        assert!(
            leaves.iter().any(|l| l == cmd) && value_flags(cmd).iter().any(|f| f == flag),
            "EXTRA names {cmd} {flag}, which is not a subcommand's flag taking a value"
        );
    }
    // Each base invocation must itself succeed, or its sweep would only test a refusal.
    let cwd = fx.root.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    for cmd in &leaves {
        let mut args = fx.base(cmd).unwrap();
        for a in &mut args {
            *a = a.replace(
                "{fresh}",
                p(&fx.root.join(format!("base-{}", cmd.replace(' ', "-")))),
            );
        }
        let start = Instant::now();
        let (code, output, _) = run_with_timeout(&args, &cwd);
        assert_eq!(
            code,
            Some(0),
            "the base invocation `cohort {}` failed:\n{output}",
            args.join(" ")
        );
        eprintln!("base {cmd:<16} {:>6.2} s", start.elapsed().as_secs_f64());
    }
    let total = jobs.len();
    let jobs = Mutex::new(jobs);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some((cmd, args)) = jobs.lock().unwrap().pop_front() else {
                        break;
                    };
                    let start = Instant::now();
                    let (code, output, timed_out) = run_with_timeout(&args, &cwd);
                    results.lock().unwrap().push(Outcome {
                        cmd,
                        args,
                        seconds: start.elapsed().as_secs_f64(),
                        code,
                        output,
                        timed_out,
                    });
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut failures = Vec::new();
    for r in &results {
        let (flag, value) = r
            .args
            .last()
            .and_then(|a| a.split_once('='))
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
            .unwrap_or_default();
        let must_refuse = EXTRA
            .iter()
            .any(|(c, f, vs)| *c == r.cmd && *f == flag && vs.contains(&value.as_str()));
        let why = if r.timed_out {
            Some(format!("did not finish within {TIMEOUT:?}"))
        } else if !matches!(r.code, Some(0..=2)) {
            Some(format!("exit {:?}", r.code))
        } else if r.code == Some(2) && r.output.trim().is_empty() {
            Some("exit 2 with no message".to_owned())
        } else if r.output.contains("invalid value") && !r.output.contains(&flag) {
            Some(format!("a refusal that does not name {flag}"))
        } else if r.output.contains("panicked at") {
            Some("a panic message".to_owned())
        } else if must_refuse && !(r.code == Some(2) && r.output.contains(&flag)) {
            Some(format!("{value:?} is not refused by name ({flag})"))
        } else {
            None
        };
        if let Some(why) = why {
            let tail: String = r
                .output
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            failures.push(format!(
                "{} {}: {why}\n    {}",
                r.cmd,
                r.args.join(" "),
                tail.replace('\n', "\n    ")
            ));
        }
    }
    let mut per_cmd: std::collections::BTreeMap<&str, (usize, f64, f64)> = Default::default();
    for r in &results {
        let e = per_cmd.entry(&r.cmd).or_default();
        e.0 += 1;
        e.1 += r.seconds;
        e.2 = e.2.max(r.seconds);
    }
    for r in results.iter().filter(|r| r.seconds > 1.0) {
        eprintln!(
            "slow: {:.1} s exit {:?}: {}",
            r.seconds,
            r.code,
            r.args.join(" ")
        );
    }
    for (cmd, (n, total, max)) in &per_cmd {
        eprintln!("{cmd:<16} {n:>5} invocations {total:>8.1} s (longest {max:.1} s)");
    }
    eprintln!(
        "swept {total} invocations of {} subcommands; {} failed",
        leaves.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "sweep seed {seed}:\n{}",
        failures.join("\n")
    );
}
