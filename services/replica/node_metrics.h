#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "metrics/metrics.h"
#include "wire/serve_generated.h"

namespace serve::replica {

// The figures a node agent serves at /metrics for its workers, under Ray Serve's names:
//   deployment_request_counter_total, deployment_error_counter_total,
//   deployment_processing_latency_ms (histogram), replica_processing_queries,
//   replica_queued_queries, deployment_replica_healthy, health_check_failures_total
// by {deployment, replica, application}; deployment_replica_starts_total by {deployment,
// application}; and each worker's CPU, memory and descriptors read from /proc
// (replica_cpu_seconds_total, replica_resident_memory_bytes, replica_open_fds).
//
// Workers report their counters (ReplicaMetrics) on the bus; a report is taken only from a
// worker this agent runs, and only when it is well formed.
class NodeMetrics {
 public:
  struct Worker {
    std::string replica_id;
    std::string deployment;
    int pid = 0;
    bool ready = false;
  };

  explicit NodeMetrics(const metrics::Registry& registry) : registry_(registry) {}

  // Takes a report from worker `worker` (the caller checked that it runs here).
  Status OnReport(const Worker& worker, const wire::ReplicaMetricsT& report);
  void OnStarted(const std::string& deployment) { ++starts_[deployment]; }
  void OnExited(const std::string& replica_id) { reports_.erase(replica_id); }
  // The last report of `replica_id`, or null.
  const wire::ReplicaMetricsT* Find(const std::string& replica_id) const {
    auto it = reports_.find(replica_id);
    return it == reports_.end() ? nullptr : &it->second;
  }

  // The families for the workers running now.
  std::vector<prometheus::MetricFamily> Collect(const std::vector<Worker>& workers) const;

 private:
  const metrics::Registry& registry_;
  std::map<std::string, wire::ReplicaMetricsT> reports_;  // by replica id
  std::map<std::string, uint64_t> starts_;                // by deployment
};

}  // namespace serve::replica
