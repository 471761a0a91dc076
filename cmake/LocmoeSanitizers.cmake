# LOCMOE_SANITIZE=address -> ASan + UBSan (leak checking on by default with ASan on Linux);
# LOCMOE_SANITIZE=thread -> TSan. Applied to every target of this build, our tests included.
if(LOCMOE_SANITIZE STREQUAL "address")
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
elseif(LOCMOE_SANITIZE STREQUAL "thread")
  set(_san -fsanitize=thread -fno-omit-frame-pointer)
elseif(NOT LOCMOE_SANITIZE STREQUAL "")
  message(FATAL_ERROR "LOCMOE_SANITIZE='${LOCMOE_SANITIZE}': expected '', 'address' or 'thread'")
endif()
if(_san)
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:${_san}>)
  add_link_options(${_san})
endif()
