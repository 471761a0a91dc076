#include "locmoe/core/host.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "locmoe/core/check.h"
#include "locmoe/core/params.h"

namespace locmoe {

Result<std::string> local_host_id() {
  LOCMOE_ASSIGN_OR_RETURN(std::string id, params::get_string(params::Id::hostid));
  if (!id.empty()) return id;
  char buf[256] = {0};
  LOCMOE_CHECK(gethostname(buf, sizeof(buf) - 1) == 0, Code::kSystemError, "gethostname failed: {}",
               std::strerror(errno));
  return std::string(buf);
}

}  // namespace locmoe
