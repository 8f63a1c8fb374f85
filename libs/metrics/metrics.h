#pragma once

// Prometheus metrics for every Serve service, in the text exposition format, built on
// prometheus-cpp's core (its registry, metric types and text serializer). Each service serves
// the text over its own HTTP server (libs/http): prometheus-cpp's pull library would bring a
// second HTTP server into every process.
//
// Names follow Ray Serve's, without Ray's `ray_` prefix: `serve_num_http_requests_total`. A
// prefix given with --metrics-name-prefix replaces `serve_`, so `ray_serve_` gives Ray's exact
// names and Grafana boards made for Ray work unchanged.

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "http/server.h"

namespace serve::metrics {

inline constexpr std::string_view kDefaultPrefix = "serve_";

// Checks a --metrics-name-prefix: empty, or a Prometheus metric name start ([a-zA-Z_:]
// then [a-zA-Z0-9_:]), at most 64 characters.
Status ValidatePrefix(std::string_view prefix);

// Upper bounds, in milliseconds, of the latency histograms: Ray Serve's buckets
// (1 ms to 5 s) with finer ones below 1 ms, where most of Serve's requests fall, and longer ones
// up to a minute for model inference.
const std::vector<double>& LatencyBucketsMs();

// The figures of one process, read from /proc.
struct ProcessFigures {
  double cpu_seconds = 0;
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double open_fds = 0;
  double max_fds = 0;
  double start_time_seconds = 0;  // Unix time
};
ProcessFigures ReadProcessFigures(int pid = 0);  // 0: this process

// A metric family to fill by hand, for figures a service holds itself and reports at scrape
// time (the node agent's workers, the controller's deployments).
prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type);
// The labels Ray Serve puts on a deployment's figures: `application` and `deployment`, both the
// deployment's name (a Serve application is one deployment).
std::vector<prometheus::ClientMetric::Label> DeploymentLabels(const std::string& deployment);
prometheus::ClientMetric Sample(std::vector<prometheus::ClientMetric::Label> labels, double value,
                                prometheus::MetricType type);

// One service's metrics: a prometheus-cpp registry for the figures counted as they happen,
// collectors called at scrape time, and the standard process_* figures of this process.
class Registry {
 public:
  explicit Registry(std::string prefix = std::string(kDefaultPrefix));

  // `suffix` with the prefix in front: Name("num_http_requests_total").
  std::string Name(std::string_view suffix) const { return prefix_ + std::string(suffix); }
  prometheus::Registry& registry() { return *registry_; }

  // Called at every scrape, on the thread that renders.
  void AddCollector(std::function<std::vector<prometheus::MetricFamily>()> collect);

  // The text exposition of everything.
  std::string Render() const;
  // An HTTP answer carrying Render(), with the exposition format's content type.
  http::Response Response() const;

 private:
  std::string prefix_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<std::function<std::vector<prometheus::MetricFamily>()>> collectors_;
};

// GET (and HEAD) /metrics of a Registry on an HTTP server of its own, for the services that have
// no other (the node agent, the checkpointer). Anything else is a 404 naming the one path.
class Endpoint {
 public:
  // `service` names the process in the 404 ("the node agent").
  Endpoint(uv_loop_t* loop, const Registry& registry, std::string service);
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Listens on host:port. Without its metrics a service still does its work, so a port that
  // cannot be taken is logged as a warning naming `port_flag` (and is not an outage, nor a crash
  // loop under a supervisor).
  void Listen(const std::string& host, int port, const std::string& port_flag);
  // The bound port; 0 when not listening.
  int port() const;
  void Close();

 private:
  uv_loop_t* loop_;
  const Registry& registry_;
  std::string service_;
  std::unique_ptr<http::Server> server_;
};

}  // namespace serve::metrics
