#!/usr/bin/env bash
# make bench: every figure measured in one run on this machine, with the
# raw HSM rates measured in the same run as the baseline they are ratios of.
# Results: bench/results/*.json and gobench.txt. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keyfleet-bench-XXXXXX)
DEVICES=${BENCH_DEVICES:-10000}

echo "== (a) Go benchmarks of the hot paths, including the raw HSM sign and issue rates"
go test -run '^$' -bench . -benchmem -benchtime 2s \
  ./protocol ./certs ./server/hsm ./server/store | tee "$OUT/gobench.txt"

echo "== (b) full identity rotations at $DEVICES devices, fleetd as a separate process"
source scripts/fleetd-bg.sh
bin/fleetsim run --server "$ADMIN_ADDR" --credential "$WORK/fleetd/admin" --devices "$DEVICES" \
  --rotations 1 --baseline 3s --report table --progress=false --json-out "$OUT/rotations-$DEVICES.json"

echo "== (c) the 1M-device fleet model (--fleet/--max-connected) is not built yet: no figure"
echo "== results in $OUT"
