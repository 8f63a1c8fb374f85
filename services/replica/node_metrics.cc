#include "replica/node_metrics.h"

#include <algorithm>
#include <limits>

namespace serve::replica {

using prometheus::MetricType;

Status NodeMetrics::OnReport(const Worker& worker, const wire::ReplicaMetricsT& report) {
  size_t buckets = metrics::LatencyBucketsMs().size() + 1;
  if (report.latency_counts.size() != buckets) {
    return Status::Error("a figures report of replica " + worker.replica_id + " has " +
                         std::to_string(report.latency_counts.size()) +
                         " latency buckets, not " + std::to_string(buckets) +
                         " (a worker of another Serve version?)");
  }
  if (report.deployment != worker.deployment) {
    return Status::Error("a figures report of replica " + worker.replica_id + " names deployment '" +
                         report.deployment + "', not '" + worker.deployment + "'");
  }
  reports_[worker.replica_id] = report;
  return Status::Ok();
}

std::vector<prometheus::MetricFamily> NodeMetrics::Collect(
    const std::vector<Worker>& workers) const {
  auto family = [&](const char* suffix, const char* help, MetricType type) {
    return metrics::Family(registry_.Name(suffix), help, type);
  };
  auto requests = family("deployment_request_counter_total",
                         "The number of requests this replica has answered.", MetricType::Counter);
  auto errors = family("deployment_error_counter_total",
                       "The number of requests this replica answered with a status of 500 or "
                       "more (failures of user code included).",
                       MetricType::Counter);
  auto latency = family("deployment_processing_latency_ms",
                        "The time this replica took to process requests, in ms.",
                        MetricType::Histogram);
  auto processing = family("replica_processing_queries",
                           "The number of requests this replica is processing now.",
                           MetricType::Gauge);
  auto queued = family("replica_queued_queries",
                       "The number of requests this replica accepted that wait for a handler "
                       "thread.",
                       MetricType::Gauge);
  auto healthy = family("deployment_replica_healthy",
                        "1 while this replica is ready and its health check passes, else 0.",
                        MetricType::Gauge);
  auto failures = family("health_check_failures_total",
                         "The number of failed health checks of this replica.",
                         MetricType::Counter);
  auto cpu = family("replica_cpu_seconds_total",
                    "CPU time the replica's worker process has used, in seconds.",
                    MetricType::Counter);
  auto memory = family("replica_resident_memory_bytes",
                       "Resident memory of the replica's worker process, in bytes.",
                       MetricType::Gauge);
  auto fds = family("replica_open_fds",
                    "Open file descriptors of the replica's worker process.", MetricType::Gauge);
  auto starts = family("deployment_replica_starts_total",
                       "The number of replicas of this deployment this node has started.",
                       MetricType::Counter);

  for (const Worker& worker : workers) {
    auto labels = metrics::DeploymentLabels(worker.deployment);
    labels.push_back({"replica", worker.replica_id});
    auto found = reports_.find(worker.replica_id);
    const wire::ReplicaMetricsT* report = found == reports_.end() ? nullptr : &found->second;
    healthy.metric.push_back(metrics::Sample(
        labels, worker.ready && (report == nullptr || report->healthy) ? 1 : 0, MetricType::Gauge));
    if (worker.pid > 0) {
      metrics::ProcessFigures figures = metrics::ReadProcessFigures(worker.pid);
      cpu.metric.push_back(metrics::Sample(labels, figures.cpu_seconds, MetricType::Counter));
      memory.metric.push_back(metrics::Sample(labels, figures.resident_bytes, MetricType::Gauge));
      fds.metric.push_back(metrics::Sample(labels, figures.open_fds, MetricType::Gauge));
    }
    if (report == nullptr) continue;
    requests.metric.push_back(
        metrics::Sample(labels, static_cast<double>(report->requests), MetricType::Counter));
    errors.metric.push_back(
        metrics::Sample(labels, static_cast<double>(report->errors), MetricType::Counter));
    failures.metric.push_back(metrics::Sample(
        labels, static_cast<double>(report->health_check_failures), MetricType::Counter));
    int running = std::max(0, report->in_flight - report->queued);
    processing.metric.push_back(metrics::Sample(labels, running, MetricType::Gauge));
    queued.metric.push_back(metrics::Sample(labels, report->queued, MetricType::Gauge));
    prometheus::ClientMetric histogram;
    histogram.label = labels;
    const auto& bounds = metrics::LatencyBucketsMs();
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
      cumulative += report->latency_counts[i];
      histogram.histogram.bucket.push_back({cumulative, bounds[i]});
    }
    cumulative += report->latency_counts.back();
    histogram.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    histogram.histogram.sample_count = cumulative;
    histogram.histogram.sample_sum = report->latency_sum_ms;
    latency.metric.push_back(std::move(histogram));
  }
  for (const auto& [deployment, count] : starts_) {
    starts.metric.push_back(metrics::Sample(metrics::DeploymentLabels(deployment),
                                            static_cast<double>(count), MetricType::Counter));
  }
  std::vector<prometheus::MetricFamily> families;
  for (auto* f : {&requests, &errors, &latency, &processing, &queued, &healthy, &failures, &cpu,
                  &memory, &fds, &starts}) {
    families.push_back(std::move(*f));
  }
  return families;
}

}  // namespace serve::replica
