# The installed package: one shared library, locmoe::locmoe, holding every layer, plus the public
# headers of each layer and the C API (include/locmoe/). find_package(locmoe CONFIG) finds it.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Layers are static archives; the shared library takes them whole so every symbol is present.
set(LOCMOE_LAYER_TARGETS locmoe_core locmoe_topology locmoe_router locmoe_comm)
foreach(t IN ITEMS locmoe_kernels locmoe_ep)
  if(TARGET ${t})
    list(APPEND LOCMOE_LAYER_TARGETS ${t})
  endif()
endforeach()

add_library(locmoe SHARED ${PROJECT_SOURCE_DIR}/cmake/locmoe_library.cc)
add_library(locmoe::locmoe ALIAS locmoe)
set_target_properties(locmoe PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR})
target_include_directories(locmoe PRIVATE ${PROJECT_BINARY_DIR}/core/include)
# Each archive once inside --whole-archive (every member kept); the normal link of the same
# targets afterwards adds nothing but brings their own dependencies (hwloc, MPI, UCX, BLAS...).
# ($<LINK_LIBRARY:WHOLE_ARCHIVE> would repeat archives reached through PUBLIC links twice.)
set(_whole "")
foreach(t IN LISTS LOCMOE_LAYER_TARGETS)
  list(APPEND _whole "$<TARGET_FILE:${t}>")
endforeach()
target_link_options(locmoe PRIVATE "LINKER:--whole-archive" ${_whole} "LINKER:--no-whole-archive")
target_link_libraries(locmoe PRIVATE ${LOCMOE_LAYER_TARGETS} PUBLIC fmt::fmt MPI::MPI_CXX)
# Export only the C API (locmoe_*) and namespace locmoe (cmake/locmoe.map).
target_link_options(locmoe PRIVATE "LINKER:--version-script=${PROJECT_SOURCE_DIR}/cmake/locmoe.map")
set_target_properties(locmoe PROPERTIES LINK_DEPENDS ${PROJECT_SOURCE_DIR}/cmake/locmoe.map)
target_include_directories(locmoe PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)

install(TARGETS locmoe EXPORT locmoeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
foreach(layer core contracts topology router kernels comm ep)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${layer}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
          FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp" PATTERN "*.def" PATTERN "*.cuh")
endforeach()
install(FILES ${PROJECT_BINARY_DIR}/core/include/locmoe/core/config.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/locmoe/core)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp")
foreach(tool locmoe-info locmoe-topo locmoe-route locmoe-perf)
  if(TARGET ${tool})
    install(TARGETS ${tool} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()

install(EXPORT locmoeTargets NAMESPACE locmoe:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/locmoe)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/locmoeConfig.cmake.in
  ${PROJECT_BINARY_DIR}/locmoeConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/locmoe)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/locmoeConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/locmoeConfig.cmake ${PROJECT_BINARY_DIR}/locmoeConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/locmoe)
