// The C++ SDK for `native` deployments. Header-only: a deployment builds with this directory
// on the include path and nothing else:
//
//   g++ -std=c++20 -shared -fPIC -fvisibility=hidden -I <serve>/sdk/include counter.cc
//       -o libcounter.so
//
// A deployment is a class and one macro:
//
//   #include <serve/deployment.h>
//
//   class Counter {
//    public:
//     explicit Counter(const serve::Config& config);        // or a default constructor
//     serve::Response operator()(const serve::Request& request);
//     void check_health();                                  // optional: throw when unhealthy
//     void reconfigure(const std::string& user_config);     // optional
//     static constexpr bool kConcurrent = true;             // optional, see below
//     static constexpr bool kNonBlocking = true;            // optional, see below
//   };
//   SERVE_DEPLOYMENT(Counter)
//
// Threads. serve-replica builds one instance per replica. operator() is never called on two
// threads at once unless the class declares `static constexpr bool kConcurrent = true;`, in
// which case up to max_concurrent_queries calls run at once and the class guards its own
// state. check_health and reconfigure run on a separate control thread so that they are never
// queued behind slow requests: they MAY RUN WHILE operator() RUNS, even without kConcurrent,
// so anything they share with operator() needs a mutex or an atomic.
//
// Calls that take microseconds. A class whose operator() never blocks (no I/O, no sleeping,
// no waiting on a lock held for long) may declare `static constexpr bool kNonBlocking = true;`:
// serve-replica then calls it on the worker's own event-loop thread, one call at a time,
// instead of handing each request to a handler thread and its answer back, which is most of
// what a call costs when the code itself takes a few microseconds. A call that does block
// holds up every other request of the replica and its heartbeats, and a replica that misses
// its health checks is replaced. It takes precedence over kConcurrent.
//
// Errors. An exception thrown by operator() becomes a 500 answer whose body is its what()
// ("unknown exception" for anything not derived from std::exception); the replica carries on.
// One thrown by check_health marks the check failed with that message; one thrown by
// reconfigure rejects the new user_config with that message; one thrown by the constructor
// fails the replica's start with that message. Exceptions never cross into serve-replica.
//
// Underneath is the C ABI in serve/abi.h; SERVE_DEPLOYMENT defines its functions. A library
// only loads into a serve-replica of the same SERVE_ABI_VERSION.
#pragma once

#include <serve/abi.h>

#include <concepts>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace serve {

// One HTTP request. The string_views point into the host's copy of the request and are valid
// until operator() returns; copy what you keep.
class Request {
 public:
  Request(const ServeHostApi* host, const ServeRequest* request) : host_(host), request_(request) {}

  // "GET", "POST", ...
  std::string_view method() const { return Get(host_->request_method); }
  // The full path the client asked for, route prefix included, without the query:
  // "/counter/add".
  std::string_view path() const { return Get(host_->request_path); }
  // The query string without the '?': "ms=10&x=y". Not decoded.
  std::string_view query() const { return Get(host_->request_query); }
  std::string_view body() const { return Get(host_->request_body); }
  // The first header called `name` (ASCII case-insensitive); "" when there is none.
  std::string_view header(std::string_view name) const {
    ServeString out{nullptr, 0};
    host_->request_header(request_, name.data(), name.size(), &out);
    return View(out);
  }
  // The request's id: the client's X-Request-ID, or the one the proxy made up. Lines logged
  // with serve::Log while operator() runs carry it already.
  std::string_view id() const { return Get(host_->request_id); }
  // Every header, in the order received, as (name, value).
  std::vector<std::pair<std::string_view, std::string_view>> headers() const {
    std::vector<std::pair<std::string_view, std::string_view>> out;
    const size_t count = host_->request_header_count(request_);
    out.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      ServeString name{nullptr, 0};
      ServeString value{nullptr, 0};
      host_->request_header_at(request_, i, &name, &value);
      out.emplace_back(View(name), View(value));
    }
    return out;
  }

 private:
  static std::string_view View(ServeString s) {
    return s.size == 0 ? std::string_view() : std::string_view(s.data, s.size);
  }
  std::string_view Get(void (*accessor)(const ServeRequest*, ServeString*)) const {
    ServeString out{nullptr, 0};
    accessor(request_, &out);
    return View(out);
  }

  const ServeHostApi* host_;
  const ServeRequest* request_;
};

// The answer to one request: `serve::Response{200, "ok"}`, or with headers
// `serve::Response{200, json}.add_header("Content-Type", "application/json")`, or
// `serve::Response{200, json, {{"Content-Type", "application/json"}}}`. Without a
// Content-Type header the client gets none.
struct Response {
  Response() = default;
  Response(int status_code, std::string body_text,
           std::vector<std::pair<std::string, std::string>> header_list = {})
      : status(status_code), body(std::move(body_text)), headers(std::move(header_list)) {}

  int status = 200;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // (name, value), sent in order

  Response& add_header(std::string name, std::string value) & {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
  Response add_header(std::string name, std::string value) && {
    headers.emplace_back(std::move(name), std::move(value));
    return std::move(*this);
  }
};

namespace internal {
// The host's table, set before the deployment's class is built (one deployment per library).
inline const ServeHostApi*& Host() {
  static const ServeHostApi* host = nullptr;
  return host;
}
}  // namespace internal

enum class LogLevel {
  kDebug = SERVE_LOG_DEBUG,
  kInfo = SERVE_LOG_INFO,
  kWarning = SERVE_LOG_WARNING,
  kError = SERVE_LOG_ERROR
};

// Writes one line to the replica's log (`serve logs <deployment>` shows it), with the time,
// node, deployment, replica and, when called on the thread running operator(), the request's
// id. Safe from any thread; does nothing before the constructor runs.
inline void Log(LogLevel level, std::string_view message) {
  const ServeHostApi* host = internal::Host();
  if (host != nullptr && host->log != nullptr) {
    host->log(static_cast<int>(level), message.data(), message.size());
  }
}
inline void Log(std::string_view message) { Log(LogLevel::kInfo, message); }

// What the constructor is given.
class Config {
 public:
  Config(std::string user_config, std::string deployment_name, std::string replica_id)
      : user_config_(std::move(user_config)),
        deployment_name_(std::move(deployment_name)),
        replica_id_(std::move(replica_id)) {}

  // The deployment's user_config as JSON text ("" when it has none). A later change arrives
  // through reconfigure(), not here.
  const std::string& user_config() const { return user_config_; }
  // The deployment's name from the config file: "counter".
  const std::string& deployment_name() const { return deployment_name_; }
  // This replica's id: "counter-3f2a1".
  const std::string& replica_id() const { return replica_id_; }

 private:
  std::string user_config_;
  std::string deployment_name_;
  std::string replica_id_;
};

namespace internal {

template <typename T>
constexpr bool IsConcurrent() {
  if constexpr (requires { T::kConcurrent; }) {
    return static_cast<bool>(T::kConcurrent);
  } else {
    return false;
  }
}

template <typename T>
constexpr bool IsNonBlocking() {
  if constexpr (requires { T::kNonBlocking; }) {
    return static_cast<bool>(T::kNonBlocking);
  } else {
    return false;
  }
}

// clang-format 14 mangles concepts.
// clang-format off
template <typename T>
concept HasCheckHealth = requires(T& deployment) { deployment.check_health(); };

template <typename T>
concept HasReconfigure = requires(T& deployment, const std::string& user_config) {
  deployment.reconfigure(user_config);
};

template <typename T>
concept Deployment =
    (std::constructible_from<T, const Config&> || std::default_initializable<T>) &&
    requires(T& deployment, const Request& request) {
      { deployment(request) } -> std::convertible_to<Response>;
    };
// clang-format on

// What ServeInstance* points to. The user's class is built in place, so it need not be
// movable (a std::mutex member is fine).
template <typename T>
struct Instance {
  template <typename... Args>
  explicit Instance(const ServeHostApi* host_api, Args&&... args)
      : host(host_api), deployment(std::forward<Args>(args)...) {}

  const ServeHostApi* host;
  T deployment;
};

inline ServeError* MakeError(const ServeHostApi* host, const char* message) {
  return host->error_new(message, std::strlen(message));
}

// Runs `body` and turns whatever it throws into a ServeError.
template <typename Body>
ServeError* Guard(const ServeHostApi* host, Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return MakeError(host, e.what());
  } catch (...) {
    return MakeError(host, "unknown exception");
  }
}

template <typename T>
uint32_t Flags() {
  uint32_t flags = 0;
  if constexpr (IsConcurrent<T>()) flags |= SERVE_DEPLOYMENT_CONCURRENT;
  if constexpr (IsNonBlocking<T>()) flags |= SERVE_DEPLOYMENT_NON_BLOCKING;
  if constexpr (HasCheckHealth<T>) flags |= SERVE_DEPLOYMENT_HAS_CHECK_HEALTH;
  if constexpr (HasReconfigure<T>) flags |= SERVE_DEPLOYMENT_HAS_RECONFIGURE;
  return flags;
}

inline std::string Copy(ServeString s) {
  return s.size == 0 ? std::string() : std::string(s.data, s.size);
}

template <typename T>
ServeError* Create(const ServeHostApi* host, const ServeConfig* config,
                   ServeInstance** instance) noexcept {
  if (instance != nullptr) *instance = nullptr;
  if (host == nullptr || host->struct_size < sizeof(ServeHostApi) || config == nullptr ||
      instance == nullptr) {
    // Without a usable table there is no way to report why; the host checks the version
    // before it gets here, so this is a host bug.
    return (host != nullptr && host->error_new != nullptr)
               ? MakeError(host, "the host's function table is older than this library's SDK")
               : nullptr;
  }
  internal::Host() = host;
  return Guard(host, [&] {
    if constexpr (std::constructible_from<T, const Config&>) {
      Config cfg(Copy(config->user_config), Copy(config->deployment_name),
                 Copy(config->replica_id));
      *instance = reinterpret_cast<ServeInstance*>(new Instance<T>(host, cfg));
    } else {
      *instance = reinterpret_cast<ServeInstance*>(new Instance<T>(host));
    }
  });
}

template <typename T>
void Destroy(ServeInstance* instance) noexcept {
  try {
    delete reinterpret_cast<Instance<T>*>(instance);
  } catch (...) {
    // A throwing destructor has nobody left to tell.
  }
}

template <typename T>
ServeError* Handle(ServeInstance* opaque, const ServeRequest* request,
                   ServeResponse* response) noexcept {
  auto* instance = reinterpret_cast<Instance<T>*>(opaque);
  const ServeHostApi* host = instance->host;
  return Guard(host, [&] {
    Response answer = instance->deployment(Request(host, request));
    host->response_set_status(response, answer.status);
    for (const auto& [name, value] : answer.headers) {
      host->response_add_header(response, name.data(), name.size(), value.data(), value.size());
    }
    host->response_set_body(response, answer.body.data(), answer.body.size());
  });
}

template <typename T>
ServeError* CheckHealth(ServeInstance* opaque) noexcept {
  if constexpr (HasCheckHealth<T>) {
    auto* instance = reinterpret_cast<Instance<T>*>(opaque);
    return Guard(instance->host, [&] { instance->deployment.check_health(); });
  } else {
    (void)opaque;
    return nullptr;
  }
}

template <typename T>
ServeError* Reconfigure(ServeInstance* opaque, const char* user_config, size_t size) noexcept {
  if constexpr (HasReconfigure<T>) {
    auto* instance = reinterpret_cast<Instance<T>*>(opaque);
    return Guard(instance->host, [&] {
      instance->deployment.reconfigure(Copy(ServeString{user_config, size}));
    });
  } else {
    (void)opaque;
    (void)user_config;
    (void)size;
    return nullptr;
  }
}

}  // namespace internal
}  // namespace serve

// Defines the functions of serve/abi.h for `Class`. Use it once per library, at namespace
// scope, after the class. `Class` must be constructible from `const serve::Config&` (or by
// default) and callable with `const serve::Request&`, answering a serve::Response.
// clang-format off
#define SERVE_DEPLOYMENT(Class)                                                                 \
  static_assert(::serve::internal::Deployment<Class>,                                           \
                "SERVE_DEPLOYMENT(" #Class "): the class needs a constructor taking "           \
                "const serve::Config& (or a default one) and "                                  \
                "serve::Response operator()(const serve::Request&)");                          \
  extern "C" {                                                                                  \
  SERVE_EXPORT uint32_t serve_abi_version(void) { return SERVE_ABI_VERSION; }                   \
  SERVE_EXPORT uint32_t serve_deployment_flags(void) {                                          \
    return ::serve::internal::Flags<Class>();                                                   \
  }                                                                                             \
  SERVE_EXPORT ServeError* serve_deployment_create(const ServeHostApi* host,                    \
                                                   const ServeConfig* config,                   \
                                                   ServeInstance** instance) {                  \
    return ::serve::internal::Create<Class>(host, config, instance);                            \
  }                                                                                             \
  SERVE_EXPORT void serve_deployment_destroy(ServeInstance* instance) {                         \
    ::serve::internal::Destroy<Class>(instance);                                                \
  }                                                                                             \
  SERVE_EXPORT ServeError* serve_deployment_handle(ServeInstance* instance,                     \
                                                   const ServeRequest* request,                 \
                                                   ServeResponse* response) {                   \
    return ::serve::internal::Handle<Class>(instance, request, response);                       \
  }                                                                                             \
  SERVE_EXPORT ServeError* serve_deployment_check_health(ServeInstance* instance) {             \
    return ::serve::internal::CheckHealth<Class>(instance);                                     \
  }                                                                                             \
  SERVE_EXPORT ServeError* serve_deployment_reconfigure(ServeInstance* instance,                \
                                                        const char* user_config,                \
                                                        size_t size) {                          \
    return ::serve::internal::Reconfigure<Class>(instance, user_config, size);                  \
  }                                                                                             \
  }
// clang-format on
