#!/usr/bin/env bash
# bench_vs_gloo.py on 4 and 8 ranks (2 emulated nodes, mpirun), with a large expert FFN and an
# exchange-bound tiny one; one JSON line per case into OUT (default docs/data/torch-vs-gloo.jsonl).
# Usage (repository root, after a build): perf/train/bench_vs_gloo.sh [OUT]   Env: PYTHON, BUILD, ITERS.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/docs/data/torch-vs-gloo.jsonl}
py=${PYTHON:-python3}
export PYTHONPATH=$root/${BUILD:-build}/python LOCMOE_NUM_THREADS=1 OMP_NUM_THREADS=1 LOCMOE_TIMEOUT_S=120
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 MASTER_ADDR=127.0.0.1
: >"$out"
port=29650
for np in 4 8; do
  for ffn in 512 8; do
    export MASTER_PORT=$port
    port=$((port + 1))
    cmd=("$py" "$root/perf/train/bench_vs_gloo.py" --tokens 1024 --hidden 256 --ffn "$ffn" --iters "${ITERS:-20}")
    mpirun --oversubscribe --bind-to none -x PYTHONPATH -x LOCMOE_NUM_THREADS -x OMP_NUM_THREADS -x LOCMOE_TIMEOUT_S \
      -x MASTER_ADDR -x MASTER_PORT -x OMPI_MCA_mpi_yield_when_idle \
      -np $((np / 2)) -x LOCMOE_HOSTID=nodeA "${cmd[@]}" : -np $((np / 2)) -x LOCMOE_HOSTID=nodeB "${cmd[@]}" \
      2>/dev/null | grep '^{' | tee -a "$out"
  done
done
