#!/usr/bin/env bash
# Quick start 1: the main job. Installs what is missing, builds, then runs on this machine an
# 8-rank job emulating 2 nodes x 4 ranks: topology report, cluster map, routing, dispatch/combine
# and figures. Each step's command is printed before it runs.
source "$(dirname "$0")/common.sh"
install_packages
configure_and_build "$LOCMOE_BUILD" "${LOCMOE_PY_CMAKE_ARGS[@]}"
B=$LOCMOE_BUILD
step() { log "\$ $*"; "$@"; }
emulated_8() {  # runs "$@" as 8 ranks: LOCMOE_HOSTID=nodeA for ranks 0-3, nodeB for 4-7
  step "${LOCMOE_MPIRUN[@]}" -np 4 -x LOCMOE_HOSTID=nodeA "$@" : -np 4 -x LOCMOE_HOSTID=nodeB "$@"
}

step "$B/core/locmoe-info"
for extra in "$LOCMOE_ROOT"/scripts/main.d/*.sh; do
  [ -e "$extra" ] && source "$extra"
done
log "main job done"
