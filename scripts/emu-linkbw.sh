#!/usr/bin/env bash
# emu-linkbw.sh [--bw RATE] [--size BYTES] [--iters N]: measures, side by side in one run, the
# intra-host bandwidth (two processes of one emulated host, UCX shared memory: posix) and the
# inter-host bandwidth (two emulated hosts, UCX restricted to TCP on eth0, through the shaped
# veth link), with ucx_perftest tag_bw; prints one JSON line with both, their ratio and the shaped
# rate. Sets up and removes its own 2-host emulated cluster (prefix lmlinkbw<pid>).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BW=${LOCMOE_EMU_BW:-} SIZE=4194304 ITERS=200 REPS=5
while [ $# -gt 0 ]; do
  case $1 in
    --bw) BW=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --inner) INNER=1; shift ;;
    *) echo "emu-linkbw: unknown option '$1'" >&2; exit 2 ;;
  esac
done
command -v ucx_perftest >/dev/null || { echo "emu-linkbw: SKIP: ucx_perftest not found (apt-get install ucx-utils)" >&2; exit 77; }

if [ -z "${INNER:-}" ]; then
  export LOCMOE_EMU_PREFIX=lmlinkbw$$
  up=(2)
  [ -z "$BW" ] || up+=(--bw "$BW")
  exec "$HERE/emu-cluster.sh" run "${up[@]}" -- "$0" --size "$SIZE" --iters "$ITERS" --reps "$REPS" --inner
fi

EMU=$HERE/emu-cluster.sh
# perftest PORT SERVER_HOST CLIENT_HOST SERVER_ADDR TLS -> MiB/s (ucx_perftest's "MB/s" is 2^20)
perftest() {
  local port=$1 sh=$2 ch=$3 addr=$4 tls=$5 srv out
  UCX_TLS=$tls UCX_NET_DEVICES=eth0,lo "$EMU" exec "$sh" ucx_perftest -p "$port" -t tag_bw -s "$SIZE" \
    -n "$ITERS" -w 10 -f >/dev/null 2>&1 &
  srv=$!
  sleep 0.5
  out=$(UCX_TLS=$tls UCX_NET_DEVICES=eth0,lo timeout 120 "$EMU" exec "$ch" ucx_perftest "$addr" -p "$port" \
    -t tag_bw -s "$SIZE" -n "$ITERS" -w 10 -f 2>&1 | tail -1)
  wait "$srv" || true
  awk '{print $6}' <<<"$out"
}
source "${LOCMOE_EMU_STATE:-/run/locmoe-emu}/$LOCMOE_EMU_PREFIX.env"
# Alternating repetitions, medians reported: the machine's cores are shared, single runs are noisy.
intras=() inters=()
for ((i = 0; i < REPS; i++)); do
  intras+=("$(perftest $((13400 + 2 * i)) 0 0 127.0.0.1 posix,cma,self)")
  inters+=("$(perftest $((13401 + 2 * i)) 1 0 10.77.0.2 tcp)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
echo "intra-host MiB/s: ${intras[*]}; inter-host MiB/s: ${inters[*]}" >&2
intra=$(median "${intras[@]}")
inter=$(median "${inters[@]}")
awk -v a="$intra" -v e="$inter" -v bw="$EMU_BW" -v bwb="$EMU_BW_BYTES" -v s="$SIZE" 'BEGIN {
  printf "{\"size\":%d,\"intra_host_MiBps\":%.1f,\"inter_host_MiBps\":%.1f,\"ratio\":%.2f,\"shaped\":\"%s\",\"shaped_MiBps\":%.1f,\"inter_vs_shaped\":%.3f}\n",
    s, a, e, a / e, bw, bwb / 1048576, e / (bwb / 1048576) }'
