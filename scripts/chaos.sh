#!/usr/bin/env bash
# make chaos: a 10k-device rotation with faults, fleetd as a separate
# process. Injected: 5% of agents crash mid-rotation and restart from their
# keystores, 30% are offline when the rotation is requested, 5% flap.
# Not yet injected (planned): broker restart, fleetd SIGKILL, offline past
# the grace window (needs IDevID re-enrollment).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keyfleet-chaos-XXXXXX)
DEVICES=${CHAOS_DEVICES:-10000}
source scripts/fleetd-bg.sh
bin/fleetsim run --server "$ADMIN_ADDR" --credential "$WORK/fleetd/admin" --devices "$DEVICES" --rotations 1 \
  --crash 0.05 --offline 0.3 --offline-for 20s --flap 0.05 --flap-every 5s --baseline 0 \
  --report table --json-out "$OUT/chaos-$DEVICES.json"
bin/fleetctl --admin "$ADMIN_ADDR" --credential "$WORK/fleetd/admin" audit verify
