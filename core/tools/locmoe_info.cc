// locmoe-info: the build's backends and every LOCMOE_* parameter with its current value.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "locmoe/core/config.h"
#include "locmoe/core/params.h"

int main(int argc, char** argv) {
  CLI::App app{"locmoe-info: build configuration and LOCMOE_* parameters"};
  bool show_params = false, json = false;
  app.add_flag("--params", show_params, "List every LOCMOE_* parameter (name, type, default, value, source)");
  app.add_flag("--json", json, "Print one JSON document");
  CLI11_PARSE(app, argc, argv);
  namespace p = locmoe::params;

  if (json) {
    nlohmann::json doc = {{"version", LOCMOE_VERSION},
                          {"backends", {{"mpi", true}, {"ucx", bool(LOCMOE_HAVE_UCX)},
                                        {"cuda", bool(LOCMOE_HAVE_CUDA)}, {"nccl", bool(LOCMOE_HAVE_NCCL)}}}};
    doc["params"] = nlohmann::json::parse(p::table(true));
    std::printf("%s\n", doc.dump(2).c_str());
  } else {
    std::printf("locmoe %s\nbackends: mpi=on ucx=%s cuda=%s nccl=%s\n", LOCMOE_VERSION,
                LOCMOE_HAVE_UCX ? "on" : "off", LOCMOE_HAVE_CUDA ? "on" : "off",
                LOCMOE_HAVE_NCCL ? "on" : "off");
    if (show_params) {
      std::printf("\n");
      p::print_table(stdout, false);
    }
  }
  locmoe::Status st = p::validate_all();
  if (!st.ok()) {
    std::fprintf(stderr, "locmoe-info: %s\n", st.to_string().c_str());
    return 2;
  }
  return 0;
}
