#include "metrics/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace serve::metrics {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersCountersWithThePrefixAndTheProcessFigures) {
  Registry registry("ray_serve_");
  auto& family = prometheus::BuildCounter()
                     .Name(registry.Name("num_http_requests_total"))
                     .Help("The number of HTTP requests processed.")
                     .Register(registry.registry());
  family.Add({{"route", "/hello"}, {"method", "GET"}, {"status_code", "200"}}).Increment(3);
  std::string text = registry.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE ray_serve_num_http_requests_total counter"));
  EXPECT_THAT(text, HasSubstr(
                        "ray_serve_num_http_requests_total{method=\"GET\",route=\"/hello\","
                        "status_code=\"200\"} 3"));
  EXPECT_THAT(text, HasSubstr("process_resident_memory_bytes "));
  EXPECT_THAT(text, HasSubstr("process_open_fds "));
  EXPECT_EQ(registry.Response().headers.at(0).value,
            "text/plain; version=0.0.4; charset=utf-8");
}

TEST(MetricsTest, CollectorsAddFamiliesAtScrapeTime) {
  Registry registry;
  int scrapes = 0;
  registry.AddCollector([&] {
    ++scrapes;
    auto family = Family(registry.Name("deployment_replica_healthy"), "1 if healthy.",
                         prometheus::MetricType::Gauge);
    family.metric.push_back(Sample({{"deployment", "a\"b"}}, 1, prometheus::MetricType::Gauge));
    return std::vector<prometheus::MetricFamily>{std::move(family)};
  });
  std::string text = registry.Render();
  EXPECT_EQ(scrapes, 1);
  // Label values are escaped: a deployment name cannot break the format.
  EXPECT_THAT(text, HasSubstr("serve_deployment_replica_healthy{deployment=\"a\\\"b\"} 1"));
}

TEST(MetricsTest, ProcessFiguresAreRead) {
  ProcessFigures figures = ReadProcessFigures();
  EXPECT_GT(figures.resident_bytes, 0);
  EXPECT_GT(figures.open_fds, 2);
  EXPECT_GT(figures.start_time_seconds, 1.5e9);
}

TEST(MetricsTest, PrefixesAreChecked) {
  EXPECT_TRUE(ValidatePrefix("ray_serve_").ok());
  EXPECT_TRUE(ValidatePrefix("").ok());
  EXPECT_FALSE(ValidatePrefix("1serve").ok());
  EXPECT_FALSE(ValidatePrefix("serve-").ok());
  EXPECT_FALSE(ValidatePrefix("a b").ok());
  EXPECT_FALSE(ValidatePrefix(std::string(65, 'a')).ok());
}

}  // namespace
}  // namespace serve::metrics
