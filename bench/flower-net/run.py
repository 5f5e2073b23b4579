#!/usr/bin/env python3
"""Coordination overhead per round and start-up time: cohort's networked mode against Flower's
networked deployment, on the same least-squares task, client count, cohort size and rounds.

    pip install -r bench/flower-net/requirements.txt     # flwr==1.23.0 (this script installs nothing)
    python3 bench/flower-net/run.py --cohort /path/to/cohort --sizes 10,50,100 --json out.json

Both systems run as separate processes on this machine over loopback gRPC (127.0.0.1, free
ports), plain text on both sides (`--insecure`; `--cohort-tls` adds a cohort row over TLS):

- cohort: one `cohort coordinator` (with `--events`) and one `cohort client` / `cohort
  validator` process per party, as examples/federation.sh starts them, on
  examples/clean-linear.toml with `--set clients=N`, `coordinator.clients_per_round=K`,
  `coordinator.rounds=R` and FedAvg (`aggregation.strategy={kind="fed-avg"}`,
  `aggregation.clip_to_median=false`) to match Flower's strategy.
- Flower: `flower-superlink --insecure`, N x `flower-supernode --insecure`, and `flwr run` of
  bench/flower-net/flwr_app (ServerApp with FedAvg, ClientApp doing cohort's local SGD in numpy,
  with the task's settings read from the effective cohort config).

Per round: wall = the coordinator's / ServerApp's own clock for the round; client compute = one
client's training (mean over the round's clients: they train in parallel); overhead = wall -
compute. Start-up = from launching the first process to the first round opening. README.md
says what each includes.

Every process this script starts is in its own process group and is killed (the group) when
its run ends, fails, or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FLWR_VERSION = "1.23.0"


# --------------------------------------------------------------------------- processes


class Procs:
    """The processes of one run, each the leader of its own process group."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env=None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        self.items.append((name, p))
        _LIVE.add(self)
        return p

    def kill_all(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, p in self.items:
                try:
                    os.killpg(p.pid, sig)  # the group: also the children it spawned
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.time() + 3
            for _, p in self.items:
                try:
                    p.wait(timeout=max(0.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    pass
        # Until no member of any group is left (children die after their leader).
        deadline = time.time() + 10
        groups = {p.pid for _, p in self.items}
        while groups and time.time() < deadline:
            for g in list(groups):
                try:
                    os.killpg(g, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    groups.discard(g)
            if groups:
                time.sleep(0.05)
        _LIVE.discard(self)

    def log_tail(self, name: str, n: int = 15) -> str:
        try:
            lines = (self.logdir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {l}" for l in lines[-n:])


_LIVE: set[Procs] = set()


def _kill_everything() -> None:
    for procs in list(_LIVE):
        procs.kill_all()


atexit.register(_kill_everything)


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_term(signum, frame):  # unwind like Ctrl-C, through the `finally`s
    for sig in _SIGNALS:  # a second Ctrl-C does not interrupt the clean-up
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


class BenchError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together while they are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, timeout: float, alive=lambda: True) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if not alive():
            raise BenchError(f"the process that should listen on 127.0.0.1:{port} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class LineWatcher(threading.Thread):
    """Tails a JSON-lines file and notes the wall time at which each line appeared."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.lines: list[tuple[float, dict]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        pos, buf = 0, ""
        while not self.stop.is_set():
            try:
                with open(self.path, encoding="utf-8") as f:
                    f.seek(pos)
                    data = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                data = ""
            if data:
                t = time.time()
                buf += data
                *whole, buf = buf.split("\n")
                with self._lock:
                    for line in whole:
                        if line.strip():
                            self.lines.append((t, json.loads(line)))
            # Fine-grained until the first round opens (the start-up figure), then coarser.
            time.sleep(0.002 if not self.find("round-opened") else 0.02)

    def find(self, event: str, **match):
        with self._lock:
            for t, e in self.lines:
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                    return t, e
        return None


# --------------------------------------------------------------------------- cohort


def cohort_sets(n: int, k: int, rounds: int) -> list[str]:
    sets = [
        f"clients={n}",
        f"coordinator.clients_per_round={k}",
        f"coordinator.rounds={rounds}",
        'aggregation.strategy={kind="fed-avg"}',
        "aggregation.clip_to_median=false",
    ]
    return [a for s in sets for a in ("--set", s)]


def effective_config(cohort: str, cfg: Path, sets: list[str], out: Path) -> dict:
    r = subprocess.run(
        [cohort, "run", str(cfg), "--out", str(out), "--check", "--json", *sets],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise BenchError(f"cohort run --check failed:\n{r.stderr}")
    return json.loads(r.stdout)["config"]


def cohort_inprocess_compute(cohort: str, cfg: Path, sets: list[str], work: Path) -> list[float]:
    """Per round, one client's compute in seconds: an in-process `cohort run` of the same
    experiment times its `train` phase as the clients' training plus encoding, hashing and
    signing their updates, one client after the other; divided by the round's updates."""
    out = work / "inprocess"
    r = subprocess.run(
        [cohort, "run", str(cfg), "--out", str(out), "--json", *sets],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if r.returncode != 0:
        raise BenchError(f"in-process cohort run failed:\n{r.stderr[-3000:]}")
    rounds = json.loads((out / "summary.json").read_text())["summary"]["rounds"]
    return [x["seconds"]["train"] / max(1, len(x["submitted"])) for x in rounds]


def run_cohort(cohort: str, cfg: Path, n: int, k: int, rounds: int, work: Path, tls: bool,
               timeout: float) -> dict:
    work.mkdir(parents=True)
    logs = work / "logs"
    keys = work / "keys"
    logs.mkdir()
    keys.mkdir()
    sets = cohort_sets(n, k, rounds)
    conf = effective_config(cohort, cfg, sets, work / "run")
    clients, validators = conf["clients"], conf["validators"]
    assert clients == n and conf["attack"] is None, conf

    # Set-up a party does once, before the federation starts (not timed): its key, the
    # coordinator's admission list and, with --cohort-tls, the federation's CA.
    admit = []
    for role, count in (("client", clients), ("validator", validators)):
        for i in range(count):
            r = subprocess.run(
                [cohort, "keys", "new", "--out", str(keys / f"{role}-{i}.pem"), "--json"],
                capture_output=True, text=True, timeout=60, check=True,
            )
            admit.append(f"{role} {json.loads(r.stdout)['public_key']}")
    (work / "admit.txt").write_text("\n".join(admit) + "\n")
    if tls:
        subprocess.run(
            [cohort, "keys", "tls", "--out", str(work / "tls"), "--name", "127.0.0.1"],
            capture_output=True, timeout=60, check=True,
        )
        server_tls = ["--tls-cert", str(work / "tls/server.pem"),
                      "--tls-key", str(work / "tls/server.key")]
        party_tls = ["--ca", str(work / "tls/ca.pem")]
        scheme = "https"
    else:
        server_tls, party_tls, scheme = ["--insecure"], ["--insecure"], "http"

    (port,) = free_ports(1)
    events = work / "events.jsonl"
    watcher = LineWatcher(events)
    watcher.start()
    procs = Procs(logs)
    try:
        t0 = time.time()
        coord = procs.start("coordinator", [
            cohort, "coordinator", str(cfg), *sets, "--out", str(work / "run"),
            "--listen", f"127.0.0.1:{port}", "--admit", str(work / "admit.txt"),
            "--events", str(events), *server_tls,
        ])
        parties = []
        for role, count in (("client", clients), ("validator", validators)):
            for i in range(count):
                parties.append(procs.start(f"{role}-{i}", [
                    cohort, role, "--coordinator", f"{scheme}://127.0.0.1:{port}", *party_tls,
                    "--key", str(keys / f"{role}-{i}.pem"), "--config", str(cfg),
                    "--index", str(i), *sets,
                ]))
        try:
            rc = coord.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"cohort coordinator still running after {timeout:.0f} s:\n"
                             + procs.log_tail("coordinator"))
        t_end = time.time()
        if rc != 0:
            raise BenchError(f"cohort coordinator exited {rc}:\n" + procs.log_tail("coordinator"))
        for (name, p) in procs.items[1:]:
            try:
                prc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"cohort {name} did not exit after the run:\n" + procs.log_tail(name))
            if prc != 0:
                raise BenchError(f"cohort {name} exited {prc}:\n" + procs.log_tail(name))
    finally:
        procs.kill_all()
        watcher.stop.set()
        watcher.join()

    opened = watcher.find("round-opened", round=1)
    if opened is None:
        raise BenchError("no round-opened event for round 1 in " + str(events))
    summary = json.loads((work / "run/summary.json").read_text())
    rs = summary["summary"]["rounds"]
    compute = cohort_inprocess_compute(cohort, cfg, sets, work)
    per_round = []
    if len(rs) != rounds or any(len(r["submitted"]) != k for r in rs):
        raise BenchError(f"cohort: {[len(r['submitted']) for r in rs]} updates per round, "
                         f"not {k} in each of {rounds} rounds")
    for r, c in zip(rs, compute):
        secs = r["seconds"]
        wall = sum(secs.values())
        per_round.append({
            "round": r["round"],
            "wall_ms": wall * 1e3,
            "compute_ms": c * 1e3,
            "overhead_ms": (wall - c) * 1e3,
            "phases_ms": {p: v * 1e3 for p, v in secs.items()},
            "train_exchange_ms": (secs["train"] - c) * 1e3,
            "score_ms": secs["score"] * 1e3,
            "ledger_ms": secs["ledger"] * 1e3,
            "aggregate_report_ms": (secs["aggregate"] + secs["report"]) * 1e3,
            "updates": len(r["submitted"]),
            "test_loss": r["test"]["loss"],
        })
    # The rounds as the event file showed them appear (round-opened to round-opened, the last
    # to `finished`): a cross-check of the coordinator's own phase timing, at the file-polling
    # resolution (2-20 ms).
    marks = [watcher.find("round-opened", round=i + 1) for i in range(len(rs))]
    fin = watcher.find("finished")
    ext = []
    for i, m in enumerate(marks):
        nxt = marks[i + 1] if i + 1 < len(marks) else fin
        if m and nxt:
            ext.append((nxt[0] - m[0]) * 1e3)
    return {
        "system": "cohort (TLS)" if tls else "cohort",
        "transport": "TLS" if tls else "plain text (--insecure)",
        "clients": n,
        "clients_per_round": k,
        "validators": validators,
        "rounds": len(rs),
        "processes": 1 + clients + validators,
        "startup_s": opened[0] - t0,
        "total_s": t_end - t0,
        "per_round": per_round,
        "rounds_seen_in_events_ms": ext,
        "final_test_loss": rs[-1]["test"]["loss"],
        "ledger_entries": summary["summary"]["ledger_entries"],
    }


# --------------------------------------------------------------------------- Flower


def flower_tools() -> tuple[dict, dict]:
    try:
        import flwr  # noqa: F401
        from importlib.metadata import version
        v = version("flwr")
    except ImportError:
        sys.exit(
            f"flwr is not importable by {sys.executable}.\n"
            "Install the Flower side first (this script installs nothing):\n"
            "    pip install -r bench/flower-net/requirements.txt\n"
            "and run this script with that Python (or pass --systems cohort)."
        )
    if v != FLWR_VERSION:
        print(f"warning: flwr {v} is installed; this benchmark pins {FLWR_VERSION}",
              file=sys.stderr)
    bindirs = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    path = os.pathsep.join(bindirs + [os.environ.get("PATH", "")])
    tools = {}
    for t in ("flower-superlink", "flower-supernode", "flwr", "flower-superexec",
              "flwr-serverapp", "flwr-clientapp"):
        found = shutil.which(t, path=path)
        if not found:
            sys.exit(f"{t} not found next to {sys.executable} or on PATH: "
                     "pip install -r bench/flower-net/requirements.txt")
        tools[t] = found
    env = dict(os.environ, PATH=path, PYTHONUNBUFFERED="1")
    return {"version": v, **tools}, env


def _connected(superlink_log: Path) -> str:
    """How many SuperNodes the ServerApp last saw connected (its "Waiting for nodes" line)."""
    last = "?"
    try:
        for line in superlink_log.read_text(errors="replace").splitlines():
            if "Waiting for nodes to connect:" in line:
                last = line.split("connect:")[1].split("connected")[0].strip()
    except OSError:
        pass
    return last


def run_flower(tools: dict, base_env: dict, task: dict, seed: int, n: int, k: int, rounds: int,
               work: Path, timeout: float, startup_timeout: float) -> dict:
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    serverappio, fleet, control, *appio = free_ports(3 + n)
    app = work / "app"
    shutil.copytree(HERE / "flwr_app", app, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (app / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(
        pyproject.replace('address = "127.0.0.1:9093"', f'address = "127.0.0.1:{control}"'))
    timeline = work / "timeline.jsonl"
    run_config = {
        "timing-file": str(timeline),
        "clients": n,
        "clients-per-round": k,
        "rounds": rounds,
        "seed": seed,
        "dim": task["dim"],
        "samples": task["samples_per_client"],
        "test-samples": task["test_samples"],
        "client-drift": float(task["client_drift"]),
        "noise": float(task["noise"]),
        "epochs": task["epochs"],
        "batch": task["batch"],
        "lr": float(task["lr"]),
    }
    (work / "run-config.toml").write_text(
        "".join(f"{key} = {json.dumps(v)}\n" for key, v in run_config.items()))
    env = dict(base_env, FLWR_HOME=str(work / "flwr-home"))
    (work / "flwr-home").mkdir()

    procs = Procs(logs)
    try:
        t0 = time.time()
        link = procs.start("superlink", [
            tools["flower-superlink"], "--insecure",
            "--serverappio-api-address", f"127.0.0.1:{serverappio}",
            "--fleet-api-address", f"127.0.0.1:{fleet}",
            "--control-api-address", f"127.0.0.1:{control}",
        ], env=env)
        for i in range(n):
            procs.start(f"supernode-{i}", [
                tools["flower-supernode"], "--insecure", "--superlink", f"127.0.0.1:{fleet}",
                "--clientappio-api-address", f"127.0.0.1:{appio[i]}",
                "--node-config", f"partition-id={i} num-partitions={n}",
            ], env=env)
        wait_port(control, 120, alive=lambda: link.poll() is None)
        r = subprocess.run(
            [tools["flwr"], "run", str(app), "bench", "--run-config", str(work / "run-config.toml")],
            cwd=work, env=env, capture_output=True, text=True, timeout=300,
        )
        (logs / "flwr-run.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise BenchError(f"flwr run failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        end = time.time() + timeout
        events: list[dict] = []
        while True:
            if timeline.exists():
                events = [json.loads(l) for l in timeline.read_text().splitlines() if l.strip()]
                if any(e["event"] == "finished" for e in events):
                    break
            if link.poll() is not None:
                raise BenchError("flower-superlink exited:\n" + procs.log_tail("superlink"))
            opened = any(e["event"] == "round-open" for e in events)
            if not opened and time.time() > t0 + startup_timeout:
                raise BenchError(f"the first round did not open within {startup_timeout:.0f} s: "
                                 f"{_connected(logs / 'superlink.log')} of {n} SuperNodes connected, "
                                 f"{sum(p.poll() is None for _, p in procs.items[1:])} still running "
                                 f"(logs in {logs})")
            if time.time() > end:
                raise BenchError(f"the Flower run did not finish in {timeout:.0f} s; "
                                 f"{len(events)} timeline lines:\n" + procs.log_tail("superlink"))
            time.sleep(0.1)
        t_end = time.time()
    finally:
        procs.kill_all()

    def ev(name, rnd=None):
        for e in events:
            if e["event"] == name and (rnd is None or e.get("round") == rnd):
                return e
        raise BenchError(f"no {name} {rnd or ''} in the Flower timeline {timeline}")

    per_round = []
    prev_end = None
    for r in range(1, rounds + 1):
        opened, agg, ended = ev("round-open", r), ev("aggregated", r), ev("round-end", r)
        errors = [c for c in agg["clients"] if "error" in c]
        if errors:
            raise BenchError(f"Flower round {r}: {len(errors)} client errors: {errors[:3]}")
        if len(agg["clients"]) != k:
            raise BenchError(f"Flower round {r}: {len(agg['clients'])} updates, not {k}")
        comp = [c["compute_ms"] for c in agg["clients"]]
        start = opened["t"] if prev_end is None else prev_end
        wall = (ended["t"] - start) * 1e3
        c = statistics.mean(comp)
        per_round.append({
            "round": r,
            "wall_ms": wall,
            "compute_ms": c,
            "compute_max_ms": max(comp),
            "data_ms": statistics.mean(x["data_ms"] for x in agg["clients"]),
            "sgd_ms": statistics.mean(x["compute_ms"] - x["data_ms"] for x in agg["clients"]),
            "overhead_ms": wall - c,
            "open_to_end_ms": (ended["t"] - opened["t"]) * 1e3,
            "open_to_aggregated_ms": (agg["t"] - opened["t"]) * 1e3,
            "dispatch_ms": statistics.mean(x["entered"] - opened["t"] for x in agg["clients"]) * 1e3,
            "updates": len(comp),
            "test_loss": ended["test_loss"],
        })
        prev_end = ended["t"]
    return {
        "system": "flower",
        "transport": "plain text (--insecure)",
        "flwr": tools["version"],
        "clients": n,
        "clients_per_round": k,
        "rounds": rounds,
        "processes": 1 + n,
        "startup_s": ev("round-open", 1)["t"] - t0,
        "total_s": t_end - t0,
        "per_round": per_round,
        "final_test_loss": per_round[-1]["test_loss"],
    }


# --------------------------------------------------------------------------- report


def condense(runs: list[dict]) -> dict:
    """One row from the repeats of a configuration: medians of each run's means."""
    def med(f):
        return statistics.median(f(r) for r in runs)

    def mean_round(key):
        return lambda r: statistics.mean(x[key] for x in r["per_round"])

    return {
        "system": runs[0]["system"],
        "clients": runs[0]["clients"],
        "clients_per_round": runs[0]["clients_per_round"],
        "repeats": len(runs),
        "startup_s": med(lambda r: r["startup_s"]),
        "overhead_ms": med(mean_round("overhead_ms")),
        "wall_ms": med(mean_round("wall_ms")),
        "compute_ms": med(mean_round("compute_ms")),
        "final_test_loss": med(lambda r: r["final_test_loss"]),
        "parts_ms": {key: med(mean_round(key)) for key in _PARTS[runs[0]["system"] == "flower"]
                     if all(key in x for r in runs for x in r["per_round"])},
    }


# Where a round's wall time goes, per system (the per-round keys run_cohort/run_flower write).
_PARTS = {
    False: ["train_exchange_ms", "score_ms", "ledger_ms", "aggregate_report_ms"],
    True: ["data_ms", "sgd_ms", "dispatch_ms", "open_to_aggregated_ms", "open_to_end_ms"],
}


def parts_table(rows: list[dict]) -> str:
    """Where the round goes: cohort's phases (its coordinator's clock) and, for Flower, when the
    clients' `train` began and when the round's updates were aggregated (the ServerApp's)."""
    lines = ["| clients | system | where the round's wall time goes (ms, mean per round) |",
             "|---|---|---|"]
    names = {
        "train_exchange_ms": "train exchange (train phase less compute)",
        "score_ms": "validators score, commit, reveal",
        "ledger_ms": "ledger and checkpoint",
        "aggregate_report_ms": "aggregate and report",
        "data_ms": "client compute: drawing the partition",
        "sgd_ms": "client compute: local SGD",
        "dispatch_ms": "round opened until the ClientApp's `train` starts",
        "open_to_aggregated_ms": "round opened until aggregated",
        "open_to_end_ms": "round opened until evaluated",
    }
    for r in rows:
        if "error" in r or not r.get("parts_ms"):
            continue
        parts = "; ".join(f"{names[k]} {v:.1f}" for k, v in r["parts_ms"].items())
        lines.append(f"| {r['clients']} | {r['system']} | {parts} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ["clients", "per round", "system", "start-up s", "round overhead ms",
            "round wall ms", "client compute ms", "overhead cohort/flower",
            "start-up cohort/flower", "test loss"]
    flower = {r["clients"]: r for r in rows if r["system"] == "flower" and "error" not in r}
    out = []
    for r in rows:
        if "error" in r:
            why = " ".join(r["error"].split("\n")[0].split())[:160].replace("|", "/")
            out.append([str(r["clients"]), str(r["clients_per_round"]), r["system"],
                        f"did not run: {why}", "", "", "", "", "", ""])
            continue
        f = flower.get(r["clients"])
        ratio = su = "-"
        if f and r["system"] != "flower":
            ratio = f"{r['overhead_ms'] / f['overhead_ms']:.4f}"
            su = f"{r['startup_s'] / f['startup_s']:.4f}"
        out.append([str(r["clients"]), str(r["clients_per_round"]), r["system"],
                    f"{r['startup_s']:.2f}", f"{r['overhead_ms']:.1f}", f"{r['wall_ms']:.1f}",
                    f"{r['compute_ms']:.3f}", ratio, su, f"{r['final_test_loss']:.3f}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in out]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See bench/flower-net/README.md for what each figure includes.")
    ap.add_argument("--cohort", help="the cohort binary (default: `cohort` on PATH, else "
                    "target/release/cohort)")
    ap.add_argument("--config", default=str(REPO / "examples/clean-linear.toml"),
                    help="cohort's linear-task config (default: examples/clean-linear.toml)")
    ap.add_argument("--sizes", default="10,50", help="client counts, comma-separated (default 10,50)")
    ap.add_argument("--per-round", default="10",
                    help="clients per round: a number (capped at the size) or `all` (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each configuration; the table shows medians (default 1)")
    ap.add_argument("--systems", default="cohort,flower", help="cohort,flower (default both)")
    ap.add_argument("--cohort-tls", action="store_true",
                    help="also run cohort over TLS (its default; Flower stays plain text)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per run (default 1200)")
    ap.add_argument("--startup-timeout", type=float, default=600,
                    help="seconds for Flower's first round to open, i.e. for every SuperNode "
                    "to connect (default 600, cohort's enrolment timeout)")
    ap.add_argument("--json", help="write every run's figures to this file")
    ap.add_argument("--work", help="directory for the runs' files (default: a temporary one, "
                    "removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' files and logs")
    args = ap.parse_args()
    for sig in _SIGNALS:
        signal.signal(sig, _on_term)  # also where SIGINT came in ignored (a background job)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not set(systems) <= {"cohort", "flower"} or not systems:
        ap.error("--systems takes cohort and/or flower")
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = Path(args.config).resolve()

    # Needed by both sides: the Flower app takes the task's settings from cohort's config.
    cohort = args.cohort or shutil.which("cohort") or str(REPO / "target/release/cohort")
    if not (Path(cohort).is_file() or shutil.which(cohort)):
        sys.exit(f"no cohort binary at {cohort}: build it (cargo build --release) or pass "
                 "--cohort PATH (the Flower side reads the task's settings from cohort's config)")
    cohort = str(Path(shutil.which(cohort) or cohort).resolve())
    tools, env = flower_tools() if "flower" in systems else ({}, {})

    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="flower-net-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cohort": cohort,
        "flwr": tools.get("version"),
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "config": str(cfg),
        "rounds": args.rounds,
        "per_round_rule": args.per_round,
        "runs": [],
        "rows": [],
    }
    rows = []
    failed = []
    try:
        for n in sizes:
            k = n if args.per_round == "all" else min(int(args.per_round), n)
            variants = [("cohort", False)] if "cohort" in systems else []
            if "cohort" in systems and args.cohort_tls:
                variants.append(("cohort", True))
            if "flower" in systems:
                variants.append(("flower", False))
            conf = effective_config(cohort, cfg, cohort_sets(n, k, args.rounds), work / "check")
            for system, tls in variants:
                name = "cohort (TLS)" if tls else system
                runs = []
                for rep in range(args.repeat):
                    tag = f"{system}{'-tls' if tls else ''}-{n}-{rep}"
                    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {n} clients, {k} per round, "
                          f"{args.rounds} rounds ...", file=sys.stderr, flush=True)
                    load_before = os.getloadavg()
                    try:
                        if system == "cohort":
                            r = run_cohort(cohort, cfg, n, k, args.rounds, work / tag, tls,
                                           args.timeout)
                        else:
                            r = run_flower(tools, env, conf["task"], conf["seed"], n, k,
                                           args.rounds, work / tag, args.timeout,
                                           args.startup_timeout)
                    except BenchError as e:
                        # Recorded, and the benchmark goes on with the next configuration.
                        print(f"    failed: {e}", file=sys.stderr, flush=True)
                        failed.append({"system": name, "clients": n, "clients_per_round": k,
                                       "error": str(e)})
                        results["failed"] = failed
                        runs = []
                        break
                    print(f"    start-up {r['startup_s']:.2f} s, round wall "
                          f"{statistics.mean(x['wall_ms'] for x in r['per_round']):.1f} ms, "
                          f"total {r['total_s']:.1f} s", file=sys.stderr, flush=True)
                    # Contention from outside the benchmark shows here (2 cores: 2.0 is full).
                    r["loadavg_1_5_15_before"] = load_before
                    r["loadavg_1_5_15_after"] = os.getloadavg()
                    results["runs"].append(r)
                    runs.append(r)
                rows.append(condense(runs) if runs else
                            {"system": name, "clients": n, "clients_per_round": k,
                             "error": failed[-1]["error"]})
                results["rows"] = rows
                if args.json:  # as it goes: an interrupted benchmark keeps what it measured
                    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    except KeyboardInterrupt:
        print("interrupted: every process started was killed", file=sys.stderr)
        print(f"files kept in {work}", file=sys.stderr)
        if rows:
            print(table(rows))
        return 130
    finally:
        _kill_everything()

    print(table(rows))
    print()
    print(parts_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.keep or args.work or failed:
        print(f"files in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"{len(failed)} configuration(s) did not run to the end: see the table and "
              f"{work}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
