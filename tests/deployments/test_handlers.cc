// A deployment for tests. What it does depends on how the request path ends:
//   /throw         throws std::runtime_error("handler failed on purpose")
//   /crash         std::abort()
//   /sleep?ms=N    sleeps N milliseconds, then answers "slept N ms"
//   /wait?n=N      waits (up to 10 s) until N calls have been in flight at once: answers 200
//                  "met" or 504 "timed out"; only meaningful for test_concurrent
//   /health/fail   makes later check_health calls throw "told to fail"
//   /health/ok     makes them pass again
//   /log           writes "user code says: <body>" to the replica's log (serve::Log) and
//                  answers "logged request <id>"
//   /config        the current user_config
//   /stats         {"max_in_flight": n, "calls": m}: the most calls seen at once, and how
//                  many calls there were (this one included)
//   anything else  JSON: replica_id, deployment, path, method, query, body and header x-test
// reconfigure accepts any user_config except one containing "reject", which it refuses with
// "user_config rejected on purpose". A user_config with "start_delay_ms": N makes the
// constructor take N milliseconds, like a model that loads slowly.
//
// Built three times: test_handlers (serialized), test_concurrent (SERVE_TEST_CONCURRENT defined,
// which declares kConcurrent) and test_non_blocking (kConcurrent and kNonBlocking).
#include <serve/deployment.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The integer value of `name` in a query string such as "ms=10&n=2", or `fallback`.
long QueryNumber(std::string_view query, std::string_view name, long fallback) {
  while (!query.empty()) {
    const size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos || pair.substr(0, eq) != name) continue;
    long value = fallback;
    std::from_chars(pair.data() + eq + 1, pair.data() + pair.size(), value);
    return value;
  }
  return fallback;
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

class TestHandlers {
 public:
#ifdef SERVE_TEST_CONCURRENT
  static constexpr bool kConcurrent = true;
#endif
#ifdef SERVE_TEST_NON_BLOCKING
  static constexpr bool kNonBlocking = true;
#endif

  explicit TestHandlers(const serve::Config& config)
      : replica_id_(config.replica_id()),
        deployment_(config.deployment_name()),
        user_config_(config.user_config()) {
    const std::string key = "\"start_delay_ms\":";
    const size_t at = user_config_.find(key);
    if (at != std::string::npos) {
      size_t digits = user_config_.find_first_of("0123456789", at + key.size());
      long ms = 0;
      if (digits != std::string::npos) {
        std::from_chars(user_config_.data() + digits,
                        user_config_.data() + user_config_.size(), ms);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
  }

  serve::Response operator()(const serve::Request& request) {
    InFlight in_flight(*this);
    const std::string_view path = request.path();
    if (EndsWith(path, "/throw")) {
      throw std::runtime_error("handler failed on purpose");
    }
    if (EndsWith(path, "/crash")) {
      std::abort();
    }
    if (EndsWith(path, "/sleep")) {
      const long ms = QueryNumber(request.query(), "ms", 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return {200, "slept " + std::to_string(ms) + " ms"};
    }
    if (EndsWith(path, "/wait")) {
      const long n = QueryNumber(request.query(), "n", 1);
      std::unique_lock lock(mutex_);
      const bool met =
          changed_.wait_for(lock, std::chrono::seconds(10), [&] { return max_in_flight_ >= n; });
      return met ? serve::Response{200, "met"} : serve::Response{504, "timed out"};
    }
    if (EndsWith(path, "/health/fail")) {
      healthy_ = false;
      return {200, "check_health will fail"};
    }
    if (EndsWith(path, "/health/ok")) {
      healthy_ = true;
      return {200, "check_health will pass"};
    }
    if (EndsWith(path, "/log")) {
      // Through the SDK: the line carries the request's id on its own.
      serve::Log("user code says: " + std::string(request.body()));
      return {200, "logged request " + std::string(request.id())};
    }
    if (EndsWith(path, "/config")) {
      std::lock_guard lock(mutex_);
      return serve::Response{200, user_config_}.add_header("Content-Type", "application/json");
    }
    if (EndsWith(path, "/stats")) {
      std::lock_guard lock(mutex_);
      return serve::Response{200, "{\"max_in_flight\": " + std::to_string(max_in_flight_) +
                                      ", \"calls\": " + std::to_string(calls_) + "}"}
          .add_header("Content-Type", "application/json");
    }
    std::string body = "{\"replica_id\": " + JsonString(replica_id_) +
                       ", \"deployment\": " + JsonString(deployment_) +
                       ", \"path\": " + JsonString(path) +
                       ", \"method\": " + JsonString(request.method()) +
                       ", \"query\": " + JsonString(request.query()) +
                       ", \"body\": " + JsonString(request.body()) +
                       ", \"x_test\": " + JsonString(request.header("x-test")) + "}";
    return serve::Response{200, std::move(body)}.add_header("Content-Type", "application/json");
  }

  void check_health() {
    if (!healthy_) throw std::runtime_error("told to fail");
  }

  void reconfigure(const std::string& user_config) {
    if (user_config.find("reject") != std::string::npos) {
      throw std::invalid_argument("user_config rejected on purpose");
    }
    std::lock_guard lock(mutex_);
    user_config_ = user_config;
  }

 private:
  // Counts a call while it runs.
  class InFlight {
   public:
    explicit InFlight(TestHandlers& handlers) : handlers_(handlers) {
      std::lock_guard lock(handlers_.mutex_);
      ++handlers_.calls_;
      ++handlers_.in_flight_;
      if (handlers_.in_flight_ > handlers_.max_in_flight_) {
        handlers_.max_in_flight_ = handlers_.in_flight_;
      }
      handlers_.changed_.notify_all();
    }
    ~InFlight() {
      std::lock_guard lock(handlers_.mutex_);
      --handlers_.in_flight_;
    }

   private:
    TestHandlers& handlers_;
  };

  const std::string replica_id_;
  const std::string deployment_;
  std::atomic<bool> healthy_{true};

  std::mutex mutex_;
  std::condition_variable changed_;
  std::string user_config_;  // guarded by mutex_
  long calls_ = 0;           // guarded by mutex_
  long in_flight_ = 0;       // guarded by mutex_
  long max_in_flight_ = 0;   // guarded by mutex_
};

SERVE_DEPLOYMENT(TestHandlers)
