#include "replica/node_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace serve::replica {
namespace {

using ::testing::HasSubstr;

wire::ReplicaMetricsT Report(const std::string& deployment, size_t buckets) {
  wire::ReplicaMetricsT report;
  report.replica_id = "r1";
  report.deployment = deployment;
  report.requests = 7;
  report.latency_counts.assign(buckets, 0);
  report.latency_counts[0] = 7;
  return report;
}

// Any bus client can publish on a node's metrics subject: a report that does not fit the worker
// it names is refused with the reason, and changes nothing.
TEST(NodeMetricsTest, ReportsThatDoNotFitTheirWorkerAreRefused) {
  metrics::Registry registry;
  NodeMetrics node(registry);
  NodeMetrics::Worker worker{"r1", "d", 0, true};
  const size_t buckets = metrics::LatencyBucketsMs().size() + 1;

  Status wrong_size = node.OnReport(worker, Report("d", 3));
  EXPECT_FALSE(wrong_size.ok());
  EXPECT_THAT(wrong_size.message(), HasSubstr("latency buckets"));
  Status wrong_deployment = node.OnReport(worker, Report("other", buckets));
  EXPECT_FALSE(wrong_deployment.ok());
  EXPECT_THAT(wrong_deployment.message(), HasSubstr("names deployment 'other'"));
  EXPECT_EQ(node.Find("r1"), nullptr);

  ASSERT_TRUE(node.OnReport(worker, Report("d", buckets)).ok());
  ASSERT_NE(node.Find("r1"), nullptr);
  EXPECT_EQ(node.Find("r1")->requests, 7u);
  node.OnExited("r1");
  EXPECT_EQ(node.Find("r1"), nullptr);
}

TEST(NodeMetricsTest, CollectsAHistogramWithCumulativeBuckets) {
  metrics::Registry registry;
  NodeMetrics node(registry);
  NodeMetrics::Worker worker{"r1", "d", 0, true};
  ASSERT_TRUE(node.OnReport(worker, Report("d", metrics::LatencyBucketsMs().size() + 1)).ok());
  node.OnStarted("d");
  auto families = node.Collect({worker});
  const prometheus::MetricFamily* latency = nullptr;
  for (const auto& family : families) {
    if (family.name == "serve_deployment_processing_latency_ms") latency = &family;
  }
  ASSERT_NE(latency, nullptr);
  ASSERT_EQ(latency->metric.size(), 1u);
  const auto& histogram = latency->metric[0].histogram;
  EXPECT_EQ(histogram.sample_count, 7u);
  EXPECT_EQ(histogram.bucket.back().cumulative_count, 7u);
  EXPECT_EQ(histogram.bucket.front().cumulative_count, 7u);
}

}  // namespace
}  // namespace serve::replica
