#include "controller/traffic.h"

#include <gtest/gtest.h>

#include "metrics/metrics.h"

namespace serve::controller {
namespace {

const size_t kBuckets = metrics::LatencyBucketsMs().size() + 1;

wire::NodeHeartbeatT Heartbeat(const std::string& id, uint64_t requests, uint64_t errors,
                               std::vector<uint64_t> counts) {
  wire::NodeHeartbeatT heartbeat;
  heartbeat.node_id = std::string(1, 'n');
  auto replica = std::make_unique<wire::NodeReplicaT>();
  replica->id = id;
  replica->pid = 42;
  replica->requests = requests;
  replica->errors = errors;
  replica->latency_counts = std::move(counts);
  replica->in_flight = 3;
  heartbeat.replicas.push_back(std::move(replica));
  return heartbeat;
}

wire::StatusReplyT Report(const std::string& id) {
  wire::StatusReplyT reply;
  auto d = std::make_unique<wire::DeploymentStatusT>();
  d->name = std::string(1, 'd');
  auto r = std::make_unique<wire::ReplicaStatusT>();
  r->id = id;
  d->replicas.push_back(std::move(r));
  reply.deployments.push_back(std::move(d));
  return reply;
}

auto AnyReplica = [](const std::string&) { return true; };

TEST(TrafficStatsTest, RatesAndPercentilesOverTheWindow) {
  TrafficStats stats;
  std::vector<uint64_t> zero(kBuckets, 0);
  std::vector<uint64_t> later(kBuckets, 0);
  later[3] = 90;  // (0.5, 1] ms
  later[6] = 10;  // (5, 10] ms
  stats.OnNodeHeartbeat(100, Heartbeat("r", 0, 0, zero), AnyReplica);
  stats.OnNodeHeartbeat(105, Heartbeat("r", 100, 5, later), AnyReplica);
  wire::StatusReplyT reply = Report("r");
  stats.Fill(105.5, reply);
  const auto& d = *reply.deployments[0];
  EXPECT_DOUBLE_EQ(d.requests_per_s, 20);
  EXPECT_DOUBLE_EQ(d.error_rate, 0.05);
  EXPECT_GT(d.p50_ms, 0.5);
  EXPECT_LE(d.p50_ms, 1);
  EXPECT_GT(d.p99_ms, 5);
  EXPECT_LE(d.p99_ms, 10);
  EXPECT_EQ(d.replicas[0]->pid, 42);
  EXPECT_EQ(d.replicas[0]->in_flight, 3);
  EXPECT_DOUBLE_EQ(d.replicas[0]->heard_s, 0.5);
}

TEST(TrafficStatsTest, UnknownReplicasAndBadFiguresAreNotTaken) {
  TrafficStats stats;
  stats.OnNodeHeartbeat(100, Heartbeat("fake", 0, 0, {}),
                        [](const std::string&) { return false; });
  // Errors beyond the requests, and a histogram of the wrong size: neither is believed.
  stats.OnNodeHeartbeat(100, Heartbeat("r", 0, 0, {}), AnyReplica);
  stats.OnNodeHeartbeat(102, Heartbeat("r", 10, 1000, {1, 2, 3}), AnyReplica);
  wire::StatusReplyT reply = Report("fake");
  stats.Fill(102, reply);
  EXPECT_EQ(reply.deployments[0]->replicas[0]->heard_s, -1);
  reply = Report("r");
  stats.Fill(102, reply);
  EXPECT_DOUBLE_EQ(reply.deployments[0]->error_rate, 1);
  EXPECT_EQ(reply.deployments[0]->p99_ms, 0);
}

TEST(TrafficStatsTest, AWorkerThatStartedOverStartsOver) {
  TrafficStats stats;
  stats.OnNodeHeartbeat(100, Heartbeat("r", 500, 0, {}), AnyReplica);
  stats.OnNodeHeartbeat(101, Heartbeat("r", 3, 0, {}), AnyReplica);
  stats.OnNodeHeartbeat(102, Heartbeat("r", 13, 0, {}), AnyReplica);
  wire::StatusReplyT reply = Report("r");
  stats.Fill(102, reply);
  EXPECT_DOUBLE_EQ(reply.deployments[0]->requests_per_s, 10);
}

TEST(TrafficStatsTest, PercentileOfNothingIsZero) {
  EXPECT_EQ(TrafficStats::Percentile(std::vector<uint64_t>(kBuckets, 0), 0.99), 0);
  EXPECT_EQ(TrafficStats::Percentile({}, 0.5), 0);
}

}  // namespace
}  // namespace serve::controller
