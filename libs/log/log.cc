#include "log/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <chrono>
#include <unistd.h>

namespace serve::log {

Result<Format> ParseFormat(const std::string& text) {
  if (text == "text") return Format::kText;
  if (text == "json") return Format::kJson;
  return Status::Error("unknown log format '" + text + "': use 'text' or 'json'");
}

Status Init(const Options& options) {
  auto level = spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    return Status::Error("unknown log level '" + options.level +
                         "': use trace, debug, info, warn, error or off");
  }
  auto logger = spdlog::stderr_logger_mt(options.component + "-" + std::to_string(::getpid()));
  if (options.format == Format::kJson) {
    logger->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","component":")" +
                            options.component + R"(","pid":%P,"msg":"%v"})",
                        spdlog::pattern_time_type::utc);
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ " + options.component + "[%P] %v");
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return Status::Ok();
}

}  // namespace serve::log

namespace serve::log {

bool RateLimit::Allow(uint64_t* suppressed) {
  double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
                   .count();
  if (now - last_ < interval_s_) {
    ++held_;
    return false;
  }
  last_ = now;
  *suppressed = held_;
  held_ = 0;
  return true;
}

}  // namespace serve::log
