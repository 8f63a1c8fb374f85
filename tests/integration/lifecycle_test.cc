// The deployment lifecycle under traffic (issue 3): rolling updates, scaling, in-place
// reconfigure, placement that cannot succeed, deletes next to live traffic, scale to zero and
// refused input. Each test runs a whole instance of real processes and a bounded load of
// concurrent keep-alive clients through the proxy while the change happens, and counts every
// request that did not get the answer it should.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <set>

#include "integration/cluster.h"
#include "support/load.h"

namespace serve::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Clock = LoadGenerator::Clock;

constexpr int kClients = 8;
// How long the load runs at least before a change and after it: the change itself often takes
// only a few hundred milliseconds.
constexpr std::chrono::milliseconds kBefore(500);
constexpr std::chrono::milliseconds kAfter(1000);

// Lets the load run for `requests` more requests and at least `at_least`.
void KeepLoading(const LoadGenerator& load, uint64_t requests, std::chrono::milliseconds at_least) {
  auto until = Clock::now() + at_least;
  EXPECT_TRUE(load.WaitForMoreRequests(requests)) << load.Snapshot().Summary();
  WaitUntil([&] { return load.Done() || Clock::now() >= until; }, at_least + at_least);
  EXPECT_FALSE(load.Done()) << "the load ended before the test did: " << load.Snapshot().Summary();
}

// The last `count` lines of `text`.
std::string Tail(const std::string& text, size_t count) {
  size_t pos = text.size();
  for (size_t i = 0; i <= count && pos != std::string::npos && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
  }
  return pos == std::string::npos ? text : text.substr(pos + 1);
}

std::string Logs(const Cluster& cluster) {
  return "\n--- proxy log (tail) ---\n" + Tail(cluster.Log("proxy"), 40) +
         "\n--- controller log (tail) ---\n" + Tail(cluster.Log("controller"), 60) +
         "\n--- node-1 log (tail) ---\n" + Tail(cluster.Log("node-1"), 40);
}

// Prints the load's outcome and records it in the test's XML output.
void Publish(const LoadGenerator::Report& report) {
  std::cout << report.Summary() << std::flush;
  ::testing::Test::RecordProperty("failed_requests", std::to_string(report.failed));
  ::testing::Test::RecordProperty("requests", std::to_string(report.requests));
}

LoadGenerator::Options LoadOn(const Cluster& cluster, const std::string& target,
                              std::function<std::string(const LoadGenerator::Response&)> key) {
  LoadGenerator::Options options;
  options.port = cluster.http_port();
  options.clients = kClients;
  options.target = target;
  options.key = std::move(key);
  options.duration = std::chrono::seconds(50);  // the tests stop it long before
  options.request_timeout = std::chrono::seconds(10);
  return options;
}

// Writes `yaml` to a new file of the instance's directory and runs `serve deploy` on it.
CommandResult DeployYaml(Cluster& cluster, const std::string& yaml,
                         std::vector<std::string> extra_args = {}) {
  static int files = 0;
  std::string path = cluster.dir() + "/lifecycle-" + std::to_string(++files) + ".yaml";
  WriteFile(path, yaml);
  std::vector<std::string> args = {"deploy", path};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  return cluster.Serve(args);
}

// Ids of the deployment's replicas in `state`.
std::set<std::string> ReplicaIds(Cluster& cluster, const std::string& deployment,
                                 const std::string& state = "RUNNING") {
  std::set<std::string> ids;
  auto d = cluster.Deployment(deployment);
  if (!d.is_object()) return ids;
  for (const auto& r : d["replicas"]) {
    if (r["state"] == state) ids.insert(r["id"].get<std::string>());
  }
  return ids;
}

size_t ReplicaCount(Cluster& cluster, const std::string& deployment) {
  auto d = cluster.Deployment(deployment);
  return d.is_object() ? d["replicas"].size() : 0;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

void ExpectOnly2xx(const LoadGenerator::Report& report) {
  for (const auto& [status, count] : report.statuses) {
    EXPECT_TRUE(status >= 200 && status < 300) << count << " answers had status " << status;
  }
}

std::string EchoYaml(const std::string& version, int replicas) {
  std::string yaml = "deployments:\n  - name: echo\n    runtime: builtin:echo\n";
  yaml += "    version: " + version + "\n";
  yaml += "    num_replicas: " + std::to_string(replicas) + "\n";
  return yaml;
}

// Deploys echo v1 with `replicas` replicas, then v2 under load, and checks that no request
// failed and the version seen switched from v1 to v2.
void RollingUpdateUnderLoad(Cluster& cluster, int replicas) {
  ASSERT_NO_FATAL_FAILURE(cluster.Deploy(EchoYaml("v1", replicas)));
  auto version_of = JsonField("version");
  ASSERT_TRUE(WaitUntil([&] {
    auto r = cluster.Get("/echo");
    return r.status == 200 && version_of({r.status, r.body, r.error}) == "v1";
  })) << Logs(cluster);

  LoadGenerator load(LoadOn(cluster, "/echo/rolling", version_of));
  KeepLoading(load, 200, kBefore);

  Clock::time_point deploy_started = Clock::now();
  auto deployed = DeployYaml(cluster, EchoYaml("v2", replicas));
  Clock::time_point deploy_returned = Clock::now();
  EXPECT_EQ(deployed.exit_code, 0) << deployed.output << Logs(cluster);
  EXPECT_THAT(deployed.output, HasSubstr("updating from version v1 to v2"));
  std::cout << "rolling update of " << replicas << " replicas took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(deploy_returned -
                                                                     deploy_started)
                   .count()
            << " ms\n";
  // Enough traffic after the deploy returned to see that nothing answers with v1 any more.
  KeepLoading(load, 500, kAfter);
  auto report = load.Stop();
  Publish(report);

  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  ExpectOnly2xx(report);
  ASSERT_EQ(report.keys.count("v1"), 1u) << report.Summary();
  ASSERT_EQ(report.keys.count("v2"), 1u) << report.Summary();
  EXPECT_EQ(report.keys.size(), 2u) << report.Summary();
  EXPECT_LT(report.keys.at("v1").first_sent, report.keys.at("v2").first_sent);
  EXPECT_THAT(report.KeysSentSince(deploy_returned), ElementsAre("v2"))
      << "requests sent after `serve deploy` returned were answered by "
      << Join(report.KeysSentSince(deploy_returned)) << "\n"
      << report.Summary() << Logs(cluster);

  auto echo = cluster.Deployment("echo");
  ASSERT_TRUE(echo.is_object());
  EXPECT_EQ(echo["status"], "HEALTHY") << echo.dump(2);
  EXPECT_EQ(echo["version"], "v2");
  EXPECT_EQ(ReplicaIds(cluster, "echo").size(), static_cast<size_t>(replicas)) << echo.dump(2);
}

TEST(Lifecycle, RollingUpdateUnderLoadSwitchesVersionWithoutAFailedRequest) {
  Cluster cluster;
  RollingUpdateUnderLoad(cluster, 2);
}

// The measurement the issue asks for: 4 replicas, spread over two nodes.
TEST(Lifecycle, RollingUpdateOfFourReplicasOnTwoNodesUnderLoad) {
  Cluster::Options options;
  options.nodes = 2;
  options.node_cpus = 4;
  Cluster cluster(options);
  RollingUpdateUnderLoad(cluster, 4);
}

TEST(Lifecycle, ScaleDownUnderLoadFailsNoRequestAndScaleUpKeepsTheSurvivor) {
  Cluster cluster;
  ASSERT_NO_FATAL_FAILURE(cluster.Deploy(EchoYaml("v1", 4)));
  ASSERT_TRUE(cluster.WaitForStatus("/echo", 200)) << Logs(cluster);
  std::set<std::string> before = ReplicaIds(cluster, "echo");
  ASSERT_EQ(before.size(), 4u);

  LoadGenerator load(LoadOn(cluster, "/echo/scale", JsonField("replica")));
  // Every replica takes traffic before the change.
  ASSERT_TRUE(WaitUntil([&] { return load.Snapshot().keys.size() == 4; }))
      << load.Snapshot().Summary();
  KeepLoading(load, 200, kBefore);

  auto down = DeployYaml(cluster, EchoYaml("v1", 1));
  Clock::time_point scaled_down = Clock::now();
  EXPECT_EQ(down.exit_code, 0) << down.output << Logs(cluster);
  EXPECT_THAT(down.output, HasSubstr("scaled from 4 to 1"));
  std::set<std::string> survivors = ReplicaIds(cluster, "echo");
  ASSERT_EQ(survivors.size(), 1u) << cluster.Deployment("echo").dump(2);
  std::string survivor = *survivors.begin();
  EXPECT_EQ(before.count(survivor), 1u) << "the survivor " << survivor << " is a new replica";
  KeepLoading(load, 300, kAfter);
  auto after_down = load.Snapshot();
  EXPECT_THAT(after_down.KeysSentSince(scaled_down), ElementsAre(survivor))
      << after_down.Summary() << Logs(cluster);
  // The stopped replicas leave the status once their node confirms.
  EXPECT_TRUE(WaitUntil([&] { return ReplicaCount(cluster, "echo") == 1; }))
      << cluster.Deployment("echo").dump(2);

  auto up = DeployYaml(cluster, EchoYaml("v1", 3));
  Clock::time_point scaled_up = Clock::now();
  EXPECT_EQ(up.exit_code, 0) << up.output << Logs(cluster);
  EXPECT_THAT(up.output, HasSubstr("scaled from 1 to 3"));
  std::set<std::string> running = ReplicaIds(cluster, "echo");
  EXPECT_EQ(running.size(), 3u) << cluster.Deployment("echo").dump(2);
  EXPECT_EQ(running.count(survivor), 1u) << "scale-up replaced " << survivor;
  // All three take traffic.
  EXPECT_TRUE(WaitUntil([&] { return load.Snapshot().KeysSentSince(scaled_up).size() == 3; }))
      << load.Snapshot().Summary();
  KeepLoading(load, 300, kAfter);

  auto report = load.Stop();
  Publish(report);
  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  ExpectOnly2xx(report);
}

constexpr char kHelloOne[] = R"(
deployments:
  - name: hello
    runtime: builtin:hello
    num_replicas: 2
    user_config: {message: "one"}
)";

constexpr char kHelloTwo[] = R"(
deployments:
  - name: hello
    runtime: builtin:hello
    num_replicas: 2
    user_config: {message: "two"}
)";

TEST(Lifecycle, UserConfigChangeUnderLoadReconfiguresInPlace) {
  Cluster cluster;
  ASSERT_NO_FATAL_FAILURE(cluster.Deploy(kHelloOne));
  ASSERT_TRUE(WaitUntil([&] { return cluster.Get("/hello").body == "one"; })) << Logs(cluster);
  std::set<std::string> before = ReplicaIds(cluster, "hello");
  ASSERT_EQ(before.size(), 2u);

  LoadGenerator load(LoadOn(cluster, "/hello", WholeBody()));
  KeepLoading(load, 200, kBefore);

  auto deployed = DeployYaml(cluster, kHelloTwo);
  Clock::time_point deploy_returned = Clock::now();
  EXPECT_EQ(deployed.exit_code, 0) << deployed.output << Logs(cluster);
  EXPECT_THAT(deployed.output, HasSubstr("reconfigured in place"));
  KeepLoading(load, 300, kAfter);
  auto report = load.Stop();
  Publish(report);

  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  ExpectOnly2xx(report);
  EXPECT_EQ(report.keys.count("one"), 1u) << report.Summary();
  EXPECT_EQ(report.keys.count("two"), 1u) << report.Summary();
  EXPECT_EQ(report.keys.size(), 2u) << report.Summary();
  EXPECT_THAT(report.KeysSentSince(deploy_returned), ElementsAre("two")) << report.Summary();

  auto hello = cluster.Deployment("hello");
  EXPECT_EQ(hello["status"], "HEALTHY") << hello.dump(2);
  EXPECT_EQ(ReplicaIds(cluster, "hello"), before) << "replicas were restarted:\n" << hello.dump(2);
  EXPECT_EQ(hello["replicas"].size(), 2u) << hello.dump(2);
}

TEST(Lifecycle, ReplicaThatFitsNowhereIsPendingWithTheShortResourceNamed) {
  Cluster cluster;  // one node with 4 CPUs
  ASSERT_NO_FATAL_FAILURE(cluster.Deploy(EchoYaml("v1", 1)));
  ASSERT_TRUE(cluster.WaitForStatus("/echo", 200)) << Logs(cluster);
  LoadGenerator load(LoadOn(cluster, "/echo", JsonField("version")));
  KeepLoading(load, 200, kBefore);

  const std::string big = R"(
deployments:
  - name: big
    runtime: builtin:hello
    resources: {num_cpus: 64}
)";
  auto started = Clock::now();
  auto no_wait = DeployYaml(cluster, big, {"--no-wait"});
  auto no_wait_took = Clock::now() - started;
  EXPECT_EQ(no_wait.exit_code, 0) << no_wait.output;
  EXPECT_THAT(no_wait.output, HasSubstr("big: created"));
  EXPECT_LT(no_wait_took, std::chrono::seconds(5)) << "--no-wait did not return at once";

  nlohmann::json status;
  bool pending = WaitUntil([&] {
    status = cluster.Deployment("big");
    return status.is_object() && status["replicas"].size() == 1 &&
           status["replicas"][0]["state"] == "PENDING" &&
           status["message"].get<std::string>().find("num_cpus") != std::string::npos;
  });
  EXPECT_TRUE(pending) << status.dump(2);
  if (status.is_object() && status["replicas"].size() == 1) {
    EXPECT_THAT(status["replicas"][0]["message"].get<std::string>(), HasSubstr("num_cpus=64"));
  }
  EXPECT_THAT(status["message"].get<std::string>(), HasSubstr("no node has that much"));
  EXPECT_EQ(status["status"], "UPDATING");

  started = Clock::now();
  auto waited = DeployYaml(cluster, big, {"--timeout-s", "2"});
  auto waited_took = Clock::now() - started;
  EXPECT_NE(waited.exit_code, 0) << waited.output;
  EXPECT_THAT(waited.output, HasSubstr("not HEALTHY within 2 s"));
  EXPECT_THAT(waited.output, HasSubstr("num_cpus"));  // the progress lines say why
  EXPECT_GE(waited_took, std::chrono::seconds(2));
  EXPECT_LT(waited_took, std::chrono::seconds(15));
  EXPECT_EQ(cluster.Get("/big").status, 503);

  auto report = load.Stop();
  Publish(report);
  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  EXPECT_GT(report.requests, 0u);
}

constexpr char kEchoAndHello[] = R"(
deployments:
  - name: echo
    runtime: builtin:echo
    num_replicas: 2
  - name: hello
    runtime: builtin:hello
    num_replicas: 1
)";

TEST(Lifecycle, DeletingOneDeploymentFailsNoRequestOfAnother) {
  Cluster cluster;
  ASSERT_NO_FATAL_FAILURE(cluster.Deploy(kEchoAndHello));
  ASSERT_TRUE(cluster.WaitForStatus("/echo", 200)) << Logs(cluster);
  ASSERT_TRUE(cluster.WaitForStatus("/hello", 200)) << Logs(cluster);
  std::set<std::string> echo_before = ReplicaIds(cluster, "echo");

  LoadGenerator load(LoadOn(cluster, "/echo/other", JsonField("replica")));
  KeepLoading(load, 200, kBefore);
  auto deleted = cluster.Serve({"delete", "hello"});
  EXPECT_EQ(deleted.exit_code, 0) << deleted.output;
  EXPECT_TRUE(cluster.WaitForStatus("/hello", 404));
  EXPECT_TRUE(WaitUntil(
      [&] { return ReplicaCount(cluster, "echo") == 2 && cluster.Deployment("hello").is_null(); }));
  KeepLoading(load, 300, kAfter);
  auto report = load.Stop();
  Publish(report);

  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  ExpectOnly2xx(report);
  EXPECT_EQ(ReplicaIds(cluster, "echo"), echo_before);
  EXPECT_EQ(cluster.Deployment("echo")["status"], "HEALTHY");
}

TEST(Lifecycle, ScaledToZeroAnswers503SayingNoReplicaRuns) {
  Cluster cluster;
  auto deployed = DeployYaml(cluster, EchoYaml("v1", 0));
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output << Logs(cluster);
  auto echo = cluster.Deployment("echo");
  EXPECT_EQ(echo["status"], "HEALTHY") << echo.dump(2);
  EXPECT_THAT(echo["message"].get<std::string>(), HasSubstr("scaled to zero"));
  ASSERT_TRUE(cluster.WaitForStatus("/echo", 503)) << Logs(cluster);

  auto options = LoadOn(cluster, "/echo/zero", WholeBody());
  options.max_requests = 400;
  options.success = [](int status) { return status == 503; };
  LoadGenerator load(options);
  ASSERT_TRUE(WaitUntil([&] { return load.Done(); }));
  auto report = load.Stop();
  Publish(report);
  // Here a failure is any answer but 503.
  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  EXPECT_EQ(report.requests, 400u);
  EXPECT_EQ(report.statuses[503], 400u) << report.Summary();
  for (const auto& [body, stats] : report.keys) {
    EXPECT_THAT(body, HasSubstr("no running replica")) << stats.count << " answers";
  }

  // And it comes back when scaled up.
  ASSERT_EQ(DeployYaml(cluster, EchoYaml("v1", 1)).exit_code, 0);
  EXPECT_TRUE(cluster.WaitForStatus("/echo", 200));
}

constexpr char kAAndB[] = R"(
deployments:
  - name: a
    route_prefix: /a
    runtime: builtin:hello
    user_config: {message: "from a"}
  - name: b
    route_prefix: /b
    runtime: builtin:hello
    user_config: {message: "from b"}
  - name: v
    version: "1"
    runtime: builtin:hello
)";

TEST(Lifecycle, RouteCollisionAndReusedVersionAreRefusedWithoutDisturbingTraffic) {
  Cluster cluster;
  ASSERT_NO_FATAL_FAILURE(cluster.Deploy(kAAndB));
  ASSERT_TRUE(WaitUntil([&] { return cluster.Get("/a").body == "from a"; })) << Logs(cluster);
  LoadGenerator load(LoadOn(cluster, "/a", WholeBody()));
  KeepLoading(load, 100, kBefore);

  auto moved = DeployYaml(cluster, R"(
deployments:
  - name: b
    route_prefix: /a
    runtime: builtin:hello
    user_config: {message: "from b"}
)");
  EXPECT_NE(moved.exit_code, 0) << moved.output;
  EXPECT_THAT(moved.output, HasSubstr("deployment 'b'"));
  EXPECT_THAT(moved.output, HasSubstr("deployment 'a'"));
  EXPECT_THAT(moved.output, HasSubstr("route_prefix /a"));
  EXPECT_EQ(cluster.Deployment("b")["route_prefix"], "/b");
  EXPECT_EQ(cluster.Get("/b").body, "from b");

  auto reused = DeployYaml(cluster, R"(
deployments:
  - name: v
    version: "1"
    runtime: builtin:echo
)");
  EXPECT_NE(reused.exit_code, 0) << reused.output;
  EXPECT_THAT(reused.output, HasSubstr("version '1'"));
  EXPECT_THAT(reused.output, HasSubstr("builtin:hello"));
  EXPECT_THAT(reused.output, HasSubstr("new version"));
  auto v = cluster.Deployment("v");
  EXPECT_EQ(v["runtime"], "builtin:hello") << v.dump(2);
  EXPECT_EQ(cluster.Get("/v").body, "hello world");

  auto report = load.Stop();
  Publish(report);
  EXPECT_EQ(report.failed, 0u) << report.Summary() << Logs(cluster);
  ExpectOnly2xx(report);
  EXPECT_EQ(report.keys.size(), 1u) << report.Summary();
  EXPECT_EQ(report.keys.count("from a"), 1u) << report.Summary();
}

}  // namespace
}  // namespace serve::testing
