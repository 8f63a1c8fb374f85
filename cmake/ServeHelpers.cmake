# serve_test(NAME SOURCES a_test.cc ... LIBS lib ...)
# A GoogleTest executable in build/tests/, each test case registered with CTest.
function(serve_test name)
  if(NOT SERVE_BUILD_TESTS)
    return()
  endif()
  # SERIAL: the test runs alone (ctest RUN_SERIAL), for tests that take the whole machine.
  cmake_parse_arguments(ARG "SERIAL" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest_main GTest::gmock)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  set(serial FALSE)
  if(ARG_SERIAL)
    set(serial TRUE)
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600 RUN_SERIAL ${serial}
                       WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
endfunction()
