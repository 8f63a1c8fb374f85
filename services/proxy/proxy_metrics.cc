#include "proxy/proxy_metrics.h"

namespace serve::proxy {

ProxyMetrics::ProxyMetrics(metrics::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name(registry.Name("num_http_requests_total"))
                    .Help("The number of HTTP requests processed.")
                    .Register(registry.registry())),
      errors_(prometheus::BuildCounter()
                  .Name(registry.Name("num_http_error_requests_total"))
                  .Help("The number of HTTP responses with a status of 400 or more.")
                  .Register(registry.registry())),
      deployment_errors_(prometheus::BuildCounter()
                             .Name(registry.Name("num_deployment_http_error_requests_total"))
                             .Help("The number of HTTP responses with a status of 400 or more, "
                                   "by deployment.")
                             .Register(registry.registry())),
      latency_(prometheus::BuildHistogram()
                   .Name(registry.Name("http_request_latency_ms"))
                   .Help("The end-to-end latency of HTTP requests in the proxy, in ms.")
                   .Register(registry.registry())),
      ongoing_(&prometheus::BuildGauge()
                    .Name(registry.Name("num_ongoing_http_requests"))
                    .Help("The number of HTTP requests the proxy is handling now.")
                    .Register(registry.registry())
                    .Add({})) {}

void ProxyMetrics::Finished(const std::string& route, const std::string& deployment,
                            std::string_view method, int status, double latency_ms) {
  ongoing_->Decrement();
  Series& series = Find(route, deployment, method, status);
  series.requests->Increment();
  if (series.errors != nullptr) series.errors->Increment();
  if (series.deployment_errors != nullptr) series.deployment_errors->Increment();
  series.latency->Observe(latency_ms);
}

ProxyMetrics::Series& ProxyMetrics::Find(const std::string& route, const std::string& deployment,
                                         std::string_view method, int status) {
  key_.assign(route).append(1, '\n').append(deployment);
  std::vector<Series>& list = series_[key_];
  for (Series& series : list) {
    if (series.status == status && series.method == method) return series;
  }
  Series series;
  series.method = std::string(method);
  series.status = status;
  std::string code = std::to_string(status);
  series.requests = &requests_.Add({{"route", route},
                                    {"method", series.method},
                                    {"application", deployment},
                                    {"status_code", code}});
  series.latency = &latency_.Add({{"route", route},
                                  {"method", series.method},
                                  {"application", deployment},
                                  {"status_code", code}},
                                 metrics::LatencyBucketsMs());
  if (status >= 400) {
    series.errors =
        &errors_.Add({{"route", route}, {"error_code", code}, {"method", series.method}});
    if (!deployment.empty()) {
      series.deployment_errors = &deployment_errors_.Add({{"deployment", deployment},
                                                          {"error_code", code},
                                                          {"method", series.method},
                                                          {"route", route},
                                                          {"application", deployment}});
    }
  }
  list.push_back(std::move(series));
  return list.back();
}

}  // namespace serve::proxy
