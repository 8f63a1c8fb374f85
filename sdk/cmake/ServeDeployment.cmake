# serve_add_deployment(<target> SOURCES <file>... [OUTPUT_DIRECTORY <dir>])
#
# Builds a `native` Serve deployment: a shared library lib<target>.so from C++20 sources that
# use sdk/include/serve/deployment.h and SERVE_DEPLOYMENT(YourClass). Only the serve_* ABI
# functions are exported (hidden visibility plus a linker version script), so the library's
# own symbols never clash with anything else loaded into serve-replica.
#
# From your own project, include this file from a Serve checkout or install:
#
#   cmake_minimum_required(VERSION 3.20)
#   project(my_model LANGUAGES CXX)
#   set(SERVE_SDK_DIR "/path/to/serve/sdk" CACHE PATH "Serve's sdk/ directory")
#   include(${SERVE_SDK_DIR}/cmake/ServeDeployment.cmake)
#   serve_add_deployment(my_model SOURCES my_model.cc)
#   target_link_libraries(my_model PRIVATE ...)   # your own dependencies, as usual
#
# OUTPUT_DIRECTORY defaults to CMAKE_LIBRARY_OUTPUT_DIRECTORY (or the current binary dir).
include_guard(GLOBAL)
cmake_minimum_required(VERSION 3.20)

get_filename_component(SERVE_SDK_INCLUDE_DIR "${CMAKE_CURRENT_LIST_DIR}/../include" ABSOLUTE)
set(SERVE_SDK_INCLUDE_DIR "${SERVE_SDK_INCLUDE_DIR}" CACHE INTERNAL "Serve SDK headers")
set(SERVE_SDK_EXPORTS_MAP "${CMAKE_CURRENT_LIST_DIR}/serve_deployment.map"
    CACHE INTERNAL "Linker version script for Serve deployments")

function(serve_add_deployment target)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "serve_add_deployment(${target}): give the sources with SOURCES a.cc ...")
  endif()
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "serve_add_deployment(${target}): unexpected ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  add_library(${target} SHARED ${ARG_SOURCES})
  target_include_directories(${target} PRIVATE "${SERVE_SDK_INCLUDE_DIR}")
  target_compile_features(${target} PRIVATE cxx_std_20)
  set_target_properties(${target} PROPERTIES
    CXX_EXTENSIONS OFF
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    POSITION_INDEPENDENT_CODE ON)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${target} PRIVATE "LINKER:--version-script=${SERVE_SDK_EXPORTS_MAP}")
    set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS "${SERVE_SDK_EXPORTS_MAP}")
  endif()
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${ARG_OUTPUT_DIRECTORY}")
  endif()
endfunction()
