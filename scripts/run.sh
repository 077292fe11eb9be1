#!/usr/bin/env bash
# make run: fleetd with its embedded broker and SoftHSM2 token, five device
# agents, and a staged identity campaign over every device every 15 s. State lives in
# ./var (VAR), so running it again continues from the stored versions. The
# screen shows one line per key state change (fleetd --print-changes); logs go
# to $VAR/log. Ctrl-C stops everything and exits 0.
#
# Environment: VAR (state directory, default var), DEVICES (5), EVERY (15,
# seconds between rotations), MQTT, ADMIN and OPS (listen addresses, default
# 127.0.0.1:8883, 127.0.0.1:8443 and 127.0.0.1:9464), BIN (the binaries,
# default bin).
set -euo pipefail
cd "$(dirname "$0")/.."

# From a terminal, run again as a job of our own that holds the terminal:
# Ctrl-C then reaches this script, fleetd and the agents but not make, which
# would otherwise die of the signal and end make run with status 130.
if [ -t 0 ] && [ -z "${KEYFLEET_RUN_JOB:-}" ]; then
  set -m
  KEYFLEET_RUN_JOB=1 "$0" "$@" && exit 0 || exit $?
fi

VAR=${VAR:-var}
DEVICES=${DEVICES:-5}
EVERY=${EVERY:-15}
BIN=${BIN:-bin}
mkdir -p "$VAR/log" "$VAR/devices"
VAR=$(cd "$VAR" && pwd)
source scripts/softhsm-env.sh
softhsm_env "$VAR"
# The token PIN is in a file only fleetd reads (--pin-file): it is never in
# the environment, so the agents and fleetctl started here do not hold it.
PIN_FILE="$VAR/hsm.pin"
if [ ! -s "$PIN_FILE" ]; then
  (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$PIN_FILE")
fi
MQTT=${MQTT:-127.0.0.1:8883}
ADMIN=${ADMIN:-127.0.0.1:8443}
OPS=${OPS:-127.0.0.1:9464}
# fleetctl's connection: not secret. A second shell in this directory finds
# the fleet without them when VAR is ./var (fleetctl --help).
export KEYFLEET_CREDENTIAL="$VAR/fleetd/admin"
export KEYFLEET_ADMIN="$ADMIN"
LOG="$VAR/log/fleetd.log"

if [ ! -f "$VAR/fleetd/pki/ca.pem" ]; then
  echo "== fleetd init (CA and update-signing keys in a new SoftHSM2 token)"
  "$BIN/fleetd" init --data "$VAR/fleetd" --create-token --pin-file "$PIN_FILE" --log-level warn
fi

# stop PID... sends SIGTERM and waits up to 1 s, then kills what is left.
stop() {
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 10); do
    local alive=0 p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}
FLEETD_PID=
cleanup() {
  local status=$?
  trap - INT TERM EXIT
  echo; echo "== stopping"
  # The agents (and the loop's sleep, which as a background job of a
  # script ignores Ctrl-C) first, so that none reconnects while fleetd
  # closes its broker; then fleetd. On Ctrl-C all of them have the signal
  # already and are gone in a fraction of a second.
  local others=() p
  for p in $(jobs -p); do [ "$p" = "$FLEETD_PID" ] || others+=("$p"); done
  stop "${others[@]}"
  stop $FLEETD_PID
  wait 2>/dev/null || true
  echo "== stopped; state is in $VAR (run again to continue)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
# bg CMD...: run CMD as a job and wait for it. The wait builtin returns at
# once on Ctrl-C, whereas bash ignores a SIGINT that arrives while a
# foreground command exits normally (it takes the command to have
# handled it), which would leave the loop running.
bg() { "$@" & wait $!; }
# bgto FILE CMD...: bg with CMD's output in FILE. The redirection is the
# job's alone: on the function call it would also catch the Ctrl-C trap's
# messages.
bgto() { local f=$1; shift; "$@" >"$f" 2>&1 & wait $!; }
# status_line: fleetd's main counters on one line.
status_line() {
  "$BIN/fleetctl" status | awk -F '  +' '
    /^(connected clients|rotations activated|versions retired|HSM operations|anchors version)\t?/ {
      printf "%s%s %s", sep, $1, $2; sep = ", " }
    END { if (sep != "") print "" }' | sed 's/^/== status: /'
}

# fleetd prints one readable line per key state change on stdout; its log
# goes to the file.
"$BIN/fleetd" run --data "$VAR/fleetd" --pin-file "$PIN_FILE" --mqtt-listen "$MQTT" --admin-listen "$ADMIN" \
  --ops-listen "$OPS" --grace 20s --print-changes 2>>"$LOG" &
FLEETD_PID=$!
for _ in $(seq 100); do bg "$BIN/fleetctl" status >/dev/null 2>&1 && break; bg sleep 0.1; done
if ! bg "$BIN/fleetctl" status >/dev/null 2>&1; then
  echo "fleetd did not start; the end of $LOG:"; tail -n 20 "$LOG"; exit 1
fi

for i in $(seq 1 "$DEVICES"); do
  id=$(printf "dev-%02d" "$i")
  if [ ! -f "$VAR/devices/$id/state.json" ]; then
    bg "$BIN/fleetctl" device add "$id" --out "$VAR/devices/$id" >/dev/null
    echo "== provisioned $id"
  fi
  "$BIN/fleet-agent" --dir "$VAR/devices/$id" --log-level warn 2>>"$VAR/log/$id.log" &
done

echo "== devices connect to $MQTT (MQTT/TLS); operators to $ADMIN (admin API, mTLS)"
echo "== logs: $LOG and $VAR/log/dev-*.log"
if [ "$VAR" = "$(pwd)/var" ]; then
  echo "== in another shell here: bin/fleetctl status | devices | device show dev-01 | anchors rotate | datakeys rotate"
else
  echo "== in another shell: KEYFLEET_CREDENTIAL=$KEYFLEET_CREDENTIAL bin/fleetctl status"
fi
echo "== $DEVICES agents running; a staged identity campaign (20%, then 100%) every ${EVERY}s (Ctrl-C to stop)"
warned=0
bg sleep 2
while true; do
  # A staged campaign, as an operator would run one: a canary of 20%, then
  # everyone; it pauses itself if half the devices reached fail.
  if bgto "$VAR/log/campaign.out" "$BIN/fleetctl" campaign create --kind identity --stages 20%,100% \
    --max-failure 50% --device-timeout 1m --watch; then
    echo "== $(tail -n 1 "$VAR/log/campaign.out")"
  else
    echo "== the campaign did not complete: $(tail -n 1 "$VAR/log/campaign.out") (fleetctl campaign list)"
  fi

  bg sleep "$EVERY"
  bg "$BIN/fleetctl" devices || true
  bg status_line || true
  # Warnings and errors stay in the log; the screen gets their count.
  n=$(grep -cE 'level=(WARN|ERROR)' "$LOG" || true)
  if [ "${n:-0}" -gt "$warned" ]; then
    echo "== fleetd logged $((n - warned)) new warnings or errors (see $LOG)"
    warned=$n
  fi
done
