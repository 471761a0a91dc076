# Main job, topology step (sourced by scripts/main.sh): this machine's topology, a real 8-GPU
# server from its NCCL topology file, and the cluster map of 8 ranks emulating 2 nodes.
step "$B/topology/locmoe-topo"
step "$B/topology/locmoe-topo" --file "$LOCMOE_ROOT/tests/data/topologies/azure-ndv5.nccl.xml"
emulated_8 "$B/topology/locmoe-topo" --cluster
