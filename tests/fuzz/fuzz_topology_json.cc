// Fuzzes the JSON topology reader (topology/src/topology_io.cc, from_json) and the small text
// parsers of the topology layer (parse_path, parse_cpu_list, normalize_pci_bus_id).
// Invariants: an accepted JSON document gives a model that writes and reads back to the same
// model; each text parser's output, written back in its canonical form, parses to the same value.
#include <cstdint>
#include <string>
#include <string_view>

#include "locmoe/topology/topology.h"
#include "fuzz_util.h"

namespace {

namespace topo = locmoe::topo;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  if (auto t = topo::from_json(text, "fuzz.json"); t.ok()) {
    auto back = topo::from_json(topo::to_json(*t));
    FUZZ_ASSERT(back.ok());
    FUZZ_ASSERT(back->same_model(*t));
  }
  if (auto p = topo::parse_path(text); p.ok()) {
    auto again = topo::parse_path(topo::path_name(*p));
    FUZZ_ASSERT(again.ok() && *again == *p);
  }
  if (auto cpus = topo::parse_cpu_list(text); cpus.ok()) {
    auto again = topo::parse_cpu_list(topo::cpu_list_string(*cpus));
    FUZZ_ASSERT(again.ok() && *again == *cpus);
  }
  if (auto id = topo::normalize_pci_bus_id(text); id.ok()) {
    auto again = topo::normalize_pci_bus_id(*id);
    FUZZ_ASSERT(again.ok() && *again == *id);
  }
  return 0;
}
