# LOCMOE_SANITIZE=address -> ASan + UBSan (leak checking on by default with ASan on Linux);
# LOCMOE_SANITIZE=thread -> TSan. Applied to every target of this build, our tests included.
# LOCMOE_BUILD_FUZZERS=ON (clang only) implies address, and instruments every target for coverage
# (-fsanitize=fuzzer-no-link) so libFuzzer sees the branches of the parsers it feeds; only the
# fuzz targets link libFuzzer itself (tests/fuzz). The coverage hooks in the other binaries are
# served by the ASan runtime's weak defaults, so the same build also runs the ctest suite.
# docs/TESTING.md says which tier runs which build.
if(LOCMOE_BUILD_FUZZERS)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "LOCMOE_BUILD_FUZZERS=ON needs clang (libFuzzer): "
                        "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++")
  endif()
  if(LOCMOE_SANITIZE STREQUAL "")
    set(LOCMOE_SANITIZE address CACHE STRING "" FORCE)
  elseif(NOT LOCMOE_SANITIZE STREQUAL "address")
    message(FATAL_ERROR "LOCMOE_BUILD_FUZZERS=ON runs under ASan+UBSan; LOCMOE_SANITIZE='${LOCMOE_SANITIZE}' conflicts")
  endif()
endif()

if(LOCMOE_SANITIZE STREQUAL "address")
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
elseif(LOCMOE_SANITIZE STREQUAL "thread")
  set(_san -fsanitize=thread -fno-omit-frame-pointer)
elseif(NOT LOCMOE_SANITIZE STREQUAL "")
  message(FATAL_ERROR "LOCMOE_SANITIZE='${LOCMOE_SANITIZE}': expected '', 'address' or 'thread'")
endif()
# One generator expression per flag: a list inside one $<...> would be split by CMake into
# broken arguments ("$<1:-fsanitize=..." and "...pointer>").
foreach(flag IN LISTS _san)
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:${flag}>)
endforeach()
if(_san)
  add_link_options(${_san})
endif()
if(LOCMOE_BUILD_FUZZERS)
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link>)
endif()
