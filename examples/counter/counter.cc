// A `native` deployment: counts requests.
//
// Every request adds `step` (from user_config {"step": n}, default 1) and answers the new
// count as JSON: {"count": 3, "replica": "counter-3f2a1"}. Two paths steer the health check,
// for trying out what Serve does with an unhealthy replica:
//   /counter/fail-health   later check_health calls throw
//   /counter/heal          they pass again
// A new user_config is applied in place by reconfigure().
//
// Build:  g++ -std=c++20 -shared -fPIC -fvisibility=hidden -I ../../sdk/include counter.cc
//             -o libcounter.so
// or with CMake (see CMakeLists.txt here), then: serve deploy examples/counter/serve.yaml
#include <serve/deployment.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

// The integer "step" in a JSON object such as {"step": 2}; `fallback` when it is absent.
// Throws when it is there but not a positive integer. (A real deployment would use a JSON
// library; the SDK needs none.)
int64_t ParseStep(std::string_view user_config, int64_t fallback) {
  const size_t key = user_config.find("\"step\"");
  if (key == std::string_view::npos) return fallback;
  size_t at = user_config.find(':', key);
  if (at == std::string_view::npos) throw std::invalid_argument("user_config: step has no value");
  ++at;
  while (at < user_config.size() && (user_config[at] == ' ' || user_config[at] == '\t')) ++at;
  int64_t step = 0;
  const char* begin = user_config.data() + at;
  const char* end = user_config.data() + user_config.size();
  const auto [next, error] = std::from_chars(begin, end, step);
  if (error != std::errc() || next == begin || step < 1) {
    throw std::invalid_argument("user_config: step must be a positive integer, got " +
                                std::string(user_config.substr(at)));
  }
  return step;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

class Counter {
 public:
  // A call takes a microsecond and never waits, so it runs on the replica's event-loop thread
  // rather than being handed to a handler thread (docs/sdk.md, "Threads").
  static constexpr bool kNonBlocking = true;

  // Requests run one at a time per replica; the counter is atomic anyway, because check_health
  // and reconfigure run on another thread while requests do.
  explicit Counter(const serve::Config& config)
      : replica_id_(config.replica_id()), step_(ParseStep(config.user_config(), 1)) {}

  serve::Response operator()(const serve::Request& request) {
    if (EndsWith(request.path(), "/fail-health")) {
      healthy_ = false;
      return {200, "health checks will fail\n"};
    }
    if (EndsWith(request.path(), "/heal")) {
      healthy_ = true;
      return {200, "health checks will pass\n"};
    }
    const int64_t count = count_.fetch_add(step_) + step_;
    return serve::Response{
        200, "{\"count\": " + std::to_string(count) + ", \"replica\": \"" + replica_id_ + "\"}"}
        .add_header("Content-Type", "application/json");
  }

  void check_health() {
    if (!healthy_) throw std::runtime_error("told to fail by a request to /fail-health");
  }

  void reconfigure(const std::string& user_config) { step_ = ParseStep(user_config, 1); }

 private:
  const std::string replica_id_;
  std::atomic<int64_t> step_;
  std::atomic<int64_t> count_{0};
  std::atomic<bool> healthy_{true};
};

SERVE_DEPLOYMENT(Counter)
