#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "wire/serve_generated.h"

namespace serve::controller {

// Traffic figures for `serve status` and the dashboard, from the request counters node agents
// carry in their heartbeats for each replica (see NodeReplica in schemas/serve.fbs): requests
// per second, error rate and processing latency percentiles per deployment over a sliding
// window, and each replica's pid, requests in flight and queued, and when it was last reported.
//
// Counters are totals since a worker started, so a window's figure is the difference between
// its newest and oldest sample; a worker that restarted (a smaller total) starts over.
class TrafficStats {
 public:
  static constexpr double kWindowS = 10;

  // Records the replicas of `heartbeat` that `known` accepts (the controller's replicas of that
  // node: a hostile heartbeat cannot grow this table), at time `now` (seconds).
  void OnNodeHeartbeat(double now, const wire::NodeHeartbeatT& heartbeat,
                       const std::function<bool(const std::string& replica_id)>& known);
  // Fills the traffic fields of `reply`'s deployments and replicas.
  void Fill(double now, wire::StatusReplyT& reply) const;
  // Drops what is not reported any more (a sweep every kWindowS at most, however often called).
  void Forget(double now);

  // The latency below which `fraction` of the requests counted in `counts` (per bucket of
  // metrics::LatencyBucketsMs(), the last one above every bound) fell, interpolated within its
  // bucket as Prometheus' histogram_quantile does. 0 without requests.
  static double Percentile(const std::vector<uint64_t>& counts, double fraction);

 private:
  struct Sample {
    double at = 0;
    uint64_t requests = 0;
    uint64_t errors = 0;
    std::vector<uint64_t> latency_counts;
  };
  struct Replica {
    std::deque<Sample> samples;  // oldest first, within the window (and one before it)
    int pid = 0;
    int in_flight = 0;
    int queued = 0;
    double heard_at = 0;
  };
  std::map<std::string, Replica> replicas_;  // by replica id
  double last_sweep_ = 0;
};

}  // namespace serve::controller
