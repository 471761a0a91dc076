// Internal to comm/: the TCP bootstrap's rendezvous through torchrun's own store. Under torchrun
// (TORCHELASTIC_USE_AGENT_STORE=True) MASTER_ADDR:MASTER_PORT is a torch TCPStore that torchrun's
// agent serves for the whole job, so rank 0 cannot listen there: it listens on a port of its own
// and publishes "address:port" in that store, where the other ranks read it. A client of the
// store's wire protocol (a few queries; no torch needed), so C and C++ programs started by
// torchrun (`torchrun --no-python`) need no extra variable, as Python's locmoe.Group does not.
#pragma once

#include <string>

#include "locmoe/core/status.h"

namespace locmoe::tcp_detail {

// True when this process was started by torchrun's agent, whose store is at MASTER_ADDR:MASTER_PORT.
bool started_by_torchrun_agent();

// The store's key for this process's `ordinal`-th TCP group (0 for the first): the same on every
// rank of the job, apart from other jobs' and restarts' (TORCHELASTIC_RUN_ID, ..._RESTART_COUNT).
std::string store_key(int ordinal);

// Rank 0: sets `key` to `value` in the store at host:port. Every wait has `timeout_s`.
Status store_set(const std::string& host, int port, const std::string& key, const std::string& value,
                 double timeout_s);
// Any rank: the value of `key`, waiting (polling the store) until rank 0 has set it or timeout_s
// passes (Code::kTimeout naming the key and the store).
Result<std::string> store_get(const std::string& host, int port, const std::string& key, double timeout_s);

// This host's address on the route to `host` (what peers that reach `host` use to reach this one).
Result<std::string> address_towards(const std::string& host);

}  // namespace locmoe::tcp_detail
