#pragma once

#include <spdlog/spdlog.h>

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
