// The shared library's own translation unit: every symbol comes from the layer archives linked
// whole into it (cmake/LocmoeInstall.cmake). This file only names the library's version.
#include "locmoe/core/config.h"

extern "C" const char* locmoe_library_version() { return LOCMOE_VERSION; }
