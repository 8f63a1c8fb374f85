#include "log/log.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "support/process.h"

namespace serve::log {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

class LogTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // The next test's logger replaces this one; lines in between go to stderr.
    spdlog::set_default_logger(spdlog::stderr_logger_mt("after-" + std::to_string(++count_)));
  }
  Status InitTo(Format format, const Context& context, double max_mb = 100) {
    Options options;
    options.component = "tester";
    options.format = format;
    options.file = dir_ + "/test.log";
    options.max_file_mb = max_mb;
    options.max_files = 2;
    return Init(options, context);
  }
  std::string Read(const std::string& name = "test.log") {
    spdlog::default_logger()->flush();
    std::ifstream in(dir_ + "/" + name);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::vector<std::string> Lines(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  serve::testing::TempDir temp_;
  const std::string& dir_ = temp_.path();
  static inline int count_ = 0;
};

TEST_F(LogTest, TextLinesCarryTheProcessAndScopeFields) {
  ASSERT_TRUE(InitTo(Format::kText, {"node-1", "", ""}).ok());
  spdlog::info("plain line");
  {
    Scope request({"hello", "hello-1a2b", "req-9"});
    spdlog::warn("inside a request");
    {
      Scope inner({{}, {}, "req-10"});
      spdlog::info("nested");
    }
    spdlog::info("outer again");
    EXPECT_EQ(CurrentRequestId(), "req-9");
  }
  spdlog::info("after");
  auto lines = Lines(Read());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_THAT(lines[0], HasSubstr(" info tester["));
  EXPECT_THAT(lines[0], HasSubstr("] node=node-1 plain line"));
  EXPECT_THAT(lines[1],
              HasSubstr("warning tester[" + std::to_string(getpid()) +
                        "] node=node-1 deployment=hello replica=hello-1a2b request=req-9 inside"));
  EXPECT_THAT(lines[2], HasSubstr("replica=hello-1a2b request=req-10 nested"));
  EXPECT_THAT(lines[3], HasSubstr("request=req-9 outer again"));
  EXPECT_THAT(lines[4], HasSubstr("node=node-1 after"));
  EXPECT_THAT(lines[4], Not(HasSubstr("request=")));
}

TEST_F(LogTest, TextLinesCannotBeForged) {
  ASSERT_TRUE(InitTo(Format::kText, {"n", "", ""}).ok());
  spdlog::info("first\n2026-01-01 00:00:00.000 error forged line\r\x01");
  auto lines = Lines(Read());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("first\\n2026-01-01 00:00:00.000 error forged line\\x0d\\x01"));
}

TEST_F(LogTest, JsonLinesAreValidWhateverTheMessage) {
  ASSERT_TRUE(InitTo(Format::kJson, {"node-2", "dep", "dep-1"}).ok());
  std::string hostile = "quote \" backslash \\ newline \n tab \t bell \x07 bad utf8 \xff\xfe end";
  {
    Scope scope({{}, {}, "id \"x\""});
    spdlog::error("{}", hostile);
  }
  spdlog::info("caf\xc3\xa9");  // valid UTF-8 passes as it is
  auto lines = Lines(Read());
  ASSERT_EQ(lines.size(), 2u);
  auto line = nlohmann::json::parse(lines[0], nullptr, false);
  ASSERT_FALSE(line.is_discarded()) << lines[0];
  EXPECT_EQ(line["level"], "error");
  EXPECT_EQ(line["component"], "tester");
  EXPECT_EQ(line["pid"], getpid());
  EXPECT_EQ(line["node"], "node-2");
  EXPECT_EQ(line["deployment"], "dep");
  EXPECT_EQ(line["replica"], "dep-1");
  EXPECT_EQ(line["request_id"], "id \"x\"");
  EXPECT_EQ(
      line["msg"],
      "quote \" backslash \\ newline \n tab \t bell \x07 bad utf8 \xef\xbf\xbd\xef\xbf\xbd end");
  std::string time = line["time"];
  EXPECT_EQ(time.size(), 27u) << time;  // 2026-11-30T11:00:00.123456Z
  EXPECT_EQ(time.back(), 'Z');
  auto second = nlohmann::json::parse(lines[1], nullptr, false);
  ASSERT_FALSE(second.is_discarded());
  EXPECT_EQ(second["msg"], "caf\xc3\xa9");
}

TEST_F(LogTest, RequestLinesGoThroughTheSameFile) {
  ASSERT_TRUE(InitTo(Format::kJson, {"node-3", "", ""}).ok());
  {
    RequestLog requests;
    requests.Write({"GET", "/hello", 200, 1.5, "hello", "hello-1", "r-1"});
    requests.Write({"POST", "/x", 503, std::nan(""), "x", "", "r-2"});
    spdlog::info("an ordinary line");
  }  // flushes
  std::vector<nlohmann::json> lines;
  // The background thread writes them: wait for all three.
  for (int i = 0; i < 200 && lines.size() < 3; ++i) {
    lines.clear();
    for (const auto& text : Lines(Read())) lines.push_back(nlohmann::json::parse(text));
    if (lines.size() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(lines.size(), 3u);
  nlohmann::json get, post;
  for (const auto& line : lines) {
    if (line.value("request_id", "") == "r-1") get = line;
    if (line.value("request_id", "") == "r-2") post = line;
  }
  EXPECT_EQ(get["method"], "GET");
  EXPECT_EQ(get["path"], "/hello");
  EXPECT_EQ(get["status"], 200);
  EXPECT_DOUBLE_EQ(get["latency_ms"].get<double>(), 1.5);
  EXPECT_EQ(get["deployment"], "hello");
  EXPECT_EQ(get["replica"], "hello-1");
  EXPECT_EQ(get["node"], "node-3");
  EXPECT_EQ(post["status"], 503);
  EXPECT_EQ(post["latency_ms"], 0) << "a latency that is not a number is written as 0";
  EXPECT_FALSE(post.contains("replica"));
}

TEST_F(LogTest, TheFileRotatesBySize) {
  ASSERT_TRUE(InitTo(Format::kText, {"n", "", ""}, /*max_mb=*/0.01).ok());  // ~10 KB
  std::string filler(200, 'x');
  for (int i = 0; i < 200; ++i) spdlog::info("line {} {}", i, filler);
  EXPECT_TRUE(fs::exists(dir_ + "/test.1.log"));
  EXPECT_TRUE(fs::exists(dir_ + "/test.2.log"));
  EXPECT_FALSE(fs::exists(dir_ + "/test.3.log")) << "at most max_files older files";
  EXPECT_LE(fs::file_size(dir_ + "/test.log"), 11000u);
  EXPECT_THAT(Read(), HasSubstr("line 199 "));
}

TEST_F(LogTest, BadSettingsAreClearErrors) {
  Options options;
  options.component = "tester";
  options.level = "loud";
  EXPECT_THAT(Init(options).message(), HasSubstr("unknown log level 'loud'"));
  options.level = "info";
  options.file = "/proc/serve-cannot-write-here.log";
  Status status = Init(options);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("cannot write the log file /proc/serve-cannot"));
  EXPECT_THAT(status.message(), HasSubstr("--log-file"));
  options.file = dir_ + "/x.log";
  options.max_files = 0;
  EXPECT_THAT(Init(options).message(), HasSubstr("rotated log files"));
  EXPECT_THAT(ParseFormat("xml").error(), HasSubstr("use 'text' or 'json'"));
}

}  // namespace
TEST(RateLimit, LetsOneLineThroughPerIntervalAndCountsTheRest) {
  RateLimit limit(1.0);
  uint64_t suppressed = 99;
  EXPECT_TRUE(limit.Allow(100.0, &suppressed));
  EXPECT_EQ(suppressed, 0u);
  EXPECT_FALSE(limit.Allow(100.1, &suppressed));
  EXPECT_FALSE(limit.Allow(100.5, &suppressed));
  EXPECT_FALSE(limit.Allow(100.99, &suppressed));
  EXPECT_TRUE(limit.Allow(101.0, &suppressed));
  EXPECT_EQ(suppressed, 3u);  // the next line says how many were held back
  EXPECT_TRUE(limit.Allow(205.0, &suppressed));
  EXPECT_EQ(suppressed, 0u);
}

}  // namespace serve::log
