// Run-time loading of NCCL (nccl_api.h says why). The library is opened RTLD_LOCAL: its symbols
// never enter the process's global scope, so nothing else binds to them by accident; a later
// DT_NEEDED of libnccl.so.2 (torch's) is satisfied by the same file, which is the one torch would
// have loaded itself whenever rule 2 or 3 picked it.
#include "nccl_api.h"

#include <dlfcn.h>
#include <link.h>

#include <filesystem>
#include <mutex>

#include "locmoe/core/check.h"
#include "locmoe/core/params.h"

#ifndef LOCMOE_NCCL_CONFIGURED_LIBRARY
#define LOCMOE_NCCL_CONFIGURED_LIBRARY ""
#endif

namespace locmoe::nccl {
namespace {

constexpr const char* kSoname = "libnccl.so.2";

std::vector<std::string> loaded_object_paths() {
  std::vector<std::string> out;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        if (info->dlpi_name && info->dlpi_name[0]) static_cast<std::vector<std::string>*>(data)->push_back(info->dlpi_name);
        return 0;
      },
      &out);
  return out;
}

template <typename F>
bool resolve(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += missing.empty() ? name : std::string(", ") + name;
  return fn != nullptr;
}

// Fills `api` from `lib`; false (with the missing names) when a function is absent.
bool fill(void* lib, Api& api, std::string& missing) {
  resolve(lib, "ncclGetUniqueId", api.GetUniqueId, missing);
  resolve(lib, "ncclCommInitRankConfig", api.CommInitRankConfig, missing);
  resolve(lib, "ncclCommGetAsyncError", api.CommGetAsyncError, missing);
  resolve(lib, "ncclCommAbort", api.CommAbort, missing);
  resolve(lib, "ncclCommDestroy", api.CommDestroy, missing);
  resolve(lib, "ncclGroupStart", api.GroupStart, missing);
  resolve(lib, "ncclGroupEnd", api.GroupEnd, missing);
  resolve(lib, "ncclSend", api.Send, missing);
  resolve(lib, "ncclRecv", api.Recv, missing);
  resolve(lib, "ncclGetErrorString", api.GetErrorString, missing);
  return missing.empty();
}

std::string path_of(void* lib, const std::string& fallback) {
  link_map* map = nullptr;
  if (dlinfo(lib, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name && map->l_name[0]) return map->l_name;
  return fallback;
}

}  // namespace

Result<Api> open_first(const std::vector<Candidate>& list) {
  std::string tried;
  for (const Candidate& c : list) {
    void* lib = dlopen(c.name.c_str(), RTLD_NOW | RTLD_LOCAL | (c.noload ? RTLD_NOLOAD : 0));
    if (!lib) {
      // Not being loaded already is not worth reporting; every other failure is.
      if (!c.noload) tried += fmt::format("\n  {} ({}): {}", c.name, c.how, dlerror());
      continue;
    }
    Api api{};
    std::string missing;
    if (!fill(lib, api, missing)) {
      tried += fmt::format("\n  {} ({}): lacks {}", path_of(lib, c.name), c.how, missing);
      dlclose(lib);
      continue;
    }
    api.path = path_of(lib, c.name);
    api.how = c.how;
    return api;
  }
  return error(Code::kUnsupported, "the NCCL transport is unavailable: no usable {} was found; tried:{}", kSoname,
               tried);
}

std::vector<Candidate> candidates(const std::string& override_path, const std::vector<std::string>& loaded_objects) {
  if (!override_path.empty()) return {{override_path, "LOCMOE_NCCL_LIBRARY"}};
  std::vector<Candidate> out{{kSoname, "already loaded", true}};
  // A PyPI wheel's NCCL (nvidia-nccl-cu12/cu13: <site-packages>/nvidia/nccl/lib), found from the
  // package folders of the libraries already loaded (this module's, numpy's, torch's), in order.
  for (const std::string& obj : loaded_objects) {
    for (const char* folder : {"/site-packages/", "/dist-packages/"}) {
      const size_t at = obj.find(folder);
      if (at == std::string::npos) continue;
      const std::string lib = obj.substr(0, at + std::char_traits<char>::length(folder)) + "nvidia/nccl/lib/" + kSoname;
      bool seen = false;
      for (const Candidate& c : out) seen = seen || c.name == lib;
      std::error_code ec;
      if (!seen && std::filesystem::exists(lib, ec)) out.push_back({lib, "a PyPI wheel's (nvidia-nccl)"});
    }
  }
  out.push_back({kSoname, "the system's, by the loader's search path"});
  const std::string configured = LOCMOE_NCCL_CONFIGURED_LIBRARY;
  if (!configured.empty()) out.push_back({configured, "the system's, found at configure time"});
  return out;
}

Result<const Api*> api() {
  static std::once_flag once;
  static Result<Api> loaded = error(Code::kInternal, "NCCL not loaded");
  std::call_once(once, [] {
    Result<std::string> override_path = params::get_string(params::Id::nccl_library);
    loaded = override_path.ok() ? open_first(candidates(*override_path, loaded_object_paths()))
                                : Result<Api>(override_path.status());
  });
  if (!loaded.ok()) return loaded.status();
  return &*loaded;
}

}  // namespace locmoe::nccl
