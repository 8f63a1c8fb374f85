#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "metrics/metrics.h"

namespace serve::proxy {

// The proxy's request figures, under Ray Serve's names and labels:
//   num_http_requests_total{route,method,application,status_code}
//   num_http_error_requests_total{route,error_code,method}           (status >= 400)
//   num_deployment_http_error_requests_total{deployment,error_code,method,route,application}
//   http_request_latency_ms{route,method,application,status_code}    (histogram)
//   num_ongoing_http_requests
// `application` is the deployment's name (a Serve application is one deployment). `route` is
// the route prefix a request matched, empty for none, so no client can grow the label sets:
// methods are those llhttp knows, status codes three digits, routes those deployed.
//
// Counted on the loop thread. A request costs a lookup in a small table per route and a few
// atomic additions in prometheus-cpp; the labels' strings are built once per combination.
class ProxyMetrics {
 public:
  explicit ProxyMetrics(metrics::Registry& registry);

  void Started() { ongoing_->Increment(); }
  void Finished(const std::string& route, const std::string& deployment, std::string_view method,
                int status, double latency_ms);

 private:
  struct Series {
    std::string method;
    int status = 0;
    prometheus::Counter* requests = nullptr;
    prometheus::Counter* errors = nullptr;             // null below 400
    prometheus::Counter* deployment_errors = nullptr;  // null below 400 or without a deployment
    prometheus::Histogram* latency = nullptr;
  };
  Series& Find(const std::string& route, const std::string& deployment, std::string_view method,
               int status);

  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& errors_;
  prometheus::Family<prometheus::Counter>& deployment_errors_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Gauge* ongoing_;
  // By route prefix + '\n' + deployment; a handful of (method, status) series each.
  std::unordered_map<std::string, std::vector<Series>> series_;
  std::string key_;  // reused, so a lookup allocates nothing once warm
};

}  // namespace serve::proxy
