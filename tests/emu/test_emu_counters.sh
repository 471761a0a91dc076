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
# With "rails" as the third argument, the same on a rail-optimized fabric (emu-cluster.sh up
# --rails 2: every rank has its own NIC; rails meet at the spine), checked per NIC and per spine
# link too: each NIC transmits its rank's inter-node payload, within the same overhead; the spine
# carries exactly the flat exchange's bytes between different local ranks of different hosts,
# (H - 1) * (R - 1) * B per rank, and none of the hierarchical exchange's (rail l to rail l),
# apart from the fixed part (bootstrap and wire-up between rails).
set -uo pipefail
EMU=$1 RANK_BIN=$2 MODE=${3:-shared} EMU_TEST_TAG=c
source "$(dirname "$0")/emu_common.sh"
export LOCMOE_TIMEOUT_S=30
H=2 R=2 B=262144 IT=3
N=$((H * R))
if [ "$MODE" = rails ]; then emu_up $H --bw 1gbit --rails $R; else emu_up $H --bw 1gbit; fi
mkdir -p "$LOGS"
for algo in flat hier; do
  "$EMU" counters --json >"$LOGS/counters.before"
  "$EMU" launch -r $R -p 29621 -t 60 -o "$LOGS" -- "$RANK_BIN" --bytes $B --iters $IT --algo $algo ||
    { fail "$algo: launch failed"; cat "$LOGS"/rank*.log >&2; continue; }
  "$EMU" counters --json >"$LOGS/counters.after"
  ranks_json >"$LOGS/results.json"
  /usr/bin/python3 - "$algo" "$LOGS/counters.before" "$LOGS/counters.after" $H $R $B $IT "$LOGS/results.json" <<'PY' || FAILS=$((FAILS + 1))
import json, sys
algo, before, after = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
H, R, B, IT = map(int, sys.argv[4:8])
rows = [json.loads(l) for l in open(sys.argv[8]) if l.strip()]
wire = sum(h["tx_bytes"] for h in after["hosts"]) - sum(h["tx_bytes"] for h in before["hosts"])
rails = after["rails"] > 0
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
overhead = lambda p, ranks: p * (1 + 66 / 1448) + 262144 * ranks
bound = overhead(payload, N)
if not (payload <= wire <= bound):
    problems.append(f"wire bytes {wire} not in [{payload}, {bound:.0f}]")
extra = ""
if rails:
    for r in rows:
        h, l = r["rank"] // R, r["rank"] % R
        tx = after["hosts"][h]["nics"][l]["tx_bytes"] - before["hosts"][h]["nics"][l]["tx_bytes"]
        p = r["internode_bytes_sent"]
        if not (p <= tx <= overhead(p, 1)):
            problems.append(f"NIC {l} of host {h} (rank {r['rank']}) sent {tx} B, payload {p} B")
    spine = sum(x["tx_bytes"] for x in after["spine"]) - sum(x["tx_bytes"] for x in before["spine"])
    expect_spine = IT * N * (H - 1) * (R - 1) * B if algo == "flat" else 0
    if not (expect_spine <= spine <= overhead(expect_spine, N)):
        problems.append(f"spine carried {spine} B, expected {expect_spine} B of payload")
    extra = f"; spine {spine} B for {expect_spine} B of cross-rail payload"
MODE = "rails" if rails else "one NIC per host"
print(("FAIL" if problems else "ok") + f": {MODE}: {algo}: payload {payload} B in {msgs} messages, wire {wire} B "
      f"(overhead {100 * (wire - payload) / max(payload, 1):.2f}%)" + extra + ("" if not problems else "; " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
done
emu_finish
