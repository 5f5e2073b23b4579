#!/usr/bin/env python3
"""The TrustChain study of LoRA-based unlearning: rank, alpha and dropout, one factor at a time.

    python3 bench/unlearning/study.py [--cohort BIN] [--out DIR] [--jobs N] [--seeds 3,4,5]
                                      [--json FILE] [--plot FILE.png]

Federated TrustChain (arXiv 2406.04076) studies how the LoRA adapter's rank, alpha and dropout
affect unlearning. This reproduces the study on examples/unlearn-lm.toml (three roles of Tiny
Shakespeare, one client each; client-0 is forgotten) for cohort's LoRA methods (`lora-ga`,
`lora-npo`), measured against a retraining without the client, as the issue asks: every factor
varied one at a time around a default (rank 8, alpha/rank 2, dropout 0):

    rank        1, 2, 4, 8, 16, 32        (alpha = 2 x rank, dropout 0)
    alpha/rank  0.5, 1, 2, 4              (rank 8, dropout 0)
    dropout     0, 0.05, 0.1, 0.2         (rank 8, alpha 16)

12 settings x 3 seeds (the run's seed: the base model's pretraining, the adapters' initial
values, every sampling); for each, the federated run with that adapter (`cohort run --set
task.lora_rank=... --set task.lora_alpha=... --set task.lora_dropout=... --seed S`), then on
copies of its directory the retraining without client-0 (`cohort unlearn --method retrain`,
the oracle) and each LoRA method (the unlearning trains the run's adapter, so the adapter's
settings are the run's): 36 runs, 36 retrainings and 72 unlearnings, 144 in all.

Jobs run in parallel (--jobs, default 2, each with RAYON_NUM_THREADS = cores / jobs), with a
line of progress per finished step (and an estimate of the time left) on stderr. Results are
kept per step in DIR/results/, so an interrupted study continues where it stopped when run
again with the same --out. At the end: a table (mean and spread over the seeds of each
setting) on stdout, the JSON (--json) and the plots (--plot, matplotlib: forget, retain and
test perplexity against the oracle's, the Min-K% membership AUC and the seconds against each
factor).
"""
import argparse
import concurrent.futures as cf
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "examples/unlearn-lm.toml"
CLIENT = "client-0"
DEFAULT = {"rank": 8, "ratio": 2.0, "dropout": 0.0}
FACTORS = {
    "rank": [1, 2, 4, 8, 16, 32],
    "ratio": [0.5, 1.0, 2.0, 4.0],
    "dropout": [0.0, 0.05, 0.1, 0.2],
}
LABEL = {"rank": "LoRA rank", "ratio": "alpha / rank", "dropout": "LoRA dropout"}

_lock = threading.Lock()


def say(msg):
    with _lock:
        print(msg, file=sys.stderr, flush=True)


def settings():
    """The distinct settings of the one-factor-at-a-time design, the default first."""
    out = [dict(DEFAULT)]
    for f, values in FACTORS.items():
        for v in values:
            s = dict(DEFAULT, **{f: v})
            if s not in out:
                out.append(s)
    return out


def name(s, seed):
    return f"r{s['rank']}-a{s['ratio']:g}-d{s['dropout']:g}-s{seed}"


def run(cmd, env):
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout


class Study:
    def __init__(self, a):
        self.a = a
        self.env = dict(os.environ)
        if a.jobs > 1:
            self.env["RAYON_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // a.jobs))
        self.steps_total = 0
        self.steps_done = 0
        self.started = time.time()

    def progress(self, what, seconds):
        with _lock:
            self.steps_done += 1
            done, total = self.steps_done, self.steps_total
        elapsed = time.time() - self.started
        left = elapsed / done * (total - done)
        say(f"[{done}/{total}] {what} ({seconds:.1f} s; {elapsed / 60:.1f} min elapsed, "
            f"about {left / 60:.0f} min left)")

    def base_of(self, seed):
        """The pretrained base of the default setting's run with this seed (made first)."""
        d = os.path.join(self.a.out, "runs", name(DEFAULT, seed))
        for e in sorted(os.listdir(d)):
            if e.startswith("base-") and not e.endswith(".partial"):
                return os.path.join(d, e)
        raise RuntimeError(f"no pretrained base in {d}")

    def one(self, s, seed):
        """One setting and seed: the run, the oracle and each method; cached as JSON."""
        key = name(s, seed)
        done = os.path.join(self.a.out, "results", key + ".json")
        if os.path.exists(done):
            with open(done) as f:
                return json.load(f)
        d = os.path.join(self.a.out, "runs", key)
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        if s != DEFAULT:
            # The base depends on the seed, not on the adapter: reuse the default run's.
            b = self.base_of(seed)
            shutil.copytree(b, os.path.join(d, os.path.basename(b)))
        alpha = s["ratio"] * s["rank"]
        t = time.time()
        run([self.a.cohort, "run", CONFIG, "--out", d, "--seed", str(seed), "--json",
             "--set", f"task.lora_rank={s['rank']}", "--set", f"task.lora_alpha={alpha!r}",
             "--set", f"task.lora_dropout={s['dropout']!r}"], self.env)
        run_seconds = time.time() - t
        self.progress(f"{key}: run", run_seconds)
        out = {"setting": s, "seed": seed, "alpha": alpha, "run_seconds": run_seconds}
        copies = {}
        for m in self.a.methods:
            copies[m] = d + "." + m
            if os.path.exists(copies[m]):
                shutil.rmtree(copies[m])
            shutil.copytree(d, copies[m], ignore=shutil.ignore_patterns("base-*"))
        for m, dir_ in [("retrain", d)] + list(copies.items()):
            t = time.time()
            v = json.loads(run([self.a.cohort, "unlearn", dir_, "--client", CLIENT,
                                "--method", m, "--cache", d, "--json"], self.env))
            self.progress(f"{key}: {m}", time.time() - t)
            out[m] = {k: v[k] for k in ("seconds", "client_steps", "ledger_bytes", "forget",
                                        "retain", "test", "mia_auc", "verified", "original")}
        for m in self.a.methods:
            shutil.rmtree(copies[m])
        os.makedirs(os.path.dirname(done), exist_ok=True)
        with open(done + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(done + ".tmp", done)
        return out

    def all(self):
        grid = settings()
        todo = [(s, seed) for seed in self.a.seeds for s in grid]
        cached = sum(os.path.exists(os.path.join(self.a.out, "results", name(s, seed) + ".json"))
                     for s, seed in todo)
        self.steps_total = (len(todo) - cached) * (2 + len(self.a.methods))
        say(f"{len(grid)} settings x {len(self.a.seeds)} seeds = {len(todo)} runs "
            f"({cached} done already), each with a retraining and {len(self.a.methods)} "
            f"unlearnings; {self.a.jobs} jobs")
        results = {}
        with cf.ThreadPoolExecutor(self.a.jobs) as ex:
            # The default setting of each seed first: the others reuse its pretrained base.
            first = {ex.submit(self.one, DEFAULT, seed): (DEFAULT, seed) for seed in self.a.seeds}
            for f in cf.as_completed(first):
                s, seed = first[f]
                results[name(s, seed)] = f.result()
            rest = {ex.submit(self.one, s, seed): (s, seed)
                    for s, seed in todo if s != DEFAULT}
            for f in cf.as_completed(rest):
                s, seed = rest[f]
                results[name(s, seed)] = f.result()
        return [results[name(s, seed)] for s, seed in todo]


def gaps(r, m):
    """Signed gaps of method m's model (or "original") to the oracle in one result."""
    o = r["retrain"]
    v = r[m] if m != "original" else r["retrain"]["original"]

    def pct(metric):
        return 100.0 * (v[metric]["perplexity"] - o[metric]["perplexity"]) / o[metric]["perplexity"]

    g = {
        "forget": pct("forget"),
        "retain": pct("retain"),
        "test": pct("test"),
        "min_k": v["mia_auc"]["min_k"] - o["mia_auc"]["min_k"],
        "loss_auc": v["mia_auc"]["loss"] - o["mia_auc"]["loss"],
    }
    if m not in ("original",):
        g["seconds"] = v["seconds"]
        g["speedup"] = o["seconds"] / v["seconds"] if v["seconds"] > 0 else math.inf
    return g


def summarise(rows, methods):
    """Per factor, value and method: the mean and spread (sample sd) over the seeds."""
    table = []
    for f, values in FACTORS.items():
        for val in values:
            s = dict(DEFAULT, **{f: val})
            rs = [r for r in rows if r["setting"] == s]
            for m in ["original"] + methods:
                gs = [gaps(r, m) for r in rs]
                entry = {"factor": f, "value": val, "method": m, "seeds": len(gs)}
                for k in gs[0]:
                    xs = [g[k] for g in gs]
                    entry[k] = statistics.fmean(xs)
                    entry[k + "_sd"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
                if m != "original":
                    entry["verified"] = all(r[m]["verified"] for r in rs)
                    entry["retrain_seconds"] = statistics.fmean(r["retrain"]["seconds"] for r in rs)
                table.append(entry)
    return table


def print_table(table):
    print(f"{'factor':<8} {'value':>6} {'method':<9} {'forget %':>14} {'retain %':>14} "
          f"{'test %':>14} {'min-k AUC':>16} {'seconds':>8} {'speedup':>8}")
    for e in table:
        def pm(k, fmt):
            return f"{e[k]:{fmt}} ± {e[k + '_sd']:{fmt}}"
        secs = "-" if "seconds" not in e else f"{e['seconds']:.2f}"
        sp = "-" if "speedup" not in e else f"{e['speedup']:.1f}x"
        print(f"{e['factor']:<8} {e['value']:>6g} {e['method']:<9} {pm('forget', '+6.2f'):>14} "
              f"{pm('retain', '+6.2f'):>14} {pm('test', '+6.2f'):>14} "
              f"{pm('min_k', '+.3f'):>16} {secs:>8} {sp:>8}")


def plot(table, methods, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("the plots need matplotlib: pip install matplotlib (the JSON is written)")
    panels = [
        ("forget", "forget-set perplexity\n% from the oracle's", 2.0),
        ("retain", "retain-set perplexity\n% from the oracle's", 2.0),
        ("test", "test perplexity\n% from the oracle's", 2.0),
        ("min_k", "Min-K% membership AUC\nminus the oracle's", 0.03),
        ("seconds", "unlearning seconds", None),
    ]
    fig, axes = plt.subplots(len(panels), len(FACTORS), figsize=(12, 13), sharex="col",
                             squeeze=False)
    style = {"original": dict(color="0.55", ls="--", marker="s"),
             "lora-ga": dict(color="tab:red", marker="o"),
             "lora-npo": dict(color="tab:blue", marker="^")}
    for j, f in enumerate(FACTORS):
        for i, (k, label, goal) in enumerate(panels):
            ax = axes[i][j]
            for m in ["original"] + methods:
                es = [e for e in table if e["factor"] == f and e["method"] == m and k in e]
                if not es:
                    continue
                ax.errorbar([e["value"] for e in es], [e[k] for e in es],
                            yerr=[e[k + "_sd"] for e in es], capsize=3,
                            label="before unlearning" if m == "original" else m,
                            **style.get(m, {}))
            if goal is not None:
                ax.axhspan(-goal, goal, color="tab:green", alpha=0.12, lw=0)
                ax.axhline(0, color="k", lw=0.6)
            if k == "seconds":
                rs = [e for e in table if e["factor"] == f and e["method"] == methods[0]]
                ax.plot([e["value"] for e in rs], [e["retrain_seconds"] for e in rs],
                        color="k", ls=":", marker="x", label="retrain (oracle)")
                ax.set_yscale("log")
            if f in ("rank", "ratio"):
                ax.set_xscale("log", base=2)
            if i == len(panels) - 1:
                ax.set_xlabel(LABEL[f])
            if j == 0:
                ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[-1][0].legend(fontsize=8)
    fig.suptitle("LoRA unlearning of one role (examples/unlearn-lm.toml, client-0), "
                 "mean ± sd over 3 seeds;\ngreen: the issue's goal band around the oracle "
                 "(a retraining without the client)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    say(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default=os.path.join(ROOT, "target/release/cohort"))
    ap.add_argument("--out", default="/tmp/cohort-unlearning-study")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", default="3,4,5")
    ap.add_argument("--methods", default="lora-ga,lora-npo")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    if a.jobs < 1 or a.jobs > 64:
        sys.exit("--jobs: between 1 and 64")
    try:
        a.seeds = [int(x) for x in a.seeds.split(",")]
    except ValueError:
        sys.exit(f"--seeds: comma-separated integers, not {a.seeds!r}")
    a.methods = [m for m in a.methods.split(",") if m]
    if not a.methods or any(m not in ("lora-ga", "lora-npo") for m in a.methods):
        sys.exit("--methods: lora-ga and/or lora-npo")
    if not os.access(a.cohort, os.X_OK):
        sys.exit(f"{a.cohort} is not an executable: build with cargo build --release -p cohort")
    os.makedirs(a.out, exist_ok=True)
    study = Study(a)
    try:
        rows = study.all()
    except RuntimeError as e:
        sys.exit(str(e))
    table = summarise(rows, a.methods)
    print_table(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"design": {"config": CONFIG, "client": CLIENT, "default": DEFAULT,
                                  "factors": FACTORS, "seeds": a.seeds, "methods": a.methods,
                                  "jobs": a.jobs},
                       "summary": table, "runs": rows}, f, indent=1)
        say(f"wrote {a.json}")
    if a.plot:
        plot(table, a.methods, a.plot)


if __name__ == "__main__":
    main()
