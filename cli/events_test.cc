#include "cli/events.h"

#include <gtest/gtest.h>
#include <time.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

namespace serve::cli {
namespace {

wire::EventT MakeEvent(std::string kind, std::string name, std::string state,
                       std::string message = "") {
  wire::EventT event;
  // 2024-03-01 14:03:07.512 UTC
  event.time_ms = 1709301787512;
  event.kind = std::move(kind);
  event.name = std::move(name);
  event.state = std::move(state);
  event.message = std::move(message);
  return event;
}

class CliEvents : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tz = getenv("TZ");
    if (tz != nullptr) saved_tz_ = tz;
    had_tz_ = tz != nullptr;
    setenv("TZ", "UTC", 1);
    tzset();
  }
  void TearDown() override {
    if (had_tz_) {
      setenv("TZ", saved_tz_.c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }

 private:
  bool had_tz_ = false;
  std::string saved_tz_;
};

TEST_F(CliEvents, ClockTimeShowsMillisecondsInLocalTime) {
  EXPECT_EQ(ClockTime(1709301787512), "14:03:07.512");
  EXPECT_EQ(ClockTime(1709301787005), "14:03:07.005");
  EXPECT_EQ(ClockTime(0), "00:00:00.000");
  EXPECT_EQ(ClockTime(-1), "23:59:59.999");
}

TEST_F(CliEvents, ALineHasTimeKindNameStateAndMessage) {
  EXPECT_EQ(FormatEvent(MakeEvent("deployment", "hello", "HEALTHY", "1/1 running")),
            "14:03:07.512  deployment hello: HEALTHY - 1/1 running");
}

TEST_F(CliEvents, AnEmptyMessageLeavesNoDash) {
  EXPECT_EQ(FormatEvent(MakeEvent("deployment", "hello", "DELETED")),
            "14:03:07.512  deployment hello: DELETED");
}

TEST_F(CliEvents, JsonIsOneObjectOnOneLine) {
  std::string line = EventJson(MakeEvent("replica", "hello-ab121", "RUNNING", "up \"now\"\n"));
  EXPECT_EQ(line.rfind("{\"time_ms\":1709301787512,\"kind\":\"replica\",\"name\":", 0), 0u) << line;
  EXPECT_EQ(line.find('\n'), std::string::npos);
  auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["time_ms"], 1709301787512);
  EXPECT_EQ(json["kind"], "replica");
  EXPECT_EQ(json["name"], "hello-ab121");
  EXPECT_EQ(json["state"], "RUNNING");
  EXPECT_EQ(json["message"], "up \"now\"\n");
}

TEST_F(CliEvents, JsonSurvivesBytesThatAreNotUtf8) {
  std::string line = EventJson(MakeEvent("replica", "x-1", "RUNNING", "\xff\xfe"));
  EXPECT_TRUE(nlohmann::json::accept(line)) << line;
}

TEST_F(CliEvents, WithoutNamesEveryEventConcernsTheWatcher) {
  EXPECT_TRUE(EventConcerns(MakeEvent("node", "node-1", "HEALTHY"), {}));
  EXPECT_TRUE(EventConcerns(MakeEvent("controller", "c-1", "RUNNING"), {}));
}

TEST_F(CliEvents, NamesSelectTheirDeploymentsAndReplicas) {
  std::vector<std::string> names = {"hello", "a"};
  EXPECT_TRUE(EventConcerns(MakeEvent("deployment", "hello", "HEALTHY"), names));
  EXPECT_TRUE(EventConcerns(MakeEvent("replica", "hello-3f2a1", "RUNNING"), names));
  EXPECT_TRUE(EventConcerns(MakeEvent("replica", "a-3f2a1", "RUNNING"), names));
  EXPECT_FALSE(EventConcerns(MakeEvent("deployment", "echo", "HEALTHY"), names));
  EXPECT_FALSE(EventConcerns(MakeEvent("replica", "echo-3f2a1", "RUNNING"), names));
  EXPECT_FALSE(EventConcerns(MakeEvent("node", "hello", "HEALTHY"), names));
  // A replica of "a-b" is not one of "a"'s; "hello" alone is not a replica id.
  EXPECT_FALSE(EventConcerns(MakeEvent("replica", "a-b-3f2a1", "RUNNING"), names));
  EXPECT_FALSE(EventConcerns(MakeEvent("replica", "hello-", "RUNNING"), names));
  EXPECT_FALSE(EventConcerns(MakeEvent("replica", "hellox-1", "RUNNING"), names));
}

}  // namespace
}  // namespace serve::cli
