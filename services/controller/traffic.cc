#include "controller/traffic.h"

#include <algorithm>

#include "metrics/metrics.h"

namespace serve::controller {

void TrafficStats::OnNodeHeartbeat(double now, const wire::NodeHeartbeatT& heartbeat,
                                   const std::function<bool(const std::string&)>& known) {
  const size_t buckets = metrics::LatencyBucketsMs().size() + 1;
  for (const auto& r : heartbeat.replicas) {
    if (r == nullptr || !known(r->id)) continue;
    Replica& replica = replicas_[r->id];
    replica.pid = r->pid;
    replica.in_flight = r->in_flight;
    replica.queued = r->queued;
    replica.heard_at = now;
    Sample sample;
    sample.at = now;
    sample.requests = r->requests;
    sample.errors = std::min(r->errors, r->requests);
    if (r->latency_counts.size() == buckets) sample.latency_counts = r->latency_counts;
    if (!replica.samples.empty() && sample.requests < replica.samples.back().requests) {
      replica.samples.clear();  // the worker started over
    }
    replica.samples.push_back(std::move(sample));
    // Keep one sample at or before the window's start, so the window is covered whole.
    while (replica.samples.size() > 2 && replica.samples[1].at <= now - kWindowS) {
      replica.samples.pop_front();
    }
    while (replica.samples.size() > 64) replica.samples.pop_front();
  }
}

void TrafficStats::Forget(double now) {
  if (now - last_sweep_ < kWindowS) return;
  last_sweep_ = now;
  std::erase_if(replicas_, [&](const auto& entry) {
    return entry.second.heard_at < now - 6 * kWindowS;
  });
}

double TrafficStats::Percentile(const std::vector<uint64_t>& counts, double fraction) {
  const auto& bounds = metrics::LatencyBucketsMs();
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0 || counts.size() != bounds.size() + 1) return 0;
  double rank = fraction * static_cast<double>(total);
  uint64_t below = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (static_cast<double>(below + counts[i]) >= rank && counts[i] > 0) {
      if (i == bounds.size()) return bounds.back();  // above every bound: the last one
      double lower = i == 0 ? 0 : bounds[i - 1];
      double within = (rank - static_cast<double>(below)) / static_cast<double>(counts[i]);
      return lower + (bounds[i] - lower) * within;
    }
    below += counts[i];
  }
  return bounds.back();
}

void TrafficStats::Fill(double now, wire::StatusReplyT& reply) const {
  const size_t buckets = metrics::LatencyBucketsMs().size() + 1;
  for (auto& d : reply.deployments) {
    double rate = 0;
    uint64_t requests = 0, errors = 0;
    std::vector<uint64_t> latency(buckets, 0);
    for (auto& r : d->replicas) {
      auto it = replicas_.find(r->id);
      if (it == replicas_.end()) continue;
      const Replica& replica = it->second;
      r->pid = replica.pid;
      r->in_flight = replica.in_flight;
      r->queued = replica.queued;
      r->heard_s = now - replica.heard_at;
      if (replica.samples.size() < 2 || replica.heard_at < now - kWindowS) continue;
      const Sample& first = replica.samples.front();
      const Sample& last = replica.samples.back();
      double span = last.at - first.at;
      if (span <= 0) continue;
      uint64_t answered = last.requests - first.requests;
      rate += static_cast<double>(answered) / span;
      requests += answered;
      errors += last.errors >= first.errors ? last.errors - first.errors : 0;
      if (last.latency_counts.size() == buckets) {
        for (size_t i = 0; i < buckets; ++i) {
          uint64_t before = first.latency_counts.size() == buckets ? first.latency_counts[i] : 0;
          latency[i] += last.latency_counts[i] >= before ? last.latency_counts[i] - before : 0;
        }
      }
    }
    d->requests_per_s = rate;
    d->error_rate = requests > 0 ? static_cast<double>(errors) / static_cast<double>(requests) : 0;
    d->p50_ms = Percentile(latency, 0.5);
    d->p99_ms = Percentile(latency, 0.99);
  }
}

}  // namespace serve::controller
