// Opens libserve-python.so for `runtime: python` (python_runtime.h says why it is a library of
// its own) and gives it what it needs from the worker: the Serve package's directory and the log.
#include <dlfcn.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>

#include "log/log.h"
#include "replica/python_runtime.h"

namespace serve::replica {
namespace {

namespace fs = std::filesystem;

using CreateFn = Runtime* (*)(const RuntimeContext*, const PythonHost*, std::string*);

// <prefix>/lib/serve, beside <prefix>/bin where serve-replica is (build/lib/serve in a build).
fs::path ServeLibDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return exe.parent_path().parent_path() / "lib" / "serve";
}

void Log(int level, std::string_view request_id, std::string_view message) {
  auto spd_level = level >= 40   ? spdlog::level::err  // logging.ERROR, CRITICAL
                   : level >= 30 ? spdlog::level::warn
                   : level >= 20 ? spdlog::level::info
                                 : spdlog::level::debug;
  log::Scope scope({{}, {}, request_id});
  spdlog::log(spd_level, "{}", message);
}

void Flush() { spdlog::shutdown(); }

}  // namespace

Result<std::unique_ptr<Runtime>> StartPythonRuntime(const RuntimeContext& context) {
  const fs::path dir = ServeLibDir();
  const std::string library = (dir / "libserve-python.so").string();
  // RTLD_GLOBAL: extension modules (numpy's, scikit-learn's) find libpython's symbols in the
  // process rather than linking libpython themselves.
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return Status::Error("runtime python: cannot load " + library + " (" +
                         (why != nullptr ? why : "unknown error") +
                         "); install serve with its lib/serve directory, and Debian's "
                         "libpython3.11 on this node");
  }
  auto create = reinterpret_cast<CreateFn>(dlsym(handle, "serve_python_runtime_create"));
  if (create == nullptr) {
    return Status::Error("runtime python: " + library +
                         " has no serve_python_runtime_create; it is not the library of this "
                         "serve-replica, reinstall both together");
  }
  static const PythonHost host{(dir / "python").string(), &Log, &Flush};
  std::string error;
  Runtime* runtime = create(&context, &host, &error);
  if (runtime == nullptr) return Status::Error(error);
  return std::unique_ptr<Runtime>(runtime);
}

}  // namespace serve::replica
