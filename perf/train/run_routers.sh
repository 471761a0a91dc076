#!/usr/bin/env bash
# Trains the MoE LM once per router on 8 ranks emulating 2 nodes (mpirun, LOCMOE_HOSTID), same
# seeds, and plots the runs into docs/img/. Usage (from the repository root, after a build):
#   perf/train/run_routers.sh [OUTDIR] [-- extra train_moe_lm.py args]
# Env: ROUTERS (default "locmoe+ gshard dropless"), PYTHON (default python3), BUILD (default build),
# LAUNCH=torchrun to start the same runs under two torchruns (one per emulated node).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/docs/data/train}
shift || true
[ "${1:-}" = "--" ] && shift
py=${PYTHON:-python3}
export PYTHONPATH=$root/${BUILD:-build}/python LOCMOE_NUM_THREADS=1 OMP_NUM_THREADS=1 LOCMOE_TIMEOUT_S=120
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
mkdir -p "$out"
for r in ${ROUTERS:-locmoe+ gshard dropless}; do
  cmd=("$py" "$root/perf/train/train_moe_lm.py" --router "$r" --out "$out/$r.jsonl" "$@")
  if [ "${LAUNCH:-mpirun}" = torchrun ]; then
    "$py" "$root/python/torch_tests/torchrun_nodes.py" 2 4 "${cmd[@]:1}" | tee "$out/$r.log"
  else
    mpirun --oversubscribe --bind-to none -x PYTHONPATH -x LOCMOE_NUM_THREADS -x OMP_NUM_THREADS -x LOCMOE_TIMEOUT_S \
      -np 4 -x LOCMOE_HOSTID=nodeA "${cmd[@]}" : -np 4 -x LOCMOE_HOSTID=nodeB "${cmd[@]}" | tee "$out/$r.log"
  fi
done
"$py" "$root/perf/train/plot_training.py" "$out" "$root/docs/img"
