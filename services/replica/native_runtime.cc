#include "replica/native_runtime.h"

#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <new>
#include <string>
#include <utility>

// The ABI header is part of the public SDK, not of a library target; include it by path so
// that the host compiles against exactly the header deployments are built with.
#include <serve/abi.h>
#include "http/ascii.h"

// The opaque types of serve/abi.h, as the host defines them. They live in the global namespace
// because the C header declares them there.
struct ServeRequest {
  const serve::replica::RequestView& view;
};
struct ServeResponse {
  serve::replica::HandlerResponse& answer;
};
struct ServeError {
  std::string message;
};

namespace serve::replica {
namespace {

ServeString ToServe(std::string_view s) { return ServeString{s.data(), s.size()}; }

// The host function table. Every entry is noexcept: an exception must not unwind into the
// plugin, and the only thing that can throw here is an allocation failure, after which the
// process cannot do anything sensible anyway.
const ServeHostApi kHostApi = {
    .struct_size = sizeof(ServeHostApi),
    .abi_version = SERVE_ABI_VERSION,
    .error_new = [](const char* message, size_t size) noexcept -> ServeError* {
      return new ServeError{std::string(message, size)};
    },
    .request_method = [](const ServeRequest* request,
                         ServeString* out) noexcept { *out = ToServe(request->view.method); },
    .request_path = [](const ServeRequest* request,
                       ServeString* out) noexcept { *out = ToServe(request->view.path); },
    .request_query = [](const ServeRequest* request,
                        ServeString* out) noexcept { *out = ToServe(request->view.query); },
    .request_body = [](const ServeRequest* request,
                       ServeString* out) noexcept { *out = ToServe(request->view.body); },
    .request_header = [](const ServeRequest* request, const char* name, size_t name_size,
                         ServeString* out) noexcept -> int {
      const std::string_view wanted(name, name_size);
      for (const auto& [key, value] : request->view.headers) {
        if (http::internal::EqualsIgnoreCase(key, wanted)) {
          *out = ToServe(value);
          return 1;
        }
      }
      *out = ServeString{"", 0};
      return 0;
    },
    .request_header_count = [](const ServeRequest* request) noexcept -> size_t {
      return request->view.headers.size();
    },
    .request_header_at =
        [](const ServeRequest* request, size_t index, ServeString* name,
           ServeString* value) noexcept {
          if (index >= request->view.headers.size()) {
            *name = ServeString{"", 0};
            *value = ServeString{"", 0};
            return;
          }
          *name = ToServe(request->view.headers[index].first);
          *value = ToServe(request->view.headers[index].second);
        },
    .response_set_status = [](ServeResponse* response,
                              int status) noexcept { response->answer.status = status; },
    .response_add_header =
        [](ServeResponse* response, const char* name, size_t name_size, const char* value,
           size_t value_size) noexcept {
          response->answer.headers.emplace_back(std::string(name, name_size),
                                                std::string(value, value_size));
        },
    .response_set_body = [](ServeResponse* response, const char* data,
                            size_t size) noexcept { response->answer.body.assign(data, size); },
    .request_id = [](const ServeRequest* request,
                     ServeString* out) noexcept { *out = ToServe(request->view.request_id); },
    .log =
        [](int level, const char* message, size_t size) noexcept {
          auto spd_level = level <= SERVE_LOG_DEBUG     ? spdlog::level::debug
                           : level == SERVE_LOG_INFO    ? spdlog::level::info
                           : level == SERVE_LOG_WARNING ? spdlog::level::warn
                                                        : spdlog::level::err;
          spdlog::log(
              spd_level, "{}",
              std::string_view(message != nullptr ? message : "", message != nullptr ? size : 0));
        },
};

// Takes ownership of an error the plugin returned; "" when there was none.
class ErrorOwner {
 public:
  explicit ErrorOwner(ServeError* error) : error_(error) {}
  ~ErrorOwner() { delete error_; }
  ErrorOwner(const ErrorOwner&) = delete;
  ErrorOwner& operator=(const ErrorOwner&) = delete;

  bool failed() const { return error_ != nullptr; }
  const std::string& message() const { return error_->message; }

 private:
  ServeError* error_;
};

// The entry points found in the library.
struct Entry {
  ServeDeploymentCreateFn create = nullptr;
  ServeDeploymentDestroyFn destroy = nullptr;
  ServeDeploymentHandleFn handle = nullptr;
  ServeDeploymentCheckHealthFn check_health = nullptr;  // nullptr: always healthy
  ServeDeploymentReconfigureFn reconfigure = nullptr;   // nullptr: accepts anything
  uint32_t flags = 0;
};

class NativeRuntime : public Runtime {
 public:
  NativeRuntime(void* library, Entry entry, ServeInstance* instance, int concurrency)
      : library_(library), entry_(entry), instance_(instance), concurrency_(concurrency) {}

  ~NativeRuntime() override {
    entry_.destroy(instance_);
    dlclose(library_);
  }

  int Concurrency() const override { return concurrency_; }
  bool ScalesWithLimit() const override { return concurrency_ > 1; }
  // Even a kNonBlocking class's check_health and reconfigure are user code that may wait; the
  // SDK lets them run beside operator().
  bool ChecksOnLoop() const override { return false; }

  HandlerResponse Handle(const RequestView& request) override {
    HandlerResponse answer;
    ServeRequest serve_request{request};
    ServeResponse serve_response{answer};
    std::unique_lock<std::mutex> lock(serialize_, std::defer_lock);
    // The worker already calls a runtime of concurrency 1 from one thread (0: its loop's); the
    // lock makes the SDK's promise to a class without kConcurrent hold whoever calls.
    if (concurrency_ <= 1) lock.lock();
    ErrorOwner error(entry_.handle(instance_, &serve_request, &serve_response));
    if (error.failed()) {
      return HandlerResponse{500, {{"Content-Type", "text/plain; charset=utf-8"}}, error.message()};
    }
    return answer;
  }

  Status CheckHealth() override {
    if (entry_.check_health == nullptr) return Status::Ok();
    ErrorOwner error(entry_.check_health(instance_));
    if (error.failed()) return Status::Error("check_health threw: " + error.message());
    return Status::Ok();
  }

  Status Reconfigure(const std::string& user_config) override {
    if (entry_.reconfigure == nullptr) return Status::Ok();
    ErrorOwner error(entry_.reconfigure(instance_, user_config.data(), user_config.size()));
    if (error.failed()) return Status::Error("reconfigure threw: " + error.message());
    return Status::Ok();
  }

 private:
  void* const library_;
  const Entry entry_;
  ServeInstance* const instance_;
  const int concurrency_;
  std::mutex serialize_;  // held around Handle when concurrency_ is 1
};

std::string DlError() {
  const char* text = dlerror();
  return text != nullptr ? text : "unknown dlopen error";
}

template <typename Fn>
Fn Find(void* library, const char* symbol) {
  return reinterpret_cast<Fn>(dlsym(library, symbol));
}

}  // namespace

Result<std::unique_ptr<Runtime>> LoadNativeRuntime(const RuntimeContext& context) {
  const std::string name =
      context.spec.artifact_name.empty() ? context.artifact_path : context.spec.artifact_name;
  const std::string label = "native deployment library '" + name + "'";
  auto fail = [&](const std::string& cause) { return Status::Error(label + ": " + cause); };

  void* library = dlopen(context.artifact_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    return fail("cannot be loaded as a shared library: " + DlError());
  }
  // From here on every early return closes the library.
  auto close_and_fail = [&](const std::string& cause) {
    dlclose(library);
    return fail(cause);
  };

  const auto abi_version = Find<ServeAbiVersionFn>(library, "serve_abi_version");
  if (abi_version == nullptr) {
    return close_and_fail(
        "it exports no serve_abi_version, so it is not a Serve deployment; build it with "
        "SERVE_DEPLOYMENT(YourClass) from sdk/include/serve/deployment.h");
  }
  const uint32_t version = abi_version();
  if (version != SERVE_ABI_VERSION) {
    return close_and_fail("it was built for Serve ABI version " + std::to_string(version) +
                          " but this serve-replica supports ABI version " +
                          std::to_string(SERVE_ABI_VERSION) +
                          "; rebuild it against this release's sdk/include");
  }

  Entry entry;
  const auto flags = Find<ServeDeploymentFlagsFn>(library, "serve_deployment_flags");
  entry.create = Find<ServeDeploymentCreateFn>(library, "serve_deployment_create");
  entry.destroy = Find<ServeDeploymentDestroyFn>(library, "serve_deployment_destroy");
  entry.handle = Find<ServeDeploymentHandleFn>(library, "serve_deployment_handle");
  std::string missing;
  for (const auto& [symbol, found] :
       {std::pair<const char*, bool>{"serve_deployment_flags", flags != nullptr},
        {"serve_deployment_create", entry.create != nullptr},
        {"serve_deployment_destroy", entry.destroy != nullptr},
        {"serve_deployment_handle", entry.handle != nullptr}}) {
    if (!found) missing += (missing.empty() ? "" : ", ") + std::string(symbol);
  }
  if (!missing.empty()) {
    return close_and_fail("it lacks the ABI symbols " + missing +
                          "; build it with SERVE_DEPLOYMENT(YourClass) from "
                          "sdk/include/serve/deployment.h");
  }
  entry.flags = flags();
  if (entry.flags & SERVE_DEPLOYMENT_HAS_CHECK_HEALTH) {
    entry.check_health =
        Find<ServeDeploymentCheckHealthFn>(library, "serve_deployment_check_health");
  }
  if (entry.flags & SERVE_DEPLOYMENT_HAS_RECONFIGURE) {
    entry.reconfigure = Find<ServeDeploymentReconfigureFn>(library, "serve_deployment_reconfigure");
  }

  const std::string& user_config = context.spec.user_config;
  const std::string& deployment_name = context.spec.name;
  const std::string& replica_id = context.identity.replica_id;
  const ServeConfig config = {
      .struct_size = sizeof(ServeConfig),
      .user_config = ToServe(user_config),
      .deployment_name = ToServe(deployment_name),
      .replica_id = ToServe(replica_id),
  };
  ServeInstance* instance = nullptr;
  ErrorOwner error(entry.create(&kHostApi, &config, &instance));
  if (error.failed()) {
    return close_and_fail("the constructor of the deployment threw: " + error.message());
  }
  if (instance == nullptr) {
    return close_and_fail("serve_deployment_create returned no instance and no error");
  }

  // 0: on the worker's loop thread (see Runtime::Concurrency).
  const bool non_blocking = (entry.flags & SERVE_DEPLOYMENT_NON_BLOCKING) != 0;
  const bool concurrent = (entry.flags & SERVE_DEPLOYMENT_CONCURRENT) != 0;
  const int concurrency = non_blocking ? 0
                          : concurrent ? std::max(1, context.spec.max_concurrent_queries)
                                       : 1;
  return std::unique_ptr<Runtime>(
      std::make_unique<NativeRuntime>(library, entry, instance, concurrency));
}

}  // namespace serve::replica
