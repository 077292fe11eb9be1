#!/usr/bin/env bash
# make bench: every figure measured in one run on this machine, with the
# raw HSM rates measured in the same run as the baseline they are ratios of.
# Results: bench/results/*.json and gobench.txt. See docs/benchmarks.md.
# `scripts/bench.sh nodes` runs only section (f), the fleetd nodes on
# PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/keyfleet-bench-XXXXXX)
DEVICES=${BENCH_DEVICES:-10000}

# (f) Mode "nodes": 1, 2 and 3 fleetd nodes on one PostgreSQL, each on a
# fresh database, BENCH_NODES_DEVICES devices rotated once, all on this
# machine. Writes bench/results/nodes-N.{json,txt} and nodes.md.
nodes_bench() {
  local devices=${BENCH_NODES_DEVICES:-2000} pgbin pgroot port pgpid n dsn
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | head -1)
  if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
    echo "bench: PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: run scripts/deps.sh --with-postgres" >&2
    exit 1
  fi
  # PostgreSQL refuses to run as root: the cluster belongs to "postgres".
  pgroot=$(mktemp -d /tmp/keyfleet-bench-pg-XXXXXX)
  as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$pgroot"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null || echo $((40000 + RANDOM % 20000)))
  as_pg "'$pgbin/initdb' -D '$pgroot/data' -U postgres --auth=trust -E UTF8 --locale=C --no-sync" >/dev/null
  as_pg "'$pgbin/pg_ctl' -D '$pgroot/data' -l '$pgroot/log' -w -o \"-p $port -c listen_addresses=127.0.0.1 -k '$pgroot'\" start" >/dev/null
  pgpid=$(head -1 "$pgroot/data/postmaster.pid")
  trap "as_pg \"'$pgbin/pg_ctl' -D '$pgroot/data' -m fast stop\" >/dev/null 2>&1 || true; rm -rf '$pgroot'" EXIT
  for n in 1 2 3; do
    echo "== (f) $n fleetd node(s) on PostgreSQL, $devices devices, one rotation each"
    as_pg "'$pgbin/createdb' -h 127.0.0.1 -p $port -U postgres bench$n"
    dsn="postgres://postgres@127.0.0.1:$port/bench$n?sslmode=disable"
    bin/fleetsim run --fleetd-bin bin/fleetd --nodes "$n" --store "$dsn" --store-pid "$pgpid" --devices "$devices" \
      --rotations 1 --baseline 0 --dir "$WORK/nodes-$n" --report table --progress=false \
      --json-out "$OUT/nodes-$n.json" | tee "$OUT/nodes-$n.txt"
    rm -rf "$WORK/nodes-$n"
  done
  nodes_table "$devices" > "$OUT/nodes.md"
  cat "$OUT/nodes.md"
}

# jnum FILE KEY: the first numeric field KEY of an indented JSON report.
jnum() { awk -v k="\"$2\":" '$1 == k { v = $2; sub(/,$/, "", v); print v; exit }' "$1"; }
# jnums FILE KEY: every field KEY, " + "-joined with one decimal.
jnums() { awk -v k="\"$2\":" '$1 == k { v = $2; sub(/,$/, "", v); printf "%s%.1f", sep, v; sep = " + " }' "$1"; }

nodes_table() {
  local base r
  base=$(jnum "$OUT/nodes-1.json" rotations_per_s)
  echo "# make bench (f): fleetd nodes on one PostgreSQL"
  echo
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores shared by the simulator, every node and PostgreSQL"
  echo "(load average before the run: ${LOAD_BEFORE:-?}); $1 devices, one rotation each, a fresh database per row."
  echo "CPU seconds are over the rotations only; ratio: rotations/s against the 1-node row of this invocation."
  echo
  echo "| nodes | rotations/s | ratio | requests answered s | p50 ms | p99 ms | statements/rotation | CPU s: nodes | CPU s: PostgreSQL | CPU s: simulator | failed |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for n in 1 2 3; do
    f="$OUT/nodes-$n.json"
    r=$(jnum "$f" rotations_per_s)
    printf '| %s | %.1f | %.2f | %.1f | %.0f | %.0f | %.1f | %s | %.1f | %.1f | %s |\n' "$n" "$r" "$(awk -v a="$r" -v b="$base" 'BEGIN{print a/b}')" \
      "$(jnum "$f" request_s)" "$(jnum "$f" p50_ms)" "$(jnum "$f" p99_ms)" "$(jnum "$f" statements_per_rotation)" "$(jnums "$f" cpu_s)" \
      "$(jnum "$f" store_cpu_s)" "$(jnum "$f" simulator_cpu_s)" "$(jnum "$f" rotations_failed)"
  done
}

if [ "${1:-}" = nodes ]; then
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  nodes_bench
  exit 0
fi

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
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
nodes_bench
echo "== results in $OUT"
