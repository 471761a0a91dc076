#!/usr/bin/env bash
# Quick start 2: every test. Installs what is missing, builds, runs the whole test suite (unit,
# multi-rank under mpirun, install tree, scripts), then the sanitizer tier and the fuzzers unless
# LOCMOE_QUICK=1. Exits non-zero when anything fails.
source "$(dirname "$0")/common.sh"
install_packages
configure_and_build "$LOCMOE_BUILD" "${LOCMOE_PY_CMAKE_ARGS[@]}"
log "running tests in $LOCMOE_BUILD"
ctest --test-dir "$LOCMOE_BUILD" --output-on-failure -j "$LOCMOE_JOBS"
for extra in "$LOCMOE_ROOT"/scripts/test.d/*.sh; do
  [ -e "$extra" ] && source "$extra"
done
log "all tests passed"
