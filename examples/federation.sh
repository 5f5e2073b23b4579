#!/usr/bin/env bash
# A federation of separate processes on this machine, over TLS: one `cohort coordinator` and one
# `cohort client` or `cohort validator` process per party, each with its own key file.
#
#   examples/federation.sh [CONFIG.toml [DIR [--set KEY=VALUE ...]]]
#
# CONFIG defaults to examples/clean-linear.toml, DIR to /tmp/cohort-federation (it must not hold
# an earlier federation). It makes DIR/keys/*.pem (one key per party), DIR/admit.txt (the list
# the coordinator admits), DIR/tls/ (a private CA and the coordinator's certificate), starts the
# coordinator on 127.0.0.1:$PORT (default 50051) and the parties, and waits for all of them;
# the run's results are in DIR/run (summary.json, report.html, ledger/), each process's log in
# DIR/logs/. On other machines, run the same commands there: copy DIR/tls/ca.pem to every
# party, keep each key on its own party, and dial the coordinator's address instead of
# 127.0.0.1 (its certificate must be made for that name: `cohort keys tls --name HOST`).
#
# COHORT names the binary (default: `cohort` on PATH, else target/release/cohort).
#
# On an EVM chain instead of the embedded ledger: CHAIN_RPC=URL and FUNDER_KEY=HEX (a binary
# built with `--features evm-rpc`; a dev chain such as anvil, whose first account's key funds
# the run). The admission list then gives each party's chain address, each party puts the
# transactions it signs on the chain itself (`--chain-rpc`) and the coordinator records them
# from there, and DIR/run/summary.json lists them.
set -euo pipefail

cfg=${1:-examples/clean-linear.toml}
dir=${2:-/tmp/cohort-federation}
shift $(($# < 2 ? $# : 2))
sets=("$@")
port=${PORT:-50051}
chain=()
own_chain=()
if [ -n "${CHAIN_RPC:-}" ]; then
  if [ -z "${FUNDER_KEY:-}" ]; then
    echo "CHAIN_RPC needs FUNDER_KEY: the key of an account that pays the run's gas" >&2
    exit 2
  fi
  chain=(--chain-rpc "$CHAIN_RPC" --funder-key "$FUNDER_KEY")
  # Each party puts its own transactions on the chain through this node too (a real
  # federation's parties would each name a node of their own).
  own_chain=(--chain-rpc "$CHAIN_RPC")
fi
if [ -n "${COHORT:-}" ]; then
  cohort=$COHORT
elif command -v cohort >/dev/null 2>&1; then
  cohort=cohort
else
  cohort=target/release/cohort
fi

if [ -e "$dir/admit.txt" ]; then
  echo "$dir already holds a federation; remove it or name another DIR" >&2
  exit 2
fi
mkdir -p "$dir/keys" "$dir/logs"

# How many clients and validators the config (with the --set overrides) has.
read -r clients validators < <("$cohort" run "$cfg" --out "$dir/run" --check --json "${sets[@]}" |
  python3 -c 'import json,sys; c=json.load(sys.stdin)["config"]; print(c["clients"], c["validators"])')
echo "federation: $clients clients, $validators validators ($cfg) in $dir"

# One key per party, made where the party runs; the coordinator learns only the public keys.
: >"$dir/admit.txt"
for role in client validator; do
  n=$([ "$role" = client ] && echo "$clients" || echo "$validators")
  for ((i = 0; i < n; i++)); do
    # The public key and, on a chain, the chain address (the party's chain key derives from
    # its secret, so only the party can say it).
    line=$("$cohort" keys new --out "$dir/keys/$role-$i.pem" --json |
      CHAIN="${CHAIN_RPC:-}" python3 -c '
import json, os, sys
k = json.load(sys.stdin)
if os.environ["CHAIN"] and not k.get("chain_address"):
    sys.exit("this cohort cannot derive chain addresses: build it with --features evm-rpc")
print(k["public_key"] + (" " + k["chain_address"] if os.environ["CHAIN"] else ""))')
    echo "$role $line" >>"$dir/admit.txt"
  done
done

# A private CA and a certificate for the name the parties dial.
"$cohort" keys tls --out "$dir/tls" --name 127.0.0.1 >/dev/null

"$cohort" coordinator "$cfg" "${sets[@]}" --out "$dir/run" --listen "127.0.0.1:$port" \
  --admit "$dir/admit.txt" --tls-cert "$dir/tls/server.pem" --tls-key "$dir/tls/server.key" \
  ${chain[@]+"${chain[@]}"} >"$dir/logs/coordinator.out" 2>"$dir/logs/coordinator.log" &
coordinator=$!
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

pids=()
for role in client validator; do
  n=$([ "$role" = client ] && echo "$clients" || echo "$validators")
  for ((i = 0; i < n; i++)); do
    "$cohort" "$role" --coordinator "https://127.0.0.1:$port" --ca "$dir/tls/ca.pem" \
      --key "$dir/keys/$role-$i.pem" --config "$cfg" --index "$i" "${sets[@]}" \
      ${own_chain[@]+"${own_chain[@]}"} >"$dir/logs/$role-$i.log" 2>&1 &
    pids+=($!)
  done
done

status=0
wait "$coordinator" || status=$?
for p in "${pids[@]}"; do
  wait "$p" || status=$?
done
trap - EXIT
cat "$dir/logs/coordinator.out"
if [ "$status" -ne 0 ]; then
  echo "a process failed (exit $status): see $dir/logs/" >&2
  exit "$status"
fi
if [ ${#chain[@]} -eq 0 ]; then
  "$cohort" ledger verify "$dir/run/ledger"
fi
