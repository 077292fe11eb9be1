#!/usr/bin/env bash
# Sourced by run.sh and fleetd-bg.sh: softhsm_env DIR writes a SoftHSM2
# configuration whose tokens live in DIR/softhsm/tokens and exports
# SOFTHSM2_CONF pointing at it.
softhsm_env() {
  local dir=$1
  mkdir -p "$dir/softhsm/tokens"
  cat > "$dir/softhsm/softhsm2.conf" <<CONF
directories.tokendir = $dir/softhsm/tokens
objectstore.backend = file
log.level = ERROR
CONF
  export SOFTHSM2_CONF="$dir/softhsm/softhsm2.conf"
}
