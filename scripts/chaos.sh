#!/usr/bin/env bash
# make chaos: a 10k-device rotation with faults, fleetd as a child process of
# the simulator so that it can be killed. Injected: 5% of agents crash
# mid-rotation and restart from their keystores, 30% are offline when the
# rotation is requested, 5% flap, fleetd is SIGKILLed twice and restarted
# once in order (its embedded broker with it). Not yet injected (planned):
# devices offline past the grace window (needs IDevID re-enrollment),
# dropped/duplicated/delayed messages, clock skew.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keyfleet-chaos-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
DEVICES=${CHAOS_DEVICES:-10000}
bin/fleetsim run --fleetd-bin bin/fleetd --dir "$WORK" --devices "$DEVICES" --rotations 1 \
  --crash 0.05 --offline 0.3 --offline-for 20s --flap 0.05 --flap-every 5s \
  --kill-fleetd 2 --restart-broker 1 --baseline 0 \
  --report table --json-out "$OUT/chaos-$DEVICES.json"
