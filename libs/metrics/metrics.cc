#include "metrics/metrics.h"

#include <dirent.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>

namespace serve::metrics {

Status ValidatePrefix(std::string_view prefix) {
  if (prefix.size() > 64) {
    return Status::Error("--metrics-name-prefix is " + std::to_string(prefix.size()) +
                         " characters long; keep it under 64 (like ray_serve_)");
  }
  for (size_t i = 0; i < prefix.size(); ++i) {
    auto c = static_cast<unsigned char>(prefix[i]);
    bool ok = std::isalpha(c) || c == '_' || c == ':' || (i > 0 && std::isdigit(c));
    if (!ok) {
      return Status::Error("--metrics-name-prefix '" + std::string(prefix) +
                           "' is not the start of a Prometheus metric name: use letters, "
                           "digits, '_' and ':', not starting with a digit (like ray_serve_)");
    }
  }
  return Status::Ok();
}

const std::vector<double>& LatencyBucketsMs() {
  static const std::vector<double> kBuckets = {0.1,  0.25, 0.5,  1,    2,     5,     10,
                                               20,   50,   100,  200,  500,   1000,  2000,
                                               5000, 10000, 30000, 60000};
  return kBuckets;
}

namespace {

// Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses).
std::vector<std::string> StatFields(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  std::vector<std::string> fields;
  size_t close = line.rfind(')');
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  while (rest >> field) fields.push_back(field);
  return fields;  // fields[0] is the state (field 3 of proc(5))
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double value = 0;
      in >> value;
      return value;
    }
    in.ignore(1 << 16, '\n');
  }
  return 0;
}

double CountOpenFds(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  double count = 0;
  while (dirent* entry = readdir(d)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(d);
  return count - 1;  // the directory stream's own descriptor
}

}  // namespace

ProcessFigures ReadProcessFigures(int pid) {
  std::string base = pid == 0 ? "/proc/self" : "/proc/" + std::to_string(pid);
  ProcessFigures figures;
  std::vector<std::string> fields = StatFields(base + "/stat");
  // proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24; fields[0] is field 3.
  if (fields.size() > 21) {
    static const double kTicks = static_cast<double>(sysconf(_SC_CLK_TCK));
    static const double kPage = static_cast<double>(sysconf(_SC_PAGESIZE));
    static const double kBoot = BootTimeSeconds();
    figures.cpu_seconds = (std::stod(fields[11]) + std::stod(fields[12])) / kTicks;
    figures.start_time_seconds = kBoot + std::stod(fields[19]) / kTicks;
    figures.virtual_bytes = std::stod(fields[20]);
    figures.resident_bytes = std::stod(fields[21]) * kPage;
  }
  figures.open_fds = CountOpenFds(base + "/fd");
  if (pid == 0) {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) figures.max_fds = static_cast<double>(limit.rlim_cur);
  }
  return figures;
}

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

std::vector<prometheus::ClientMetric::Label> DeploymentLabels(const std::string& deployment) {
  return {{"application", deployment}, {"deployment", deployment}};
}

prometheus::ClientMetric Sample(std::vector<prometheus::ClientMetric::Label> labels, double value,
                                prometheus::MetricType type) {
  prometheus::ClientMetric sample;
  sample.label = std::move(labels);
  if (type == prometheus::MetricType::Counter) {
    sample.counter.value = value;
  } else {
    sample.gauge.value = value;
  }
  return sample;
}

namespace {

// The process_* figures Prometheus client libraries export, under their standard names.
std::vector<prometheus::MetricFamily> ProcessFamilies() {
  using prometheus::MetricType;
  ProcessFigures figures = ReadProcessFigures();
  std::vector<prometheus::MetricFamily> families;
  auto add = [&](const char* name, const char* help, MetricType type, double value) {
    auto family = Family(name, help, type);
    family.metric.push_back(Sample({}, value, type));
    families.push_back(std::move(family));
  };
  add("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
      MetricType::Counter, figures.cpu_seconds);
  add("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
      figures.resident_bytes);
  add("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
      figures.virtual_bytes);
  add("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
      figures.open_fds);
  add("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
      figures.max_fds);
  add("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
      MetricType::Gauge, figures.start_time_seconds);
  return families;
}

}  // namespace

Registry::Registry(std::string prefix)
    : prefix_(std::move(prefix)), registry_(std::make_shared<prometheus::Registry>()) {}

void Registry::AddCollector(std::function<std::vector<prometheus::MetricFamily>()> collect) {
  collectors_.push_back(std::move(collect));
}

std::string Registry::Render() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (const auto& collect : collectors_) {
    // Empty families too: their HELP and TYPE lines say what the service can report.
    for (auto& family : collect()) families.push_back(std::move(family));
  }
  for (auto& family : ProcessFamilies()) families.push_back(std::move(family));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

http::Response Registry::Response() const {
  http::Response response;
  response.headers.push_back({"Content-Type", "text/plain; version=0.0.4; charset=utf-8"});
  response.body = Render();
  return response;
}

Endpoint::Endpoint(uv_loop_t* loop, const Registry& registry, std::string service)
    : loop_(loop), registry_(registry), service_(std::move(service)) {}

void Endpoint::Listen(const std::string& host, int port, const std::string& port_flag) {
  http::ServerOptions options;
  options.host = host;
  options.port = port;
  server_ = std::make_unique<http::Server>(
      loop_, options, [this](http::Request&& request, http::Responder responder) {
        if (request.path == "/metrics" && (request.method == "GET" || request.method == "HEAD")) {
          responder.Send(registry_.Response());
          return;
        }
        http::Response response;
        response.status = 404;
        response.body = service_ + " serves GET /metrics only\n";
        responder.Send(std::move(response));
      });
  Status listening = server_->Listen();
  if (!listening.ok()) {
    spdlog::warn("no /metrics: {}; choose another {} (0: none)", listening.message(), port_flag);
    server_.reset();
    return;
  }
  spdlog::info("metrics at http://{}:{}/metrics", host, server_->port());
}

int Endpoint::port() const { return server_ != nullptr ? server_->port() : 0; }

// The server's handles finish closing on later loop turns, after it is gone.
void Endpoint::Close() { server_.reset(); }

}  // namespace serve::metrics
