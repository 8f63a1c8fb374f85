#include "cli/supervisor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "support/loop.h"
#include "support/process.h"

namespace serve::cli {
namespace {

using serve::testing::RunUntil;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(RestartBackoff, DoublesUpToTheCapAndStartsOverAfterAStableRun) {
  RestartBackoff backoff(RestartPolicy{0.1, 1, 30});
  std::vector<double> delays;
  for (int i = 0; i < 6; ++i) delays.push_back(backoff.NextDelay(0.5));
  EXPECT_THAT(delays, ElementsAre(0.1, 0.2, 0.4, 0.8, 1, 1));
  EXPECT_EQ(backoff.NextDelay(30), 0.1);  // up long enough: a fresh failure
  EXPECT_EQ(backoff.NextDelay(29), 0.2);
}

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    bus::Options options;
    options.url = nats_.url();
    auto bus = bus::Bus::Connect(&loop_, options);
    ASSERT_TRUE(bus.ok()) << bus.error();
    bus_ = std::move(*bus);
    ASSERT_TRUE(bus_->Subscribe(subjects_.events,
                                [this](bus::Message& m) {
                                  auto event = wire::Unpack<wire::Event>(m.data);
                                  if (event.ok())
                                    events_.push_back(event->name + " " + event->state);
                                })
                    .ok());
    ASSERT_TRUE(bus_->Flush().ok());
    ASSERT_TRUE(run_.Create().ok());
  }
  void TearDown() override {
    if (supervisor_ != nullptr && !stopped_) {
      supervisor_->Stop("the test ends");
      RunUntil(&loop_, [&] { return stopped_; });
    }
    supervisor_.reset();
    bus_->Close();
    bus_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // A process that runs `script` in sh.
  SupervisedProcess Shell(const std::string& name, const std::string& script,
                          bool infrastructure = false) {
    return SupervisedProcess{name, "test-" + name, {"/bin/sh", "-c", script}, -1, infrastructure};
  }

  Status Start(std::vector<SupervisedProcess> processes, double shutdown_grace_s = 30) {
    SupervisorOptions options;
    options.supervisor_id = "supervisor-test";
    options.run_dir = run_.path();
    options.processes = std::move(processes);
    options.restart = RestartPolicy{0.05, 0.2, 30, 0.5};
    options.heartbeat_period_s = 0.1;
    options.shutdown_grace_s = shutdown_grace_s;
    options.kill_timeout_s = 2;
    supervisor_ = std::make_unique<Supervisor>(&loop_, *bus_, subjects_, std::move(options));
    supervisor_->SetStoppedHandler([this] { stopped_ = true; });
    return supervisor_->Start();
  }

  const wire::SupervisedServiceT& Service(size_t index) {
    report_ = supervisor_->Report();
    return *report_.at(index);
  }

  testing::NatsServer nats_;
  testing::TempDir dir_;
  RunDir run_{dir_.path() + "/run"};
  bus::Subjects subjects_{"suptest"};
  uv_loop_t loop_;
  std::unique_ptr<bus::Bus> bus_;
  std::unique_ptr<Supervisor> supervisor_;
  std::vector<std::unique_ptr<wire::SupervisedServiceT>> report_;
  std::vector<std::string> events_;
  bool stopped_ = false;
};

TEST_F(SupervisorTest, RestartsAProcessThatExitsAndSaysHowItEnded) {
  ASSERT_TRUE(Start({Shell("crash", "echo 'about to fail: no model file'; exit 3")}).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return Service(0).restarts >= 2; }));
  EXPECT_EQ(Service(0).last_exit, "exited with code 3");
  ASSERT_TRUE(RunUntil(&loop_, [&] { return events_.size() >= 4; }));
  EXPECT_THAT(events_, ::testing::IsSupersetOf({"test-crash EXITED", "test-crash RESTARTED"}));
  // Each run's lines stay in the one log, marked off from each other.
  std::string log = testing::ReadFile(run_.LogPath("crash"));
  EXPECT_THAT(log, HasSubstr("about to fail: no model file"));
  EXPECT_THAT(log, HasSubstr("restart 1 of test-crash, which exited with code 3"));

  supervisor_->Stop("the test is done");
  ASSERT_TRUE(RunUntil(&loop_, [&] { return stopped_; }));
  int restarts = Service(0).restarts;
  EXPECT_EQ(Service(0).state, wire::SupervisedState::STOPPED);
  RunUntil(
      &loop_, [] { return false; }, 0.5);  // longer than any backoff: nothing restarts
  EXPECT_EQ(Service(0).restarts, restarts);
}

TEST_F(SupervisorTest, AKilledProcessIsBackWithANewPidAndItsPidFile) {
  ASSERT_TRUE(Start({Shell("sleeper", "exec sleep 60")}).ok());
  pid_t first = Service(0).pid;
  ASSERT_GT(first, 0);
  EXPECT_EQ(run_.LivePid("sleeper"), first);
  ASSERT_EQ(kill(first, SIGKILL), 0);
  ASSERT_TRUE(RunUntil(&loop_, [&] {
    return Service(0).state == wire::SupervisedState::RUNNING && Service(0).pid != first;
  }));
  EXPECT_EQ(Service(0).restarts, 1);
  EXPECT_EQ(Service(0).last_exit, "killed by signal 9 (Killed)");
  EXPECT_EQ(run_.LivePid("sleeper"), Service(0).pid);
}

TEST_F(SupervisorTest, AfterAShutdownNoticeNothingRestartsAndStragglersGetSigterm) {
  ASSERT_TRUE(Start({Shell("polite", "exec sleep 60"), Shell("stubborn", "exec sleep 60")},
                    /*shutdown_grace_s=*/0.3)
                  .ok());
  pid_t polite = Service(0).pid;
  wire::ShutdownNoticeT notice;
  notice.reason = "serve shutdown";
  ASSERT_TRUE(bus_->Publish(subjects_.shutdown, wire::Pack(notice)).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return supervisor_->stopping(); }));
  // One ends by itself, as a service that heard the notice does; it is not restarted.
  ASSERT_EQ(kill(polite, SIGTERM), 0);
  ASSERT_TRUE(RunUntil(&loop_, [&] { return stopped_; }));
  EXPECT_EQ(Service(0).restarts, 0);
  EXPECT_EQ(Service(1).restarts, 0);
  EXPECT_EQ(Service(1).last_exit, "killed by signal 15 (Terminated)");
  EXPECT_FALSE(run_.LivePid("polite").has_value());
  EXPECT_FALSE(run_.LivePid("stubborn").has_value());
}

TEST_F(SupervisorTest, ACleanExitIsNotRestartedBeforeTheShutdownNoticeCouldArrive) {
  ASSERT_TRUE(Start({Shell("told", "exit 0")}).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return Service(0).state == wire::SupervisedState::BACKOFF; }));
  // Well within the 0.5 s a clean exit waits, although the backoff alone is 0.05 s.
  RunUntil(
      &loop_, [] { return false; }, 0.2);
  EXPECT_EQ(Service(0).restarts, 0);
  wire::ShutdownNoticeT notice;
  ASSERT_TRUE(bus_->Publish(subjects_.shutdown, wire::Pack(notice)).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return stopped_; }));
  EXPECT_EQ(Service(0).restarts, 0);
  EXPECT_EQ(Service(0).state, wire::SupervisedState::STOPPED);
}

TEST_F(SupervisorTest, TheInfrastructureStopsAfterTheServices) {
  // On SIGTERM the infrastructure lists the pid files left: the services' are gone by then.
  std::string order = dir_.path() + "/order";
  ASSERT_TRUE(Start({Shell("infra",
                           "trap 'ls " + run_.path() + "/pids > " + order +
                               "; exit 0' TERM; while true; do sleep 0.05; done",
                           /*infrastructure=*/true),
                     Shell("service", "exec sleep 60")})
                  .ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return run_.LivePid("service").has_value(); }));
  supervisor_->Stop("the test is done");
  ASSERT_TRUE(RunUntil(&loop_, [&] { return stopped_; }));
  EXPECT_EQ(testing::ReadFile(order), "infra.pid\n");
}

TEST_F(SupervisorTest, AMissingExecutableFailsTheStartAndStopsTheRest) {
  Status started = Start({Shell("first", "exec sleep 60"),
                          SupervisedProcess{"missing", "test-missing", {"/nonexistent/serve-x"}}});
  EXPECT_FALSE(started.ok());
  EXPECT_THAT(started.message(), HasSubstr("/nonexistent/serve-x"));
  ASSERT_TRUE(RunUntil(&loop_, [&] { return stopped_; }));
  EXPECT_FALSE(run_.LivePid("first").has_value());
}

TEST_F(SupervisorTest, TheHeartbeatCarriesEveryProcess) {
  // Shared with the handler, which the fixture's teardown may still call after this body ends.
  auto received = std::make_shared<std::optional<wire::SupervisorHeartbeatT>>();
  auto& heartbeat = *received;
  ASSERT_TRUE(bus_->Subscribe(subjects_.hb_supervisor,
                              [received](bus::Message& m) {
                                auto decoded = wire::Unpack<wire::SupervisorHeartbeat>(m.data);
                                if (decoded.ok()) *received = std::move(*decoded);
                              })
                  .ok());
  ASSERT_TRUE(bus_->Flush().ok());
  ASSERT_TRUE(Start({Shell("a", "exec sleep 60"), Shell("b", "exec sleep 60")}).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return heartbeat.has_value(); }));
  EXPECT_EQ(heartbeat->supervisor_id, "supervisor-test");
  EXPECT_EQ(heartbeat->run_dir, run_.path());
  ASSERT_EQ(heartbeat->services.size(), 2u);
  EXPECT_EQ(heartbeat->services[0]->name, "test-a");
  EXPECT_EQ(heartbeat->services[0]->state, wire::SupervisedState::RUNNING);
  EXPECT_GT(heartbeat->services[1]->pid, 0);
}

}  // namespace
}  // namespace serve::cli
