// The controller's REST API (services/controller/api.h), over HTTP, against a real instance.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "integration/cluster.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

constexpr char kDeployments[] = "/api/serve/deployments/";

nlohmann::json Parse(const HttpResult& answer) {
  return nlohmann::json::parse(answer.body, nullptr, /*allow_exceptions=*/false);
}

std::string ErrorOf(const HttpResult& answer) {
  nlohmann::json body = Parse(answer);
  return body.is_object() && body["error"].is_string() ? body["error"].get<std::string>()
                                                       : "no JSON error in: " + answer.body;
}

std::vector<std::string> Names(const nlohmann::json& config) {
  std::vector<std::string> names;
  for (const auto& d : config["deployments"]) names.push_back(d["name"]);
  return names;
}

TEST(Api, PutThenGetGivesBackWhatWasPutAndPutIsDeclarative) {
  Cluster cluster;
  nlohmann::json put = {
      {"deployments",
       {{{"name", "greeter"},
         {"runtime", "builtin:hello"},
         {"num_replicas", 2},
         {"user_config", {{"message", "hi from the API"}, {"n", 3}}},
         {"resources", {{"num_cpus", 0.5}, {"num_gpus", 0}}}},
        {{"name", "echo"}, {"runtime", "builtin:echo"}, {"route_prefix", "/say"}}}}};
  auto answer = HttpRequest(cluster.api_port(), "PUT", kDeployments, put.dump());
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.headers["content-type"], "application/json");
  EXPECT_THAT(answer.body, HasSubstr("greeter: created"));
  EXPECT_TRUE(cluster.WaitForStatus("/greeter", 200));
  EXPECT_EQ(cluster.Get("/greeter").body, "hi from the API");

  auto got = HttpGet(cluster.api_port(), kDeployments);
  ASSERT_EQ(got.status, 200) << got.body;
  nlohmann::json config = Parse(got);
  ASSERT_TRUE(config.is_object()) << got.body;
  EXPECT_THAT(Names(config), UnorderedElementsAre("echo", "greeter"));
  for (const auto& d : config["deployments"]) {
    if (d["name"] == "greeter") {
      EXPECT_EQ(d["runtime"], "builtin:hello");
      EXPECT_EQ(d["num_replicas"], 2);
      EXPECT_EQ(d["user_config"], put["deployments"][0]["user_config"]);
      EXPECT_EQ(d["resources"]["num_cpus"], 0.5);
      EXPECT_EQ(d["route_prefix"], "/greeter");
      EXPECT_FALSE(d.contains("version")) << "a derived version is not part of the config";
    } else {
      EXPECT_EQ(d["route_prefix"], "/say");
    }
  }
  // What GET gives deploys back unchanged.
  auto again = HttpRequest(cluster.api_port(), "PUT", kDeployments, got.body);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_THAT(Parse(again)["results"],
              UnorderedElementsAre("echo: unchanged", "greeter: unchanged"));

  // Declarative: what the body leaves out is deleted; a route may pass to a listed deployment.
  nlohmann::json only_one = {
      {"deployments",
       {{{"name", "greeter2"}, {"runtime", "builtin:hello"}, {"route_prefix", "/say"}}}}};
  auto replaced = HttpRequest(cluster.api_port(), "PUT", kDeployments, only_one.dump());
  ASSERT_EQ(replaced.status, 200) << replaced.body;
  EXPECT_THAT(Parse(replaced)["results"],
              UnorderedElementsAre("greeter2: created", "echo: deleted", "greeter: deleted"));
  EXPECT_THAT(Names(Parse(HttpGet(cluster.api_port(), kDeployments))),
              UnorderedElementsAre("greeter2"));
  EXPECT_TRUE(cluster.WaitForStatus("/say", 200));

  // An empty list deletes everything.
  auto emptied = HttpRequest(cluster.api_port(), "PUT", kDeployments, R"({"deployments": []})");
  ASSERT_EQ(emptied.status, 200) << emptied.body;
  EXPECT_TRUE(Names(Parse(HttpGet(cluster.api_port(), kDeployments))).empty());
}

TEST(Api, BadInputIs400NamingTheFieldCollisionIs409UnknownIs404) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  int port = cluster.api_port();

  auto wrong_type = HttpRequest(
      port, "PUT", kDeployments,
      R"({"deployments": [{"name": "x", "runtime": "builtin:hello", "num_replicas": "two"}]})");
  EXPECT_EQ(wrong_type.status, 400);
  EXPECT_THAT(ErrorOf(wrong_type), HasSubstr("num_replicas must be a whole number"));

  auto unknown_option =
      HttpRequest(port, "PUT", kDeployments,
                  R"({"deployments": [{"name": "x", "runtime": "builtin:hello", "replicas": 2}]})");
  EXPECT_EQ(unknown_option.status, 400);
  EXPECT_THAT(ErrorOf(unknown_option), HasSubstr("'replicas'"));

  auto not_json = HttpRequest(port, "PUT", kDeployments, "{not json");
  EXPECT_EQ(not_json.status, 400);
  EXPECT_THAT(ErrorOf(not_json), HasSubstr("request body"));

  auto local_path = HttpRequest(
      port, "PUT", kDeployments,
      R"({"deployments": [{"name": "x", "runtime": "native", "artifact": "./libx.so"}]})");
  EXPECT_EQ(local_path.status, 400);
  EXPECT_THAT(ErrorOf(local_path), HasSubstr("serve deploy FILE"));

  auto collision = HttpRequest(port, "PUT", kDeployments, R"({"deployments": [
      {"name": "a", "runtime": "builtin:hello", "route_prefix": "/same"},
      {"name": "b", "runtime": "builtin:echo", "route_prefix": "/same"}]})");
  EXPECT_EQ(collision.status, 409) << collision.body;
  EXPECT_THAT(ErrorOf(collision), HasSubstr("route_prefix"));

  auto unknown = HttpRequest(port, "DELETE", "/api/serve/deployments/nope");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(ErrorOf(unknown), HasSubstr("no deployment named 'nope'"));

  auto method = HttpRequest(port, "POST", kDeployments, "{}");
  EXPECT_EQ(method.status, 405);
  EXPECT_EQ(method.headers["allow"], "GET, PUT");
  EXPECT_EQ(HttpGet(port, "/api/serve/nothing").status, 404);

  // Nothing of that changed what runs.
  EXPECT_EQ(cluster.Deployment("hello")["status"], "HEALTHY");
  EXPECT_EQ(cluster.Get("/hello").body, "hello world");
  auto deleted = HttpRequest(port, "DELETE", "/api/serve/deployments/hello");
  ASSERT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_THAT(Parse(deleted)["deleted"], UnorderedElementsAre("hello"));
  EXPECT_TRUE(cluster.Deployment("hello").is_null());
}

TEST(Api, StatusIsWhatServeStatusJsonPrintsAnd503UntilTheCheckpointLoads) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  auto answer = HttpGet(cluster.api_port(), "/api/serve/status");
  ASSERT_EQ(answer.status, 200) << answer.body;
  nlohmann::json api = Parse(answer);
  nlohmann::json cli = cluster.Status();
  ASSERT_TRUE(api.is_object() && cli.is_object());
  for (const auto& [key, value] : cli.items()) EXPECT_TRUE(api.contains(key)) << key;
  ASSERT_EQ(api["deployments"].size(), 1u);
  EXPECT_EQ(api["deployments"][0]["name"], "hello");
  EXPECT_EQ(api["deployments"][0]["status"], "HEALTHY");

  // A controller that cannot load its checkpoint answers 503, saying why.
  cluster.checkpointer().Kill();
  cluster.controller().Kill();
  cluster.StartController();
  HttpResult unavailable;
  ASSERT_TRUE(WaitUntil(
      [&] {
        unavailable = HttpGet(cluster.api_port(), "/api/serve/status");
        return unavailable.status == 503;
      },
      std::chrono::seconds(30)))
      << unavailable.status << " " << unavailable.body;
  EXPECT_EQ(unavailable.headers["retry-after"], "1");
  EXPECT_THAT(ErrorOf(unavailable), HasSubstr("checkpoint"));
  EXPECT_EQ(HttpRequest(cluster.api_port(), "PUT", kDeployments, R"({"deployments": []})").status,
            503);
  cluster.StartCheckpointer();
  EXPECT_TRUE(
      WaitUntil([&] { return HttpGet(cluster.api_port(), "/api/serve/status").status == 200; },
                std::chrono::seconds(30)));
}

// A client of a Server-Sent Events stream, as a browser's EventSource is: one GET, then reads.
class EventStreamClient {
 public:
  EventStreamClient(int port, const std::string& extra_headers = "") {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval timeout{1, 0};  // each read; ReadUntil keeps trying until its own deadline
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) return;
    std::string request =
        "GET /api/serve/events HTTP/1.1\r\nHost: localhost\r\n"
        "Accept: text/event-stream\r\n" +
        extra_headers + "\r\n";
    (void)!send(fd_, request.data(), request.size(), MSG_NOSIGNAL);
  }
  ~EventStreamClient() { close(fd_); }

  bool ReadUntil(const std::string& text,
                 std::chrono::seconds deadline = std::chrono::seconds(20)) {
    auto give_up = std::chrono::steady_clock::now() + deadline;
    while (received_.find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      char chunk[4096];
      ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
      if (n == 0) return false;
      if (n > 0) received_.append(chunk, static_cast<size_t>(n));
    }
    return true;
  }
  const std::string& received() const { return received_; }

 private:
  int fd_ = -1;
  std::string received_;
};

TEST(Api, EventStreamSendsWhatWasThenWhatHappens) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  EventStreamClient stream(cluster.api_port());
  ASSERT_TRUE(stream.ReadUntil("\"state\":\"UPDATING\"")) << stream.received();
  EXPECT_THAT(stream.received(), HasSubstr("Content-Type: text/event-stream"));
  EXPECT_THAT(stream.received(), HasSubstr("retry: 1000"));
  EXPECT_THAT(stream.received(), HasSubstr("id: 1\ndata: {"));
  // Live: an event after the stream opened arrives on it.
  ASSERT_EQ(HttpRequest(cluster.api_port(), "DELETE", "/api/serve/deployments/hello").status, 200);
  EXPECT_TRUE(stream.ReadUntil("\"state\":\"DELETED\"")) << stream.received();

  // A reconnecting EventSource says the last id it saw and gets only what came after.
  nlohmann::json all = Parse(HttpGet(cluster.api_port(), "/api/serve/events"));
  uint64_t last = all["last_seq"];
  EventStreamClient resumed(cluster.api_port(),
                            "Last-Event-ID: " + std::to_string(last - 1) + "\r\n");
  ASSERT_TRUE(resumed.ReadUntil("id: " + std::to_string(last) + "\n")) << resumed.received();
  EXPECT_THAT(resumed.received(), Not(HasSubstr("id: " + std::to_string(last - 1) + "\n")));
}

TEST(Api, EventsSinceASequenceNumber) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  auto all = HttpGet(cluster.api_port(), "/api/serve/events?since=0");
  ASSERT_EQ(all.status, 200) << all.body;
  nlohmann::json body = Parse(all);
  ASSERT_TRUE(body["events"].is_array()) << all.body;
  bool created = false;
  uint64_t previous = 0;
  for (const auto& event : body["events"]) {
    EXPECT_GT(event["seq"].get<uint64_t>(), previous) << "in order, each once";
    previous = event["seq"];
    created = created || (event["kind"] == "deployment" && event["name"] == "hello" &&
                          event["state"] == "UPDATING");
  }
  EXPECT_TRUE(created) << all.body;
  EXPECT_EQ(body["last_seq"], previous);

  std::string after = "/api/serve/events?since=" + std::to_string(previous);
  EXPECT_TRUE(Parse(HttpGet(cluster.api_port(), after))["events"].empty());
  ASSERT_EQ(HttpRequest(cluster.api_port(), "DELETE", "/api/serve/deployments/hello").status, 200);
  nlohmann::json later = Parse(HttpGet(cluster.api_port(), after));
  bool deleted = false;
  for (const auto& event : later["events"]) {
    EXPECT_GT(event["seq"].get<uint64_t>(), previous);
    deleted = deleted || (event["name"] == "hello" && event["state"] == "DELETED");
  }
  EXPECT_TRUE(deleted) << later.dump();

  auto bad = HttpGet(cluster.api_port(), "/api/serve/events?since=-1");
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(ErrorOf(bad), HasSubstr("since must be"));
}

// `serve config` prints what runs as a file `serve deploy` takes back unchanged.
TEST(Api, ServeConfigRoundTrips) {
  Cluster cluster;
  cluster.Deploy(R"(
deployments:
  - name: hello
    runtime: builtin:hello
    num_replicas: 2
    user_config: {message: "12", count: 12, loud: yes, quiet: false}
    resources: {num_cpus: 0.5}
  - name: echo
    runtime: builtin:echo
    route_prefix: /e
    version: v7
  - name: native
    runtime: native
    artifact: )" + TestLibrary("test_handlers") + R"(
)");
  CommandResult printed = cluster.Serve({"config"});
  ASSERT_EQ(printed.exit_code, 0) << printed.output;
  EXPECT_THAT(printed.output, HasSubstr("version: \"v7\""));
  EXPECT_THAT(printed.output, HasSubstr("\"message\": \"12\""));
  std::string file = cluster.dir() + "/printed.yaml";
  WriteFile(file, printed.output);
  CommandResult deployed = cluster.Serve({"deploy", file});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  EXPECT_THAT(deployed.output, HasSubstr("hello: unchanged"));
  EXPECT_THAT(deployed.output, HasSubstr("echo: unchanged"));
  EXPECT_THAT(deployed.output, HasSubstr("native: unchanged"));
  CommandResult again = cluster.Serve({"config"});
  EXPECT_EQ(again.output, printed.output);

  CommandResult json = cluster.Serve({"config", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_EQ(nlohmann::json::parse(json.output, nullptr, false),
            Parse(HttpGet(cluster.api_port(), kDeployments)));
}

}  // namespace
}  // namespace serve::testing

namespace serve::testing {
namespace {

// The edges: hundreds of deployments through one PUT (scaled to zero, so no process starts),
// every event stream the controller allows plus one, and a replica's log through the API.
TEST(Api, HundredsOfDeploymentsStreamsUpToTheCapAndReplicaLogs) {
  Cluster cluster;
  nlohmann::json many = {{"deployments", nlohmann::json::array()}};
  for (int i = 0; i < 300; ++i) {
    many["deployments"].push_back({{"name", std::string("d").append(std::to_string(i))},
                                   {"runtime", "builtin:hello"},
                                   {"num_replicas", 0}});
  }
  auto put = HttpRequest(cluster.api_port(), "PUT", kDeployments, many.dump());
  ASSERT_EQ(put.status, 200) << put.body.substr(0, 2000);
  nlohmann::json got = Parse(HttpGet(cluster.api_port(), kDeployments));
  ASSERT_TRUE(got.is_object());
  EXPECT_EQ(got["deployments"].size(), 300u);
  nlohmann::json status = Parse(HttpGet(cluster.api_port(), "/api/serve/status"));
  EXPECT_EQ(status["deployments"].size(), 300u);
  auto emptied = HttpRequest(cluster.api_port(), "PUT", kDeployments, R"({"deployments": []})");
  ASSERT_EQ(emptied.status, 200) << emptied.body.substr(0, 2000);
  EXPECT_EQ(Parse(HttpGet(cluster.api_port(), kDeployments))["deployments"].size(), 0u);

  // 256 streams are served; the next one is told why it is not.
  std::vector<std::unique_ptr<EventStreamClient>> streams;
  for (int i = 0; i < 256; ++i) {
    streams.push_back(std::make_unique<EventStreamClient>(cluster.api_port()));
    ASSERT_TRUE(streams.back()->ReadUntil("retry: 1000")) << i << streams.back()->received();
  }
  EventStreamClient refused(cluster.api_port());
  EXPECT_TRUE(refused.ReadUntil("too many event streams are open (256)")) << refused.received();
  EXPECT_THAT(refused.received(), HasSubstr("503"));
  streams.pop_back();  // a closed one makes room (noticed at the next write to it)
  cluster.Deploy(kHelloConfig);
  for (auto& stream : streams)
    ASSERT_TRUE(stream->ReadUntil("\"name\":\"hello\"")) << stream->received();
  EXPECT_TRUE(WaitUntil([&] {
    EventStreamClient again(cluster.api_port());
    return again.ReadUntil("retry: 1000", std::chrono::seconds(2));
  }));
  streams.clear();

  // A replica's log, and the errors around it.
  std::string replica = *cluster.RunningIds("hello").begin();
  auto logs = HttpGet(cluster.api_port(), "/api/serve/replicas/" + replica + "/logs?tail=10");
  ASSERT_EQ(logs.status, 200) << logs.body;
  nlohmann::json body = Parse(logs);
  EXPECT_THAT(body["data"].get<std::string>(), HasSubstr("ready on"));
  EXPECT_EQ(body["node"], "node-1");
  EXPECT_EQ(body["running"], true);
  auto next = HttpGet(cluster.api_port(), "/api/serve/replicas/" + replica + "/logs?offset=" +
                                              std::to_string(body["next_offset"].get<int64_t>()));
  EXPECT_EQ(next.status, 200);
  EXPECT_EQ(HttpGet(cluster.api_port(), "/api/serve/replicas/nobody-1/logs").status, 404);
  auto bad_id = HttpGet(cluster.api_port(), "/api/serve/replicas/..%2Fetc/logs");
  EXPECT_EQ(bad_id.status, 400) << bad_id.body;
  auto bad_tail = HttpGet(cluster.api_port(), "/api/serve/replicas/" + replica + "/logs?tail=-5");
  EXPECT_EQ(bad_tail.status, 400);
  EXPECT_THAT(ErrorOf(bad_tail), HasSubstr("tail: a whole number from 0 to 10000"));
}

}  // namespace
}  // namespace serve::testing
