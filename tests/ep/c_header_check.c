/* Compiled as C: the C API header must be valid C99 and its _INIT macros usable initializers. */
#include "locmoe/locmoe.h"

int locmoe_test_c_header_sizes(void) {
  locmoe_group_config_t g = LOCMOE_GROUP_CONFIG_INIT;
  locmoe_dispatcher_config_t d = LOCMOE_DISPATCHER_CONFIG_INIT;
  locmoe_handle_info_t h = LOCMOE_HANDLE_INFO_INIT;
  locmoe_plan_info_t p = LOCMOE_PLAN_INFO_INIT;
  locmoe_router_config_t r = LOCMOE_ROUTER_CONFIG_INIT;
  locmoe_route_stats_t s = LOCMOE_ROUTE_STATS_INIT;
  return g.struct_size == sizeof g && d.struct_size == sizeof d && h.struct_size == sizeof h &&
         p.struct_size == sizeof p && d.align == 1 && d.memory == LOCMOE_MEMORY_HOST &&
         d.weight_grads_with_dispatch_backward == 0 && sizeof d == 56 &&
         r.struct_size == sizeof r && r.beta == 0.9 && r.capacity_floor == 1 && s.struct_size == sizeof s;
}
