#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <string>

#include "base/status.h"

namespace serve::log {

enum class Format { kText, kJson };

struct Options {
  std::string component;  // "controller", "proxy", ... appears in every line
  Format format = Format::kText;
  std::string level = "info";  // trace, debug, info, warn, error
};

// Installs the process-wide logger: lines go to stderr, which `serve start` sends to the
// service's log file. JSON lines carry the same fields as text lines, for log shippers.
Status Init(const Options& options);

// Parses "text" or "json".
Result<Format> ParseFormat(const std::string& text);

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

 private:
  double interval_s_;
  double last_ = -1e18;
  uint64_t held_ = 0;
};

}  // namespace serve::log
