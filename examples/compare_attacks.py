#!/usr/bin/env python3
"""Per-attack comparison: each attack in turn, defended and undefended, against a clean run.

For a run config (an `imdb` or `lm` example), runs `cohort run` once clean
(`attack.fraction=0`) and, for every attack, twice at the config's attack fraction (30% in the
IMDB examples): *defended* (the config's own strategy and the validators' verdicts) and
*undefended* (plain FedAvg of every valid update, unclipped: `aggregation.strategy={kind="fed-avg"}`,
`aggregation.ignore_verdicts=true`). Prints a Markdown table of the final test quality
(accuracy for `imdb`, perplexity for `lm`), the gap to the clean run, how often the attackers
were rejected and what they and the honest clients hold at the end.

    python3 examples/compare_attacks.py examples/imdb-attack.toml --out /tmp/cmp-imdb
    python3 examples/compare_attacks.py examples/lm-attack.toml --out /tmp/cmp-lm \\
        --set task.preset=test --set task.seq_len=32 --only sign-flip,free-rider

Every run's directory (summary.json, report.html, ledger) stays under --out. Needs Python
3.11+ (tomllib) and a built `cohort` (--cohort, default target/release/cohort).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tomllib

# The attacks and their strengths, per task. Update attacks work on every task; label flipping
# and the backdoor need a classification task.
ATTACKS = {
    "imdb": [
        ("random-noise", '{kind="random-noise",std=1.0}'),
        ("sign-flip", '{kind="sign-flip",scale=3.0}'),
        ("scaled-replacement", '{kind="scaled-replacement",factor=10.0}'),
        ("free-rider", '{kind="free-rider",fake_samples=10000}'),
        ("label-flip", '{kind="label-flip"}'),
        ("backdoor", '{kind="backdoor",trigger=[497,498,499],target=1,poison_fraction=0.5}'),
    ],
    "lm": [
        ("random-noise", '{kind="random-noise",std=0.5}'),
        ("sign-flip", '{kind="sign-flip",scale=3.0}'),
        ("scaled-replacement", '{kind="scaled-replacement",factor=10.0}'),
        ("free-rider", '{kind="free-rider",fake_samples=10000}'),
    ],
}

UNDEFENDED = [
    'aggregation.strategy={kind="fed-avg"}',
    "aggregation.ignore_verdicts=true",
    "aggregation.clip_to_median=false",
]


def run(args, out, sets):
    cmd = [args.cohort, "run", args.config, "--out", str(out), "--json"]
    for s in args.set + sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"cohort run failed:\n{p.stderr}")
    return json.loads((out / "summary.json").read_text())


def quality(summary, kind):
    t = summary["summary"]["rounds"][-1]["test"]
    return t["accuracy"] if kind == "imdb" else t["perplexity"]


def gap(q, clean, kind):
    # How much worse than clean: accuracy points for imdb, relative perplexity for lm.
    if kind == "imdb":
        return f"{100 * (clean - q):+.1f} pt"
    return f"{100 * (q / clean - 1):+.1f}%"


def holdings(summary, attackers):
    h = {k: float(v) for k, v in summary["summary"]["final_holdings"].items()}
    clients = [k for k in h if k.startswith("client-")]
    bad = [h[k] for k in clients if int(k.split("-")[1]) in attackers]
    good = [h[k] for k in clients if int(k.split("-")[1]) not in attackers]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return mean(bad), mean(good)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--cohort", default="target/release/cohort")
    ap.add_argument("--set", action="append", default=[], help="passed to every run")
    ap.add_argument("--only", help="comma-separated attack names")
    args = ap.parse_args()
    cfg = tomllib.loads(pathlib.Path(args.config).read_text())
    kind = cfg.get("task", {}).get("kind", "linear")
    if kind not in ATTACKS:
        sys.exit(f"task kind {kind!r}: this script knows imdb and lm")
    attacks = ATTACKS[kind]
    if args.only:
        keep = args.only.split(",")
        attacks = [a for a in attacks if a[0] in keep]
    args.out.mkdir(parents=True, exist_ok=True)
    clean = run(args, args.out / "clean", ["attack.fraction=0"])
    n = clean["config"]["clients"]
    frac = cfg.get("attack", {}).get("fraction", 0.3)
    attackers = set(range(n - round(frac * n), n))
    # An lm run pretrains its base model first: reuse the clean run's for the others.
    bases = sorted((args.out / "clean").glob("base-*"))
    if kind == "lm" and bases and not any(x.startswith("task.base=") for x in args.set):
        args.set.append(f'task.base="{bases[0].resolve()}"')
    q0 = quality(clean, kind)
    metric = "accuracy" if kind == "imdb" else "perplexity"
    rows = []
    for name, table in attacks:
        sets = [f"attack.attack={table}", f"attack.fraction={frac}"]
        d = run(args, args.out / f"{name}-defended", sets)
        u = run(args, args.out / f"{name}-undefended", sets + UNDEFENDED)
        sampled = sum(
            1 for r in d["summary"]["rounds"] for k in r["submitted"] if k in attackers
        )
        rejected = sum(
            1 for r in d["summary"]["rounds"] for k in r["rejected"] if k in attackers
        )
        bad, good = holdings(d, attackers)
        qd, qu = quality(d, kind), quality(u, kind)
        extra = ""
        if name == "backdoor":
            b = lambda s: s["summary"]["rounds"][-1]["test"].get("backdoor_success_rate")  # noqa: E731
            extra = f" (backdoor {b(d):.2f} vs {b(u):.2f})"
        rows.append(
            f"| {name} | {qd:.4f} | {gap(qd, q0, kind)} | {qu:.4f} | {gap(qu, q0, kind)}{extra} "
            f"| {rejected}/{sampled} | {bad:,.0f} | {good:,.0f} |"
        )
    print(f"\nclean run: final {metric} {q0:.4f}; attack fraction {frac}\n")
    print(
        f"| attack | defended {metric} | worse than clean | undefended {metric} | worse than clean "
        "| attackers rejected | attackers hold | honest hold |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
