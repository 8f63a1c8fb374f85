#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "replica/runtime.h"

namespace serve::replica {

// `runtime: python`: the worker hosts CPython (Debian's libpython3.11) and serves a class
// written against sdk/python/serve (Ray Serve's shape: __init__(config), __call__(request),
// optional check_health and reconfigure).
//
// The interpreter is not linked into serve-replica: the code that embeds it is a library of its
// own, libserve-python.so in <prefix>/lib/serve/ (build/lib/serve/ in a build tree), opened with
// the Python package beside it (<prefix>/lib/serve/python/serve) only by workers of python
// deployments, so the node agent and every other worker map no libpython.
//
// How a replica runs (services/replica/python_runtime.cc):
// - Start: sys.path gets the Serve package, the unpacked working_dir (context.artifact_path,
//   also the process's working directory) and the spec's python_path entries (relative ones
//   inside working_dir); the module of import_path ("model:Iris") is imported and the class
//   built with the parsed user_config. A failure ends the start with the traceback's last lines.
// - __call__ runs on the worker's handler threads, up to max_concurrent_queries at once, each
//   holding the GIL only while Python runs; an `async def __call__` runs on one asyncio loop
//   thread of the replica, the handler threads waiting for it without the GIL.
// - An exception in __call__ answers 500 "Type: message" (the traceback goes to the log); an
//   answer of a type Serve cannot send answers 500 naming the type.
// - sys.exit() (SystemExit) in user code ends the worker with code 4, the reason in
//   context.error_file, so that the controller replaces the replica.
Result<std::unique_ptr<Runtime>> StartPythonRuntime(const RuntimeContext& context);

// What the embedding library gets from the worker.
struct PythonHost {
  // The directory that holds the `serve` package (sdk/python in a source tree).
  std::string package_dir;
  // Writes one line of serve.logger to the worker's log; `level` is Python's (logging.INFO...).
  void (*log)(int level, std::string_view request_id, std::string_view message) = nullptr;
  // Writes out what the log holds; called before the worker ends on its own (sys.exit()).
  void (*flush)() = nullptr;
};

// The embedding itself, in libserve-python.so (and linked straight into its tests).
Result<std::unique_ptr<Runtime>> CreatePythonRuntime(const RuntimeContext& context,
                                                     const PythonHost& host);

}  // namespace serve::replica
