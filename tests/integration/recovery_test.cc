// Recovery (issue 6) with real processes and real stores: a controller restarted under load,
// a total loss of every process rebuilt from the store alone, and a store that goes away and
// comes back. Each scenario runs against file://, redis:// (redis-server) and s3:// (s3rver).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <iostream>
#include <set>

#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "support/load.h"
#include "support/servers.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

std::string BuildDir() { return fs::path(BinDir()).parent_path().string(); }
bool HaveSklearn() {
  return std::system("/usr/bin/python3 -c 'import sklearn' 2>/dev/null") == 0;
}

// The store a test runs against, with whatever server it needs.
class Store {
 public:
  explicit Store(const std::string& kind) : kind_(kind) {
    if (kind == "redis") {
      redis_ = std::make_unique<RedisServer>();
      available_ = redis_->available();
      uri_ = redis_->uri("/0?prefix=recovery");
    } else if (kind == "s3") {
      s3_ = std::make_unique<S3Server>();
      available_ = s3_->available();
      uri_ = s3_->uri("recovery");
      env_ = S3Server::Credentials();
    } else {
      uri_ = "file://" + dir_.path() + "/checkpoint";
    }
  }
  bool available() const { return available_; }
  const std::string& uri() const { return uri_; }
  const std::map<std::string, std::string>& env() const { return env_; }
  // Makes the store itself unreachable (for file://, the checkpointer in front of it).
  void Down(Cluster& cluster) {
    if (redis_) redis_->Stop();
    if (s3_) s3_->Stop();
    if (kind_ == "file") cluster.checkpointer().Kill();
  }
  void Up(Cluster& cluster) {
    if (redis_) redis_->Start();
    if (s3_) s3_->Start();
    if (kind_ == "file") cluster.StartCheckpointer();
  }

 private:
  std::string kind_;
  bool available_ = true;
  std::string uri_;
  std::map<std::string, std::string> env_;
  TempDir dir_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<S3Server> s3_;
};

class RecoveryTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    store_ = std::make_unique<Store>(GetParam());
    if (!store_->available()) {
      if (TestServersRequired()) FAIL() << GetParam() << " server is not installed";
      GTEST_SKIP() << GetParam() << " server is not installed; `./dev test` installs it";
    }
  }
  Cluster::Options ClusterOptions(int nodes = 1) const {
    Cluster::Options options;
    options.nodes = nodes;
    options.checkpoint_uri = store_->uri();
    options.env = store_->env();
    return options;
  }
  std::unique_ptr<Store> store_;
};

// kill -9 of the controller under load, then a new one: it adopts every running replica (same
// ids), shows RECOVERING meanwhile, and not one request fails.
TEST_P(RecoveryTest, ControllerRestartUnderLoadFailsNoRequest) {
  Cluster cluster(ClusterOptions());
  cluster.Deploy("deployments:\n"
                 "  - name: echo\n"
                 "    runtime: builtin:echo\n"
                 "    num_replicas: 2\n");
  auto ids = cluster.RunningIds("echo");
  ASSERT_EQ(ids.size(), 2u);

  LoadGenerator::Options options;
  options.port = cluster.http_port();
  options.clients = 8;
  options.target = "/echo";
  options.duration = std::chrono::seconds(60);
  LoadGenerator load(options);
  ASSERT_TRUE(load.WaitForRequests(300)) << load.Snapshot().Summary();

  cluster.controller().Kill();
  ASSERT_TRUE(load.WaitForMoreRequests(300)) << "traffic flows without a controller";
  cluster.StartController();
  bool saw_recovering = false;
  bool recovered = WaitUntil(
      [&] {
        nlohmann::json d = cluster.Deployment("echo");
        if (!d.is_object()) return false;
        if (d["status"] == "RECOVERING") saw_recovering = true;
        return d["status"] == "HEALTHY";
      },
      std::chrono::seconds(30), std::chrono::milliseconds(20));
  ASSERT_TRUE(recovered) << cluster.Status().dump(2) << cluster.Log("controller");
  // Polling may miss a short RECOVERING (each poll is a `serve status`); the log does not.
  EXPECT_TRUE(saw_recovering ||
              cluster.Log("controller").find("deployment echo: RECOVERING") != std::string::npos)
      << cluster.Log("controller");
  EXPECT_EQ(cluster.RunningIds("echo"), ids) << "adopted, not restarted";
  ASSERT_TRUE(load.WaitForMoreRequests(300));
  auto report = load.Stop();
  std::cout << report.Summary() << std::flush;
  ::testing::Test::RecordProperty("failed_requests", std::to_string(report.failed));
  EXPECT_EQ(report.failed, 0u) << report.Summary();
}

// Every process is killed, nats-server included, and the run directory is new: `serve start`
// pointed at the same store brings back every deployment, code included, without a deploy.
TEST_P(RecoveryTest, TotalLossComesBackFromTheStoreAlone) {
  constexpr int kBuiltins = 18;
  const bool with_python = HaveSklearn();
  {
    Cluster cluster(ClusterOptions());
    std::string yaml = "deployments:\n";
    for (int i = 0; i < kBuiltins; ++i) {
      yaml += "  - name: hello-" + std::to_string(i) + "\n    runtime: builtin:hello\n" +
              "    resources: {num_cpus: 0.1}\n    user_config: {message: \"hello " +
              std::to_string(i) + "\"}\n";
    }
    yaml += "  - name: counter\n    runtime: native\n    artifact: " + BuildDir() +
            "/examples/libcounter.so\n    resources: {num_cpus: 0.1}\n";
    if (with_python) {
      yaml +=
          "  - name: model\n    runtime: command\n    working_dir: " + fs::current_path().string() +
          "/examples/python-http\n" +
          "    command: [\"/usr/bin/python3\", \"server.py\"]\n    health_path: /healthz\n" +
          "    resources: {num_cpus: 0.1}\n";
    }
    cluster.Deploy(yaml);
    ASSERT_EQ(cluster.Get("/counter").status, 200);
    cluster.KillAll();
  }

  TempDir run;
  int http_port = FreePort();
  std::string nats = "nats://127.0.0.1:" + std::to_string(FreePort());
  std::vector<std::string> serve = {BinDir() + "/serve", "--address", nats, "--namespace",
                                    "itest", "--run-dir", run.path() + "/run"};
  auto command = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = serve;
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, store_->env(), std::chrono::seconds(90));
  };
  struct Shutdown {
    std::function<void()> fn;
    ~Shutdown() { fn(); }
  } shutdown{[&] { command({"shutdown"}); }};

  auto start = Clock::now();
  auto started = command({"start", "--checkpoint-path", store_->uri(), "--http-port",
                          std::to_string(http_port)});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  std::vector<std::string> targets;
  for (int i = 0; i < kBuiltins; ++i) targets.push_back("/hello-" + std::to_string(i));
  targets.push_back("/counter");
  bool serving = WaitUntil(
      [&] {
        for (const auto& target : targets) {
          if (HttpGet(http_port, target).status != 200) return false;
        }
        if (with_python) {
          auto answer = HttpRequest(http_port, "POST", "/model/predict",
                                    R"({"features": [[5.1, 3.5, 1.4, 0.2]]})");
          if (answer.status != 200) return false;
        }
        return true;
      },
      std::chrono::seconds(90), std::chrono::milliseconds(50));
  double took = std::chrono::duration<double>(Clock::now() - start).count();
  ASSERT_TRUE(serving) << command({"status"}).output
                       << ReadFile(run.path() + "/run/logs/controller.log");
  int deployments = kBuiltins + 1 + (with_python ? 1 : 0);
  std::cout << "measured: serve start -> " << deployments << " deployments serving after a "
            << "total loss (" << GetParam() << "): " << took << " s" << std::endl;
  ::testing::Test::RecordProperty("total_loss_recovery_s", std::to_string(took));
  EXPECT_EQ(HttpGet(http_port, "/hello-7").body, "hello 7");
}

// The store goes away: traffic and deploys go on, status warns of the checkpoint lag, and
// once the store is back the state is written (a new controller finds it).
TEST_P(RecoveryTest, StoreDownKeepsServingWarnsAndCatchesUp) {
  Cluster cluster(ClusterOptions());
  cluster.Deploy("deployments:\n  - name: hello\n    runtime: builtin:hello\n");
  store_->Down(cluster);
  cluster.Deploy("deployments:\n  - name: late\n    runtime: builtin:echo\n");
  EXPECT_EQ(cluster.Get("/hello").status, 200);
  EXPECT_EQ(cluster.Get("/late").status, 200);
  std::string warning;
  ASSERT_TRUE(WaitUntil([&] {
    nlohmann::json status = cluster.Status();
    warning = status.value("checkpoint_warning", "");
    return !warning.empty();
  })) << cluster.Log("controller");
  EXPECT_THAT(warning, HasSubstr("not checkpointed"));
  EXPECT_THAT(cluster.Serve({"status"}).output, HasSubstr("WARNING"));

  store_->Up(cluster);
  ASSERT_TRUE(WaitUntil(
      [&] {
        nlohmann::json status = cluster.Status();
        return status.is_object() && !status.contains("checkpoint_warning");
      },
      std::chrono::seconds(60)))
      << cluster.Log("controller");

  // What was deployed while the store was away survives a controller restart.
  cluster.controller().Kill();
  cluster.StartController();
  ASSERT_TRUE(WaitUntil([&] {
    nlohmann::json d = cluster.Deployment("late");
    return d.is_object() && d["status"] == "HEALTHY";
  })) << cluster.Status().dump(2);
  EXPECT_EQ(cluster.Get("/late").status, 200);
}

INSTANTIATE_TEST_SUITE_P(Stores, RecoveryTest, ::testing::Values("file", "redis", "s3"),
                         [](const auto& info) { return info.param; });

// A controller whose checkpoint write is refused because another one stored a newer generation
// stops acting and exits (code 3).
TEST(FencingTest, StaleControllerStepsDown) {
  Cluster cluster;
  cluster.Deploy("deployments:\n  - name: hello\n    runtime: builtin:hello\n");
  RawClient client(cluster.nats_url());
  wire::CheckpointPutT put;
  put.key = "controller/state";
  put.generation = 1000;
  wire::ControllerStateT state;
  state.generation = 1000;
  std::string bytes = wire::Pack(state);
  put.data.assign(bytes.begin(), bytes.end());
  auto stored = client.Request("itest.ckpt.put", wire::Pack(put));
  ASSERT_TRUE(stored.ok()) << stored.error();

  // The next change makes the controller write, and the store refuses its older generation.
  auto deployed = cluster.Serve({"deploy", "--no-wait", [&] {
    std::string path = cluster.dir() + "/more.yaml";
    WriteFile(path, "deployments:\n  - name: more\n    runtime: builtin:echo\n");
    return path;
  }()});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  ASSERT_TRUE(WaitUntil([&] { return !cluster.controller().Running(); }))
      << cluster.Log("controller");
  int status = cluster.controller().wait_status();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << status;
  EXPECT_THAT(cluster.Log("controller"), HasSubstr("stepping down"));
  EXPECT_EQ(cluster.Get("/hello").status, 200) << "the data plane keeps serving";
}

// A corrupt checkpoint stops the controller from acting, says why, and is left untouched.
TEST(CorruptCheckpointTest, IsRefusedAndLeftAlone) {
  TempDir store;
  fs::create_directories(store.path() + "/controller");
  std::string record = store.path() + "/controller/state.ckpt";
  WriteFile(record, "this is not a checkpoint");
  Cluster::Options options;
  options.checkpoint_uri = "file://" + store.path();
  options.wait_until_ready = false;
  Cluster cluster(options);
  CommandResult status;
  ASSERT_TRUE(WaitUntil([&] {
    status = cluster.Serve({"status"});
    return status.output.find("corrupt") != std::string::npos;
  })) << status.output;
  EXPECT_NE(status.exit_code, 0);
  EXPECT_THAT(status.output, HasSubstr("corrupt"));
  EXPECT_THAT(status.output, HasSubstr(record));
  std::string path = cluster.dir() + "/x.yaml";
  WriteFile(path, "deployments:\n  - name: x\n    runtime: builtin:echo\n");
  auto deploy = cluster.Serve({"deploy", path});
  EXPECT_NE(deploy.exit_code, 0);
  EXPECT_THAT(deploy.output, HasSubstr("checkpoint cannot be loaded"));
  EXPECT_EQ(ReadFile(record), "this is not a checkpoint");
}

}  // namespace
}  // namespace serve::testing

namespace serve::testing {
namespace {

// A controller started for another store than the checkpointer serves refuses to recover from
// it, and says which two differ.
TEST(StoreIdentityTest, ControllerRefusesACheckpointerOfAnotherStore) {
  Cluster cluster;
  cluster.controller().Kill();
  Process controller({BinDir() + "/serve-controller", "--address", cluster.nats_url(),
                      "--namespace", "itest", "--checkpoint-path", "redis://127.0.0.1:1/0"},
                     cluster.dir() + "/controller-2.log");
  CommandResult status;
  ASSERT_TRUE(WaitUntil([&] {
    status = cluster.Serve({"status"});
    return status.output.find("this checkpointer serves") != std::string::npos;
  })) << status.output << ReadFile(cluster.dir() + "/controller-2.log");
  EXPECT_NE(status.exit_code, 0);
  EXPECT_THAT(status.output, ::testing::HasSubstr("redis://127.0.0.1:1/0"));
  EXPECT_THAT(status.output, ::testing::HasSubstr("same --checkpoint-path"));
  controller.Stop();
}

}  // namespace
}  // namespace serve::testing
