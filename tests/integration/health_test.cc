// Health checks and restarts (issue 5) with real processes and short periods: each test breaks
// a replica, a node or a proxy the way production breaks them, and measures the time from the
// failure to a replacement serving. The deadlines asserted are generous liveness bounds; the
// measured times are printed and recorded in the test's XML output.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <future>
#include <iostream>
#include <set>

#include "integration/cluster.h"
#include "support/load.h"

namespace serve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// A deployment of the test handlers with health options short enough for a test.
std::string Handlers(int replicas, int max_concurrent_queries = 4) {
  return "deployments:\n"
         "  - name: h\n"
         "    runtime: native\n"
         "    artifact: " + TestLibrary("test_handlers") + "\n"
         "    num_replicas: " + std::to_string(replicas) + "\n"
         "    max_concurrent_queries: " + std::to_string(max_concurrent_queries) + "\n"
         "    health_check_period_s: 0.2\n"
         "    health_check_timeout_s: 1.5\n"
         "    graceful_shutdown_timeout_s: 1\n";
}

// Replica id -> (state, node) of deployment `name`.
std::map<std::string, std::pair<std::string, std::string>> Replicas(Cluster& cluster,
                                                                   const std::string& name) {
  std::map<std::string, std::pair<std::string, std::string>> out;
  nlohmann::json deployment = cluster.Deployment(name);
  if (!deployment.is_object()) return out;
  for (const auto& r : deployment["replicas"]) {
    out[r["id"].get<std::string>()] = {r["state"].get<std::string>(),
                                       r["node"].get<std::string>()};
  }
  return out;
}

std::set<std::string> Running(Cluster& cluster, const std::string& name) {
  std::set<std::string> ids;
  for (const auto& [id, state] : Replicas(cluster, name)) {
    if (state.first == "RUNNING") ids.insert(id);
  }
  return ids;
}

// Waits until `count` replicas run and none of them is in `gone`; returns the seconds it took
// from `since`, or a negative number when the deadline passed.
double WaitForReplacement(Cluster& cluster, size_t count, const std::set<std::string>& gone,
                          Clock::time_point since) {
  bool replaced = WaitUntil(
      [&] {
        auto ids = Running(cluster, "h");
        if (ids.size() != count) return false;
        for (const auto& id : ids) {
          if (gone.count(id) > 0) return false;
        }
        return true;
      },
      std::chrono::seconds(30), std::chrono::milliseconds(20));
  if (!replaced) return -1;
  return std::chrono::duration<double>(Clock::now() - since).count();
}

void Report(const std::string& what, double seconds) {
  std::cout << "measured: " << what << ": " << seconds << " s" << std::endl;
  ::testing::Test::RecordProperty(what, std::to_string(seconds));
}

// (a) check_health starts failing: replaced after 3 failed checks, by a new replica id.
TEST(HealthTest, FailingHealthCheckIsReplaced) {
  Cluster cluster;
  cluster.Deploy(Handlers(1));
  auto before = Running(cluster, "h");
  ASSERT_EQ(before.size(), 1u);
  auto start = Clock::now();
  ASSERT_EQ(cluster.Get("/h/health/fail").status, 200);
  double took = WaitForReplacement(cluster, 1, before, start);
  ASSERT_GT(took, 0) << cluster.Status().dump(2);
  Report("failing check_health -> replacement RUNNING", took);
  EXPECT_THAT(cluster.Log("controller"), HasSubstr("told to fail"));
  EXPECT_EQ(cluster.Get("/h/ok").status, 200);
}

// (b) kill -9 of a worker under load: a replacement runs soon, and only requests that were
// running on the killed worker fail (502, saying so).
TEST(HealthTest, KilledWorkerUnderLoadIsReplacedAndOnlyItsRequestsFail) {
  Cluster cluster;
  cluster.Deploy(Handlers(2));
  auto before = Running(cluster, "h");
  ASSERT_EQ(before.size(), 2u);
  std::string victim = *before.begin();
  pid_t pid = Cluster::WorkerPid(victim);
  ASSERT_GT(pid, 0);

  LoadGenerator::Options options;
  options.port = cluster.http_port();
  options.clients = 8;
  options.target = "/h/ok";
  options.duration = std::chrono::seconds(60);
  LoadGenerator load(options);
  ASSERT_TRUE(load.WaitForRequests(500)) << load.Snapshot().Summary();
  auto start = Clock::now();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  double took = WaitForReplacement(cluster, 2, {victim}, start);
  ASSERT_GT(took, 0) << cluster.Status().dump(2);
  Report("kill -9 worker -> replacement RUNNING", took);
  ASSERT_TRUE(load.WaitForMoreRequests(500)) << load.Snapshot().Summary();
  auto report = load.Stop();
  std::cout << report.Summary() << std::flush;
  ::testing::Test::RecordProperty("failed_requests", std::to_string(report.failed));
  // At most one request per client can have been running on the killed worker.
  EXPECT_LE(report.failed, static_cast<uint64_t>(options.clients));
  for (const auto& failure : report.failures) {
    EXPECT_EQ(failure.status, 502) << failure.body << failure.error;
    EXPECT_THAT(failure.body, HasSubstr("ended while it ran this request"));
  }
}

// (c) kill -STOP: the worker sends no more heartbeats and is replaced after the timeout.
TEST(HealthTest, FrozenWorkerIsReplacedAfterTheHeartbeatTimeout) {
  Cluster cluster;
  cluster.Deploy(Handlers(1));
  auto before = Running(cluster, "h");
  ASSERT_EQ(before.size(), 1u);
  pid_t pid = Cluster::WorkerPid(*before.begin());
  ASSERT_GT(pid, 0);
  auto start = Clock::now();
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  double took = WaitForReplacement(cluster, 1, before, start);
  kill(pid, SIGKILL);  // whatever the outcome, leave nothing frozen behind
  ASSERT_GT(took, 0) << cluster.Status().dump(2);
  Report("kill -STOP worker -> replacement RUNNING (health_check_timeout_s 1.5)", took);
  EXPECT_THAT(cluster.Log("controller"), HasSubstr("no heartbeat"));
  // The proxy hears of the replacement in the next route table, a moment after the controller
  // lists it RUNNING.
  EXPECT_TRUE(cluster.WaitForStatus("/h/ok", 200)) << cluster.Log("proxy");
}

// (d) A handler that never returns while check_health passes: the replica completes nothing
// with a request in flight, is found stalled and replaced; the stuck request gets a 502.
TEST(HealthTest, StalledReplicaIsReplacedAndItsStuckRequestAnswered) {
  Cluster cluster;
  cluster.Deploy(Handlers(1, /*max_concurrent_queries=*/1));
  auto before = Running(cluster, "h");
  ASSERT_EQ(before.size(), 1u);
  auto start = Clock::now();
  auto stuck = std::async(std::launch::async, [&] {
    return HttpRequest(cluster.http_port(), "GET", "/h/sleep?ms=600000", "",
                       std::chrono::seconds(60));
  });
  double took = WaitForReplacement(cluster, 1, before, start);
  ASSERT_GT(took, 0) << cluster.Status().dump(2);
  Report("stalled handler -> replacement RUNNING (health_check_timeout_s 1.5)", took);
  EXPECT_THAT(cluster.Log("controller"), HasSubstr("stalled"));
  auto answer = stuck.get();
  EXPECT_EQ(answer.status, 502) << answer.body << answer.error;
  EXPECT_EQ(cluster.Get("/h/ok").status, 200);
}

// (e) kill -9 of a node agent with two nodes: its replicas come up on the other node.
TEST(HealthTest, LostNodesReplicasMoveToTheOtherNode) {
  Cluster::Options options;
  options.nodes = 2;
  Cluster cluster(options);
  cluster.Deploy(Handlers(2));
  auto replicas = Replicas(cluster, "h");
  std::set<std::string> on_node_1;
  for (const auto& [id, state] : replicas) {
    if (state.second == "node-1") on_node_1.insert(id);
  }
  ASSERT_FALSE(on_node_1.empty()) << "replicas are spread over both nodes: "
                                  << cluster.Status().dump(2);
  auto start = Clock::now();
  cluster.node(0).Kill();
  bool moved = WaitUntil(
      [&] {
        auto now = Replicas(cluster, "h");
        int running_on_2 = 0;
        for (const auto& [id, state] : now) {
          running_on_2 += state.first == "RUNNING" && state.second == "node-2";
        }
        return running_on_2 == 2;
      },
      std::chrono::seconds(30), std::chrono::milliseconds(20));
  ASSERT_TRUE(moved) << cluster.Status().dump(2);
  Report("kill -9 node agent -> its replicas RUNNING on the other node",
         std::chrono::duration<double>(Clock::now() - start).count());
  nlohmann::json status = cluster.Status();
  std::string node_1_state;
  for (const auto& node : status["nodes"]) {
    if (node["id"] == "node-1") node_1_state = node["state"].get<std::string>();
  }
  EXPECT_EQ(node_1_state, "UNHEALTHY") << status.dump(2);
  EXPECT_EQ(cluster.Get("/h/ok").status, 200);
}

// (g) kill -9 of one of two proxies: the other keeps serving, and status shows the dead one
// UNHEALTHY with the age of its last heartbeat.
TEST(HealthTest, DeadProxyIsShownUnhealthyWhileTheOtherServes) {
  Cluster cluster;
  int second_port = FreePort();
  cluster.StartProxy("proxy-2", second_port);
  ASSERT_TRUE(WaitUntil([&] { return cluster.Status()["proxies"].size() == 2; }));
  cluster.Deploy(Handlers(1));
  ASSERT_TRUE(WaitUntil([&] { return HttpGet(second_port, "/h/ok").status == 200; }));
  std::string dead_address = "127.0.0.1:" + std::to_string(cluster.http_port());
  cluster.proxy().Kill();
  bool shown = WaitUntil(
      [&] {
        nlohmann::json status = cluster.Status();  // kept: the loop reads into it
        for (const auto& proxy : status["proxies"]) {
          if (proxy["address"] == dead_address && proxy["state"] == "UNHEALTHY") return true;
        }
        return false;
      },
      std::chrono::seconds(30));
  EXPECT_TRUE(shown) << cluster.Status().dump(2);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(HttpGet(second_port, "/h/ok").status, 200);
  auto table = cluster.Serve({"status"});
  EXPECT_THAT(table.output, HasSubstr("UNHEALTHY"));
}

}  // namespace
}  // namespace serve::testing
