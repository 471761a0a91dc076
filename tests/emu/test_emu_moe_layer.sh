#!/usr/bin/env bash
# moe_layer on the emulated cluster (ctest label netns): 2 hosts x 2 ranks, started by
# `emu-cluster.sh launch` unchanged (TCP bootstrap from the environment), GShard top-2, forward and
# backward checked by the example against its single-process reference (exit 0). Each step moves
# the dispatch's inter-host payload (moe_layer's internode_bytes, summed over ranks) across hosts
# four times: dispatch, combine, and their backward passes (the same rows, reversed). So the bytes
# every host's eth0 transmitted (/sys/class/net, read around the run) must be at least 4 x that
# payload, which must be positive (2 experts per rank, tokens spread over both hosts' experts).
set -uo pipefail
EMU=$1 MOE=$2 RANK_BIN=$MOE EMU_TEST_TAG=m
source "$(dirname "$0")/emu_common.sh"
export LOCMOE_TIMEOUT_S=30
emu_up 2 --bw 1gbit
tx_sum() { "$EMU" counters --json | /usr/bin/python3 -c "import json,sys; print(sum(h['tx_bytes'] for h in json.load(sys.stdin)['hosts']))"; }
before=$(tx_sum)
if "$EMU" launch -r 2 -p 29641 -t 90 -o "$LOGS" -- "$MOE" --tokens 64 --hidden 128 --ffn 32 --experts-per-rank 2 \
  --k 2 --steps 2 --router gshard --json; then
  wire=$(($(tx_sum) - before))
  /usr/bin/python3 - "$wire" "$LOGS/rank0.log" <<'PY' || FAILS=$((FAILS + 1))
import json, sys
wire, text = int(sys.argv[1]), open(sys.argv[2]).read()
doc = json.loads(text[text.index("{"):])
payload = doc["internode_bytes"]
problems = []
if not doc["ok"] or doc["nodes"] != 2:
    problems.append(f"moe_layer ok={doc['ok']} nodes={doc['nodes']}")
if payload <= 0:
    problems.append(f"internode_bytes {payload}: expected > 0")
if wire < 4 * payload:
    problems.append(f"wire bytes {wire} < 4 x internode_bytes {payload}")
print(("FAIL" if problems else "ok") + f": moe_layer 2x2 gshard: dispatch payload {payload} B over "
      f"{len(doc['steps'])} steps, wire {wire} B" + ("" if not problems else "; " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
else
  fail "moe_layer launch failed"
  cat "$LOGS"/rank*.log >&2
fi
emu_finish
