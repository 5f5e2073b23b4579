//! `cohort bench net`: what the network costs. The same experiment in one process and with
//! every party behind its own loopback gRPC + TLS session (`cohort run --transport grpc`),
//! timed in the same invocation, alternating, with the ratio; and a party's upload of large
//! blobs to the coordinator against the raw loopback TCP throughput measured in the same run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cohort_core::Identity;
use cohort_ledger::{EmbeddedLedger, LedgerConfig};
use cohort_node::runtime::{RunOptions, RunSummary, run_in_process};
use serde::Serialize;

use crate::args::{check_output_file, int_in};
use crate::output::{Table, write_json};

/// The experiment in process and over loopback gRPC (TLS), alternating, and blob uploads
/// against raw loopback TCP.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The experiment (default: the README's main job).
    #[arg(long, default_value = "examples/lm-attack.toml")]
    config: PathBuf,
    /// Override a config value, as `cohort run --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Runs of each kind, in pairs whose order alternates (in process then over gRPC, then
    /// over gRPC then in process, ...): the first run of a process is faster than the later
    /// ones, and that would otherwise always favour one kind. Use an even number.
    #[arg(long, default_value_t = 1, value_parser = int_in(0..=100usize))]
    repeats: usize,
    /// Blob sizes to upload, in MiB (comma-separated; each also sent over raw TCP).
    #[arg(long, value_delimiter = ',', default_value = "64,512",
          value_parser = int_in(1..=2048usize))]
    blob_mib: Vec<usize>,
    /// Clients of the fleet run: a `cohort coordinator` process and this process dialling it
    /// with every client and 3 validators, each its own connection (0: no fleet run).
    #[arg(long, default_value_t = 1000, value_parser = int_in(0..=100_000usize))]
    fleet: usize,
    /// Clients sampled per round in the fleet run.
    #[arg(long, default_value_t = 100, value_parser = int_in(1..=100_000usize))]
    fleet_sampled: usize,
    /// Rounds of the fleet run.
    #[arg(long, default_value_t = 3, value_parser = int_in(1..=1000u64))]
    fleet_rounds: u64,
    /// The fleet run's experiment (its clients, validators, sampling and rounds are set by
    /// the options above).
    #[arg(long, default_value = "examples/clean-linear.toml")]
    fleet_config: PathBuf,
    /// Write the results here as JSON (checked before any work).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One round of the fleet run, as the coordinator process lived it.
#[derive(Debug, Serialize)]
struct FleetRound {
    round: u64,
    wall_s: f64,
    /// User + system CPU seconds of the coordinator process during the round.
    cpu_s: f64,
    /// The coordinator's largest resident set seen during the round, MiB.
    peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct Fleet {
    clients: usize,
    validators: usize,
    sampled: usize,
    /// From the coordinator's start to the first round's opening: every party connects,
    /// proves its key, registers, stakes and (clients) commits its dataset.
    setup_wall_s: f64,
    setup_cpu_s: f64,
    rounds: Vec<FleetRound>,
    /// The coordinator's peak resident set over its life (VmHWM), MiB.
    peak_rss_mib: f64,
    /// How often the coordinator process was sampled (/proc), ms.
    sample_ms: u64,
}

#[derive(Debug, Serialize)]
struct RunPair {
    repeat: usize,
    in_process_s: f64,
    grpc_s: f64,
    /// `grpc_s / in_process_s`.
    ratio: f64,
    /// Which of the pair ran first: `in_process` or `grpc`.
    first: &'static str,
    /// The seconds of the rounds' phases (training, scoring, aggregation, ledger, report),
    /// summed over the rounds, of each run: what is left of `in_process_s` and `grpc_s` is
    /// the set-up (sessions, enrolment, the initial evaluation) and the finish.
    in_process_rounds_s: f64,
    grpc_rounds_s: f64,
    /// Whether both recorded the same ledger root (they must when every party answers in
    /// time).
    same_root: bool,
    ledger_root: String,
}

#[derive(Debug, Serialize)]
struct Upload {
    mib: usize,
    cohort_s: f64,
    cohort_mib_per_s: f64,
    raw_tcp_s: f64,
    raw_tcp_mib_per_s: f64,
    /// `cohort_mib_per_s / raw_tcp_mib_per_s`.
    fraction_of_raw: f64,
    /// Seconds for one core to SHA-256 the blob's size (the coordinator hashes every upload
    /// as it arrives: this rate caps an upload's).
    sha256_s: f64,
    sha256_mib_per_s: f64,
    /// `cohort_mib_per_s / sha256_mib_per_s`.
    fraction_of_sha256: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    config: PathBuf,
    set: Vec<String>,
    clients: usize,
    validators: usize,
    rounds: u64,
    runs: Vec<RunPair>,
    /// Sum of the gRPC runs' wall seconds over the in-process runs'.
    ratio: Option<f64>,
    uploads: Vec<Upload>,
    fleet: Option<Fleet>,
}

impl Args {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(p) = &self.json {
            check_output_file(p, "--json")?;
        }
        let cfg = crate::cmd::run::load_config(&self.config, &self.set, None)?;
        let config_dir = crate::cmd::run::check_task_inputs(&cfg, &self.config)?;
        let tmp = tempfile::tempdir().context("a temporary directory")?;
        let mut runs = Vec::new();
        if self.repeats > 0 {
            eprintln!("preparing the task of {}", self.config.display());
            let task = cohort_tasks::build(&cfg, &config_dir, &tmp.path().join("cache"))
                .context("setting up the task")?;
            let ledger = |name: String| -> anyhow::Result<EmbeddedLedger> {
                Ok(EmbeddedLedger::create(
                    tmp.path().join(name),
                    LedgerConfig::new(
                        "cohort.local/bench-net",
                        Identity::from_seed(cfg.seed, "operator"),
                    ),
                )?)
            };
            for repeat in 1..=self.repeats {
                let in_process = || -> anyhow::Result<(f64, f64, cohort_core::Hash32)> {
                    let t = Instant::now();
                    let (p, local) = run_in_process(
                        &cfg,
                        ledger(format!("local-{repeat}"))?,
                        &*task,
                        RunOptions::new(),
                        |_| {},
                    )?;
                    let secs = t.elapsed().as_secs_f64();
                    drop(p.into_backend());
                    eprintln!("run {repeat}/{}: in process {secs:.2} s", self.repeats);
                    Ok((secs, rounds_seconds(&local), local.ledger_root))
                };
                let grpc = || -> anyhow::Result<(f64, f64, cohort_core::Hash32)> {
                    let t = Instant::now();
                    let (p, net) = cohort_net::run::run_over_loopback(
                        &cfg,
                        ledger(format!("grpc-{repeat}"))?,
                        &*task,
                        RunOptions::new(),
                        None,
                        |_| {},
                    )?;
                    let secs = t.elapsed().as_secs_f64();
                    drop(p.into_backend());
                    eprintln!("run {repeat}/{}: over gRPC {secs:.2} s", self.repeats);
                    Ok((secs, rounds_seconds(&net), net.ledger_root))
                };
                // Odd pairs run in process first, even pairs over gRPC first.
                let first = if repeat % 2 == 1 {
                    "in_process"
                } else {
                    "grpc"
                };
                let (
                    (in_process_s, in_process_rounds_s, local_root),
                    (grpc_s, grpc_rounds_s, net_root),
                ) = if repeat % 2 == 1 {
                    let a = in_process()?;
                    (a, grpc()?)
                } else {
                    let b = grpc()?;
                    (in_process()?, b)
                };
                runs.push(RunPair {
                    repeat,
                    in_process_s,
                    grpc_s,
                    ratio: grpc_s / in_process_s,
                    first,
                    in_process_rounds_s,
                    grpc_rounds_s,
                    same_root: local_root == net_root,
                    ledger_root: format!("{net_root}"),
                });
            }
        }
        let mut uploads = Vec::new();
        for &mib in &self.blob_mib {
            let bytes = mib << 20;
            let raw_tcp_s = cohort_net::probe::raw_tcp_seconds(bytes)?;
            let sha256_s = cohort_net::probe::sha256_seconds(bytes);
            let cohort_s = cohort_net::probe::upload_seconds(bytes)?;
            eprintln!(
                "upload {mib} MiB: cohort {cohort_s:.2} s, raw TCP {raw_tcp_s:.2} s, SHA-256 on \
                 one core {sha256_s:.2} s"
            );
            let rate = |s: f64| mib as f64 / s;
            uploads.push(Upload {
                mib,
                cohort_s,
                cohort_mib_per_s: rate(cohort_s),
                raw_tcp_s,
                raw_tcp_mib_per_s: rate(raw_tcp_s),
                fraction_of_raw: raw_tcp_s / cohort_s,
                sha256_s,
                sha256_mib_per_s: rate(sha256_s),
                fraction_of_sha256: sha256_s / cohort_s,
            });
        }
        let fleet = if self.fleet > 0 {
            Some(self.fleet_run(tmp.path())?)
        } else {
            None
        };
        let total = |runs: &[RunPair], f: fn(&RunPair) -> f64| runs.iter().map(f).sum::<f64>();
        let ratio = (!runs.is_empty())
            .then(|| total(&runs, |r| r.grpc_s) / total(&runs, |r| r.in_process_s));
        let results = Results {
            config: self.config.clone(),
            set: self.set.clone(),
            clients: cfg.clients,
            validators: cfg.validators,
            rounds: cfg.coordinator.rounds,
            ratio,
            runs,
            uploads,
            fleet,
        };
        if !results.runs.is_empty() {
            let mut t = Table::new(&[
                "run",
                "first",
                "in process s",
                "gRPC + TLS s",
                "ratio",
                "rounds in process s",
                "rounds gRPC s",
                "same root",
            ]);
            for r in &results.runs {
                t.row(vec![
                    r.repeat.to_string(),
                    r.first.replace('_', " "),
                    format!("{:.2}", r.in_process_s),
                    format!("{:.2}", r.grpc_s),
                    format!("{:.3}", r.ratio),
                    format!("{:.2}", r.in_process_rounds_s),
                    format!("{:.2}", r.grpc_rounds_s),
                    r.same_root.to_string(),
                ]);
            }
            if let Some(ratio) = results.ratio {
                t.row(vec![
                    "all".into(),
                    "-".into(),
                    format!("{:.2}", total(&results.runs, |r| r.in_process_s)),
                    format!("{:.2}", total(&results.runs, |r| r.grpc_s)),
                    format!("{ratio:.3}"),
                    format!("{:.2}", total(&results.runs, |r| r.in_process_rounds_s)),
                    format!("{:.2}", total(&results.runs, |r| r.grpc_rounds_s)),
                    results.runs.iter().all(|r| r.same_root).to_string(),
                ]);
            }
            t.print();
        }
        if !results.uploads.is_empty() {
            let mut t = Table::new(&[
                "blob MiB",
                "cohort upload MiB/s",
                "raw TCP MiB/s",
                "fraction of raw",
                "SHA-256 MiB/s (1 core)",
                "fraction of SHA-256",
            ]);
            for u in &results.uploads {
                t.row(vec![
                    u.mib.to_string(),
                    format!("{:.0}", u.cohort_mib_per_s),
                    format!("{:.0}", u.raw_tcp_mib_per_s),
                    format!("{:.2}", u.fraction_of_raw),
                    format!("{:.0}", u.sha256_mib_per_s),
                    format!("{:.2}", u.fraction_of_sha256),
                ]);
            }
            t.print();
        }
        if let Some(f) = &results.fleet {
            println!(
                "fleet: {} clients and {} validators connected, {} sampled per round; set-up \
                 (every party connects, proves its key, registers, stakes, commits) {:.1} s \
                 wall, {:.1} s coordinator CPU",
                f.clients, f.validators, f.sampled, f.setup_wall_s, f.setup_cpu_s
            );
            let mut t = Table::new(&[
                "round",
                "wall s",
                "coordinator CPU s",
                "coordinator peak RSS MiB",
            ]);
            for r in &f.rounds {
                t.row(vec![
                    r.round.to_string(),
                    format!("{:.2}", r.wall_s),
                    format!("{:.2}", r.cpu_s),
                    format!("{:.0}", r.peak_rss_mib),
                ]);
            }
            t.print();
            println!(
                "coordinator peak RSS over the run: {:.0} MiB",
                f.peak_rss_mib
            );
        }
        if let Some(p) = &self.json {
            write_json(p, &results)?;
        }
        if results.runs.iter().any(|r| !r.same_root) {
            anyhow::bail!("the run over gRPC recorded another ledger root than the in-process run");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// One look at the coordinator process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    /// Lines in its events file then.
    events: usize,
}

/// User + system CPU seconds, resident and peak resident KiB of process `pid`, from /proc.
/// Clock ticks are Linux's USER_HZ, 100 per second.
pub(super) fn proc_sample(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((ticks as f64 / 100.0, kib("VmRSS:")?, kib("VmHWM:")?))
}

impl Args {
    /// The fleet run: the coordinator as its own process, sampled from /proc; every party
    /// in this process, each with its own connection.
    fn fleet_run(&self, tmp: &Path) -> anyhow::Result<Fleet> {
        use cohort_node::attack::SybilRing;
        use cohort_node::runtime::party_node;
        use cohort_node::transport::Party;
        let validators = 3;
        let mut sets = self.set.clone();
        sets.extend([
            format!("clients={}", self.fleet),
            format!("validators={validators}"),
            format!("coordinator.clients_per_round={}", self.fleet_sampled),
            format!("coordinator.rounds={}", self.fleet_rounds),
            // A networked coordinator does not hold the clients' data to measure it.
            "report.collaboration_gain=false".to_owned(),
        ]);
        let cfg = crate::cmd::run::load_config(&self.fleet_config, &sets, None)?;
        let config_dir = crate::cmd::run::check_task_inputs(&cfg, &self.fleet_config)?;
        eprintln!(
            "fleet: {} clients, {validators} validators, {} per round, {} rounds",
            self.fleet, self.fleet_sampled, self.fleet_rounds
        );
        let parties: Vec<(Party, Identity)> = (0..self.fleet as u32)
            .map(|k| (Party::Client(k), format!("client-{k}")))
            .chain((0..validators).map(|v| (Party::Validator(v), format!("validator-{v}"))))
            .map(|(p, name)| (p, Identity::from_seed(cfg.seed ^ 0xf1ee7, &name)))
            .collect();
        let mut admit = String::new();
        for (p, id) in &parties {
            let role = match p {
                Party::Client(_) => "client",
                Party::Validator(_) => "validator",
            };
            admit.push_str(&format!("{role} {}\n", hex::encode(id.public_key())));
        }
        let admit_file = tmp.join("fleet-admit.txt");
        std::fs::write(&admit_file, admit)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let events = tmp.join("fleet-events.jsonl");
        let exe = std::env::current_exe().context("this program's path")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("coordinator")
            .arg(&self.fleet_config)
            .arg("--out")
            .arg(tmp.join("fleet"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--insecure"])
            .arg("--admit")
            .arg(&admit_file)
            .arg("--events")
            .arg(&events)
            .args(["--enrol-timeout", "600", "--json"]);
        for s in &sets {
            cmd.args(["--set", s]);
        }
        let log = tmp.join("fleet-coordinator.log");
        let started = Instant::now();
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the coordinator")?;
        let pid = child.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sample_ms = 20;
        let monitor = {
            let stop = std::sync::Arc::clone(&stop);
            let events = events.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let lines = || std::fs::read_to_string(&events).map_or(0, |t| t.lines().count());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match proc_sample(pid) {
                        Some((cpu_s, rss_kib, hwm_kib)) => samples.push(Sample {
                            at: Instant::now(),
                            cpu_s,
                            rss_kib,
                            hwm_kib,
                            events: lines(),
                        }),
                        // The coordinator has exited: the events it wrote since the last
                        // look are dated now, with the last figures seen (an upper bound).
                        None => {
                            if let Some(&last) = samples.last() {
                                samples.push(Sample {
                                    at: Instant::now(),
                                    events: lines(),
                                    ..last
                                });
                            }
                            break;
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(sample_ms));
                }
                // Stopped before it saw the exit: the last events, dated now.
                if let Some(&last) = samples.last()
                    && last.events < lines()
                {
                    samples.push(Sample {
                        at: Instant::now(),
                        events: lines(),
                        ..last
                    });
                }
                samples
            })
        };
        let task = cohort_tasks::build(&cfg, &config_dir, &tmp.join("fleet-cache"))
            .context("setting up the fleet's task")?;
        let ring = SybilRing::new();
        let nodes = parties
            .into_iter()
            .map(|(p, id)| party_node(&cfg, p, id, &*task, &ring, true))
            .collect();
        let hosted = cohort_net::party::host(
            nodes,
            &cohort_net::party::Dial::insecure(format!("http://127.0.0.1:{port}")),
        );
        let status = child.wait()?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = monitor
            .join()
            .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))?;
        if !status.success() || hosted.is_err() {
            anyhow::bail!(
                "the fleet run failed ({status}; parties: {hosted:?}); the coordinator's log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // Round boundaries: the sample that first saw each round's opening and checkpoint.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let seen = |pred: &dyn Fn(&serde_json::Value) -> bool| -> Option<Sample> {
            let i = lines.iter().position(pred)?;
            samples.iter().find(|s| s.events > i).copied()
        };
        let first = samples
            .first()
            .copied()
            .context("the coordinator was never sampled")?;
        let is = |v: &serde_json::Value, event: &str, round: u64| {
            v["event"] == event && v["round"] == round
        };
        let opened1 = seen(&|v| is(v, "round-opened", 1)).context("round 1 never opened")?;
        let mut rounds = Vec::new();
        for r in 1..=self.fleet_rounds {
            let (Some(a), Some(b)) = (
                seen(&|v| is(v, "round-opened", r)),
                seen(&|v| is(v, "checkpoint", r)),
            ) else {
                anyhow::bail!("round {r} of the fleet run was never seen opening and settling");
            };
            let peak = samples
                .iter()
                .filter(|s| s.at >= a.at && s.at <= b.at)
                .map(|s| s.rss_kib)
                .max()
                .unwrap_or(b.rss_kib);
            rounds.push(FleetRound {
                round: r,
                wall_s: (b.at - a.at).as_secs_f64(),
                cpu_s: b.cpu_s - a.cpu_s,
                peak_rss_mib: peak as f64 / 1024.0,
            });
        }
        let last = samples.last().copied().unwrap_or(first);
        Ok(Fleet {
            clients: self.fleet,
            validators: validators as usize,
            sampled: self.fleet_sampled,
            setup_wall_s: (opened1.at - started).as_secs_f64(),
            setup_cpu_s: opened1.cpu_s,
            rounds,
            peak_rss_mib: last.hwm_kib as f64 / 1024.0,
            sample_ms,
        })
    }
}

/// The seconds of a run's rounds: every phase of every round, summed.
fn rounds_seconds(s: &RunSummary) -> f64 {
    s.rounds
        .iter()
        .map(|r| {
            let p = &r.seconds;
            p.train + p.score + p.aggregate + p.ledger + p.report
        })
        .sum()
}
