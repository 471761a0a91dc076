#!/usr/bin/env bash
# run_failure.sh MPIEXEC EXE TRANSPORT MODE ALGO [PATH]: runs test_failure.cc on 4 ranks with
# --enable-recovery (so a dead rank does not abort the job) and passes when the 3 survivors
# each printed "SURVIVOR ... OK". mpirun's own exit status is ignored: a rank died on purpose.
set -u
mpiexec=$1 exe=$2 transport=$3 mode=$4 algo=$5 path=${6:-negotiated}
out=$(LOCMOE_TIMEOUT_S=${LOCMOE_TIMEOUT_S:-3} timeout 120 "$mpiexec" --enable-recovery --oversubscribe --bind-to none \
  -np 4 "$exe" "$transport" "$mode" "$algo" "$path" 2>&1)
echo "$out"
# A stopped victim must never outlive the test, whatever happened to rank 0.
victim=$(sed -n 's/^VICTIM PID \([0-9]*\)$/\1/p' <<<"$out")
if [ -n "$victim" ] && kill -0 "$victim" 2>/dev/null; then
  echo "killing leftover victim $victim"
  kill -KILL "$victim" 2>/dev/null
fi
if grep -q "^SKIP" <<<"$out"; then exit 0; fi
# mpirun's status is ignored above, so a sanitizer report (build-asan / build-tsan) must be caught
# here: a survivor that prints OK and then reports a leak or an error at exit still fails.
if grep -qE "ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:" <<<"$out"; then
  echo "sanitizer report in the output"
  exit 1
fi
ok=$(grep -c "^SURVIVOR rank [0-9]* OK" <<<"$out")
bad=$(grep -c "^SURVIVOR rank [0-9]* FAIL" <<<"$out")
echo "survivors OK: $ok, FAIL: $bad"
[ "$ok" -eq 3 ] && [ "$bad" -eq 0 ]
