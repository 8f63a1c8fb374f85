// The `serve` CLI as a newcomer uses it: start, deploy, status, delete, shutdown, and the
// errors it gives for bad input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "integration/logged_process.h"
#include "support/process.h"

namespace serve::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
namespace fs = std::filesystem;

class CliTest : public ::testing::Test {
 protected:
  std::vector<std::string> ServeCommand(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {BinDir() + "/serve", "--address", nats_url_, "--run-dir",
                                     run_dir_, "--namespace", "clitest"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  CommandResult Serve(std::vector<std::string> args) { return RunCommand(ServeCommand(args)); }
  // `serve start` on `http_port`. A failure carries the CLI's answer and the end of every
  // service's log, which the test's directory takes with it.
  ::testing::AssertionResult Start(int http_port) {
    auto started = Serve({"start", "--http-port", std::to_string(http_port)});
    if (started.exit_code == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "serve start exited with " << started.exit_code << ":\n"
                                         << started.output << LogTails();
  }
  std::string LogTails() { return InstanceLogTails(run_dir_); }
  // `serve run`, left running with its output in a file.
  LoggedProcess ServeRun(std::vector<std::string> args) {
    args.insert(args.begin(), "run");
    return LoggedProcess(ServeCommand(args), dir_.path() + "/run-" + std::to_string(++files_) +
                                                 ".log");
  }
  std::string WriteConfig(const std::string& yaml) {
    std::string path = dir_.path() + "/config-" + std::to_string(++files_) + ".yaml";
    WriteFile(path, yaml);
    return path;
  }
  // The deployments `serve status --json` lists; {"<status failed>"} when it fails.
  std::vector<std::string> DeployedNames() {
    auto status = nlohmann::json::parse(Serve({"status", "--json"}).output, nullptr, false);
    if (!status.is_object()) return {"<status failed>"};
    std::vector<std::string> names;
    for (const auto& d : status["deployments"]) names.push_back(d["name"]);
    return names;
  }
  std::vector<pid_t> RecordedPids() { return RecordedPidList(run_dir_); }
  void TearDown() override {
    // The instance's logs go with the test's directory: show them while they are there.
    if (HasFailure()) std::cout << "the instance's logs:" << LogTails() << std::endl;
    // Whatever happened, leave nothing running.
    if (fs::exists(run_dir_ + "/pids")) {
      Serve({"shutdown"});
      for (pid_t pid : RecordedPids()) kill(pid, SIGKILL);
    }
  }

  TempDir dir_;
  std::string run_dir_ = dir_.path() + "/run";
  int nats_port_ = FreePort();
  std::string nats_url_ = "nats://127.0.0.1:" + std::to_string(nats_port_);
  int files_ = 0;
};

TEST_F(CliTest, StartDeployStatusShutdownLeavesNothingBehind) {
  int http_port = FreePort();
  auto started = Serve({"start", "--http-port", std::to_string(http_port)});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_THAT(started.output, HasSubstr("Serve is running in namespace 'clitest'"));
  EXPECT_THAT(started.output, HasSubstr("nats-server started by serve"));

  auto again = Serve({"start", "--http-port", std::to_string(http_port)});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("already running"));
  EXPECT_THAT(again.output, HasSubstr("Nothing was started"));

  auto deployed = Serve({"deploy", "examples/hello/serve.yaml"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  EXPECT_THAT(deployed.output, HasSubstr("HEALTHY"));
  auto response = HttpGet(http_port, "/hello");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "hello world");

  auto status = Serve({"status", "--json"});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  auto json = nlohmann::json::parse(status.output, nullptr, false);
  ASSERT_TRUE(json.is_object()) << status.output;
  ASSERT_EQ(json["deployments"].size(), 1u);
  EXPECT_EQ(json["deployments"][0]["status"], "HEALTHY");
  EXPECT_EQ(json["deployments"][0]["replicas"][0]["state"], "RUNNING");
  EXPECT_EQ(json["nodes"].size(), 1u);
  EXPECT_EQ(json["proxies"].size(), 1u);

  auto table = Serve({"status"});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_THAT(table.output, HasSubstr("DEPLOYMENT"));
  EXPECT_THAT(table.output, HasSubstr("hello"));

  std::vector<pid_t> pids = RecordedPids();
  ASSERT_EQ(pids.size(), 6u);  // nats-server, the four services and their supervisor
  auto stopped = Serve({"shutdown"});
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_THAT(stopped.output, HasSubstr("Serve stopped"));
  for (pid_t pid : pids) {
    EXPECT_TRUE(WaitUntil([&] { return !ProcessAlive(pid); })) << "pid " << pid << " still runs";
  }
  EXPECT_FALSE(PortOpen(nats_port_));
  EXPECT_FALSE(PortOpen(http_port));
  // The replica workers are gone too.
  EXPECT_EQ(RunCommand({"pgrep", "-f", "serve-replica worker.*" + run_dir_}).output, "");
}

// `serve start --bus-auth password` runs nats-server with a password per role: the credentials
// are files only their owner reads, never on a command line, each service has its own role's,
// and a client without them is refused. --insecure-bus is the open mode, said loudly.
TEST_F(CliTest, StartGivesEachServiceItsOwnBusUserAndKeepsSecretsOffCommandLines) {
  int http_port = FreePort();
  auto started =
      Serve({"start", "--bus-auth", "password", "--http-port", std::to_string(http_port)});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  for (const char* file : {"/bus-credentials", "/nats.conf"}) {
    auto perms = fs::status(run_dir_ + file).permissions();
    EXPECT_EQ(perms & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write) << file;
  }
  std::string credentials = ReadFile(run_dir_ + "/bus-credentials");
  std::istringstream lines(credentials);
  std::map<std::string, std::string> passwords;
  for (std::string role, user, password; lines >> role;) {
    if (role[0] == '#') {
      std::getline(lines, role);
      continue;
    }
    lines >> user >> password;
    passwords[role] = password;
  }
  ASSERT_EQ(passwords.size(), 6u) << credentials;
  // No password on any command line; each service's environment holds its own role's only.
  for (pid_t pid : RecordedPids()) {
    std::string cmdline = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
    for (const auto& [role, password] : passwords) EXPECT_THAT(cmdline, Not(HasSubstr(password)));
  }
  auto environ_of = [&](const std::string& process) {
    std::ifstream in(run_dir_ + "/pids/" + process + ".pid");
    pid_t pid = 0;
    in >> pid;
    return ReadFile("/proc/" + std::to_string(pid) + "/environ");
  };
  EXPECT_THAT(environ_of("proxy"), HasSubstr("SERVE_NATS_USER=clitest-proxy"));
  EXPECT_THAT(environ_of("proxy"), Not(HasSubstr(passwords["admin"])));
  EXPECT_THAT(environ_of("controller"), HasSubstr("SERVE_NATS_USER=clitest-controller"));
  EXPECT_THAT(environ_of("replica"), HasSubstr("SERVE_WORKER_NATS_USER=clitest-worker"));

  // The CLI of the same user finds the admin's credentials; a client without them is refused.
  auto deployed = Serve({"deploy", "examples/hello/serve.yaml"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  EXPECT_EQ(HttpGet(http_port, "/hello").status, 200);
  auto elsewhere = RunCommand({BinDir() + "/serve", "--address", nats_url_, "--run-dir",
                               dir_.path() + "/other", "--namespace", "clitest", "status"});
  EXPECT_NE(elsewhere.exit_code, 0);
  EXPECT_THAT(elsewhere.output, HasSubstr("Authorization"));
  ASSERT_EQ(Serve({"shutdown"}).exit_code, 0);
  for (pid_t pid : RecordedPids()) EXPECT_TRUE(WaitUntil([&] { return !ProcessAlive(pid); }));

  auto open = Serve({"start", "--insecure-bus", "--http-port", std::to_string(http_port)});
  ASSERT_EQ(open.exit_code, 0) << open.output;
  EXPECT_THAT(open.output, HasSubstr("WARNING: --insecure-bus"));
  EXPECT_FALSE(fs::exists(run_dir_ + "/bus-credentials"));
  EXPECT_FALSE(fs::exists(run_dir_ + "/creds"));
  auto anyone = RunCommand({BinDir() + "/serve", "--address", nats_url_, "--run-dir",
                            dir_.path() + "/other", "--namespace", "clitest", "status"});
  EXPECT_EQ(anyone.exit_code, 0) << anyone.output;
}

// A shell that runs `x=$(serve start)`, or a CI step, waits until every holder of its pipe
// closes it: a service that inherited the pipe would hold that wait for as long as it runs.
TEST_F(CliTest, ServicesAndWorkersInheritNothingFromTheShellThatStartedThem) {
  InheritablePipe pipe;  // `serve start` inherits both ends
  int http_port = FreePort();
  ASSERT_TRUE(Start(http_port));
  auto deployed = Serve({"deploy", "examples/hello/serve.yaml"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;

  std::vector<pid_t> pids = RecordedPids();
  EXPECT_EQ(pids.size(), 6u);  // the supervisor, nats-server and the four services
  std::string workers = RunCommand({"pgrep", "-f", "serve-replica worker.*" + run_dir_}).output;
  std::istringstream worker_pids(workers);
  for (pid_t pid; worker_pids >> pid;) pids.push_back(pid);
  EXPECT_EQ(pids.size(), 7u) << "no worker found";
  for (pid_t pid : pids) {
    EXPECT_THAT(SharedDescriptors(pid, getpid()), IsEmpty())
        << ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  }
  // The shell's wait ends as soon as it closes its own write end.
  pipe.CloseWriteEnd();
  EXPECT_TRUE(pipe.Ended()) << "a process still holds the pipe's write end";
}

TEST_F(CliTest, DeployWithoutAnInstanceSaysHowToStartOne) {
  auto result = Serve({"deploy", "examples/hello/serve.yaml"});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr("serve start"));
  auto status = Serve({"status"});
  EXPECT_NE(status.exit_code, 0);
  EXPECT_THAT(status.output, HasSubstr("serve start"));
  auto watch = Serve({"status", "--watch"});
  EXPECT_NE(watch.exit_code, 0);
  EXPECT_THAT(watch.output, HasSubstr("serve start"));
}

TEST_F(CliTest, DeployOfACompressedTarIsRefusedBeforeAnythingRuns) {
  WriteFile(dir_.path() + "/code.tar.gz", std::string("\x1f\x8b\x08\x00", 4) + "rest");
  std::string config = WriteConfig(
      "deployments:\n"
      "  - name: app\n"
      "    runtime: command\n"
      "    artifact: code.tar.gz\n"
      "    command: [\"python3\", \"server.py\"]\n");
  // No instance runs: the file is refused before the CLI looks for one.
  auto result = Serve({"deploy", config});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr("gzip-compressed tar"));
  EXPECT_THAT(result.output, HasSubstr("gunzip"));
  EXPECT_THAT(result.output, Not(HasSubstr("serve start")));
  auto run = Serve({"run", config});
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.output, HasSubstr("gzip-compressed tar"));
  EXPECT_FALSE(fs::exists(run_dir_ + "/pids")) << "nothing was started";
}

TEST_F(CliTest, RunStartsServesAndOnSigtermUndoesEverythingItDid) {
  int http_port = FreePort();
  LoggedProcess run =
      ServeRun({"examples/hello/serve.yaml", "--http-port", std::to_string(http_port)});
  ASSERT_TRUE(run.WaitForOutput("Serving. Press Ctrl-C to stop.")) << run.Output();
  EXPECT_THAT(run.Output(), HasSubstr("nats-server started by serve"));
  EXPECT_THAT(run.Output(), HasSubstr("HEALTHY"));
  auto response = HttpGet(http_port, "/hello");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "hello world");
  std::vector<pid_t> pids = RecordedPids();
  ASSERT_EQ(pids.size(), 6u);  // nats-server, the four services and their supervisor

  EXPECT_EQ(run.Terminate(), 0) << run.Output();
  EXPECT_THAT(run.Output(), HasSubstr("deleted hello"));
  EXPECT_THAT(run.Output(), HasSubstr("Stopped the Serve instance this command started"));
  for (pid_t pid : pids) EXPECT_FALSE(ProcessAlive(pid)) << "pid " << pid << " still runs";
  EXPECT_TRUE(RecordedPids().empty());
  auto listener = [](int port) {
    return RunCommand({"sh", "-c", "ss -ltnp 'sport = :" + std::to_string(port) + "'"}).output;
  };
  EXPECT_FALSE(PortOpen(nats_port_)) << listener(nats_port_);
  EXPECT_FALSE(PortOpen(http_port)) << listener(http_port);
  EXPECT_TRUE(WaitUntil([&] {
    return RunCommand({"pgrep", "-f", "serve-replica worker.*" + run_dir_}).output.empty();
  }));
}

TEST_F(CliTest, RunAgainstARunningInstanceDeletesOnlyItsOwnDeployment) {
  int http_port = FreePort();
  ASSERT_TRUE(Start(http_port));
  std::vector<pid_t> pids = RecordedPids();
  ASSERT_EQ(Serve({"deploy", "examples/hello/serve.yaml"}).exit_code, 0);

  std::string mine = WriteConfig(
      "deployments:\n  - name: mine\n    runtime: builtin:hello\n"
      "    user_config: {message: \"mine\"}\n    resources: {num_cpus: 0.1}\n");
  LoggedProcess run = ServeRun({mine});
  ASSERT_TRUE(run.WaitForOutput("Serving. Press Ctrl-C to stop.")) << run.Output();
  EXPECT_THAT(run.Output(), HasSubstr("already running"));
  EXPECT_EQ(HttpGet(http_port, "/mine").body, "mine");

  EXPECT_EQ(run.Terminate(), 0) << run.Output();
  EXPECT_THAT(run.Output(), HasSubstr("deleted mine"));
  EXPECT_THAT(run.Output(), HasSubstr("keeps running"));
  // The controller no longer routes there; the proxy hears of it a moment later.
  EXPECT_TRUE(WaitUntil([&] { return HttpGet(http_port, "/mine").status == 404; }));
  EXPECT_EQ(HttpGet(http_port, "/hello").body, "hello world");
  for (pid_t pid : pids) EXPECT_TRUE(ProcessAlive(pid)) << "pid " << pid << " was stopped";
  EXPECT_THAT(DeployedNames(), ElementsAre("hello"));
}

TEST_F(CliTest, RunThatCannotServeCleansUpAfterItself) {
  int http_port = FreePort();
  ASSERT_TRUE(Start(http_port));
  ASSERT_EQ(Serve({"deploy", "examples/hello/serve.yaml"}).exit_code, 0);

  // Refused by the controller: nothing of it was deployed, so nothing is deleted.
  std::string clash = WriteConfig(
      "deployments:\n  - name: clash\n    route_prefix: /hello\n    runtime: builtin:echo\n");
  auto refused = Serve({"run", clash});
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_THAT(refused.output, HasSubstr("/hello"));
  EXPECT_THAT(refused.output, Not(HasSubstr("deleted")));
  EXPECT_EQ(HttpGet(http_port, "/hello").body, "hello world");

  // Stopped while it waits for a deployment no node can hold: that deployment goes again.
  std::string big = WriteConfig(
      "deployments:\n  - name: big\n    runtime: builtin:echo\n"
      "    resources: {num_cpus: 100000}\n");
  LoggedProcess run = ServeRun({big});
  ASSERT_TRUE(run.WaitForOutput("big: UPDATING")) << run.Output();
  EXPECT_EQ(run.Terminate(), 0) << run.Output();
  EXPECT_THAT(run.Output(), HasSubstr("deleted big"));
  EXPECT_THAT(DeployedNames(), ElementsAre("hello"));
}

TEST_F(CliTest, RunWithAnInvalidFileSaysWhyAndStartsNothing) {
  std::string path = WriteConfig(
      "deployments:\n  - name: a\n    runtime: builtin:hello\n    num_replicas: -1\n");
  auto result = Serve({"run", path});
  EXPECT_NE(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr(path + ":4"));
  EXPECT_THAT(result.output, HasSubstr("num_replicas"));
  EXPECT_FALSE(PortOpen(nats_port_));
  EXPECT_TRUE(RecordedPids().empty());
  EXPECT_FALSE(fs::exists(run_dir_));
}

TEST_F(CliTest, ShutdownWithNothingRunningSaysSo) {
  auto result = Serve({"shutdown"});
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.output, HasSubstr("Nothing to stop"));
}

TEST_F(CliTest, BadConfigFilesNameTheFieldAndLine) {
  struct Case {
    std::string yaml;
    std::vector<std::string> expected;
  };
  std::vector<Case> cases = {
      {"deployments:\n  - name: a\n    runtime: builtin:hello\n    num_replicas: [\n",
       {"invalid YAML"}},
      {"deployments:\n  - name: a\n    runtime: builtin:nope\n",
       {":3", "runtime", "builtin:hello"}},
      {"deployments:\n  - name: a\n    runtime: builtin:hello\n    num_replicas: -1\n",
       {":4", "num_replicas"}},
      {"deployments:\n  - name: a\n    runtime: builtin:hello\n    replicas: 2\n",
       {":4", "replicas", "num_replicas"}},
      {"deployments:\n  - name: a\n    runtime: builtin:hello\n  - name: a\n    runtime: "
       "builtin:echo\n",
       {"a", "line 2", "line 4"}},
      {"deployments:\n  - name: a\n    runtime: builtin:hello\n    route_prefix: /x\n  - name: b\n"
       "    runtime: builtin:echo\n    route_prefix: /x\n",
       {"route_prefix", "/x"}},
      {"\x01\x02\xff garbage", {"config-"}},
  };
  for (const auto& c : cases) {
    std::string path = WriteConfig(c.yaml);
    auto result = Serve({"deploy", path});
    EXPECT_NE(result.exit_code, 0) << c.yaml;
    for (const auto& expected : c.expected) {
      EXPECT_THAT(result.output, HasSubstr(expected)) << "for config:\n" << c.yaml;
    }
  }
  auto missing = Serve({"deploy", dir_.path() + "/no-such-file.yaml"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_THAT(missing.output, HasSubstr("no-such-file.yaml"));
}

TEST_F(CliTest, BadFlagsAreRefused) {
  EXPECT_NE(Serve({"start", "--http-port", "99999"}).exit_code, 0);
  auto ns = RunCommand({BinDir() + "/serve", "--namespace", "bad.ns", "status"});
  EXPECT_NE(ns.exit_code, 0);
  EXPECT_THAT(ns.output, HasSubstr("namespace"));
  EXPECT_NE(Serve({"frobnicate"}).exit_code, 0);
}

}  // namespace
}  // namespace serve::testing
