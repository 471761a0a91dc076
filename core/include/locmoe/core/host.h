// Which host a process is on, the one definition every layer shares: the cluster map's nodes
// (topology/) and the TCP bootstrap's per-host leaders (comm/) must group ranks the same way.
#pragma once

#include <string>

#include "locmoe/core/status.h"

namespace locmoe {

// This process's host identity: LOCMOE_HOSTID when set (like NCCL_HOSTID: ranks with equal ids
// form one node, which lets one machine emulate several), else the hostname.
Result<std::string> local_host_id();

}  // namespace locmoe
