// `serve status --watch` against a running instance: the lines it prints as things happen, and
// what it lives through (garbage on the events subject, a NATS restart) until SIGTERM.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "integration/logged_process.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A second deployment, to see that a watch for "hello" leaves it out.
constexpr char kEcho[] = "deployments: [{name: echo, runtime: 'builtin:echo'}]\n";

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(CliWatch, StatusWatchPrintsEventsAsTheyHappenSkipsGarbageAndEndsOnSigterm) {
  Cluster cluster;
  LoggedProcess watch(cluster.ServeCommand({"status", "--watch"}), cluster.dir() + "/watch.log");
  LoggedProcess json(cluster.ServeCommand({"status", "--watch", "--json", "hello"}),
                     cluster.dir() + "/watch-json.log");
  // Each subscribes before it asks for the table: once that is printed, nothing is missed.
  ASSERT_TRUE(watch.WaitForOutput("Following events")) << watch.Output();
  ASSERT_TRUE(json.WaitForOutput("\"namespace\"")) << json.Output();

  cluster.Deploy(ReadFile("examples/hello/serve.yaml"));
  EXPECT_TRUE(watch.WaitForOutput("deployment hello: UPDATING")) << watch.Output();
  EXPECT_TRUE(watch.WaitForOutput("deployment hello: HEALTHY")) << watch.Output();
  EXPECT_TRUE(std::regex_search(
      watch.Output(), std::regex(R"(\n\d\d:\d\d:\d\d\.\d\d\d  replica hello-\w+: RUNNING)")))
      << watch.Output();

  RawClient client(cluster.nats_url());
  wire::EventT event;
  event.kind = "deployment";
  event.name = "hello";
  event.state = "TESTED";
  client.Publish("itest.events", "\x01\x02 not a flatbuffer \xff");
  client.Publish("itest.events", wire::Pack(event).substr(0, 12));
  client.Publish("itest.events", std::string(100000, 'x'));
  client.Publish("itest.events", "{\"kind\": \"deployment\"}");
  event.message = "after the garbage";
  client.Publish("itest.events", wire::Pack(event));
  EXPECT_TRUE(watch.WaitForOutput("deployment hello: TESTED - after the garbage"))
      << watch.Output();
  EXPECT_TRUE(json.WaitForOutput("after the garbage")) << json.Output();
  EXPECT_THAT(watch.Output(), HasSubstr("skipped a message on itest.events"));

  cluster.Deploy(kEcho);
  ASSERT_EQ(cluster.Serve({"delete", "hello"}).exit_code, 0);
  EXPECT_TRUE(watch.WaitForOutput("deployment hello: DELETED")) << watch.Output();
  EXPECT_TRUE(json.WaitForOutput("\"DELETED\"")) << json.Output();
  EXPECT_THAT(watch.Output(), HasSubstr("deployment echo: HEALTHY"));

  EXPECT_EQ(watch.Terminate(), 0) << watch.Output();
  EXPECT_EQ(json.Terminate(), 0) << json.Output();

  // --json: the status on the first line, then one event object per line, only hello's.
  std::vector<std::string> lines = Lines(json.Output());
  std::vector<std::string> events;
  for (const auto& line : lines) {
    if (line.rfind("{", 0) != 0) continue;  // the warning about the garbage, on stderr
    auto object = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(object.is_object()) << line;
    if (object.contains("namespace")) continue;
    for (const char* key : {"time_ms", "kind", "name", "state", "message"}) {
      EXPECT_TRUE(object.contains(key)) << key << " missing in " << line;
    }
    EXPECT_THAT(object["name"].get<std::string>(), HasSubstr("hello")) << line;
    events.push_back(object["kind"].get<std::string>() + " " + object["state"].get<std::string>());
  }
  EXPECT_THAT(events, ::testing::Contains("deployment UPDATING"));
  EXPECT_THAT(events, ::testing::Contains("replica RUNNING"));
  EXPECT_THAT(events, ::testing::Contains("deployment DELETED"));
  EXPECT_THAT(json.Output(), Not(HasSubstr("echo")));
}

TEST(CliWatch, StatusWatchSaysWhenTheBusDropsAndCarriesOn) {
  Cluster cluster;
  LoggedProcess watch(cluster.ServeCommand({"status", "--watch"}), cluster.dir() + "/watch.log");
  ASSERT_TRUE(watch.WaitForOutput("Following events")) << watch.Output();

  cluster.nats().Stop();
  EXPECT_TRUE(watch.WaitForOutput("lost the connection to NATS")) << watch.Output();
  cluster.nats().Start();
  EXPECT_TRUE(watch.WaitForOutput("connected to NATS at")) << watch.Output();
  ASSERT_TRUE(WaitUntil([&] { return cluster.Status().is_object(); }));

  cluster.Deploy(ReadFile("examples/hello/serve.yaml"));
  EXPECT_TRUE(watch.WaitForOutput("deployment hello: HEALTHY")) << watch.Output();
  EXPECT_TRUE(watch.Running());
  EXPECT_EQ(watch.Terminate(), 0) << watch.Output();
}

}  // namespace
}  // namespace serve::testing
