// The embedding behind `runtime: python` (python_runtime.h). Built into libserve-python.so,
// which links libpython; serve-replica opens it only for python deployments.
#include "replica/python_runtime.h"

#include <pybind11/embed.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>

namespace py = pybind11;

namespace serve::replica {
namespace {

namespace fs = std::filesystem;

constexpr int kPythonError = 40;  // logging.ERROR
constexpr std::string_view kText = "text/plain; charset=utf-8";

// Starts the interpreter once per process, isolated from the environment: PYTHONPATH,
// PYTHONHOME and user site-packages of whoever started the node agent (a pyenv, a virtualenv)
// must not decide which Python a deployment runs on. SERVE_PYTHON_HOME is the prefix of the
// libpython this library was built against (/usr for Debian's), so the standard library and
// dist-packages are that interpreter's.
Status EnsureInterpreter() {
  static std::once_flag once;
  static Status started;
  std::call_once(once, [] {
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0;  // SIGTERM and SIGINT belong to the worker
    // print() lands in the replica's log file: line by line, not when a buffer fills.
    config.buffered_stdio = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.home, SERVE_PYTHON_HOME);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
      started = Status::Error(
          std::string("cannot start the Python interpreter (home ") + SERVE_PYTHON_HOME +
          "): " + (status.err_msg != nullptr ? status.err_msg : "unknown error"));
      return;
    }
    // Threads take the GIL when they run Python; nobody holds it in between.
    PyEval_SaveThread();
  });
  return started;
}

// The GIL for the scope. A thread's Python state is made once and kept, so a handler thread
// does not build and tear one down per request.
class Gil {
 private:
  struct ThreadState {
    ThreadState() {
      thread_local const bool kept = [] {
        PyGILState_Ensure();  // creates this thread's state, counted once for good
        PyEval_SaveThread();
        return true;
      }();
      (void)kept;
    }
  };
  ThreadState thread_state_;  // before acquire_: members are built in this order
  py::gil_scoped_acquire acquire_;
};

py::str Utf8(std::string_view text) {
  PyObject* decoded =
      PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "surrogateescape");
  if (decoded == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(decoded);
}

// Header values are bytes on the wire; Latin-1 maps each byte to one character and back.
py::str Latin1(std::string_view text) {
  PyObject* decoded =
      PyUnicode_DecodeLatin1(text.data(), static_cast<Py_ssize_t>(text.size()), nullptr);
  if (decoded == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(decoded);
}

// Any str as UTF-8 bytes (unpaired surrogates escaped rather than failing).
std::string ToUtf8(const py::handle& text) {
  PyObject* encoded = PyUnicode_AsEncodedString(text.ptr(), "utf-8", "backslashreplace");
  if (encoded == nullptr) {
    PyErr_Clear();
    return "<text that is not UTF-8>";
  }
  std::string out(PyBytes_AS_STRING(encoded), static_cast<size_t>(PyBytes_GET_SIZE(encoded)));
  Py_DECREF(encoded);
  return out;
}

// "ValueError: bad input", as the client and the replica's message show an exception.
std::string Describe(const py::error_already_set& error) {
  std::string name = "an exception";
  try {
    name = ToUtf8(error.type().attr("__name__"));
    std::string text = ToUtf8(py::str(error.value()));
    return text.empty() ? name : name + ": " + text;
  } catch (const std::exception&) {  // a __str__ that raises: say what is known
    PyErr_Clear();
    return name;
  }
}

HandlerResponse TextAnswer(int status, std::string body) {
  return HandlerResponse{status, {{"Content-Type", std::string(kText)}}, std::move(body)};
}

class PythonRuntime : public Runtime {
 public:
  PythonRuntime(const RuntimeContext& context, const PythonHost& host, py::object replica)
      : host_(host),
        error_file_(context.error_file),
        concurrency_(std::max(1, context.spec.max_concurrent_queries)),
        replica_(std::move(replica)),
        handle_(replica_.attr("handle")),
        check_health_(replica_.attr("check_health")),
        reconfigure_(replica_.attr("reconfigure")) {}

  ~PythonRuntime() override {
    Gil gil;
    handle_ = py::object();
    check_health_ = py::object();
    reconfigure_ = py::object();
    replica_ = py::object();
  }

  int Concurrency() const override { return concurrency_; }
  bool ScalesWithLimit() const override { return true; }

  HandlerResponse Handle(const RequestView& request) override {
    Gil gil;
    try {
      py::list headers(request.headers.size());
      for (size_t i = 0; i < request.headers.size(); ++i) {
        headers[i] =
            py::make_tuple(Latin1(request.headers[i].first), Latin1(request.headers[i].second));
      }
      py::object answer =
          handle_(Utf8(request.method), Utf8(request.path), Utf8(request.query), headers,
                  py::bytes(request.body.data(), request.body.size()), Utf8(request.request_id));
      return ToResponse(answer);
    } catch (py::error_already_set& error) {
      // serve._replica answers for the user's exceptions; what reaches here is BaseException
      // beyond Exception (SystemExit, KeyboardInterrupt) or a fault of the glue itself.
      EndWorkerOnExit(error, "__call__");
      std::string why = Describe(error);
      Log(kPythonError, "__call__ raised " + why);
      return TextAnswer(500, why);
    }
  }

  Status CheckHealth() override { return CallControl(check_health_, "check_health", nullptr); }

  Status Reconfigure(const std::string& user_config) override {
    return CallControl(reconfigure_, "reconfigure", &user_config);
  }

  void Stop() override {
    Gil gil;
    try {
      replica_.attr("stop")();
    } catch (py::error_already_set& error) {
      Log(kPythonError, "stopping the replica's asyncio loop failed: " + Describe(error));
    }
  }

 private:
  // _replica.Replica.handle answers (status, [(name, value), ...], body bytes).
  HandlerResponse ToResponse(const py::object& answer) {
    HandlerResponse response;
    try {
      auto parts = answer.cast<py::tuple>();
      response.status = parts[0].cast<int>();
      for (const py::handle pair : parts[1]) {
        auto header = pair.cast<py::tuple>();
        response.headers.emplace_back(ToUtf8(header[0]), ToUtf8(header[1]));
      }
      auto body = parts[2].cast<py::bytes>();
      char* data = nullptr;
      Py_ssize_t size = 0;
      if (PyBytes_AsStringAndSize(body.ptr(), &data, &size) != 0) throw py::error_already_set();
      response.body.assign(data, static_cast<size_t>(size));
    } catch (const std::exception& error) {  // py::cast_error, py::error_already_set
      PyErr_Clear();
      return TextAnswer(
          500, std::string("serve._replica answered in an unexpected shape: ") + error.what());
    }
    return response;
  }

  // check_health and reconfigure answer "" when all is well, else why not.
  Status CallControl(const py::object& method, const char* name, const std::string* argument) {
    Gil gil;
    try {
      py::object why = argument != nullptr ? method(Utf8(*argument)) : method();
      std::string text = ToUtf8(why);
      return text.empty() ? Status::Ok() : Status::Error(text);
    } catch (py::error_already_set& error) {
      EndWorkerOnExit(error, name);
      return Status::Error(Describe(error));
    }
  }

  // sys.exit() in user code: the replica cannot go on (the user asked it to end), so the worker
  // ends as when a command exits, and the controller replaces it.
  void EndWorkerOnExit(const py::error_already_set& error, const char* where) {
    if (!error.matches(PyExc_SystemExit)) return;
    py::object code = error.value().attr("code");
    std::string message = std::string("the deployment's ") + where + " called sys.exit(" +
                          (code.is_none() ? "" : ToUtf8(py::repr(code))) +
                          "), which ends its replica";
    if (!error_file_.empty()) {
      std::ofstream out(error_file_, std::ios::trunc);
      out << message << "\n";
    }
    Log(kPythonError, message);
    if (host_.flush != nullptr) host_.flush();
    _exit(4);
  }

  void Log(int level, const std::string& message) {
    if (host_.log != nullptr) host_.log(level, "", message);
  }

  const PythonHost host_;
  const std::string error_file_;
  const int concurrency_;
  py::object replica_;
  py::object handle_, check_health_, reconfigure_;  // bound methods of replica_
};

}  // namespace

Result<std::unique_ptr<Runtime>> CreatePythonRuntime(const RuntimeContext& context,
                                                     const PythonHost& host) {
  const wire::DeploymentSpecT& spec = context.spec;
  const std::string label = "python deployment '" + spec.import_path + "'";
  if (spec.import_path.empty()) {
    return Status::Error(
        "runtime python needs import_path, the module and class to serve, "
        "e.g. import_path: \"model:Iris\"");
  }
  std::vector<std::string> python_path;
  for (const std::string& entry : spec.python_path) {
    fs::path path(entry);
    if (path.is_relative()) {
      if (context.artifact_path.empty()) {
        return Status::Error(label + ": python_path entry '" + entry +
                             "' is relative, but the deployment has no working_dir to resolve "
                             "it in; give an absolute path or a working_dir");
      }
      path = fs::path(context.artifact_path) / path;
    }
    std::error_code ec;
    if (!fs::is_directory(path, ec)) {
      return Status::Error(label + ": python_path entry '" + entry + "' (" + path.string() +
                           ") is not a directory on node; create it there or fix the entry");
    }
    python_path.push_back(path.lexically_normal().string());
  }
  if (Status started = EnsureInterpreter(); !started.ok()) return started.WithContext(label);

  // The process's working directory is the deployment's, as for a command: a model file opens
  // by its relative path.
  if (!context.artifact_path.empty() && chdir(context.artifact_path.c_str()) != 0) {
    return Status::Error(label + ": cannot enter the working directory " + context.artifact_path +
                         ": " + strerror(errno));
  }
  Gil gil;
  try {
    py::module_ sys = py::module_::import("sys");
    py::list path = sys.attr("path");
    bool present = false;
    for (const py::handle item : path) present = present || ToUtf8(item) == host.package_dir;
    if (!present) path.insert(0, Utf8(host.package_dir));
    py::module_ glue;
    try {
      glue = py::module_::import("serve._replica");
    } catch (py::error_already_set& error) {
      return Status::Error(label + ": cannot import the Serve Python package from " +
                           host.package_dir + " (" + Describe(error) +
                           "); is serve-replica installed with its lib/serve/python?");
    }
    if (host.log != nullptr) {
      auto log = host.log;
      glue.attr("use_host_log")(
          py::cpp_function([log](int level, const py::str& request_id, const py::str& message) {
            log(level, ToUtf8(request_id), ToUtf8(message));
          }));
    }
    py::list entries;
    for (const std::string& entry : python_path) entries.append(Utf8(entry));
    py::tuple loaded = glue.attr("load")(Utf8(spec.import_path), Utf8(context.artifact_path),
                                         entries, Utf8(spec.user_config), Utf8(spec.route_prefix));
    std::string why = ToUtf8(loaded[1]);
    if (!why.empty()) return Status::Error(label + ": " + why);
    return std::unique_ptr<Runtime>(std::make_unique<PythonRuntime>(context, host, loaded[0]));
  } catch (py::error_already_set& error) {
    return Status::Error(label + ": " + Describe(error));
  } catch (const std::exception& error) {
    return Status::Error(label + ": " + error.what());
  }
}

}  // namespace serve::replica
