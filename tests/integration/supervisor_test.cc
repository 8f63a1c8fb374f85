// The supervisor of `serve start`: kill -9 of each service of a local instance under load, and
// it serves again without anyone acting. The deadlines asserted are generous liveness bounds;
// the measured times are printed (`measured: ...`) and recorded in the test's XML output.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "bus/roles.h"
#include "integration/bus_client.h"
#include "support/load.h"
#include "support/process.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr char kNamespace[] = "suptest";

void Report(const std::string& what, double seconds) {
  std::cout << "measured: " << what << ": " << seconds << " s" << std::endl;
  ::testing::Test::RecordProperty(what, std::to_string(seconds));
}

double SecondsSince(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

class SupervisedInstanceTest : public ::testing::Test {
 protected:
  std::vector<std::string> ServeCommand(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {BinDir() + "/serve", "--address", nats_url_,
                                     "--run-dir",         run_dir_,    "--namespace",
                                     kNamespace};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  CommandResult Serve(std::vector<std::string> args) { return RunCommand(ServeCommand(args)); }

  // A local instance serving builtin:echo at /echo, which names the replica that answered.
  void StartServing() {
    auto started = Serve({"start", "--http-port", std::to_string(http_port_)});
    ASSERT_EQ(started.exit_code, 0) << started.output;
    std::string config = dir_.path() + "/echo.yaml";
    WriteFile(config,
              "deployments:\n  - name: echo\n    runtime: builtin:echo\n"
              "    resources: {num_cpus: 0.25}\n");
    auto deployed = Serve({"deploy", config});
    ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  }

  void TearDown() override {
    // The instance's logs go with the test's directory: show them while they are there.
    if (HasFailure())
      std::cout << "the instance's logs:" << InstanceLogTails(run_dir_) << std::endl;
    // Whatever happened, leave nothing running.
    if (fs::exists(run_dir_ + "/pids")) {
      Serve({"shutdown"});
      for (const auto& [name, pid] : RecordedPids(run_dir_)) kill(pid, SIGKILL);
    }
  }

  pid_t Pid(const std::string& process) {
    std::ifstream in(run_dir_ + "/pids/" + process + ".pid");
    pid_t pid = 0;
    in >> pid;
    return pid;
  }

  LoadGenerator::Options Load() {
    LoadGenerator::Options options;
    options.port = http_port_;
    options.clients = 8;
    options.target = "/echo";
    options.key = JsonField("replica");
    options.duration = std::chrono::seconds(90);
    return options;
  }

  nlohmann::json Status() {
    auto status = Serve({"status", "--json"});
    return nlohmann::json::parse(status.output, nullptr, false);
  }

  // The first replica of the first deployment, once status answers with one.
  std::string FirstReplicaId() {
    std::string id;
    EXPECT_TRUE(WaitUntil([&] {
      nlohmann::json status = Status();
      if (!status.is_object() || status["deployments"].empty() ||
          status["deployments"][0]["replicas"].empty()) {
        return false;
      }
      id = status["deployments"][0]["replicas"][0]["id"];
      return true;
    }));
    return id;
  }

  // The service as the supervisor last reported it in `serve status --json`; null if absent.
  nlohmann::json Service(const std::string& name) {
    nlohmann::json status = Status();
    if (!status.is_object()) return nullptr;
    for (const auto& supervisor : status["supervisors"]) {
      for (const auto& service : supervisor["services"]) {
        if (service["name"] == name) return service;
      }
    }
    return nullptr;
  }

  // Kills `process` (a pid file name) with SIGKILL and returns when its pid file names a new
  // process; false if that does not happen within 20 s.
  bool KillAndWaitForNewPid(const std::string& process, Clock::time_point* killed_at) {
    pid_t old = Pid(process);
    EXPECT_GT(old, 0) << process;
    if (old <= 0) return false;
    *killed_at = Clock::now();
    EXPECT_EQ(kill(old, SIGKILL), 0);
    return WaitUntil([&] {
      pid_t now = Pid(process);
      return now > 0 && now != old && ProcessAlive(now);
    });
  }

  // `serve status` shows one restart of `name`, with its cause.
  void ExpectOneRestartShown(const std::string& name) {
    EXPECT_TRUE(WaitUntil([&] {
      nlohmann::json service = Service(name);
      return service.is_object() && service["restarts"] == 1 && service["state"] == "RUNNING";
    })) << Status().dump(2);
    nlohmann::json service = Service(name);
    if (service.is_object()) {
      EXPECT_EQ(service["last_exit"], "killed by signal 9 (Killed)");
    }
  }

  // `serve start --foreground` as systemd runs it, its output in `log` under dir_.
  Process StartInForeground(const std::string& log) {
    return Process(
        ServeCommand({"start", "--foreground", "--http-port", std::to_string(http_port_)}),
        dir_.path() + "/" + log);
  }
  // Until the foreground command says the instance runs, as it does once the controller, a node
  // and the proxy answer (the proxy's health alone comes before the controller's), and serves.
  bool WaitUntilServing(const std::string& log) {
    return WaitUntil(
        [&] {
          return ReadFile(dir_.path() + "/" + log).find("Running in the foreground") !=
                     std::string::npos &&
                 Pid("supervisor") > 0 && HttpGet(http_port_, "/-/healthz").status == 200;
        },
        std::chrono::seconds(60));
  }

  TempDir dir_;
  std::string run_dir_ = dir_.path() + "/run";
  int nats_port_ = FreePort();
  std::string nats_url_ = "nats://127.0.0.1:" + std::to_string(nats_port_);
  int http_port_ = FreePort();
};

TEST_F(SupervisedInstanceTest, KilledProxyServesAgainAtOnceAndOnlyItsRequestsFail) {
  StartServing();
  LoadGenerator::Options options = Load();
  LoadGenerator load(options);
  ASSERT_TRUE(load.WaitForRequests(300)) << load.Snapshot().Summary();

  Clock::time_point killed_at;
  pid_t old = Pid("proxy");
  ASSERT_EQ(kill(old, SIGKILL), 0);
  killed_at = Clock::now();
  // A new connection waits in the socket the supervisor keeps, until the new proxy answers.
  ASSERT_TRUE(WaitUntil([&] { return HttpGet(http_port_, "/echo").status == 200; },
                        std::chrono::seconds(20), std::chrono::milliseconds(1)));
  double took = SecondsSince(killed_at);
  Report("kill -9 proxy -> serving again", took);
  EXPECT_NE(Pid("proxy"), old);

  ASSERT_TRUE(load.WaitForMoreRequests(300)) << load.Snapshot().Summary();
  auto report = load.Stop();
  std::cout << report.Summary();
  // Only the requests in flight on the killed proxy fail: at most one per client, each without
  // an HTTP answer (the connection died with the proxy).
  EXPECT_LE(report.failed, static_cast<uint64_t>(options.clients)) << report.Summary();
  for (const auto& failure : report.failures) EXPECT_EQ(failure.status, 0) << failure.body;
  EXPECT_LT(took, 10);

  ExpectOneRestartShown("serve-proxy");
  // The restarted proxy is the same member to the controller, not a new one beside a lost one.
  nlohmann::json proxies = Status()["proxies"];
  ASSERT_EQ(proxies.size(), 1u) << proxies.dump(2);
  EXPECT_EQ(proxies[0]["state"], "HEALTHY");
  auto table = Serve({"status"});
  EXPECT_THAT(table.output, HasSubstr("RESTARTS"));
  EXPECT_THAT(table.output, HasSubstr("killed by signal 9 (Killed)"));
}

TEST_F(SupervisedInstanceTest, KilledControllerIsBackWithoutAFailedRequest) {
  StartServing();
  LoadGenerator load(Load());
  ASSERT_TRUE(load.WaitForRequests(300)) << load.Snapshot().Summary();
  std::string replica = FirstReplicaId();

  Clock::time_point killed_at;
  pid_t supervisor = Pid("supervisor");
  ASSERT_TRUE(KillAndWaitForNewPid("controller", &killed_at));
  // Another `serve start` meanwhile finds the instance and starts nothing.
  auto again = Serve({"start", "--http-port", std::to_string(http_port_)});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("already running"));
  EXPECT_EQ(Pid("supervisor"), supervisor);

  ASSERT_TRUE(WaitUntil([&] {
    nlohmann::json status = Status();
    return status.is_object() && status["deployments"].size() == 1 &&
           status["deployments"][0]["status"] == "HEALTHY";
  })) << Status().dump(2);
  double took = SecondsSince(killed_at);
  Report("kill -9 controller -> answering with its deployment HEALTHY again", took);
  // The restarted controller adopted the running replica instead of replacing it.
  EXPECT_EQ(FirstReplicaId(), replica);

  ASSERT_TRUE(load.WaitForMoreRequests(300)) << load.Snapshot().Summary();
  auto report = load.Stop();
  std::cout << report.Summary();
  EXPECT_EQ(report.failed, 0u) << report.Summary();
  EXPECT_LT(took, 20);
  ExpectOneRestartShown("serve-controller");
}

TEST_F(SupervisedInstanceTest, KilledCheckpointerIsBackWithoutAFailedRequest) {
  StartServing();
  LoadGenerator load(Load());
  ASSERT_TRUE(load.WaitForRequests(300)) << load.Snapshot().Summary();

  Clock::time_point killed_at;
  ASSERT_TRUE(KillAndWaitForNewPid("checkpointer", &killed_at));
  // Checkpoint reads are the controller's: as its user, from the instance's credentials.
  bus::Options as_controller;
  as_controller.url = nats_url_;
  as_controller.creds_file = run_dir_ + "/creds/controller.creds";
  as_controller.inbox_prefix = bus::InboxPrefix(kNamespace, bus::Role::kController);
  RawClient bus(as_controller);
  wire::CheckpointGetT get;
  get.key = "controller/state";
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto reply = bus.Request(std::string(kNamespace) + ".ckpt.get", wire::Pack(get));
        if (!reply.ok()) return false;
        auto decoded = wire::Unpack<wire::CheckpointGetReply>(reply->data);
        return decoded.ok() && decoded->error.empty() && decoded->found;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(5)));
  double took = SecondsSince(killed_at);
  Report("kill -9 checkpointer -> answering again", took);

  ASSERT_TRUE(load.WaitForMoreRequests(300)) << load.Snapshot().Summary();
  auto report = load.Stop();
  std::cout << report.Summary();
  EXPECT_EQ(report.failed, 0u) << report.Summary();
  EXPECT_LT(took, 10);
  ExpectOneRestartShown("serve-checkpointer");
}

TEST_F(SupervisedInstanceTest, KilledNodeAgentIsBackAndItsReplicaReplaced) {
  StartServing();
  LoadGenerator load(Load());
  ASSERT_TRUE(load.WaitForRequests(300)) << load.Snapshot().Summary();
  // However young the replica, the restarted agent's first heartbeat (a new incarnation that
  // runs no workers) tells the controller it is gone.
  std::set<std::string> before;
  for (const auto& [replica, stats] : load.Snapshot().keys) before.insert(replica);

  Clock::time_point killed_at;
  ASSERT_TRUE(KillAndWaitForNewPid("replica", &killed_at));
  double restarted = SecondsSince(killed_at);
  // The agent's workers died with it; serving again means a new replica answers.
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const auto& replica : load.Snapshot().KeysSentSince(killed_at)) {
          if (before.count(replica) == 0) return true;
        }
        return false;
      },
      std::chrono::seconds(30), std::chrono::milliseconds(5)))
      << Status().dump(2);
  double took = SecondsSince(killed_at);
  Report("kill -9 node agent -> agent restarted", restarted);
  Report("kill -9 node agent -> a new replica serving", took);

  ASSERT_TRUE(load.WaitForMoreRequests(300)) << load.Snapshot().Summary();
  auto report = load.Stop();
  std::cout << report.Summary();
  EXPECT_LT(took, 30);
  ExpectOneRestartShown("serve-replica");
}

TEST_F(SupervisedInstanceTest, KilledSupervisorLeavesTheServicesRunning) {
  StartServing();
  auto before = RecordedPids(run_dir_);
  ASSERT_EQ(before.size(), 6u);  // nats-server, the four services and the supervisor
  ASSERT_EQ(kill(before["supervisor"], SIGKILL), 0);
  ASSERT_TRUE(WaitUntil([&] { return !ProcessAlive(before["supervisor"]); }));
  for (const auto& [name, pid] : before) {
    if (name != "supervisor") {
      EXPECT_TRUE(ProcessAlive(pid)) << name;
    }
  }
  EXPECT_EQ(HttpGet(http_port_, "/echo").status, 200);

  // `serve start` says the instance runs unsupervised, and starts nothing.
  auto again = Serve({"start", "--http-port", std::to_string(http_port_)});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("already running"));
  EXPECT_THAT(again.output, HasSubstr("supervisor is not running"));
  // The services are still stopped by `serve shutdown`.
  auto stopped = Serve({"shutdown"});
  EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
  for (const auto& [name, pid] : before) {
    EXPECT_TRUE(WaitUntil([&, pid = pid] { return !ProcessAlive(pid); })) << name << " still runs";
  }
}

TEST_F(SupervisedInstanceTest, ShutdownWithoutTheBusStopsEverything) {
  StartServing();
  auto pids = RecordedPids(run_dir_);
  ASSERT_EQ(pids.size(), 6u);
  // No NATS answers at this address: only the supervisor, found in the run directory, is told.
  auto stopped = RunCommand({BinDir() + "/serve", "--address",
                             "nats://127.0.0.1:" + std::to_string(FreePort()), "--run-dir",
                             run_dir_, "--namespace", kNamespace, "shutdown"});
  EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_THAT(stopped.output, HasSubstr("Serve stopped"));
  for (const auto& [name, pid] : pids) {
    EXPECT_TRUE(WaitUntil([&, pid = pid] { return !ProcessAlive(pid); })) << name << " still runs";
  }
  EXPECT_FALSE(PortOpen(nats_port_));
  EXPECT_FALSE(PortOpen(http_port_));
}

TEST_F(SupervisedInstanceTest, StartOnAPortInUseSaysSoAndLeavesNothingRunning) {
  int taken = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(http_port_));
  ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(taken, 1), 0);

  auto started = Serve({"start", "--http-port", std::to_string(http_port_)});
  close(taken);
  EXPECT_NE(started.exit_code, 0) << started.output;
  EXPECT_THAT(started.output, HasSubstr("address already in use"));
  EXPECT_THAT(started.output, HasSubstr("--http-port"));
  for (const auto& [name, pid] : RecordedPids(run_dir_)) {
    EXPECT_FALSE(ProcessAlive(pid)) << name << " still runs";
  }
  EXPECT_FALSE(PortOpen(nats_port_));
}

// `serve start --foreground`, as systemd runs it (deploy/systemd): it serves until SIGTERM, then
// stops the whole instance and exits 0.
TEST_F(SupervisedInstanceTest, ForegroundStartServesUntilSigtermThenStopsEverything) {
  Process foreground = StartInForeground("foreground.log");
  ASSERT_TRUE(WaitUntilServing("foreground.log")) << ReadFile(dir_.path() + "/foreground.log");
  std::string config = dir_.path() + "/hello.yaml";
  WriteFile(config,
            "deployments:\n  - name: hello\n    runtime: builtin:hello\n"
            "    resources: {num_cpus: 0.25}\n");
  auto deployed = Serve({"deploy", config});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  EXPECT_EQ(HttpGet(http_port_, "/hello").status, 200);
  // A second foreground start refuses rather than watch an instance it did not start.
  auto second = Serve({"start", "--foreground", "--http-port", std::to_string(http_port_)});
  EXPECT_NE(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("already runs"));

  auto pids = RecordedPids(run_dir_);
  ASSERT_EQ(pids.size(), 6u);
  int status = foreground.Stop(std::chrono::seconds(60));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << status << "\n"
      << ReadFile(dir_.path() + "/foreground.log");
  for (const auto& [name, pid] : pids) {
    EXPECT_FALSE(ProcessAlive(pid)) << name << " still runs";
  }
  EXPECT_FALSE(PortOpen(http_port_));
  EXPECT_FALSE(PortOpen(nats_port_));
}

// When the instance ends by itself, the foreground command fails, so that the service manager
// starts it again; nothing of the old instance is left to get in the new one's way.
TEST_F(SupervisedInstanceTest, ForegroundStartFailsWhenItsSupervisorIsKilled) {
  Process foreground = StartInForeground("foreground.log");
  ASSERT_TRUE(WaitUntilServing("foreground.log")) << ReadFile(dir_.path() + "/foreground.log");
  auto pids = RecordedPids(run_dir_);
  ASSERT_EQ(kill(pids["supervisor"], SIGKILL), 0);
  ASSERT_TRUE(WaitUntil([&] { return !foreground.Running(); }, std::chrono::seconds(60)));
  int status = foreground.wait_status();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << status;
  std::string output = ReadFile(dir_.path() + "/foreground.log");
  EXPECT_THAT(output, HasSubstr("ended by itself"));
  for (const auto& [name, pid] : pids) {
    EXPECT_TRUE(WaitUntil([&, pid = pid] { return !ProcessAlive(pid); })) << name << " still runs";
  }
  // Started again, as systemd would, it serves.
  Process again = StartInForeground("again.log");
  EXPECT_TRUE(WaitUntilServing("again.log")) << ReadFile(dir_.path() + "/again.log");
  int stopped = again.Stop(std::chrono::seconds(60));
  EXPECT_TRUE(WIFEXITED(stopped) && WEXITSTATUS(stopped) == 0) << stopped;
}

// The default run directory is under $HOME (/var/lib/serve for root), so `serve shutdown`
// finds the instance from any directory and any shell of the same user.
TEST(SupervisedInstance, ShutdownFromAnotherDirectoryLeavesNoProcess) {
  TempDir home, first, second;
  int nats_port = FreePort(), http_port = FreePort();
  std::map<std::string, std::string> env = {{"HOME", home.path()}};
  // A namespace of its own: root's default run directory is outside the test's directories.
  std::string ns = "suptest-" + std::to_string(getpid());
  auto serve = [&](const std::string& cwd, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"env",         "-C",
                                     cwd,           BinDir() + "/serve",
                                     "--address",   "nats://127.0.0.1:" + std::to_string(nats_port),
                                     "--namespace", ns};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, env);
  };
  std::string run_dir = geteuid() == 0 ? "/var/lib/serve/" + ns : home.path() + "/.serve/" + ns;
  struct RemoveRunDir {
    std::string path;
    ~RemoveRunDir() {
      if (geteuid() == 0) fs::remove_all(path);
    }
  } remove_run_dir{run_dir};
  auto started = serve(first.path(), {"start", "--http-port", std::to_string(http_port)});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  auto pids = RecordedPids(run_dir);
  // Whatever happens below, leave nothing running.
  struct Cleanup {
    std::map<std::string, pid_t>& pids;
    ~Cleanup() {
      for (const auto& [name, pid] : pids) kill(pid, SIGKILL);
    }
  } cleanup{pids};
  ASSERT_EQ(pids.size(), 6u);
  std::string config = first.path() + "/hello.yaml";
  WriteFile(config,
            "deployments:\n  - name: hello\n    runtime: builtin:hello\n"
            "    resources: {num_cpus: 0.25}\n");
  auto deployed = serve(first.path(), {"deploy", "hello.yaml"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;

  auto stopped = serve(second.path(), {"shutdown"});
  EXPECT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_THAT(stopped.output, HasSubstr("Serve stopped"));
  for (const auto& [name, pid] : pids) {
    EXPECT_TRUE(WaitUntil([&, pid = pid] { return !ProcessAlive(pid); })) << name << " still runs";
  }
  EXPECT_FALSE(PortOpen(nats_port));
  EXPECT_FALSE(PortOpen(http_port));
  EXPECT_TRUE(WaitUntil([&] {
    return RunCommand({"pgrep", "-f", "serve-replica worker.*" + run_dir}).output.empty();
  }));
  EXPECT_TRUE(RecordedPids(run_dir).empty());
}

}  // namespace
}  // namespace serve::testing
