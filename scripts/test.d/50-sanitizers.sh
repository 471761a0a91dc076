# Sourced by scripts/test.sh after the normal tests: the sanitizer tier (ASan+UBSan+LSan ctest,
# bounded fuzzing, TSan on the threaded tests; docs/TESTING.md). LOCMOE_QUICK=1 skips it.
if [ "${LOCMOE_QUICK:-0}" = 1 ]; then
  log "LOCMOE_QUICK=1: skipping the sanitizer and fuzz tier"
else
  bash "$LOCMOE_ROOT/scripts/sanitizers.sh" all
fi
