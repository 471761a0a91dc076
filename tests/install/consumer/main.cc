// A program outside the project: builds a cluster map through the installed package and checks
// it, so a header or symbol missing from the install tree fails this test.
#include <cstdio>

#include <locmoe/topology/cluster.h>

int main() {
  auto map = locmoe::uniform_cluster_map(2, 4, 5);
  if (!map.ok()) {
    std::fprintf(stderr, "%s\n", map.status().to_string().c_str());
    return 1;
  }
  const bool good = map->num_nodes() == 2 && map->my_node() == 1 && map->my_local_rank() == 1;
  std::printf("consumer: %d nodes, rank %d is local rank %d of node %d: %s\n", map->num_nodes(),
              map->my_rank, map->my_local_rank(), map->my_node(), good ? "ok" : "WRONG");
  return good ? 0 : 1;
}
