#!/usr/bin/env bash
# make chaos: a 10k-device rotation with faults, fleetd as a child process of
# the simulator so that it can be killed. Injected: 5% of agents crash
# mid-rotation and restart from their keystores, 30% are offline when the
# rotation is requested and stay away past the grace window (10 s against
# 20 s), 5% flap, fleetd is SIGKILLed twice and restarted once in order (its
# embedded broker with it), 1% of messages are lost, 1% duplicated, 1%
# delayed, and 5% of the devices have clocks up to 3 minutes off. A device
# whose certificate expired while away (IDevID re-enrollment) is the
# offline-devices work that comes next.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keyfleet-chaos-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
DEVICES=${CHAOS_DEVICES:-10000}
bin/fleetsim run --fleetd-bin bin/fleetd --dir "$WORK" --devices "$DEVICES" --rotations 1 \
  --crash 0.05 --offline 0.3 --offline-for 20s --flap 0.05 --flap-every 5s \
  --kill-fleetd 2 --restart-broker 1 --fleetd-arg=--grace=10s \
  --drop 0.01 --dup 0.01 --delay 0.01 --skew 0.05 --skew-max 3m --baseline 0 \
  --report table --json-out "$OUT/chaos-$DEVICES.json"
