// The walking skeleton, end to end: HTTP -> proxy -> NATS -> replica worker -> back, driven by
// the real executables and the `serve` CLI.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kEcho[] = R"(
deployments:
  - name: echo
    runtime: builtin:echo
    num_replicas: 2
    resources: {num_cpus: 0.5}
)";

TEST(Foundation, HelloAnswersHelloWorldAndStatusIsHealthy) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  auto response = cluster.Get("/hello");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "hello world");
  EXPECT_FALSE(response.headers["x-request-id"].empty());

  auto hello = cluster.Deployment("hello");
  ASSERT_TRUE(hello.is_object());
  EXPECT_EQ(hello["status"], "HEALTHY");
  EXPECT_EQ(hello["route_prefix"], "/hello");
  ASSERT_EQ(hello["replicas"].size(), 1u);
  EXPECT_EQ(hello["replicas"][0]["state"], "RUNNING");
  EXPECT_FALSE(hello["replicas"][0]["node"].get<std::string>().empty());
}

TEST(Foundation, EchoWithTwoReplicasAnswersFromBoth) {
  Cluster cluster;
  cluster.Deploy(kEcho);
  std::set<std::string> replicas;
  bool both = WaitUntil([&] {
    auto response = HttpRequest(cluster.http_port(), "POST", "/echo/a/b?x=1", "payload");
    if (response.status != 200) return false;
    auto body = nlohmann::json::parse(response.body, nullptr, false);
    EXPECT_EQ(body["method"], "POST");
    EXPECT_EQ(body["path"], "/echo/a/b");
    EXPECT_EQ(body["query"], "x=1");
    EXPECT_EQ(body["body"], "payload");
    replicas.insert(body["replica"].get<std::string>());
    return replicas.size() == 2;
  });
  EXPECT_TRUE(both) << "replicas seen: " << replicas.size();
}

TEST(Foundation, DeleteMakesTheRouteAnswer404) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  ASSERT_EQ(cluster.Get("/hello").status, 200);
  auto deleted = cluster.Serve({"delete", "hello"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.output;
  EXPECT_THAT(deleted.output, HasSubstr("deleted hello"));
  ASSERT_TRUE(cluster.WaitForStatus("/hello", 404));
  auto response = cluster.Get("/hello");
  EXPECT_THAT(response.body, HasSubstr("/-/routes"));
  EXPECT_TRUE(cluster.Deployment("hello").is_null());
}

TEST(Foundation, ProxyServesHealthAndRoutes) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  auto health = cluster.Get("/-/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_THAT(health.body, HasSubstr("success"));
  auto routes = nlohmann::json::parse(cluster.Get("/-/routes").body, nullptr, false);
  EXPECT_EQ(routes["/hello"], "hello");
}

TEST(Foundation, AnyNatsClientCanDeployWithJson) {
  Cluster cluster;
  RawClient client(cluster.nats_url());
  auto reply = client.Request(
      "itest.ctl.deploy",
      R"({"deployments":[{"name":"js","runtime":"builtin:hello","user_config":"{\"message\":\"from json\"}"}]})");
  ASSERT_TRUE(reply.ok()) << reply.error();
  auto json = nlohmann::json::parse(reply->data, nullptr, false);
  ASSERT_TRUE(json.is_object()) << reply->data;
  EXPECT_FALSE(json.contains("error")) << reply->data;  // absent on success
  ASSERT_TRUE(cluster.WaitForStatus("/js", 200));
  EXPECT_EQ(cluster.Get("/js").body, "from json");

  auto status = client.Request("itest.ctl.status", "{}");
  ASSERT_TRUE(status.ok());
  EXPECT_THAT(status->data, HasSubstr("\"name\": \"js\""));
}

TEST(Foundation, GarbageOnEveryControlSubjectGetsAnErrorAndTheControllerKeepsServing) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  RawClient client(cluster.nats_url());
  std::string truncated = wire::Pack(wire::DeployRequestT{}).substr(0, 10);
  const std::vector<std::string> inputs = {
      "\x01\x02\x03garbage\xff\xfe", truncated, R"({"deployments": 7})", "{\"nope\": true}",
      "{not json", std::string(100000, 'x')};
  struct Subject {
    std::string name;
    std::function<std::string(const std::string&)> error_of;
  };
  auto error_of = [](auto* tag) {
    using Table = std::remove_pointer_t<decltype(tag)>;
    // A request that looks like JSON is answered in JSON, one that does not as a FlatBuffer.
    return [](const std::string& data) -> std::string {
      if (!wire::HasServeIdentifier(data)) {
        auto json = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
        if (!json.is_object()) return "unreadable reply: " + data.substr(0, 80);
        return json.value("error", "");
      }
      auto reply = wire::Unpack<Table>(data);
      return reply.ok() ? reply->error : "unreadable reply: " + reply.error();
    };
  };
  std::vector<Subject> subjects = {
      {"itest.ctl.deploy", error_of(static_cast<wire::DeployReply*>(nullptr))},
      {"itest.ctl.delete", error_of(static_cast<wire::DeleteReply*>(nullptr))},
      {"itest.ctl.status", error_of(static_cast<wire::StatusReply*>(nullptr))},
      {"itest.ctl.config", error_of(static_cast<wire::ConfigReply*>(nullptr))},
      {"itest.ctl.ping", error_of(static_cast<wire::PingReply*>(nullptr))},
      {"itest.ctl.shutdown", error_of(static_cast<wire::ShutdownReply*>(nullptr))},
      {"itest.ctl.routes", error_of(static_cast<wire::RouteTable*>(nullptr))},
  };
  for (const auto& subject : subjects) {
    for (const auto& input : inputs) {
      auto reply = client.Request(subject.name, input);
      ASSERT_TRUE(reply.ok()) << subject.name << ": " << reply.error();
      std::string error = subject.error_of(reply->data);
      EXPECT_FALSE(error.empty()) << subject.name << " accepted " << input.substr(0, 40);
    }
  }
  // A message of another table is refused, not read as the subject's table: a StatusRequest
  // naming the deployment has the layout of a DeleteRequest naming it.
  wire::StatusRequestT status_request;
  status_request.names = {"hello"};
  auto mistaken = client.Request("itest.ctl.delete", wire::Pack(status_request));
  ASSERT_TRUE(mistaken.ok()) << mistaken.error();
  EXPECT_THAT(error_of(static_cast<wire::DeleteReply*>(nullptr))(mistaken->data),
              HasSubstr("they are a StatusRequest, sent where a DeleteRequest is expected"));
  // A heartbeat whose ids no subject can carry is dropped: the node is never listed, and no
  // order or request is ever published for it.
  wire::NodeHeartbeatT bad_node;
  bad_node.node_id = "evil.*";
  wire::NodeHeartbeatT bad_replica;
  bad_replica.node_id = "evil-node";
  auto listed = std::make_unique<wire::NodeReplicaT>();
  listed->id = "hello-x.>";
  listed->deployment = "hello";
  bad_replica.replicas.push_back(std::move(listed));
  // Sent until the (rate-limited) warnings name them.
  for (const auto& [heartbeat, named] :
       {std::pair{wire::Pack(bad_node), std::string("node id 'evil.*' may hold only")},
        std::pair{wire::Pack(bad_replica), std::string("replica id 'hello-x.>' may hold only")}}) {
    ASSERT_TRUE(WaitUntil([&, &heartbeat = heartbeat, &named = named] {
      client.Publish("itest.hb.node", heartbeat);
      return cluster.Log("controller").find(named) != std::string::npos;
    })) << cluster.Log("controller");
  }
  nlohmann::json listed_nodes = cluster.Status()["nodes"];
  for (const auto& node : listed_nodes) {
    EXPECT_THAT(node["id"].get<std::string>(), ::testing::Not(HasSubstr("evil"))) << node.dump();
  }
  // Data-plane, heartbeat and shutdown subjects take garbage silently; on <ns>.shutdown only a
  // ShutdownNotice stops anything.
  client.Publish("itest.shutdown", wire::Pack(wire::ShutdownRequestT{}));
  for (const char* subject :
       {"itest.shutdown", "itest.hb.node", "itest.hb.replica", "itest.hb.proxy",
        "itest.hb.supervisor", "itest.node.exited", "itest.routes", "itest.node.node-1.start",
        "itest.node.node-1.stop", "itest.node.node-1.metrics"}) {
    for (const auto& input : inputs) client.Publish(subject, input);
  }
  auto status = cluster.Deployment("hello");
  ASSERT_TRUE(status.is_object());
  EXPECT_EQ(status["status"], "HEALTHY");
  EXPECT_EQ(cluster.Get("/hello").body, "hello world");
}

// A replica reads its requests on its own loop: garbage there (with a reply subject or
// without, a flood of it) is answered with an error or dropped, and the replica keeps serving
// and heartbeating, in the same process.
TEST(Foundation, GarbageFloodingAReplicasSubjectLeavesItServing) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  ASSERT_EQ(cluster.Get("/hello").status, 200);
  auto hello = cluster.Deployment("hello");
  ASSERT_TRUE(hello.is_object());
  ASSERT_EQ(hello["replicas"].size(), 1u);
  const std::string replica = hello["replicas"][0]["id"];
  pid_t worker = Cluster::WorkerPid(replica);
  ASSERT_GT(worker, 0);
  const std::string subject = "itest.replica." + replica;
  RawClient client(cluster.nats_url());
  std::string truncated = wire::Pack(wire::DeployRequestT{}).substr(0, 10);
  for (const std::string& input :
       {std::string("\x01\x02\x03garbage\xff\xfe"), truncated, std::string(R"({"path": 7})"),
        std::string("{\"nope\": true}"), std::string("{not json"), std::string(100000, 'x')}) {
    auto reply = client.Request(subject, input);
    ASSERT_TRUE(reply.ok()) << "no answer to garbage: " << reply.error();
    EXPECT_FALSE(reply->data.empty());
  }
  for (int i = 0; i < 2000; ++i) client.Publish(subject, "\x01\x02flood" + std::to_string(i));
  EXPECT_EQ(cluster.Get("/hello").body, "hello world");
  auto status = cluster.Deployment("hello");
  ASSERT_TRUE(status.is_object());
  EXPECT_EQ(status["status"], "HEALTHY");
  EXPECT_EQ(Cluster::WorkerPid(replica), worker) << "the replica was restarted";
}

// Heartbeats that decode but claim too much: every supervisor heartbeat is shown in status, so
// the controller keeps what it holds of them within bounds and says what it ignored.
TEST(Foundation, SupervisorHeartbeatsBeyondBoundsAreIgnoredAndStatusStillAnswers) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  RawClient client(cluster.nats_url());
  auto heartbeat = [](const std::string& id, int services, double period_s) {
    wire::SupervisorHeartbeatT hb;
    hb.supervisor_id = id;
    hb.host = "elsewhere";
    hb.run_dir = "/run/" + id;
    hb.period_s = period_s;
    for (int i = 0; i < services; ++i) {
      auto service = std::make_unique<wire::SupervisedServiceT>();
      service->name = std::string("service-").append(std::to_string(i));
      hb.services.push_back(std::move(service));
    }
    return wire::Pack(hb);
  };
  for (int i = 0; i < 300; ++i) {
    client.Publish("itest.hb.supervisor",
                   heartbeat(std::string("flood-").append(std::to_string(i)), 1,
                             i % 2 == 0 ? std::nan("") : 1e300));
  }
  client.Publish("itest.hb.supervisor", heartbeat("many-services", 1000, 1));
  client.Publish("itest.hb.supervisor", heartbeat(std::string(5000, 'x'), 1, 1));
  ASSERT_TRUE(WaitUntil([&] {
    return cluster.Log("controller").find("already shows 256 supervisors") != std::string::npos;
  }, std::chrono::seconds(30))) << cluster.Log("controller");
  EXPECT_THAT(cluster.Log("controller"), HasSubstr("ignored a supervisor heartbeat"));

  nlohmann::json status = cluster.Status();
  ASSERT_TRUE(status["supervisors"].is_array()) << status.dump();
  EXPECT_EQ(status["supervisors"].size(), 256u);
  for (const auto& supervisor : status["supervisors"]) {
    EXPECT_NE(supervisor["id"], "many-services");
    EXPECT_LT(supervisor["id"].get<std::string>().size(), 300u);
  }
  EXPECT_EQ(cluster.Deployment("hello")["status"], "HEALTHY");
  EXPECT_EQ(cluster.Get("/hello").body, "hello world");
}

// Every numeric flag refuses what it cannot use, NaN and infinities included (CLI11's own range
// check lets NaN through), and says which range it takes; the service does not start.
TEST(Foundation, NumericFlagsOutOfRangeOrNotANumberAreRefusedWithTheRange) {
  struct Case {
    std::string binary, flag, value, range;
  };
  const std::vector<Case> cases = {
      {"serve-controller", "--reconnect-grace-s", "nan", "from 0 to 3600"},
      {"serve-controller", "--reconnect-grace-s", "-1", "from 0 to 3600"},
      {"serve-controller", "--max-starting-per-node", "0", "from 1 to 100000"},
      {"serve-controller", "--max-starting-per-node", "1e9", "from 1 to 100000"},
      {"serve-controller", "--forget-lost-nodes-after-s", "inf", "from 1 to 1e+07"},
      {"serve-controller", "--forget-lost-nodes-after-s", "0", "from 1 to 1e+07"},
      {"serve-controller", "--adoption-grace-s", "-4", "from 0 to 3600"},
      {"serve-controller", "--max-replicas-per-deployment", "0", "from 1 to 1e+06"},
      {"serve-controller", "--max-replicas-per-namespace", "nan", "from 1 to 1e+06"},
      {"serve-controller", "--max-concurrent-queries", "2e6", "from 1 to 1e+06"},
      {"serve-replica", "--heartbeat-period-s", "nan", "from 0.05 to 60"},
      {"serve-replica", "--heartbeat-period-s", "3600", "from 0.05 to 60"},
      {"serve-replica", "--num-cpus", "-inf", "from 0 to 1e+06"},
      {"serve-proxy", "--bus-wait-s", "nan", "from 0 to 60"},
      {"serve-proxy", "--request-timeout-s", "0", "from 0.001 to 86400"},
      {"serve", "start", "--timeout-s=nan", "from 0 to 86400"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {BinDir() + "/" + c.binary, c.flag, c.value};
    if (c.binary == "serve") argv = {BinDir() + "/serve", c.flag, c.value};
    auto result = RunCommand(argv, {}, std::chrono::seconds(10));
    EXPECT_EQ(result.exit_code, 105) << c.binary << " " << c.flag << " " << c.value << ": "
                                     << result.output;
    EXPECT_THAT(result.output, HasSubstr("must be a number " + c.range + " (got '"))
        << c.binary << " " << c.flag << " " << c.value;
  }
}

// Ids become tokens of NATS subjects: one with a '.', a wildcard or white space is refused.
TEST(Foundation, IdFlagsThatNoSubjectCanCarryAreRefused) {
  const std::vector<std::vector<std::string>> cases = {
      {"serve-replica", "--node-id", "host.example.com"},
      {"serve-replica", "--node-id", "node>"},
      {"serve-proxy", "--proxy-id", "p 1"},
      {"serve-controller", "--controller-id", "c*"},
  };
  for (const auto& c : cases) {
    auto result = RunCommand({BinDir() + "/" + c[0], c[1], c[2]}, {}, std::chrono::seconds(10));
    EXPECT_EQ(result.exit_code, 105) << c[0] << " " << c[1] << " " << c[2] << ": " << result.output;
    EXPECT_THAT(result.output, HasSubstr("may hold only letters, digits, '_' and '-'"))
        << c[0] << " " << c[1] << " " << c[2];
  }
}

// A request larger than NATS carries gets 413 that says so (the test's nats-server keeps the
// default 1 MiB max_payload), and the proxy goes on serving.
TEST(Foundation, RequestLargerThanTheBusCarriesIs413) {
  Cluster cluster;
  cluster.Deploy(kEcho);
  auto answer = HttpRequest(cluster.http_port(), "POST", "/echo", std::string(1500 * 1000, 'x'));
  EXPECT_EQ(answer.status, 413) << answer.body << answer.error;
  EXPECT_THAT(answer.body, HasSubstr("max_payload"));
  EXPECT_EQ(HttpRequest(cluster.http_port(), "POST", "/echo", "small").status, 200);
}

// nats-server stops and starts again: a request sent meanwhile is held and answered, and a
// deploy made after it reaches the proxy (its subscriptions came back).
void ExpectServingAcrossANatsRestart(Cluster& cluster) {
  cluster.Deploy(kHelloConfig);
  ASSERT_EQ(cluster.Get("/hello").status, 200);
  cluster.nats().Stop();
  cluster.nats().Start();
  EXPECT_TRUE(WaitUntil([&] { return cluster.Get("/hello").body == "hello world"; },
                        std::chrono::seconds(30)))
      << cluster.Log("proxy");
  cluster.Deploy(kEcho);
  EXPECT_TRUE(cluster.WaitForStatus("/echo", 200)) << cluster.Log("proxy");
}

TEST(Foundation, ServicesReconnectAfterNatsRestarts) {
  Cluster cluster;
  ExpectServingAcrossANatsRestart(cluster);
}

// The proxy's NATS socket on its loop (--nats-io-on-loop): a NATS restart once aborted it when
// the socket's descriptor number went to an HTTP connection before the new socket was watched.
TEST(Foundation, AProxyReadingNatsOnItsLoopReconnectsAfterNatsRestarts) {
  Cluster::Options options;
  options.env["SERVE_PROXY_NATS_IO_ON_LOOP"] = "1";
  Cluster cluster(options);
  ExpectServingAcrossANatsRestart(cluster);
}

TEST(Foundation, ASecondControllerForTheNamespaceRefusesToStart) {
  Cluster cluster;
  auto second = RunCommand({BinDir() + "/serve-controller", "--address", cluster.nats_url(),
                            "--namespace", "itest"},
                           {}, std::chrono::seconds(30));
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_THAT(second.output, HasSubstr("already running for namespace 'itest'"));
  // Another namespace on the same bus is free.
  Process other({BinDir() + "/serve-controller", "--address", cluster.nats_url(), "--namespace",
                 "other"},
                cluster.dir() + "/other-controller.log");
  RawClient client(cluster.nats_url());
  EXPECT_TRUE(WaitUntil([&] { return client.Request("other.ctl.ping", "{}").ok(); }));
  EXPECT_EQ(other.Stop(), 0);
}

// SIGTERM while the controller waits for its checkpoint (a checkpointer that takes the request
// and does not answer): the request fails as the bus closes, and the controller still exits
// cleanly instead of retrying with what it already released.
TEST(Foundation, AControllerStoppedWhileLoadingItsCheckpointExitsCleanly) {
  Cluster cluster;
  RawClient checkpointer(cluster.nats_url());
  checkpointer.SubscribeSilently("hung.ckpt.get");
  Process controller({BinDir() + "/serve-controller", "--address", cluster.nats_url(),
                      "--namespace", "hung", "--dashboard-port", "0"},
                     cluster.dir() + "/hung-controller.log");
  ASSERT_TRUE(WaitUntil([&] {
    return ReadFile(cluster.dir() + "/hung-controller.log").find("ready for namespace hung") !=
           std::string::npos;
  })) << ReadFile(cluster.dir() + "/hung-controller.log");
  EXPECT_EQ(controller.Stop(), 0) << ReadFile(cluster.dir() + "/hung-controller.log");
}

}  // namespace
}  // namespace serve::testing
