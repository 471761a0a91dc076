#!/usr/bin/env bash
# The training run on the emulated cluster (scripts/emu-cluster.sh): 2 hosts x 4 ranks joined by
# shaped links (UCX: shared memory inside a host, TCP on the shaped eth0 between hosts), once per
# router with the same seeds, for step time. Needs root; takes the namespace lock itself.
# Usage (repository root, after a build): perf/train/emu_train.sh [OUTDIR] [-- train args]
# Env: ROUTERS (default "locmoe+ gshard dropless"), BW (default 100mbit), PYTHON, BUILD.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/docs/data/train/emu}
shift || true
[ "${1:-}" = "--" ] && shift
py=${PYTHON:-python3}
emu=$root/scripts/emu-cluster.sh
export PYTHONPATH=$root/${BUILD:-build}/python LOCMOE_NUM_THREADS=1 OMP_NUM_THREADS=1 LOCMOE_TIMEOUT_S=120
export LOCMOE_EMU_PREFIX=lmtrain$$ LOCMOE_EMU_STATE=/tmp/locmoe-emu-train$$
mkdir -p "$out"
exec 9>/tmp/locmoe-netns.lock
flock 9
"$emu" up 2 --bw "${BW:-100mbit}" >/dev/null
trap '"$emu" down >/dev/null 2>&1 || true' EXIT
port=29900
for r in ${ROUTERS:-locmoe+ gshard dropless}; do
  "$emu" launch -r 4 -p $port -t 1200 -o "$out/logs-$r" -- \
    "$py" "$root/perf/train/train_moe_lm.py" --router "$r" --out "$out/$r.jsonl" "$@"
  port=$((port + 1))
  tail -n 3 "$out/logs-$r/rank0.log"
done
