#!/usr/bin/env bash
# run_exit_after_failure.sh MPIEXEC EXE [kill]: 4 ranks, rank 2 stops itself (with "kill": kills
# itself); passes when the 3 survivors each print "EXITED rank R" (their exit handlers returned)
# within 1.25 x LOCMOE_TIMEOUT_S plus slack, while the victim is still stopped (or dead). The
# victim is killed at the end whatever happened.
set -u
mpiexec=$1 exe=$2 mode=${3:-stop}
export LOCMOE_TIMEOUT_S=${LOCMOE_TIMEOUT_S:-3}
out=$(mktemp)
"$mpiexec" --enable-recovery --oversubscribe --bind-to none -x LOCMOE_TIMEOUT_S -np 4 "$exe" "$mode" >"$out" 2>&1 &
runner=$!
limit=$(awk -v t="$LOCMOE_TIMEOUT_S" 'BEGIN { print int(1.25 * t + 30) }')
exited=0
for _ in $(seq "$limit"); do
  sleep 1
  exited=$(grep -c "^EXITED rank" "$out")
  [ "$exited" -ge 3 ] && break
done
victim=$(sed -n 's/^PID rank 2 \([0-9]*\)$/\1/p' "$out")
[ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
( sleep 30; kill -KILL "$runner" 2>/dev/null ) &
wait "$runner" 2>/dev/null
cat "$out"
rm -f "$out"
echo "survivors that exited while the victim was stopped: $exited of 3"
[ "$exited" -ge 3 ]
