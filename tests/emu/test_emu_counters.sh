#!/usr/bin/env bash
# The network says what crossed (ctest label netns): on 2 emulated hosts x 2 ranks, flat and
# hierarchical all-to-all-v of B bytes per pair over UCX (shared memory inside a host, TCP on the
# shaped eth0 between hosts). The bytes every host's eth0 transmitted (/sys/class/net statistics,
# read around the run) must cover the payload the ranks report as inter-node
# (ExchangeStats::internode_bytes_sent), which must equal the bytes between hosts computed here
# from the exchange's shape, within the transport's overhead:
#   wire <= payload * (1 + 66/1448) + 256 KiB per rank
# (66 bytes of Ethernet + IPv4 + TCP-with-timestamps headers per segment of at most 1448 payload
# bytes at MTU 1500, an upper bound: veth counts GSO super-packets with one header each; the
# fixed part covers the TCP bootstrap, UCX wire-up and each exchange's count metadata).
# Message counts: flat sends one message per (rank, remote rank) pair, hierarchical one per
# (rank, remote host) pair: rail l to rail l.
set -uo pipefail
EMU=$1 RANK_BIN=$2 EMU_TEST_TAG=c
source "$(dirname "$0")/emu_common.sh"
export LOCMOE_TIMEOUT_S=30
H=2 R=2 B=262144 IT=3
N=$((H * R))
emu_up $H --bw 1gbit
tx_sum() { "$EMU" counters --json | /usr/bin/python3 -c "import json,sys; print(sum(h['tx_bytes'] for h in json.load(sys.stdin)['hosts']))"; }
declare -A WIRE
for algo in flat hier; do
  before=$(tx_sum)
  "$EMU" launch -r $R -p 29621 -t 60 -o "$LOGS" -- "$RANK_BIN" --bytes $B --iters $IT --algo $algo ||
    { fail "$algo: launch failed"; cat "$LOGS"/rank*.log >&2; continue; }
  after=$(tx_sum)
  wire=$((after - before))
  WIRE[$algo]=$wire
  ranks_json >"$LOGS/results.json"
  /usr/bin/python3 - "$algo" "$wire" $H $R $B $IT "$LOGS/results.json" <<'PY' || FAILS=$((FAILS + 1))
import json, sys
algo, wire = sys.argv[1], int(sys.argv[2])
H, R, B, IT = map(int, sys.argv[3:7])
rows = [json.loads(l) for l in open(sys.argv[7]) if l.strip()]
N = H * R
problems = []
if len(rows) != N or not all(r["ok"] for r in rows):
    problems.append(f"{len(rows)} results, ok: {[r.get('ok') for r in rows]}")
payload = sum(r["internode_bytes_sent"] for r in rows)
msgs = sum(r["internode_msgs_sent"] for r in rows)
# Independent: every rank sends B to each of the R * (H - 1) ranks on other hosts, IT times.
expect_payload = IT * N * R * (H - 1) * B
expect_msgs = IT * (N * R * (H - 1) if algo == "flat" else N * (H - 1))
if payload != expect_payload:
    problems.append(f"internode payload {payload}, expected {expect_payload}")
if msgs != expect_msgs:
    problems.append(f"internode messages {msgs}, expected {expect_msgs}")
bound = payload * (1 + 66 / 1448) + 262144 * N
if not (payload <= wire <= bound):
    problems.append(f"wire bytes {wire} not in [{payload}, {bound:.0f}]")
print(("FAIL" if problems else "ok") + f": {algo}: payload {payload} B in {msgs} messages, wire {wire} B "
      f"(overhead {100 * (wire - payload) / max(payload, 1):.2f}%)" + ("" if not problems else "; " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
done
emu_finish
