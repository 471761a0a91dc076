// locmoe-perf subcommands: one row per subcommand in the table of locmoe_perf.cc; each parses
// its own flags (CLI11) from argv (argv[0] is the subcommand name) and returns the exit code.
#pragma once

namespace locmoe::perf {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

int run_a2a(int argc, char** argv);
int run_ep(int argc, char** argv);

}  // namespace locmoe::perf
