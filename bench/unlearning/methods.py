#!/usr/bin/env python3
"""Every unlearning method of `cohort unlearn` against retraining, on both examples.

    python3 bench/unlearning/methods.py [--cohort BIN] [--out DIR] [--json FILE]

Runs examples/unlearn-imdb.toml and examples/unlearn-lm.toml once each, copies each run
directory once per method (the runs are seeded: every copy is the same run) and forgets the
same client with every method that applies, each with --compare-retrain: the method and a
retraining without the client in the same invocation. Prints a table and writes JSON: per
method the forget, retain and test metrics, the MIA AUCs and the backdoor success beside the
oracle's, the gaps to it against the issue's goals, the wall seconds of both and their ratio,
and the client steps spent. Progress goes to stderr.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCENARIOS = [
    # (name, config, client, methods, classifier)
    ("imdb", "examples/unlearn-imdb.toml", "client-9", ["retrain", "fed-eraser"], True),
    ("lm", "examples/unlearn-lm.toml", "client-0",
     ["retrain", "fed-eraser", "lora-ga", "lora-npo"], False),
]

# The goals: forget metric within 2 points (accuracy) or 2% (perplexity) of the
# oracle's, test quality within 1 point / 2%, MIA AUC within 0.03, backdoor within 2 points;
# speed against retraining: fed-eraser 4x, the LoRA methods 20x.
SPEED_GOAL = {"fed-eraser": 4.0, "lora-ga": 20.0, "lora-npo": 20.0}


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd):
    say("$ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-4000:]}")
    return p.stdout


def gap(metric, unlearned, oracle, classifier):
    """The gap to the oracle in the goal's unit: accuracy points, or perplexity percent."""
    if classifier:
        return 100.0 * abs(unlearned[metric]["accuracy"] - oracle[metric]["accuracy"])
    u, o = unlearned[metric]["perplexity"], oracle[metric]["perplexity"]
    return 100.0 * abs(u - o) / o


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default=os.path.join(ROOT, "target/release/cohort"))
    ap.add_argument("--out", default="/tmp/cohort-unlearning-bench")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if os.path.exists(a.out):
        sys.exit(f"{a.out} exists; remove it or name another --out")
    os.makedirs(a.out)
    rows = []
    for name, config, client, methods, classifier in SCENARIOS:
        base = os.path.join(a.out, name)
        t = time.time()
        run([a.cohort, "run", config, "--out", base, "--json"])
        say(f"{name}: the run took {time.time() - t:.1f} s")
        for m in methods:
            d = os.path.join(a.out, f"{name}-{m}")
            shutil.copytree(base, d)
            out = run([a.cohort, "unlearn", d, "--client", client, "--method", m,
                       "--compare-retrain", "--cache", base, "--json"])
            v = json.loads(out)
            o = v["oracle"]
            row = {
                "task": name,
                "method": m,
                "client": client,
                "verified": v["verified"],
                "seconds": v["seconds"],
                "retrain_seconds": v["retrain_seconds"],
                "speedup": v["speedup"],
                "client_steps": v["client_steps"],
                "ledger_bytes": v["ledger_bytes"],
                "forget": v["forget"],
                "retain": v["retain"],
                "test": v["test"],
                "mia_auc": v["mia_auc"],
                "original": v["original"],
                "oracle": o,
                "forget_gap": gap("forget", v, o, classifier),
                "test_gap": gap("test", v, o, classifier),
                "mia_gap": abs(v["mia_auc"]["loss"] - o["mia_auc"]["loss"]),
                "min_k_gap": (abs(v["mia_auc"]["min_k"] - o["mia_auc"]["min_k"])
                              if v["mia_auc"].get("min_k") is not None else None),
                # The same gaps of the model before unlearning: what there was to forget.
                "original_forget_gap": gap("forget", v["original"], o, classifier),
                "original_mia_gap": abs(v["original"]["mia_auc"]["loss"] - o["mia_auc"]["loss"]),
                "original_min_k_gap": (abs(v["original"]["mia_auc"]["min_k"]
                                           - o["mia_auc"]["min_k"])
                                       if v["mia_auc"].get("min_k") is not None else None),
                "backdoor_gap": (100.0 * abs(v["test"]["backdoor_success"]
                                             - o["test"]["backdoor_success"])
                                 if v["test"].get("backdoor_success") is not None else None),
            }
            goal = SPEED_GOAL.get(m)
            row["goals"] = {
                "forget": row["forget_gap"] <= 2.0,
                "test": row["test_gap"] <= (1.0 if classifier else 2.0),
                "mia": row["mia_gap"] <= 0.03
                and (row["min_k_gap"] is None or row["min_k_gap"] <= 0.03),
                "backdoor": None if row["backdoor_gap"] is None else row["backdoor_gap"] <= 2.0,
                "speed": None if goal is None else row["speedup"] >= goal,
            }
            rows.append(row)
    unit = {True: "pts", False: "%"}
    print(f"{'task':<5} {'method':<11} {'forget gap':>11} {'(before)':>8} {'test gap':>9} "
          f"{'MIA gap':>8} {'(before)':>8} {'min-k gap':>9} {'(before)':>8} "
          f"{'backdoor gap':>12} {'seconds':>8} {'retrain s':>9} {'speedup':>8} "
          f"{'steps':>6} {'ledger B':>8} verified")
    for r in rows:
        u = unit[r["task"] == "imdb"]
        bd = "-" if r["backdoor_gap"] is None else f"{r['backdoor_gap']:.1f} pts"
        mk = "-" if r["min_k_gap"] is None else f"{r['min_k_gap']:.3f}"
        mk0 = "-" if r["original_min_k_gap"] is None else f"{r['original_min_k_gap']:.3f}"
        print(f"{r['task']:<5} {r['method']:<11} {r['forget_gap']:>7.2f} {u:<3} "
              f"{r['original_forget_gap']:>8.2f} "
              f"{r['test_gap']:>5.2f} {u:<3} {r['mia_gap']:>8.3f} {r['original_mia_gap']:>8.3f} "
              f"{mk:>9} {mk0:>8} {bd:>12} "
              f"{r['seconds']:>8.2f} {r['retrain_seconds']:>9.2f} {r['speedup']:>7.1f}x "
              f"{r['client_steps']:>6} {r['ledger_bytes']:>8} {r['verified']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "cohort": a.cohort}, f, indent=2)
        say(f"wrote {a.json}")


if __name__ == "__main__":
    main()
