// Derives a plan's counts, offsets and link-class copies from its slots.
#pragma once

#include "locmoe/core/bootstrap.h"
#include "locmoe/core/status.h"
#include "locmoe/router/plan.h"

namespace locmoe {

// Validates the slot arrays (sizes, expert ids in [-1, E), finite non-negative weights, ranks
// and nodes consistent) and fills expert/rank/node counts and offsets, link-class copies and the
// drop counters. global_expert_count is summed over `group` (a collective; nullptr = this rank
// alone). Errors name the first bad token, slot and value; a rank whose plan is bad still takes
// its turn in the collective (Bootstrap::reject), so its peers fail at once with kMismatch naming
// it and its reason, and the group stays usable.
Status finalize_plan(RoutingPlan& plan, Bootstrap* group);

}  // namespace locmoe
