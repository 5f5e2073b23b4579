#!/usr/bin/env python3
"""What sharded training (SISA) costs and what it buys: `cohort unlearn --method shards`.

    python3 bench/unlearning/shards.py [--cohort BIN] [--out DIR] [--json FILE]
        [--imdb-shards 1,2,5,10] [--lm-shards 1,3] [--lm12-shards 1,2,4,6]

For each scenario and each number of shards K, trains the run with `--set unlearning.shards=K` and reports its test quality with
nobody forgotten (K = 1 is the ordinary run: the difference is what sharding costs). For
K > 1 it then forgets the example's client with `--method shards --compare-retrain`: the
client's shard retrained alone, and the whole sharded federation retrained without it (the
oracle) in the same invocation. The scenarios: examples/unlearn-imdb.toml (10 clients,
forgetting client-9), examples/unlearn-lm.toml (3 clients, forgetting client-0) and the same
LM with 12 clients of 16 local steps each (`lm12`: as much training in all, and shards of
several clients). Prints a table and writes JSON: per K the test metrics, and
for the unlearning its wall seconds against retraining's, the ratio, the client steps, the
gaps to the oracle and whether the model is the oracle's bit for bit. Progress goes to stderr.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCENARIOS = {
    # name: (config, extra --set arguments, client, classifier)
    "imdb": ("examples/unlearn-imdb.toml", [], "client-9", True),
    "lm": ("examples/unlearn-lm.toml", [], "client-0", False),
    "lm12": ("examples/unlearn-lm.toml",
             ["clients=12", "coordinator.clients_per_round=12", "task.local_steps=16"],
             "client-0", False),
}


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd):
    say("$ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    return p.stdout


def quality(m, classifier):
    """Test accuracy (classifier) or perplexity."""
    return m["accuracy"] if classifier else m["perplexity"]


def gap(unlearned, oracle, classifier):
    """The gap to the oracle in the goal's unit: accuracy points, or perplexity percent."""
    if classifier:
        return 100.0 * abs(unlearned["accuracy"] - oracle["accuracy"])
    return 100.0 * abs(unlearned["perplexity"] - oracle["perplexity"]) / oracle["perplexity"]


def counts(text, flag):
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"{flag} {text!r}: a comma-separated list of shard counts, such as 1,2,5")
    if not ks or any(k < 1 for k in ks):
        sys.exit(f"{flag} {text!r}: shard counts are 1 or more")
    return ks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default=os.path.join(ROOT, "target/release/cohort"))
    ap.add_argument("--out", default="/tmp/cohort-shards-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--imdb-shards", default="1,2,5,10")
    ap.add_argument("--lm-shards", default="1,3")
    ap.add_argument("--lm12-shards", default="1,2,4,6")
    a = ap.parse_args()
    plan = {"imdb": counts(a.imdb_shards, "--imdb-shards"),
            "lm": counts(a.lm_shards, "--lm-shards"),
            "lm12": counts(a.lm12_shards, "--lm12-shards")}
    if os.path.exists(a.out):
        sys.exit(f"{a.out} exists; remove it or name another --out")
    os.makedirs(a.out)
    rows = []
    total = sum(len(ks) for ks in plan.values())
    done = 0
    t0 = time.time()
    for name, ks in plan.items():
        config, sets, client, classifier = SCENARIOS[name]
        for k in ks:
            d = os.path.join(a.out, f"{name}-{k}")
            t = time.time()
            cmd = [a.cohort, "run", config, "--out", d, "--json",
                   "--set", f"unlearning.shards={k}"]
            for x in sets:
                cmd += ["--set", x]
            s = json.loads(run(cmd))
            run_seconds = time.time() - t
            test = s["summary"]["rounds"][-1]["test"]
            row = {"task": name, "shards": k, "client": client, "run_seconds": run_seconds,
                   "test": test}
            if k > 1:
                v = json.loads(run([a.cohort, "unlearn", d, "--client", client, "--method",
                                    "shards", "--compare-retrain", "--json"]))
                o = v["oracle"]
                row.update({
                    "verified": v["verified"],
                    "seconds": v["seconds"],
                    "retrain_seconds": v["retrain_seconds"],
                    "speedup": v["speedup"],
                    "client_steps": v["client_steps"],
                    "retrain_client_steps": v["retrain_client_steps"],
                    "ledger_bytes": v["ledger_bytes"],
                    "exact": v["model_hash"] == v["oracle_hash"],
                    "forget": v["forget"], "test_after": v["test"], "mia_auc": v["mia_auc"],
                    "original": v["original"], "oracle": o,
                    "forget_gap": gap(v["forget"], o["forget"], classifier),
                    "test_gap": gap(v["test"], o["test"], classifier),
                    "original_forget_gap": gap(v["original"]["forget"], o["forget"], classifier),
                    "mia_gap": abs(v["mia_auc"]["loss"] - o["mia_auc"]["loss"]),
                })
            rows.append(row)
            done += 1
            el = time.time() - t0
            say(f"[{done}/{total}] {name} shards={k} done; {el:.0f} s elapsed, "
                f"about {el / done * (total - done):.0f} s left")
    base = {r["task"]: quality(r["test"], SCENARIOS[r["task"]][3])
            for r in rows if r["shards"] == 1}
    print(f"{'task':<5} {'shards':>6} {'test':>8} {'vs 1 shard':>10} {'seconds':>8} "
          f"{'retrain s':>9} {'speedup':>8} {'steps':>13} {'forget gap':>10} {'(before)':>8} "
          f"{'test gap':>8} {'exact':>5} verified")
    for r in rows:
        cls = SCENARIOS[r["task"]][3]
        q = quality(r["test"], cls)
        unit = "pts" if cls else "%"
        if r["task"] in base:
            b = base[r["task"]]
            diff = 100.0 * (q - b) if cls else 100.0 * (q - b) / b
            vs = f"{diff:+.2f} {unit}"
        else:
            vs = "-"
        qs = f"{100 * q:.2f}%" if cls else f"{q:.3f}"
        if r["shards"] == 1:
            print(f"{r['task']:<5} {r['shards']:>6} {qs:>8} {vs:>10}")
            continue
        steps = f"{r['client_steps']}/{r['retrain_client_steps']}"
        print(f"{r['task']:<5} {r['shards']:>6} {qs:>8} {vs:>10} {r['seconds']:>8.2f} "
              f"{r['retrain_seconds']:>9.2f} {r['speedup']:>7.1f}x {steps:>13} "
              f"{r['forget_gap']:>6.2f} {unit:<3} {r['original_forget_gap']:>8.2f} "
              f"{r['test_gap']:>4.2f} {unit:<3} {str(r['exact']):>5} {r['verified']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "cohort": a.cohort}, f, indent=2)
        say(f"wrote {a.json}")


if __name__ == "__main__":
    main()
