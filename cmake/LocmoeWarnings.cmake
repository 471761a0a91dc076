# Warning flags for our own targets only (never global, so third-party headers stay quiet).
add_library(locmoe_warnings INTERFACE)
target_compile_options(locmoe_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
