// Every subject that answers takes JSON and answers JSON, errors included, and [ubyte] fields
// travel as base64 (docs/protocol.md, "JSON on the bus"): what any NATS client (`nats req`)
// sees of a real instance.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "artifact/artifact.h"
#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kEchoConfig[] = R"(
deployments:
  - name: echo
    route_prefix: /echo
    runtime: builtin:echo
    num_replicas: 1
)";

// The reply to `body` on `subject`, parsed; null (and a failed expectation) when there is none
// or it is not a JSON object.
nlohmann::json AskJson(RawClient& client, const std::string& subject, const std::string& body) {
  auto reply = client.Request(subject, body);
  EXPECT_TRUE(reply.ok()) << subject << ": " << reply.error();
  if (!reply.ok()) return nullptr;
  auto json = nlohmann::json::parse(reply->data, nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(json.is_object()) << subject << " answered " << reply->data.substr(0, 200);
  return json.is_object() ? json : nullptr;
}

std::string ErrorOf(const nlohmann::json& reply) {
  return reply.is_object() ? reply.value("error", "") : "<no reply>";
}

std::string Bytes(const nlohmann::json& base64) {
  if (!base64.is_string()) return "<not a base64 string: " + base64.dump() + ">";
  auto bytes = wire::Base64Decode(base64.get<std::string>());
  return bytes.ok() ? *bytes : "<bad base64: " + bytes.error() + ">";
}

std::string EchoReplica(Cluster& cluster) {
  cluster.Deploy(kEchoConfig);
  EXPECT_TRUE(cluster.WaitForStatus("/echo", 200)) << cluster.Log("controller");
  std::set<std::string> ids = cluster.RunningIds("echo");
  EXPECT_EQ(ids.size(), 1u);
  return ids.empty() ? "<none>" : *ids.begin();
}

TEST(JsonBus, MalformedJsonGetsAJsonErrorNamingTheCauseOnEverySubjectThatAnswers) {
  Cluster cluster;
  std::string replica = EchoReplica(cluster);
  RawClient client(cluster.nats_url());
  struct Subject {
    std::string name;
    std::string table;  // the request table the error names
  };
  const std::vector<Subject> subjects = {
      {"itest.ctl.deploy", "DeployRequest"},
      {"itest.ctl.delete", "DeleteRequest"},
      {"itest.ctl.status", "StatusRequest"},
      {"itest.ctl.config", "ConfigRequest"},
      {"itest.ctl.ping", "PingRequest"},
      {"itest.ctl.shutdown", "ShutdownRequest"},
      {"itest.ctl.routes", "RouteTableRequest"},
      {"itest.ckpt.put", "CheckpointPut"},
      {"itest.ckpt.get", "CheckpointGet"},
      {"itest.ckpt.blob.stat", "BlobStat"},
      {"itest.ckpt.blob.put", "BlobPut"},
      {"itest.ckpt.blob.get", "BlobGet"},
      {"itest.node.node-1.start", "StartReplica"},
      {"itest.node.node-1.stop", "StopReplica"},
      {"itest.logs", "ReplicaLogsRequest"},
      {"itest.replica." + replica, "HttpRequest"},
      {"itest.replica." + replica + ".ctl", "Reconfigure"},
  };
  for (const Subject& subject : subjects) {
    SCOPED_TRACE(subject.name);
    nlohmann::json truncated = AskJson(client, subject.name, R"({"names": [)");
    EXPECT_THAT(ErrorOf(truncated), HasSubstr("invalid JSON for " + subject.table));
    nlohmann::json unknown = AskJson(client, subject.name, R"({"no_such_field": 1})");
    EXPECT_THAT(ErrorOf(unknown), HasSubstr("no_such_field"));
    EXPECT_THAT(ErrorOf(unknown), HasSubstr(subject.table));
  }
  // The data plane's error is an HttpResponse the proxy would turn into a 400.
  nlohmann::json data_plane = AskJson(client, "itest.replica." + replica, "{");
  ASSERT_TRUE(data_plane.is_object());
  EXPECT_EQ(data_plane["status"], 400);
  // Bad base64 in a [ubyte] field is refused naming the field.
  nlohmann::json bad_body =
      AskJson(client, "itest.replica." + replica, R"({"method": "GET", "body": "%%%"})");
  EXPECT_THAT(ErrorOf(bad_body), HasSubstr("field body"));
  nlohmann::json bad_chunk =
      AskJson(client, "itest.ckpt.blob.put", R"({"digest": "sha256:00", "data": "not base64!"})");
  EXPECT_THAT(ErrorOf(bad_chunk), HasSubstr("field data"));
  // Nothing stopped or broke.
  EXPECT_EQ(cluster.Get("/echo/after").status, 200);
  EXPECT_EQ(cluster.RunningIds("echo"), std::set<std::string>{replica});
}

TEST(JsonBus, ValidJsonGetsTheReplyFieldsInJson) {
  Cluster cluster;
  std::string replica = EchoReplica(cluster);
  RawClient client(cluster.nats_url());

  nlohmann::json ping = AskJson(client, "itest.ctl.ping", "{}");
  EXPECT_FALSE(ping.contains("error")) << ping.dump();
  EXPECT_EQ(ping["namespace"], "itest");
  EXPECT_GT(ping.value("pid", 0), 0);
  EXPECT_FALSE(ping.value("version", "").empty());

  nlohmann::json status = AskJson(client, "itest.ctl.status", R"({"names": ["echo"]})");
  ASSERT_EQ(status["deployments"].size(), 1u) << status.dump();
  EXPECT_EQ(status["deployments"][0]["name"], "echo");
  EXPECT_EQ(status["deployments"][0]["status"], "HEALTHY");  // enums by name
  EXPECT_EQ(status["deployments"][0]["replicas"][0]["state"], "RUNNING");

  nlohmann::json config = AskJson(client, "itest.ctl.config", "{}");
  ASSERT_EQ(config["deployments"].size(), 1u) << config.dump();
  EXPECT_EQ(config["deployments"][0]["runtime"], "builtin:echo");

  nlohmann::json routes = AskJson(client, "itest.ctl.routes", "{}");
  ASSERT_EQ(routes["routes"].size(), 1u) << routes.dump();
  EXPECT_EQ(routes["routes"][0]["route_prefix"], "/echo");
  EXPECT_EQ(routes["routes"][0]["replicas"][0]["id"], replica);

  nlohmann::json stop =
      AskJson(client, "itest.node.node-1.stop", R"({"replica_id": "not-running-here"})");
  EXPECT_FALSE(stop.contains("error")) << stop.dump();
  nlohmann::json start = AskJson(client, "itest.node.node-1.start", R"({"replica_id": "a.b"})");
  EXPECT_THAT(ErrorOf(start), HasSubstr("may hold only"));

  nlohmann::json logs =
      AskJson(client, "itest.logs", R"({"replica_id": ")" + replica + R"(", "tail_lines": 5})");
  EXPECT_FALSE(logs.contains("error")) << logs.dump();
  EXPECT_EQ(logs["replica_id"], replica);
  EXPECT_EQ(logs["node_id"], "node-1");
  EXPECT_EQ(logs["running"], true);

  nlohmann::json reconfigured =
      AskJson(client, "itest.replica." + replica + ".ctl",
              R"({"replica_id": ")" + replica + R"(", "user_config": "{}"})");
  EXPECT_FALSE(reconfigured.contains("error")) << reconfigured.dump();

  // The data plane: the body goes in base64 (url-safe and unpadded here) and comes back in
  // standard base64; builtin:echo answers what it received.
  nlohmann::json answer = AskJson(
      client, "itest.replica." + replica,
      R"({"method": "POST", "path": "/echo/x", "query": "a=1", "body": "aGVsbG8gYnl0ZXM"})");
  ASSERT_TRUE(answer.is_object());
  EXPECT_EQ(answer["status"], 200) << answer.dump();
  auto echoed = nlohmann::json::parse(Bytes(answer["body"]), nullptr, false);
  ASSERT_TRUE(echoed.is_object()) << answer.dump();
  EXPECT_EQ(echoed["method"], "POST");
  EXPECT_EQ(echoed["path"], "/echo/x");
  EXPECT_EQ(echoed["query"], "a=1");
  EXPECT_EQ(echoed["body"], "hello bytes");
  EXPECT_EQ(echoed["replica"], replica);
}

TEST(JsonBus, CheckpointsAndArtifactBlobsRoundTripInBase64) {
  Cluster cluster;
  RawClient client(cluster.nats_url());
  std::string blob;
  for (int i = 0; i < 3000; ++i) blob.push_back(static_cast<char>(i * 7));
  std::string digest = artifact::DigestOf(blob);
  std::string encoded = wire::Base64Encode(blob);

  nlohmann::json missing =
      AskJson(client, "itest.ckpt.blob.stat", nlohmann::json{{"digest", digest}}.dump());
  EXPECT_FALSE(missing.contains("error")) << missing.dump();
  EXPECT_EQ(missing["found"], false);

  nlohmann::json put =
      AskJson(client, "itest.ckpt.blob.put",
              nlohmann::json{
                  {"digest", digest}, {"offset", 0}, {"total_size", blob.size()}, {"data", encoded}}
                  .dump());
  EXPECT_FALSE(put.contains("error")) << put.dump();
  EXPECT_EQ(put["stored"], true);
  EXPECT_EQ(put["received"], blob.size());

  nlohmann::json stat =
      AskJson(client, "itest.ckpt.blob.stat", nlohmann::json{{"digest", digest}}.dump());
  EXPECT_EQ(stat["found"], true) << stat.dump();
  EXPECT_EQ(stat["size"], blob.size());

  nlohmann::json got =
      AskJson(client, "itest.ckpt.blob.get", nlohmann::json{{"digest", digest}}.dump());
  EXPECT_EQ(got["found"], true) << got.dump();
  EXPECT_EQ(got["total_size"], blob.size());
  EXPECT_EQ(got["data"], encoded);  // standard base64, padded
  EXPECT_EQ(Bytes(got["data"]), blob);

  // A checkpoint under a key of its own, its data as an array of numbers, read back in base64.
  nlohmann::json stored = AskJson(client, "itest.ckpt.put",
                                  R"({"key": "json-test", "generation": 1, "data": [0, 1, 255]})");
  EXPECT_FALSE(stored.contains("error")) << stored.dump();
  nlohmann::json read = AskJson(client, "itest.ckpt.get", R"({"key": "json-test"})");
  EXPECT_EQ(read["found"], true) << read.dump();
  EXPECT_EQ(read["data"], "AAH/");
  // The controller's own state reads back as a ControllerState FlatBuffer.
  nlohmann::json state = AskJson(client, "itest.ckpt.get", R"({"key": "controller/state"})");
  if (state.value("found", false)) {
    std::string bytes = Bytes(state["data"]);
    EXPECT_TRUE(wire::Verify<wire::ControllerState>(bytes).ok()) << state.dump();
  }
}

}  // namespace
}  // namespace serve::testing
