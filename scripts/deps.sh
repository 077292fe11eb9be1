#!/usr/bin/env bash
# Installs what keyfleet's run and tests need from Debian's packages, when
# missing: softhsm2 (the PKCS#11 token) always; with --with-mosquitto,
# mosquitto (the second broker); with --with-chromium, chromium (the status
# page's browser test); with --with-promtool, prometheus (promtool checks
# and tests the rules in deploy/prometheus, and the dashboards test runs
# the server against fleetd; on a host with
# systemd the package also enables a Prometheus server on :9090:
# `systemctl disable --now prometheus` if it is not wanted).
# With --with-systemd, systemd (systemd-analyze checks deploy/systemd's
# units; installing the package starts nothing in a container).
# With --with-postgres, postgresql (the PostgreSQL store's tests start their
# own server from /usr/lib/postgresql/*/bin in a temporary directory; on a
# host with systemd the package also starts a cluster on :5432, which
# keyfleet does not use: `systemctl disable --now postgresql` if unwanted).
# With --with-tpm, swtpm and libtpm2-pkcs11-1 (a software TPM 2.0 and the
# tpm2-pkcs11 module: the tests of fleet-agent --key-store; tokens are
# made through PKCS#11 itself, so tpm2-tools are not needed).
# Recommended packages are left out: prometheus recommends the node
# exporter, smartmontools and ipmitool, none of which keyfleet uses.
# Fails with a clear message when it cannot.
set -euo pipefail

need=()
have_softhsm() {
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -e "$p" ] && return 0
  done
  return 1
}
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
have_tpm2_pkcs11() {
  for p in /usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1 /usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1 \
           /usr/lib/arm-linux-gnueabihf/libtpm2_pkcs11.so.1; do
    [ -e "$p" ] && return 0
  done
  return 1
}
have_promtool() { command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ]; }
have_softhsm || need+=(softhsm2)
want_promtool=false
for arg in "$@"; do
  case "$arg" in
    --with-mosquitto)
      command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto) ;;
    --with-chromium)
      command -v chromium >/dev/null 2>&1 || need+=(chromium) ;;
    --with-systemd)
      command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) ;;
    --with-postgres)
      have_postgres || need+=(postgresql) ;;
    --with-tpm)
      command -v swtpm >/dev/null 2>&1 || need+=(swtpm)
      have_tpm2_pkcs11 || need+=(libtpm2-pkcs11-1) ;;
    --with-promtool)
      want_promtool=true
      have_promtool || need+=(prometheus) ;;
    *)
      echo "keyfleet: deps.sh: unknown option $arg (want --with-mosquitto, --with-chromium, --with-promtool, --with-systemd, --with-postgres, --with-tpm)" >&2
      exit 2 ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0

echo "keyfleet: installing ${need[*]} from Debian's packages" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "keyfleet: need ${need[*]} but am not root and have no sudo; install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "keyfleet: need ${need[*]} and this machine has no apt-get; install them with your package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    echo "keyfleet: apt-get could not install ${need[*]}; install them by hand and retry" >&2
    exit 1
  fi
fi
have_softhsm || { echo "keyfleet: softhsm2 installed but libsofthsm2.so not found" >&2; exit 1; }
for p in "${need[@]}"; do
  if [ "$p" = chromium ] && ! command -v chromium >/dev/null 2>&1; then
    echo "keyfleet: chromium installed but not on PATH; the status page test runs \`chromium --headless\`" >&2
    exit 1
  fi
done
for p in "${need[@]}"; do
  if [ "$p" = systemd ] && ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "keyfleet: systemd installed but systemd-analyze not found on PATH" >&2
    exit 1
  fi
done
for p in "${need[@]}"; do
  if [ "$p" = postgresql ] && ! have_postgres; then
    echo "keyfleet: postgresql installed but no /usr/lib/postgresql/*/bin/postgres and initdb" >&2
    exit 1
  fi
  if [ "$p" = libtpm2-pkcs11-1 ] && ! have_tpm2_pkcs11; then
    echo "keyfleet: libtpm2-pkcs11-1 installed but libtpm2_pkcs11.so.1 not found" >&2
    exit 1
  fi
done
if $want_promtool && ! have_promtool; then
  echo "keyfleet: prometheus installed but promtool not found on PATH" >&2
  exit 1
fi
