#!/usr/bin/env bash
# The perplexity a stage served as truncated SVD factors costs (docs/pipeline.md): a GPT
# evaluated through three stage servers on loopback, the middle one (layers 1..3) dense or
# `serve-layers --svd-rank K`. Usage:
#   bash bench/pipeline/svd-stages.sh COHORT MODEL_DIR TEXT_FILE [RANKS...]
# e.g. after `cohort model pretrain --corpus text --preset tiny --out /tmp/m --steps 600`:
#   bash bench/pipeline/svd-stages.sh target/release/cohort /tmp/m text 0 64 48 32 16
set -euo pipefail
B=$1; M=$2; T=$3; shift 3
ranks=("${@:-0 64 48 32 16}")
for K in ${ranks[@]}; do
  base=$((7400 + K * 3))
  extra=(); [ "$K" != 0 ] && extra=(--svd-rank "$K")
  "$B" serve-layers "$M" --layers 0..1 --listen 127.0.0.1:$((base + 1)) --insecure >/dev/null 2>&1 &
  p1=$!
  "$B" serve-layers "$M" --layers 1..3 --listen 127.0.0.1:$((base + 2)) --insecure "${extra[@]}" \
    >/tmp/svd-stage-$K.log 2>&1 &
  p2=$!
  "$B" serve-layers "$M" --layers 3..4 --listen 127.0.0.1:$((base + 3)) --insecure >/dev/null 2>&1 &
  p3=$!
  sleep 5
  out=$("$B" model lora "$M" --data "$T" --out "/tmp/svd-stage-adapter-$K" --force --steps 1 \
    --batch 16 --insecure --json \
    --pipeline "http://127.0.0.1:$((base + 1)),http://127.0.0.1:$((base + 2)),http://127.0.0.1:$((base + 3))")
  kill $p1 $p2 $p3; wait $p1 $p2 $p3 2>/dev/null || true
  python3 - "$K" "$out" /tmp/svd-stage-$K.log <<'PY'
import json, math, re, sys
k, out, log = sys.argv[1], json.loads(sys.argv[2]), open(sys.argv[3]).read()
m = re.search(r"(\d+) parameters instead of (\d+) \(([\d.]+)% fewer\)", log)
fewer = m.group(3) + "%" if m else "0%"
loss = out["base_val_loss"]
print(f"rank {k}: stage parameters {fewer} fewer, held-out loss {loss:.6f}, perplexity {math.exp(loss):.4f}")
PY
done
