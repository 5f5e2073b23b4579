#!/bin/bash
# Cross-CPU check of unlearning evidence: executions made on one machine, verified on another.
#
#   bash bench/unlearning/cross_cpu.sh prepare DIR [COHORT]   # on machine A
#   bash bench/unlearning/cross_cpu.sh verify DIR [COHORT]    # on machine B (a copy of DIR)
#
# prepare: examples/unlearn-imdb.toml (3 rounds; client-9 forgotten by fed-eraser, with a
# retraining as the oracle) and examples/unlearn-lm.toml (1 round of 16 local steps; client-0
# forgotten by lora-npo) run into DIR/imdb and DIR/lm, each with unlearning request 1 filed
# and executed, not verified. verify: validator-1 recomputes every measure of each execution
# from the blobs, the test set and the forget set and must rebuild the executor's evidence byte
# for byte (`cohort unlearn verify`; exit 1 on a mismatch). Both machines need the repository's
# data at ../shared/data, seen from the repository root (where this runs).
set -euo pipefail
mode=${1:?prepare or verify}
dir=${2:?a directory}
cohort=${3:-target/release/cohort}
case "$mode" in
  prepare)
    mkdir -p "$dir"
    "$cohort" run examples/unlearn-imdb.toml --out "$dir/imdb" --set coordinator.rounds=3 --json > /dev/null
    "$cohort" unlearn request "$dir/imdb" --client client-9
    "$cohort" unlearn execute "$dir/imdb" --request 1 --method fed-eraser --compare-retrain > /dev/null
    "$cohort" run examples/unlearn-lm.toml --out "$dir/lm" --set coordinator.rounds=1 \
      --set task.local_steps=16 --json > /dev/null
    "$cohort" unlearn request "$dir/lm" --client client-0
    "$cohort" unlearn execute "$dir/lm" --request 1 --method lora-npo > /dev/null
    lscpu | grep -E "Model name|^CPU\(s\)" || true
    ;;
  verify)
    lscpu | grep -E "Model name|^CPU\(s\)" || true
    status=0
    for d in imdb lm; do
      if "$cohort" unlearn verify "$dir/$d" --request 1 --as validator-1; then
        echo "$d: the evidence rebuilt byte for byte"
      else
        echo "$d: REJECTED"; status=1
      fi
    done
    exit $status
    ;;
  *) echo "prepare or verify, not $mode" >&2; exit 2 ;;
esac
