# All-to-all-v on 8 ranks emulating 2 nodes x 4: flat vs hierarchical vs MPI_Alltoallv, with the
# inter-node bytes and messages per rank (sourced by scripts/main.sh).
if [ -x "$B/perf/locmoe-perf" ]; then
  emulated_8 "$B/perf/locmoe-perf" a2a -b 64K -e 4M -f 8 -n 5 -w 2 -J "$B/a2a.json"
fi
