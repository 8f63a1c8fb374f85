// The proxy while NATS is away: clients get a quick 503 that says why, and the same replica
// serves again once NATS is back. services/proxy/proxy_test.cc covers the details.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "integration/cluster.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;

std::string OnlyReplica(Cluster& cluster) {
  auto hello = cluster.Deployment("hello");
  if (!hello.is_object() || hello["replicas"].size() != 1) return "<not one replica>";
  return hello["replicas"][0]["id"].get<std::string>() + " " +
         hello["replicas"][0]["state"].get<std::string>();
}

TEST(ProxyBus, WithoutNatsRequestsGet503WithRetryAfterAndTheSameReplicaServesWhenItReturns) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  ASSERT_EQ(cluster.Get("/hello").body, "hello world");
  std::string replica = OnlyReplica(cluster);

  cluster.nats().Stop();
  ASSERT_TRUE(WaitUntil([&] {
    return cluster.Get("/-/healthz").body.find("no connection to NATS") != std::string::npos;
  })) << cluster.Log("proxy");
  // Answered after the proxy's short wait for the bus (--bus-wait-s, 0.5 s), well within the
  // client's 10 s.
  auto answer = cluster.Get("/hello");
  EXPECT_EQ(answer.status, 503) << answer.body << answer.error;
  EXPECT_EQ(answer.headers["retry-after"], "1");
  EXPECT_THAT(answer.body, HasSubstr("the bus is unavailable"));
  EXPECT_THAT(answer.body, HasSubstr(cluster.nats_url()));
  EXPECT_EQ(cluster.Get("/-/healthz").status, 200);

  cluster.nats().Start();
  EXPECT_TRUE(WaitUntil([&] { return cluster.Get("/hello").body == "hello world"; },
                        std::chrono::seconds(30)))
      << cluster.Log("proxy");
  EXPECT_EQ(OnlyReplica(cluster), replica);
}

TEST(ProxyBus, BusWaitOutOfRangeIsRefusedWithTheRange) {
  auto result = RunCommand({BinDir() + "/serve-proxy", "--bus-wait-s", "120"});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr("--bus-wait-s"));
  EXPECT_THAT(result.output, HasSubstr("from 0 to 60"));
}

}  // namespace
}  // namespace serve::testing
