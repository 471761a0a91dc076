# Routing (issue 3): LocMoE+ against GShard top-2 and the other baselines on the documented
# synthetic input (docs/PERFORMANCE.md "## Router"), 2 nodes x 8 ranks emulated in one process.
step "$B/router/locmoe-route" --synthetic 4096,256,1 --nodes 2 --ranks-per-node 8 --experts-per-rank 4 \
  --k 2 --compare gshard,locmoe+,locmoe,expert-choice,node-limited,dropless
