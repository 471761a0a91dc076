# Emulated cluster (scripts/emu-cluster.sh): 2 hosts x 4 ranks as network namespaces on links
# shaped to 8 Gbit/s (9:1 against shared memory here); a flat and a hierarchical all-to-all-v
# through the TCP bootstrap and UCX, with the bytes the hosts' eth0 counted; then the cost model's
# projection for 2 nodes of ND H100 v5. Needs root: elsewhere it says so and goes on.
if [ "$(id -u)" = 0 ] && [ -x "$B/tests/emu/locmoe-emu-rank" ]; then
  emu_demo() {
    local algo
    for algo in flat hier; do
      "$LOCMOE_ROOT/scripts/emu-cluster.sh" launch -r 4 -- "$B/tests/emu/locmoe-emu-rank" --bytes 262144 --iters 3 \
        --sync --algo "$algo" | sort | head -1
      "$LOCMOE_ROOT/scripts/emu-cluster.sh" counters
    done
  }
  export -f emu_demo
  export B LOCMOE_ROOT
  step "$LOCMOE_ROOT/scripts/emu-cluster.sh" run 2 --bw 8gbit -- bash -c emu_demo
else
  log "emulated cluster: skipped (needs root to create network namespaces)"
fi
if [ -x "$B/perf/whatif/locmoe-whatif" ]; then
  step "$B/perf/whatif/locmoe-whatif" --topo "$LOCMOE_ROOT/tests/data/topologies/azure-ndv5.nccl.xml" --nodes 2 --tokens 1024
fi
