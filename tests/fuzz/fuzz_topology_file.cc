// Fuzzes topology files (topology/src/xml_source.cc, load_file): format detection, our NCCL
// topology reader, and the hwloc XML path (our validation, then hwloc itself). Built twice, as
// fuzz_nccl_topo and fuzz_hwloc_xml: the same entry point with different seeds and the same
// dictionary, so each run spends its time on one format. A crash inside hwloc counts: it means our
// validation let through a file that crashes hwloc 2.9 (docs/PLATFORM_NOTES: it segfaults on some
// malformed XML), which is the bug to fix on our side.
//
// Invariants of an accepted file, independent of how it was parsed:
//   - the model is consistent: gpu_path symmetric with X exactly on the diagonal, no X or NV
//     between a GPU and a NIC, rails in range (-1 only without NICs), GPUs in bus-id order;
//   - what we write we read back: from_json(to_json(t)) is the same model (names that are not
//     UTF-8 excepted: they are written with U+FFFD), and for hwloc sources
//     the hwloc XML export loads back (through load_file), and hwloc's normalization of it
//     (non-ASCII bytes dropped from names, misplaced objects moved) is a fixed point.
#include <cstdint>
#include <string>

#include "locmoe/topology/topology.h"
#include "fuzz_util.h"

namespace {

namespace topo = locmoe::topo;

void check_model(const topo::Topology& t) {
  const int g = t.num_gpus(), n = t.num_nics();
  for (int a = 0; a < g; ++a) {
    for (int b = 0; b < g; ++b) {
      FUZZ_ASSERT(t.gpu_path(a, b) == t.gpu_path(b, a));
      FUZZ_ASSERT((t.gpu_path(a, b).cls == topo::PathClass::kX) == (a == b));
    }
    for (int k = 0; k < n; ++k) {
      FUZZ_ASSERT(t.nic_path(a, k).cls != topo::PathClass::kX);
      FUZZ_ASSERT(t.nic_path(a, k).cls != topo::PathClass::kNV);
    }
    FUZZ_ASSERT(n == 0 ? t.rail(a) == -1 : (t.rail(a) >= 0 && t.rail(a) < n));
    if (a > 0) FUZZ_ASSERT(t.gpus()[a - 1].pci_bus_id < t.gpus()[a].pci_bus_id);
    FUZZ_ASSERT(t.find_gpu(t.gpus()[a].pci_bus_id) == a);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static MemFile file;
  file.write(data, size);
  auto t = topo::load_file(file.path());
  if (!t.ok()) {
    FUZZ_ASSERT(!t.status().message().empty());
    return 0;
  }
  check_model(*t);

  const std::string json = topo::to_json(*t);
  auto back = topo::from_json(json);
  FUZZ_ASSERT(back.ok());
  // Names that are not UTF-8 are written with U+FFFD in their place, so such a model reads back
  // changed; its JSON must then be a fixed point.
  if (json.find("\xEF\xBF\xBD") == std::string::npos)
    FUZZ_ASSERT(back->same_model(*t));
  else
    FUZZ_ASSERT(topo::to_json(*back) == json);

  if (auto xml = topo::to_hwloc_xml(*t); xml.ok()) {
    static MemFile exported;
    exported.write(xml->data(), xml->size());
    auto again = topo::load_file(exported.path());
    FUZZ_ASSERT(again.ok());
    // hwloc normalizes what it loads (it drops non-ASCII bytes from names, moves misplaced
    // objects), so the first export may read back changed; from then on it must be a fixed point.
    auto xml2 = topo::to_hwloc_xml(*again);
    FUZZ_ASSERT(xml2.ok());
    exported.write(xml2->data(), xml2->size());
    auto third = topo::load_file(exported.path());
    FUZZ_ASSERT(third.ok());
    FUZZ_ASSERT(third->same_model(*again));
  }
  return 0;
}
