#!/usr/bin/env bash
# Sourced by bench.sh and chaos.sh: starts a fleetd of its own (SoftHSM2
# token and data in $WORK) as a separate process on free ports, so that the
# simulator's devices and fleetd each have their own open-file budget and
# fleetd's memory is its own.
set -euo pipefail
WORK=${WORK:?}
source "$(dirname "${BASH_SOURCE[0]}")/softhsm-env.sh"
softhsm_env "$WORK"
# The PIN goes to fleetd alone, in a file; the simulator's environment
# does not carry it.
PIN_FILE="$WORK/hsm.pin"
(umask 077; echo "bench-$$" > "$PIN_FILE")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
MQTT_ADDR=127.0.0.1:$(free_port)
ADMIN_ADDR=127.0.0.1:$(free_port)
OPS_ADDR=127.0.0.1:$(free_port)
bin/fleetd init --data "$WORK/fleetd" --create-token --pin-file "$PIN_FILE" --log-level warn
bin/fleetd run --data "$WORK/fleetd" --pin-file "$PIN_FILE" --mqtt-listen "$MQTT_ADDR" --admin-listen "$ADMIN_ADDR" \
  --ops-listen "$OPS_ADDR" --log-level warn ${FLEETD_ARGS:-} 2>"$WORK/fleetd.log" &
FLEETD_PID=$!
trap 'kill $FLEETD_PID 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  bin/fleetctl --admin "$ADMIN_ADDR" --credential "$WORK/fleetd/admin" status >/dev/null 2>&1 && break
  sleep 0.1
done
