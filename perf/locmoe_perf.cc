// locmoe-perf SUBCOMMAND [flags]: the benchmark driver (nccl-tests conventions: -b -e -f sizes,
// -n -w iterations and warm-up, -c check, -T timeout, -J JSON). Add a subcommand by adding a
// row to kSubcommands and a file perf/<name>.cc.
#include <cstdio>
#include <cstring>

#include "subcommand.h"

namespace {

const locmoe::perf::Subcommand kSubcommands[] = {
    {"a2a", "all-to-all-v: flat vs hierarchical vs MPI_Alltoallv (run under mpirun)", locmoe::perf::run_a2a},
    {"ep", "the Dispatcher's dispatch, combine and both backwards vs MPI_Alltoallv (run under mpirun)",
     locmoe::perf::run_ep},
};

void usage(FILE* out) {
  std::fprintf(out, "usage: locmoe-perf SUBCOMMAND [flags]   (SUBCOMMAND --help for its flags)\n\nsubcommands:\n");
  for (const auto& s : kSubcommands) std::fprintf(out, "  %-10s %s\n", s.name, s.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& s : kSubcommands)
    if (!std::strcmp(argv[1], s.name)) return s.run(argc - 1, argv + 1);
  std::fprintf(stderr, "locmoe-perf: unknown subcommand '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
