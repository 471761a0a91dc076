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
# Eager copies, not zero-copy: UCX 1.13.1 aborts a survivor whose eager zero-copy send was in
# flight to the dying peer (scripts/emu-cluster.sh, launch).
export LOCMOE_TIMEOUT_S=$TIMEOUT UCX_ZCOPY_THRESH=inf
emu_up 2 --bw 200mbit
case $KIND in
  linkdown) fault=linkdown:1:2.5 ;;
  kill) fault=kill:3:2.5 ;;
  stop) fault=stop:3:2.5 ;;
  *) echo "unknown fault kind '$KIND'" >&2; exit 2 ;;
esac
start=$(date +%s.%N)
"$EMU" launch -r 2 -p 29611 -t 30 -o "$LOGS" --fault "$fault" -- "$RANK_BIN" --bytes 4194304 --iters 100000 --algo flat \
  --linger $((TIMEOUT + 2))
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "launch returned after ${wall}s"
for r in 0 1 2 3; do echo "rank $r (rc $(cat "$LOGS/rank$r.rc")): $(tail -c 600 "$LOGS/rank$r.log")"; done

survivors="0 1 2"
[ "$KIND" = linkdown ] && survivors="0 1 2 3"
for r in $survivors; do grep '^{' "$LOGS/rank$r.log" | tail -1; done >"$LOGS/results.json"
# Each survivor reports the peer it was waiting on when it gave up. The fault's peer (rank 3 on
# host1; for linkdown any rank across the link) must be named by the survivor itself, or by the
# survivor it names, transitively: without failure propagation (no ULFM) a rank that had already
# finished with the faulted peer waits on another survivor that stopped at the fault.
/usr/bin/python3 - "$LOGS/results.json" "$KIND" "$TIMEOUT" "$survivors" <<'PY' || FAILS=$((FAILS + 1))
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
kind, timeout, survivors = sys.argv[2], float(sys.argv[3]), [int(x) for x in sys.argv[4].split()]
by_rank = {j.get("rank"): j for j in rows}
host_of = lambda r: f"host{r // 2}"
named = {r: {int(m) for m, h in re.findall(r"rank (\d+) \(host (host\d)\)", j.get("error", "")) if h == host_of(int(m))}
         for r, j in by_rank.items()}
def faulted(r, p):  # is peer p a direct victim of the fault, from rank r's side?
    return (p != r and p // 2 != r // 2) if kind == "linkdown" else p == 3
def reaches(r, seen):
    if r in seen: return False
    seen.add(r)
    return any(faulted(r, p) or (p in by_rank and reaches(p, seen)) for p in named.get(r, ()))
bad = 0
for r in survivors:
    j = by_rank.get(r)
    if j is None:
        print(f"FAIL: rank {r} printed no result"); bad += 1; continue
    problems = []
    if j.get("ok") is not False: problems.append("returned success")
    # iter -1 would be set-up (bootstrap, cluster map, communicator): the fault must hit an exchange.
    if j.get("iter", -1) < 0: problems.append(f"failed in iteration {j.get('iter')}, expected inside an exchange")
    if j.get("code") not in ("timeout", "peer failure"): problems.append(f"code {j.get('code')}")
    if not named.get(r): problems.append("names no peer by rank and host")
    elif not reaches(r, set()): problems.append(f"named peers {sorted(named[r])} do not lead to the fault")
    if not j.get("elapsed_s", 1e9) <= timeout + 3: problems.append(f"error after {j.get('elapsed_s')} s > {timeout} + 3 s")
    direct = any(faulted(r, p) for p in named.get(r, ()))
    print(("FAIL" if problems else "ok") + f": rank {r} ({'names the fault' if direct else 'names a survivor that does'}): "
          f"{j.get('code')} after {j.get('elapsed_s', 0):.2f}s: {j.get('error', '')[:240]}" + ("" if not problems else "; " + "; ".join(problems)))
    bad += bool(problems)
# At least one survivor must name the faulted peer itself.
if not any(any(faulted(r, p) for p in named.get(r, ())) for r in survivors):
    print("FAIL: no survivor names the faulted peer"); bad += 1
sys.exit(1 if bad else 0)
PY
# Nothing hung: the launcher returned long before its 60 s watchdog.
awk -v w="$wall" 'BEGIN { exit !(w < 25) }' && ok "no hang (${wall}s)" || fail "launch took ${wall}s"
emu_finish
