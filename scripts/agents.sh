#!/usr/bin/env bash
# make agents: cross-compiles fleet-agent for the ARM boards most devices
# are, into OUTDIR (default bin/):
#   fleet-agent-linux-arm64   linux/arm64 (64-bit boards: Raspberry Pi 3/4/5, i.MX 8, ...)
#   fleet-agent-linux-armv7   linux/arm, GOARM=7 (32-bit Cortex-A boards with hardware float)
# Static binaries (CGO_ENABLED=0: no C toolchain for the target, no libc
# on the board needed), -trimpath (no build paths in them), stripped of
# symbols and DWARF (AGENT_LDFLAGS, default "-s -w"; set it empty for
# debuggable binaries). The module's build information stays in the binary:
# `go version -m FILE` and `fleet-agent --version` name the build.
set -euo pipefail
out=${1:-bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ldflags=${AGENT_LDFLAGS-"-s -w"}
GO=${GO:-go}
build() { # GOARCH GOARM NAME
  CGO_ENABLED=0 GOOS=linux GOARCH=$1 GOARM=$2 \
    "$GO" build -trimpath -buildvcs=auto -ldflags="$ldflags" -o "$out/$3" ./cmd/fleet-agent
  echo "$out/$3"
}
build arm64 "" fleet-agent-linux-arm64
build arm 7 fleet-agent-linux-armv7
