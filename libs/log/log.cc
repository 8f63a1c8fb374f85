#include "log/log.h"

#include <spdlog/async.h>
#include <spdlog/async_logger.h>
#include <spdlog/formatter.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

namespace serve::log {
namespace {

constexpr char kRequestLogName[] = "serve-request-log";

// Set once by Init(), before any thread but the main one logs; read by every line.
struct Process {
  Format format = Format::kText;
  std::string component = "serve";
  Context context;
  int pid = 0;
  std::vector<spdlog::sink_ptr> sinks;
};
Process& TheProcess() {
  static Process* process = new Process;  // outlives every thread that may still log at exit
  return *process;
}

struct ThreadFields {
  std::string deployment, replica, request_id;
};
thread_local ThreadFields t_fields;

void Append(spdlog::memory_buf_t& dest, std::string_view text) {
  dest.append(text.data(), text.data() + text.size());
}

// Length of the valid UTF-8 sequence at text[i], or 0 when it is not one.
size_t Utf8Length(std::string_view text, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char c = byte(i);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  }
  if (n == 2 && c < 0xC2) return 0;  // overlong
  return n;
}

// A JSON string, quotes included: what a bus client or a user's code put in a message must not
// break the line for the shipper reading it (invalid UTF-8 becomes U+FFFD).
void AppendJsonString(spdlog::memory_buf_t& dest, std::string_view text) {
  dest.push_back('"');
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      dest.push_back('\\');
      dest.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      Append(dest, "\\n");
    } else if (c == '\t') {
      Append(dest, "\\t");
    } else if (c < 0x20 || c == 0x7F) {
      char escaped[8];
      snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      Append(dest, escaped);
    } else if (c < 0x80) {
      dest.push_back(static_cast<char>(c));
    } else if (size_t n = Utf8Length(text, i); n > 0) {
      Append(dest, text.substr(i, n));
      i += n;
      continue;
    } else {
      Append(dest, "\\ufffd");
    }
    ++i;
  }
  dest.push_back('"');
}

// Text lines stay one line each: a control character in a message (a newline from a hostile
// client, say) is written escaped, so no one can forge a line.
void AppendTextMessage(spdlog::memory_buf_t& dest, std::string_view text) {
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7F) {
      dest.push_back(ch);
    } else if (c == '\t') {
      dest.push_back('\t');
    } else {
      char escaped[8];
      snprintf(escaped, sizeof(escaped), c == '\n' ? "\\n" : "\\x%02x", c);
      Append(dest, escaped);
    }
  }
}

// The time part of a line, rebuilt only when the second changes.
void AppendTime(spdlog::memory_buf_t& dest, spdlog::log_clock::time_point time, Format format) {
  struct Cache {
    int64_t second = -1;
    Format format = Format::kText;
    char prefix[32] = {};
  };
  thread_local Cache cache;
  auto since_epoch = time.time_since_epoch();
  int64_t micros = std::chrono::duration_cast<std::chrono::microseconds>(since_epoch).count();
  int64_t second = micros / 1000000;
  if (second != cache.second || format != cache.format) {
    time_t t = static_cast<time_t>(second);
    struct tm parts {};
    if (format == Format::kJson) {
      gmtime_r(&t, &parts);
      strftime(cache.prefix, sizeof(cache.prefix), "%Y-%m-%dT%H:%M:%S", &parts);
    } else {
      localtime_r(&t, &parts);
      strftime(cache.prefix, sizeof(cache.prefix), "%Y-%m-%d %H:%M:%S", &parts);
    }
    cache.second = second;
    cache.format = format;
  }
  Append(dest, cache.prefix);
  char fraction[16];
  if (format == Format::kJson) {
    snprintf(fraction, sizeof(fraction), ".%06dZ", static_cast<int>(micros % 1000000));
  } else {
    snprintf(fraction, sizeof(fraction), ".%03d", static_cast<int>(micros % 1000000 / 1000));
  }
  Append(dest, fraction);
}

std::string_view LevelName(spdlog::level::level_enum level) {
  auto name = spdlog::level::to_string_view(level);
  return {name.data(), name.size()};
}

// The fields of one line. Empty ones are left out.
struct Line {
  spdlog::log_clock::time_point time;
  spdlog::level::level_enum level = spdlog::level::info;
  std::string_view deployment, replica, request_id;
  std::string_view message;
  // A request line's own fields (RequestLog).
  const RequestLog::Entry* request = nullptr;
};

void AppendLine(spdlog::memory_buf_t& dest, const Line& line) {
  const Process& process = TheProcess();
  auto field = [&](std::string_view name, std::string_view value) {
    if (value.empty()) return;
    if (process.format == Format::kJson) {
      Append(dest, ",\"");
      Append(dest, name);
      Append(dest, "\":");
      AppendJsonString(dest, value);
    } else {
      Append(dest, name);
      dest.push_back('=');
      AppendTextMessage(dest, value);
      dest.push_back(' ');
    }
  };
  // Where the line comes from; the request id's name differs: `request=` reads better in text.
  auto where = [&](std::string_view request_name) {
    field("node", process.context.node);
    field("deployment", line.deployment);
    field("replica", line.replica);
    field(request_name, line.request_id);
  };
  char number[64];
  if (process.format == Format::kJson) {
    Append(dest, "{\"time\":\"");
    AppendTime(dest, line.time, Format::kJson);
    Append(dest, "\",\"level\":\"");
    Append(dest, LevelName(line.level));
    Append(dest, "\",\"component\":");
    AppendJsonString(dest, process.component);
    snprintf(number, sizeof(number), ",\"pid\":%d", process.pid);
    Append(dest, number);
    where("request_id");
    if (line.request != nullptr) {
      field("method", line.request->method);
      field("path", line.request->path);
      double latency = std::isfinite(line.request->latency_ms) ? line.request->latency_ms : 0;
      snprintf(number, sizeof(number), ",\"status\":%d,\"latency_ms\":%.3f", line.request->status,
               latency);
      Append(dest, number);
    }
    Append(dest, ",\"msg\":");
    AppendJsonString(dest, line.message);
    Append(dest, "}\n");
    return;
  }
  AppendTime(dest, line.time, Format::kText);
  dest.push_back(' ');
  Append(dest, LevelName(line.level));
  dest.push_back(' ');
  Append(dest, process.component);
  snprintf(number, sizeof(number), "[%d] ", process.pid);
  Append(dest, number);
  where("request");
  AppendTextMessage(dest, line.message);
  dest.push_back('\n');
}

// Formats every line of the process. Lines of the request log arrive formatted already (on
// the thread that had the request, whose fields they carry), and are written as they are.
class LineFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string_view message(msg.payload.data(), msg.payload.size());
    if (std::string_view(msg.logger_name.data(), msg.logger_name.size()) == kRequestLogName) {
      Append(dest, message);
      return;
    }
    const Process& process = TheProcess();
    Line line;
    line.time = msg.time;
    line.level = msg.level;
    line.deployment =
        t_fields.deployment.empty() ? process.context.deployment : t_fields.deployment;
    line.replica = t_fields.replica.empty() ? process.context.replica : t_fields.replica;
    line.request_id = t_fields.request_id;
    line.message = message;
    AppendLine(dest, line);
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<LineFormatter>();
  }
};

std::shared_ptr<spdlog::details::thread_pool> RequestLogThread(size_t queue_batches) {
  // One background thread for the process, made on first use and kept to the end: lines
  // queued by a RequestLog being destroyed at exit must still find it.
  static auto* pool = new std::shared_ptr<spdlog::details::thread_pool>(
      std::make_shared<spdlog::details::thread_pool>(std::clamp<size_t>(queue_batches, 4, 1 << 16),
                                                     1));
  return *pool;
}

}  // namespace

Result<Format> ParseFormat(const std::string& text) {
  if (text == "text") return Format::kText;
  if (text == "json") return Format::kJson;
  return Status::Error("unknown log format '" + text + "': use 'text' or 'json'");
}

Status Init(const Options& options, const Context& context) {
  auto level = spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    return Status::Error("unknown log level '" + options.level +
                         "': use trace, debug, info, warn, error or off");
  }
  std::vector<spdlog::sink_ptr> sinks;
  if (options.file.empty()) {
    sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  } else {
    if (!(options.max_file_mb >= 0.01 && options.max_file_mb <= 1e6)) {
      return Status::Error("log file size limit must be from 0.01 to 1000000 MB (got " +
                           std::to_string(options.max_file_mb) + ")");
    }
    if (options.max_files < 1 || options.max_files > 1000) {
      return Status::Error("the number of rotated log files to keep must be from 1 to 1000 (got " +
                           std::to_string(options.max_files) + ")");
    }
    try {
      sinks.push_back(std::make_shared<spdlog::sinks::rotating_file_sink_mt>(
          options.file, static_cast<size_t>(options.max_file_mb * 1024 * 1024),
          static_cast<size_t>(options.max_files)));
    } catch (const spdlog::spdlog_ex& e) {
      return Status::Error("cannot write the log file " + options.file + ": " + e.what() +
                           "; choose a writable path with --log-file");
    }
  }
  Process& process = TheProcess();
  process.format = options.format;
  process.component = options.component;
  process.context = context;
  process.pid = static_cast<int>(::getpid());
  process.sinks = sinks;
  auto logger = std::make_shared<spdlog::logger>(options.component, sinks.begin(), sinks.end());
  logger->set_formatter(std::make_unique<LineFormatter>());
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return Status::Ok();
}

Scope::Scope(const Fields& fields)
    : deployment_(t_fields.deployment),
      replica_(t_fields.replica),
      request_id_(t_fields.request_id) {
  if (!fields.deployment.empty()) t_fields.deployment = fields.deployment;
  if (!fields.replica.empty()) t_fields.replica = fields.replica;
  if (!fields.request_id.empty()) t_fields.request_id = fields.request_id;
}

Scope::~Scope() {
  t_fields.deployment = std::move(deployment_);
  t_fields.replica = std::move(replica_);
  t_fields.request_id = std::move(request_id_);
}

std::string_view CurrentRequestId() { return t_fields.request_id; }

RequestLog::RequestLog(size_t queue_batches) {
  const auto& sinks = TheProcess().sinks;
  if (sinks.empty()) {
    // Init() was not called (a unit test): lines go to stderr, formatted all the same.
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    sink->set_formatter(std::make_unique<LineFormatter>());
    TheProcess().sinks.push_back(sink);
  }
  writer_ = RequestLogThread(queue_batches);
  logger_ = std::make_shared<spdlog::async_logger>(kRequestLogName, TheProcess().sinks.begin(),
                                                   TheProcess().sinks.end(), writer_,
                                                   spdlog::async_overflow_policy::overrun_oldest);
  // Not set_formatter(): that would replace the sinks' formatter, which the process's other
  // lines share. Lines reach the sinks formatted (see LineFormatter).
  logger_->set_level(spdlog::level::info);
}

RequestLog::~RequestLog() {
  Flush();
  // The writer takes one message at a time: once the flush behind the last batch left the
  // queue, the batch is written.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (writer_->queue_size() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (const auto& sink : logger_->sinks()) sink->flush();
}

void RequestLog::Write(const Entry& entry) {
  Line line;
  line.time = spdlog::log_clock::now();
  line.deployment = entry.deployment;
  line.replica = entry.replica;
  line.request_id = entry.request_id;
  line.request = &entry;
  char summary[64];
  snprintf(summary, sizeof(summary), " %d %.3f ms", entry.status,
           std::isfinite(entry.latency_ms) ? entry.latency_ms : 0.0);
  std::string message;
  message.reserve(entry.method.size() + entry.path.size() + 32);
  message.append(entry.method).append(" ").append(entry.path);
  if (TheProcess().format == Format::kText) message.append(summary);
  line.message = message;
  AppendLine(batch_, line);
  if (batch_.size() >= kBatchBytes) HandOver();
}

void RequestLog::HandOver() {
  if (batch_.size() == 0) return;
  logger_->info(std::string_view(batch_.data(), batch_.size()));
  batch_.clear();
}

void RequestLog::Flush() {
  HandOver();
  logger_->flush();
}

}  // namespace serve::log

namespace serve::log {

bool RateLimit::Allow(uint64_t* suppressed) {
  return Allow(
      std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(),
      suppressed);
}

bool RateLimit::Allow(double now, uint64_t* suppressed) {
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
