#!/usr/bin/env bash
# Faults on real links (ctest label netns): 2 emulated hosts x 2 ranks run a long flat
# all-to-all-v over UCX/TCP; mid-exchange one fault hits: KIND = linkdown (host 1's eth0 goes
# down), kill (SIGKILL to rank 3, on host 1) or stop (SIGSTOP to rank 3). Every surviving rank must
# return an error (not hang) that names the peer it lost, by rank and host, within the configured
# deadline LOCMOE_TIMEOUT_S plus a margin for start-up of the error path; the launcher's own
# watchdog (far longer) would only catch a hang, and is asserted not to have fired.
set -uo pipefail
EMU=$1 RANK_BIN=$2 KIND=$3 EMU_TEST_TAG=f${3:0:1}
source "$(dirname "$0")/emu_common.sh"
TIMEOUT=4
export LOCMOE_TIMEOUT_S=$TIMEOUT
emu_up 2 --bw 200mbit
case $KIND in
  linkdown) fault=linkdown:1:2.5 ;;
  kill) fault=kill:3:2.5 ;;
  stop) fault=stop:3:2.5 ;;
  *) echo "unknown fault kind '$KIND'" >&2; exit 2 ;;
esac
start=$(date +%s.%N)
"$EMU" launch -r 2 -p 29611 -t 60 -o "$LOGS" --fault "$fault" -- "$RANK_BIN" --bytes 4194304 --iters 100000 --algo flat
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "launch returned after ${wall}s"
for r in 0 1 2 3; do echo "rank $r (rc $(cat "$LOGS/rank$r.rc")): $(tail -c 600 "$LOGS/rank$r.log")"; done

survivors="0 1 2"
[ "$KIND" = linkdown ] && survivors="0 1 2 3"
for r in $survivors; do
  line=$(grep '^{' "$LOGS/rank$r.log" | tail -1)
  [ -n "$line" ] || { fail "rank $r printed no result (rc $(cat "$LOGS/rank$r.rc"))"; continue; }
  /usr/bin/python3 - "$line" "$r" "$KIND" "$TIMEOUT" <<'PY' || FAILS=$((FAILS + 1))
import json, sys
j = json.loads(sys.argv[1]); r = int(sys.argv[2]); kind = sys.argv[3]; timeout = float(sys.argv[4])
err = j.get("error", "")
problems = []
if j.get("ok") is not False:
    problems.append("returned success")
if j.get("iter", -1) < 1:
    problems.append(f"failed in iteration {j.get('iter')}: the fault should hit mid-run, after exchanges completed")
if kind == "linkdown":
    # Each rank loses the ranks of the other host: it must name one of them and that host.
    other = ["2", "3"] if r < 2 else ["0", "1"]
    host = "host1" if r < 2 else "host0"
    if not any(f"rank {p} (host {host})" in err for p in other):
        problems.append(f"error does not name a rank of {host}")
else:
    if "rank 3 (host host1)" not in err:
        problems.append("error does not name rank 3 (host host1)")
if j.get("code") not in ("timeout", "peer failure"):
    problems.append(f"code {j.get('code')}, expected timeout or peer failure")
if not (j.get("elapsed_s", 1e9) <= timeout + 3):
    problems.append(f"error after {j.get('elapsed_s')} s, deadline {timeout} s")
print(("FAIL" if problems else "ok") + f": rank {r}: {j.get('code')} after {j.get('elapsed_s', 0):.2f}s: {err[:300]}"
      + ("" if not problems else "\n  problems: " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
done
# Nothing hung: the launcher returned long before its 60 s watchdog.
awk -v w="$wall" 'BEGIN { exit !(w < 40) }' && ok "no hang (${wall}s)" || fail "launch took ${wall}s"
emu_finish
