#!/usr/bin/env bash
# make run: fleetd with its embedded broker and SoftHSM2 token, five device
# agents, and an identity rotation of every device every 15 s. State lives in
# ./var, so running it again continues from the stored versions. Ctrl-C stops
# everything.
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${VAR:-var}
DEVICES=${DEVICES:-5}
EVERY=${EVERY:-15}
BIN=bin
mkdir -p "$VAR/log" "$VAR/devices"
VAR=$(cd "$VAR" && pwd)
source scripts/softhsm-env.sh
softhsm_env "$VAR"
if [ ! -s "$VAR/hsm.pin" ]; then
  umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$VAR/hsm.pin"
fi
export KEYFLEET_HSM_PIN="$(cat "$VAR/hsm.pin")"
export KEYFLEET_CREDENTIAL="$VAR/fleetd/admin"
MQTT=${MQTT:-127.0.0.1:8883}
ADMIN=${ADMIN:-127.0.0.1:8443}
export KEYFLEET_ADMIN="$ADMIN"

if [ ! -f "$VAR/fleetd/pki/ca.pem" ]; then
  echo "== fleetd init (CA and update-signing keys in a new SoftHSM2 token)"
  "$BIN/fleetd" init --data "$VAR/fleetd" --create-token --log-level warn
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "== stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "== stopped; state is in $VAR (run again to continue)"
}
trap cleanup INT TERM EXIT

# fleetd prints one line per key state change: device, slot, version, state, latency.
"$BIN/fleetd" run --data "$VAR/fleetd" --mqtt-listen "$MQTT" --admin-listen "$ADMIN" --grace 20s \
  2> >(grep --line-buffered -E 'key state|level=(WARN|ERROR)|fleetd serving' | \
       sed -u -E 's/^time=([^ ]+) level=INFO msg="key state" /\1 /; s/ rotation=[^ ]*//') &
pids+=($!)
for _ in $(seq 50); do "$BIN/fleetctl" status >/dev/null 2>&1 && break; sleep 0.2; done

for i in $(seq 1 "$DEVICES"); do
  id=$(printf "dev-%02d" "$i")
  if [ ! -f "$VAR/devices/$id/state.json" ]; then
    "$BIN/fleetctl" device add "$id" --out "$VAR/devices/$id" >/dev/null
    echo "== provisioned $id"
  fi
  "$BIN/fleet-agent" --dir "$VAR/devices/$id" --log-level warn 2>>"$VAR/log/$id.log" &
  pids+=($!)
done

echo "== $DEVICES agents running; rotating every device every ${EVERY}s (Ctrl-C to stop)"
sleep 2
while true; do
  "$BIN/fleetctl" rotate --all >/dev/null || echo "rotate request failed"
  sleep "$EVERY" & wait $!   # wait, unlike sleep, returns at once on Ctrl-C
  "$BIN/fleetctl" devices
done
