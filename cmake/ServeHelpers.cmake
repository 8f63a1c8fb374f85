# serve_test(NAME SOURCES a_test.cc ... LIBS lib ...)
# A GoogleTest executable in build/tests/, each test case registered with CTest.
function(serve_test name)
  if(NOT SERVE_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest_main GTest::gmock)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 600
                       WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
endfunction()
