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

# (c) The fleet model. At the rate measured here (about 360 rotations/s on
# two cores with the simulator on the same machine) a million devices take
# about 50 minutes, so the default is the 100,000 that fit in about five;
# BENCH_FLEET=1000000 runs the full million.
FLEET=${BENCH_FLEET:-100000}
echo "== (c) fleet model: $FLEET devices, at most 5,000 connected (BENCH_FLEET to change)"
kill $FLEETD_PID 2>/dev/null || true
wait $FLEETD_PID 2>/dev/null || true
trap - EXIT
bin/fleetsim run --fleetd-bin bin/fleetd --dir "$WORK/fleet" --fleet "$FLEET" --max-connected 5000 \
  --baseline 3s --report table --progress=false --json-out "$OUT/fleet-$FLEET.json"
echo "== (d) the long-absence scenario: 1,000 devices, 300 away for 400 simulated days"
bin/fleetsim year --devices 1000 --offline 300 --offline-days 400 --dir "$WORK/year" \
  --report table --json-out "$OUT/year-1000.json"
echo "== (e) three-way: embedded CA, step-ca as keyfleet's issuer, and step ca rekey without keyfleet"
BENCH_STEPCA_OUT="$PWD/$OUT/stepca-threeway.json" BENCH_STEPCA_DEVICES=${BENCH_STEPCA_DEVICES:-200} \
  go test -run '^$' -bench 'ThreeWay$' -benchtime 1x ./certs/stepca | tee "$OUT/stepca-threeway.txt"
echo "== results in $OUT"
