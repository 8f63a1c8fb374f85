// Request-correlated logs: one request followed from the proxy's access line to the worker's
// request line and a line of the user's code; JSON lines; `serve logs`, following and after the
// replica is gone.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <limits>
#include <sstream>

#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "integration/logged_process.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;

std::string HandlersConfig() {
  return "deployments:\n"
         "  - name: talk\n"
         "    runtime: native\n"
         "    artifact: " +
         TestLibrary("test_handlers") + "\n";
}

// The lines of `text` that contain every one of `parts`.
std::vector<std::string> LinesWith(const std::string& text, const std::vector<std::string>& parts) {
  std::vector<std::string> found;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    bool all = true;
    for (const auto& part : parts) all = all && line.find(part) != std::string::npos;
    if (all) found.push_back(line);
  }
  return found;
}

HttpResult Talk(Cluster& cluster, const std::string& request_id, const std::string& body) {
  return HttpRequest(cluster.http_port(), "POST", "/talk/log", body, std::chrono::seconds(10),
                     {{"X-Request-ID", request_id}});
}

TEST(LogsTest, ARequestIdLeadsFromTheProxyToTheWorkerAndTheUserCode) {
  Cluster cluster;
  cluster.Deploy(HandlersConfig());
  ASSERT_TRUE(cluster.WaitForStatus("/talk/config", 200));
  std::string replica = *cluster.RunningIds("talk").begin();

  HttpResult answer = Talk(cluster, "trace-7f3a-0001", "the words");
  ASSERT_EQ(answer.status, 200) << answer.body << answer.error;
  EXPECT_EQ(answer.body, "logged request trace-7f3a-0001");
  EXPECT_EQ(answer.headers["x-request-id"], "trace-7f3a-0001");

  // The proxy's access line (written in the background, flushed every second).
  std::vector<std::string> access;
  ASSERT_TRUE(WaitUntil([&] {
    access = LinesWith(cluster.Log("proxy"), {"request=trace-7f3a-0001", "POST /talk/log 200"});
    return !access.empty();
  })) << cluster.Log("proxy");
  EXPECT_THAT(access[0], HasSubstr("deployment=talk"));
  EXPECT_THAT(access[0], HasSubstr("replica=" + replica));
  EXPECT_THAT(access[0], HasSubstr(" ms"));

  // The worker's request line and the user code's line, in the replica's log.
  std::vector<std::string> handled, said;
  ASSERT_TRUE(WaitUntil([&] {
    std::string log = cluster.ReplicaLog("node-1", replica);
    handled = LinesWith(log, {"request=trace-7f3a-0001", "POST /talk/log 200"});
    said = LinesWith(log, {"request=trace-7f3a-0001", "user code says: the words"});
    return !handled.empty() && !said.empty();
  })) << cluster.ReplicaLog("node-1", replica);
  for (const auto& line : {handled[0], said[0]}) {
    EXPECT_THAT(line, HasSubstr("node=node-1"));
    EXPECT_THAT(line, HasSubstr("deployment=talk"));
    EXPECT_THAT(line, HasSubstr("replica=" + replica));
  }

  // Without X-Request-ID the proxy makes one up, answers it, and the lines carry it.
  HttpResult anonymous = Talk(cluster, "", "no id given");
  ASSERT_EQ(anonymous.status, 200);
  std::string made_up = anonymous.headers["x-request-id"];
  ASSERT_FALSE(made_up.empty());
  EXPECT_TRUE(WaitUntil([&] {
    return !LinesWith(cluster.ReplicaLog("node-1", replica),
                      {"request=" + made_up, "user code says: no id given"})
                .empty();
  }));
  // A line cannot be forged through a message: control characters are written escaped.
  ASSERT_EQ(Talk(cluster, "trace-7f3a-0002", "one\nfake line").status, 200);
  EXPECT_TRUE(WaitUntil([&] {
    return !LinesWith(cluster.ReplicaLog("node-1", replica),
                      {"request=trace-7f3a-0002", "user code says: one\\nfake line"})
                .empty();
  })) << cluster.ReplicaLog("node-1", replica);
}

TEST(LogsTest, JsonLinesCarryTheSameFields) {
  Cluster::Options options;
  options.env["SERVE_LOG_FORMAT"] = "json";
  Cluster cluster(options);
  cluster.Deploy(HandlersConfig());
  ASSERT_TRUE(cluster.WaitForStatus("/talk/config", 200));
  std::string replica = *cluster.RunningIds("talk").begin();
  ASSERT_EQ(Talk(cluster, "json-\"quoted\"-id", "said \"this\"").status, 200);

  auto parse_all = [](const std::string& text) {
    std::vector<nlohmann::json> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      auto parsed = nlohmann::json::parse(line, nullptr, false);
      EXPECT_FALSE(parsed.is_discarded()) << "not JSON: " << line;
      if (!parsed.is_discarded()) lines.push_back(parsed);
    }
    return lines;
  };
  nlohmann::json access;
  ASSERT_TRUE(WaitUntil([&] {
    for (const auto& line : parse_all(cluster.Log("proxy"))) {
      if (line.value("request_id", "") == "json-\"quoted\"-id") access = line;
    }
    return access.is_object();
  })) << cluster.Log("proxy");
  EXPECT_EQ(access["component"], "proxy");
  EXPECT_EQ(access["level"], "info");
  EXPECT_EQ(access["method"], "POST");
  EXPECT_EQ(access["path"], "/talk/log");
  EXPECT_EQ(access["status"], 200);
  EXPECT_EQ(access["deployment"], "talk");
  EXPECT_EQ(access["replica"], replica);
  EXPECT_TRUE(access["latency_ms"].is_number());
  EXPECT_TRUE(access.contains("time") && access.contains("pid") && access.contains("node"));

  nlohmann::json said;
  ASSERT_TRUE(WaitUntil([&] {
    for (const auto& line : parse_all(cluster.ReplicaLog("node-1", replica))) {
      if (line.value("msg", "") == "user code says: said \"this\"") said = line;
    }
    return said.is_object();
  })) << cluster.ReplicaLog("node-1", replica);
  EXPECT_EQ(said["request_id"], "json-\"quoted\"-id");
  EXPECT_EQ(said["component"], "worker");
  EXPECT_EQ(said["node"], "node-1");
  EXPECT_EQ(said["deployment"], "talk");
  EXPECT_EQ(said["replica"], replica);
  // Every service's log is JSON throughout.
  for (const char* name : {"controller", "checkpointer", "node-1"}) {
    EXPECT_FALSE(parse_all(cluster.Log(name)).empty()) << name;
  }
}

TEST(LogsTest, ServeLogsPrintsFollowsAndOutlivesTheReplica) {
  Cluster cluster;
  cluster.Deploy(HandlersConfig());
  ASSERT_TRUE(cluster.WaitForStatus("/talk/config", 200));
  std::string replica = *cluster.RunningIds("talk").begin();

  // By replica id: its last lines, the worker's start among them.
  CommandResult tail = cluster.Serve({"logs", replica, "--tail", "20"});
  ASSERT_EQ(tail.exit_code, 0) << tail.output;
  EXPECT_THAT(tail.output, HasSubstr("ready on"));

  // Following a deployment: a line its replica writes after the command started shows up,
  // prefixed with the replica's id.
  LoggedProcess follow(cluster.ServeCommand({"logs", "talk", "--follow", "--tail", "5"}),
                       cluster.dir() + "/follow.log");
  ASSERT_TRUE(follow.WaitForOutput("[" + replica + "] ")) << follow.Output();
  ASSERT_EQ(Talk(cluster, "follow-me-1", "written after the command started").status, 200);
  EXPECT_TRUE(follow.WaitForOutput("user code says: written after the command started"))
      << follow.Output();
  EXPECT_EQ(follow.Terminate(), 0) << follow.Output();

  // Unknown names are a clear error.
  CommandResult unknown = cluster.Serve({"logs", "nobody-here"});
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_THAT(unknown.output, HasSubstr("no node holds a log of replica nobody-here"));

  // The replica's log stays on its node after the deployment is gone.
  ASSERT_EQ(cluster.Serve({"delete", "talk"}).exit_code, 0);
  ASSERT_TRUE(WaitUntil([&] { return Cluster::WorkerPid(replica) < 0; }));
  CommandResult after = cluster.Serve({"logs", replica});
  ASSERT_EQ(after.exit_code, 0) << after.output;
  EXPECT_THAT(after.output, HasSubstr("written after the command started"));
}

// Any bus client may ask on <ns>.logs: garbage gets an answer naming the cause, an id that is a
// path gets none (no node holds such a log), numbers out of range are clamped, and the node
// agent carries on.
TEST(LogsTest, HostileLogRequestsAreRefusedAndTheNodeCarriesOn) {
  Cluster cluster;
  cluster.Deploy(kHelloConfig);
  std::string replica = *cluster.RunningIds("hello").begin();
  RawClient client(cluster.nats_url());

  auto garbage = client.Request("itest.logs", std::string("\x01\x02 not a request"));
  ASSERT_TRUE(garbage.ok()) << garbage.error();
  auto refused = wire::Unpack<wire::ReplicaLogsReply>(garbage->data);
  ASSERT_TRUE(refused.ok());
  EXPECT_THAT(refused->error, HasSubstr("bad logs request"));

  wire::ReplicaLogsRequestT traversal;
  traversal.replica_id = "../../../etc/passwd";
  EXPECT_FALSE(client.Request("itest.logs", wire::Pack(traversal), 1).ok());

  wire::ReplicaLogsRequestT huge;
  huge.replica_id = replica;
  huge.offset = std::numeric_limits<int64_t>::max();
  huge.tail_lines = std::numeric_limits<int32_t>::max();
  huge.max_bytes = std::numeric_limits<int32_t>::max();
  auto far = client.Request("itest.logs", wire::Pack(huge));
  ASSERT_TRUE(far.ok()) << far.error();
  auto read = wire::Unpack<wire::ReplicaLogsReply>(far->data);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->error.empty()) << read->error;
  EXPECT_TRUE(read->restarted) << "an offset past the end reads the file from its start";
  EXPECT_LE(read->data.size(), 512u * 1024);
  huge.offset = -7;
  huge.tail_lines = -3;
  huge.max_bytes = -1;
  auto negative = client.Request("itest.logs", wire::Pack(huge));
  ASSERT_TRUE(negative.ok()) << negative.error();
  EXPECT_TRUE(wire::Unpack<wire::ReplicaLogsReply>(negative->data)->error.empty());

  EXPECT_EQ(cluster.Get("/hello").status, 200);
  CommandResult tail = cluster.Serve({"logs", replica});
  EXPECT_EQ(tail.exit_code, 0) << tail.output;
  EXPECT_THAT(tail.output, HasSubstr("ready on"));
}

}  // namespace
}  // namespace serve::testing
