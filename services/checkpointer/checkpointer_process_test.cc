// The real serve-checkpointer executable against a real nats-server.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <map>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "support/loop.h"
#include "support/process.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

using serve::testing::RequestWhenAnswered;
using serve::testing::RunUntil;

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Binary() { return testing::BinDir() + "/serve-checkpointer"; }

class CheckpointerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    bus::Options options;
    options.url = nats_.url();
    auto bus = bus::Bus::Connect(&loop_, options);
    ASSERT_TRUE(bus.ok()) << bus.error();
    client_ = std::move(*bus);
  }

  void TearDown() override {
    client_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop_), 0);
    if (HasFailure()) std::cerr << "checkpointer log:\n" << testing::ReadFile(log_) << "\n";
  }

  testing::Process Start(std::vector<std::string> extra_args,
                         std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv = {Binary(), "--address",   nats_.url(), "--namespace",
                                     "cp",     "--log-level", "debug"};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    return testing::Process(argv, log_, std::move(env));
  }

  // Waits until the checkpointer answers, then returns its answer for `key`.
  wire::CheckpointGetReplyT GetWhenReady(const std::string& key) {
    wire::CheckpointGetT get;
    get.key = key;
    auto reply = RequestWhenAnswered(&loop_, *client_, subjects_.ckpt_get, wire::Pack(get));
    EXPECT_TRUE(reply.ok()) << reply.error();
    if (!reply.ok()) return {};
    auto parsed = wire::Unpack<wire::CheckpointGetReply>(reply->data);
    EXPECT_TRUE(parsed.ok()) << parsed.error();
    return parsed.ok() ? *parsed : wire::CheckpointGetReplyT{};
  }

  wire::CheckpointPutReplyT Put(const std::string& key, uint64_t generation,
                                const std::string& data) {
    wire::CheckpointPutT put;
    put.key = key;
    put.generation = generation;
    put.data.assign(data.begin(), data.end());
    auto reply = bus::RequestAndWait(&loop_, *client_, subjects_.ckpt_put, wire::Pack(put), 10);
    EXPECT_TRUE(reply.ok()) << reply.error();
    if (!reply.ok()) return {};
    auto parsed = wire::Unpack<wire::CheckpointPutReply>(reply->data);
    EXPECT_TRUE(parsed.ok()) << parsed.error();
    return parsed.ok() ? *parsed : wire::CheckpointPutReplyT{};
  }

  // Waits for `process` to end by itself and returns its exit code (-1: still running or
  // killed by a signal).
  int WaitForExit(testing::Process& process) {
    if (!testing::WaitUntil([&] { return !process.Running(); })) return -1;
    int status = process.Stop();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  testing::NatsServer nats_;
  testing::TempDir tmp_;
  std::string log_ = tmp_.path() + "/checkpointer.log";
  std::string store_ = tmp_.path() + "/store";
  bus::Subjects subjects_{"cp"};
  uv_loop_t loop_;
  std::unique_ptr<bus::Bus> client_;
};

TEST_F(CheckpointerProcessTest, AnswersAndExitsCleanlyOnShutdown) {
  auto process = Start({"--checkpoint-path", "file://" + store_});
  EXPECT_FALSE(GetWhenReady("controller/state").found);
  EXPECT_THAT(testing::ReadFile(log_),
              HasSubstr("checkpointer ready: store file://" + store_ + ", namespace cp"));
  ASSERT_EQ(Put("controller/state", 1, "desired state").error, "");
  auto get = GetWhenReady("controller/state");
  EXPECT_TRUE(get.found);
  EXPECT_EQ(std::string(get.data.begin(), get.data.end()), "desired state");
  EXPECT_TRUE(fs::exists(store_ + "/controller/state.ckpt"));

  ASSERT_TRUE(client_->Publish(subjects_.shutdown, wire::Pack(wire::ShutdownNoticeT{})).ok());
  EXPECT_EQ(WaitForExit(process), 0);
  EXPECT_THAT(testing::ReadFile(log_), HasSubstr("shutdown requested on cp.shutdown"));
}

TEST_F(CheckpointerProcessTest, ServesItsMetricsAndExitsCleanly) {
  int port = testing::FreePort();
  auto process =
      Start({"--checkpoint-path", "file://" + store_, "--metrics-port", std::to_string(port)});
  GetWhenReady("k");
  ASSERT_EQ(Put("controller/state", 1, "x").error, "");
  auto metrics = testing::HttpGet(port, "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body,
              HasSubstr("serve_checkpointer_requests_total{operation=\"put\",outcome=\"ok\"} 1\n"));
  EXPECT_THAT(metrics.body, HasSubstr("serve_checkpointer_store_healthy 1\n"));
  auto other = testing::HttpGet(port, "/");
  EXPECT_EQ(other.status, 404);
  EXPECT_THAT(other.body, HasSubstr("the checkpointer serves GET /metrics only"));
  process.Signal(SIGTERM);
  EXPECT_EQ(WaitForExit(process), 0);
}

// Its metrics are not worth an outage: a taken port is a warning that names the flag.
TEST_F(CheckpointerProcessTest, TakenMetricsPortIsAWarningAndTheStoreIsServed) {
  int port = nats_.port();  // taken by the nats-server
  auto process =
      Start({"--checkpoint-path", "file://" + store_, "--metrics-port", std::to_string(port)});
  EXPECT_FALSE(GetWhenReady("k").found);
  EXPECT_THAT(testing::ReadFile(log_), HasSubstr("choose another --metrics-port (0: none)"));
  process.Signal(SIGTERM);
  EXPECT_EQ(WaitForExit(process), 0);
}

TEST_F(CheckpointerProcessTest, SigtermExitsCleanly) {
  auto process = Start({"--checkpoint-path", "file://" + store_});
  GetWhenReady("k");
  process.Signal(SIGTERM);
  EXPECT_EQ(WaitForExit(process), 0);
}

TEST_F(CheckpointerProcessTest, StateSurvivesARestart) {
  {
    auto first = Start({"--checkpoint-path", "file://" + store_});
    GetWhenReady("k");
    ASSERT_EQ(Put("controller/state", 5, "v5").error, "");
    first.Signal(SIGTERM);
    ASSERT_EQ(WaitForExit(first), 0);
  }
  auto second = Start({}, {{"SERVE_CHECKPOINT_PATH", "file://" + store_}});
  auto get = GetWhenReady("controller/state");
  EXPECT_TRUE(get.found);
  EXPECT_EQ(get.generation, 5u);
  EXPECT_THAT(Put("controller/state", 4, "stale").error, HasSubstr("refused: generation 4"));
}

TEST_F(CheckpointerProcessTest, DefaultStoreIsUnderHome) {
  auto process = Start({}, {{"HOME", tmp_.path()}, {"SERVE_CHECKPOINT_PATH", ""}});
  GetWhenReady("k");
  ASSERT_EQ(Put("controller/state", 1, "x").error, "");
  EXPECT_TRUE(fs::exists(tmp_.path() + "/.serve/cp/checkpoint/controller/state.ckpt"));
}

TEST_F(CheckpointerProcessTest, UnknownSchemeExitsWithUsageError) {
  auto result =
      testing::RunCommand({Binary(), "--address", nats_.url(), "--checkpoint-path", "bogus://x"});
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_THAT(result.output, AllOf(HasSubstr("unknown checkpoint store scheme 'bogus'"),
                                   HasSubstr("file:///absolute/dir")));
}

TEST_F(CheckpointerProcessTest, UnusableStoreExitsWithUsageError) {
  testing::WriteFile(tmp_.path() + "/file", "x");
  for (const std::string& uri :
       {"file://" + tmp_.path() + "/file/store", std::string("redis://h/0"),
        std::string("s3://"), std::string("custom:///no/such/libstore.so"),
        std::string("/bare/path"), std::string("file://")}) {
    auto result =
        testing::RunCommand({Binary(), "--address", nats_.url(), "--checkpoint-path", uri});
    EXPECT_EQ(result.exit_code, 2) << uri << ": " << result.output;
    EXPECT_THAT(result.output, HasSubstr("serve-checkpointer: ")) << uri;
    EXPECT_THAT(result.output, Not(HasSubstr("checkpointer ready"))) << uri;
  }
}

TEST_F(CheckpointerProcessTest, InvalidNamespaceExitsWithUsageError) {
  auto result = testing::RunCommand(
      {Binary(), "--namespace", "a.b", "--checkpoint-path", "file://" + store_});
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_THAT(result.output, HasSubstr("namespace 'a.b'"));
}

}  // namespace
}  // namespace serve::checkpointer
