#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"

namespace spdlog::details {
class thread_pool;
}  // namespace spdlog::details

namespace serve::log {

enum class Format { kText, kJson };

struct Options {
  std::string component;  // "controller", "proxy", ... appears in every line
  Format format = Format::kText;
  std::string level = "info";  // trace, debug, info, warn, error
  // Empty: lines go to stderr (which `serve start` or a container runtime keeps). Otherwise this
  // file, which rotates once it reaches max_file_mb: the older ones are kept as <name>.1.<ext>
  // ... <name>.<max_files>.<ext>, the oldest dropped.
  std::string file;
  double max_file_mb = 100;
  int max_files = 5;
};

// What every line of this process says about where it comes from. `node` is the node id on a
// node agent and its workers, the host name elsewhere; `deployment` and `replica` are set in a
// worker.
struct Context {
  std::string node;
  std::string deployment;
  std::string replica;
};

// Installs the process-wide logger. A text line reads
//   2026-11-30 11:00:00.123 info worker[4711] node=node-1 deployment=hello replica=hello-2f3a
//   request=9c1e-17 the message
// (one line), with the fields that apply; JSON lines carry the same fields, for log shippers.
Status Init(const Options& options, const Context& context = {});

// Parses "text" or "json".
Result<Format> ParseFormat(const std::string& text);

// Fields of the lines this thread writes while the scope lives (nested scopes restore what was
// before): the deployment, replica or request a piece of code acts for. Empty fields leave the
// outer value.
class Scope {
 public:
  struct Fields {
    std::string_view deployment;
    std::string_view replica;
    std::string_view request_id;
  };
  explicit Scope(const Fields& fields);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  std::string deployment_, replica_, request_id_;  // the values before this scope
};

// The request id lines of this thread carry now (empty outside a request).
std::string_view CurrentRequestId();

// One line per handled request (the proxy's access log, a worker's request log), written by a
// background thread so the request path only formats them. Lines are gathered into batches of
// about 32 KB, handed over when a batch is full and on Flush() (a service calls it every
// second): waking the writer per line costs a busy 2-core machine a sixth of its throughput.
// Lines go where the process's other lines go. When the writer's queue is full (the disk cannot
// keep up) the oldest batches are dropped rather than making requests wait. One thread only
// (the service's loop).
class RequestLog {
 public:
  struct Entry {
    std::string_view method;
    std::string_view path;
    int status = 0;
    double latency_ms = 0;
    std::string_view deployment;
    std::string_view replica;
    std::string_view request_id;
  };
  // Needs Init() first: it writes through the same sinks. The destructor waits (up to a second)
  // until what was written is in the file, so the last lines survive the process's exit.
  // `queue_batches`: how many batches may wait for the writer (the queue's slots are allocated up
  // front, about 400 bytes each, and shared by the process's request logs: the first one made sizes
  // it).
  explicit RequestLog(size_t queue_batches = 64);
  ~RequestLog();
  void Write(const Entry& entry);
  // Hands what is gathered to the writer, which writes it to the file; a service calls it every
  // second or so.
  void Flush();

 private:
  static constexpr size_t kBatchBytes = 32 * 1024;
  void HandOver();

  std::shared_ptr<spdlog::details::thread_pool> writer_;
  std::shared_ptr<spdlog::logger> logger_;
  spdlog::memory_buf_t batch_;  // formatted lines not yet handed over
};

}  // namespace serve::log

namespace serve::log {

// Lets one kind of line through at most once per `interval_s`, and counts what it held back,
// so that a flood of the same complaint (garbage on a subject, say) costs a line a second
// rather than the disk.
class RateLimit {
 public:
  explicit RateLimit(double interval_s = 1.0) : interval_s_(interval_s) {}

  // True if a line may be written now; `suppressed` is set to how many were held back since
  // the last one that was.
  bool Allow(uint64_t* suppressed);
  // The same at `now_s` on a steady clock in seconds (for tests).
  bool Allow(double now_s, uint64_t* suppressed);

 private:
  double interval_s_;
  double last_ = -1e18;
  uint64_t held_ = 0;
};

}  // namespace serve::log
