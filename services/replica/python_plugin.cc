// libserve-python.so: the entry point serve-replica looks up after opening this library
// (python_loader.cc). Both are built from the same tree, so C++ types cross the boundary.
#include <string>

#include "replica/python_runtime.h"

extern "C" __attribute__((visibility("default"))) serve::replica::Runtime*
serve_python_runtime_create(const serve::replica::RuntimeContext* context,
                            const serve::replica::PythonHost* host, std::string* error) {
  auto runtime = serve::replica::CreatePythonRuntime(*context, *host);
  if (!runtime.ok()) {
    *error = runtime.error();
    return nullptr;
  }
  return runtime->release();
}
