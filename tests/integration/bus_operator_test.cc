// `serve start` in operator mode (the default): nats-server trusts an operator Serve made, each
// service connects as its role's JWT user, and each worker as a user of its own, named by its
// replica id, that the server holds to that replica's subjects. A worker's user that reaches
// for other replicas' requests is refused by the server, and the system keeps serving.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nats/nats.h>
#include <signal.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "bus/jwt.h"
#include "bus/nats_signature.h"
#include "integration/nats_probe.h"
#include "support/process.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

constexpr char kNamespace[] = "optest";

// A worker's JWT user for a NatsProbe: the JWT and the nonce signed with its seed, through
// nats.c's credential callbacks.
class JwtUser {
 public:
  explicit JwtUser(const bus::Creds& creds) : creds_(creds) {
    auto key = bus::Nkey::FromSeed(creds.seed, bus::NkeyType::kUser);
    if (key.ok()) key_.emplace(std::move(*key));
  }
  // Without a valid seed the probe connects with no credentials, which the server refuses.
  void Configure(natsOptions* options) {
    if (key_.has_value()) {
      natsOptions_SetUserCredentialsCallbacks(options, &JwtUser::Jwt, this, &JwtUser::Sign, this);
    }
  }

 private:
  static natsStatus Jwt(char** jwt, char**, void* closure) {
    *jwt = strdup(static_cast<JwtUser*>(closure)->creds_.jwt.c_str());
    return NATS_OK;
  }
  static natsStatus Sign(char** error_text, unsigned char** signature, int* size, const char* nonce,
                         void* closure) {
    return bus::SignNonceForNats(*static_cast<JwtUser*>(closure)->key_, nonce, error_text,
                                 signature, size);
  }

  bus::Creds creds_;
  std::optional<bus::Nkey> key_;
};

class BusOperatorTest : public ::testing::Test {
 protected:
  std::vector<std::string> ServeCommand(const std::vector<std::string>& args,
                                        const std::string& run_dir = "") {
    std::vector<std::string> argv = {BinDir() + "/serve",
                                     "--address",
                                     nats_url_,
                                     "--run-dir",
                                     run_dir.empty() ? run_dir_ : run_dir,
                                     "--namespace",
                                     kNamespace};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  CommandResult Serve(const std::vector<std::string>& args) {
    return RunCommand(ServeCommand(args));
  }
  std::vector<pid_t> RecordedPids() { return RecordedPidList(run_dir_); }
  std::string EnvironOf(const std::string& process) {
    std::ifstream in(run_dir_ + "/pids/" + process + ".pid");
    pid_t pid = 0;
    in >> pid;
    return ReadFile("/proc/" + std::to_string(pid) + "/environ");
  }
  // nats-server's clients, from its monitoring port (by curl: its answers are chunked).
  nlohmann::json Connections() {
    auto connz = RunCommand(
        {"curl", "-sf",
         "http://127.0.0.1:" + std::to_string(monitor_port_) + "/connz?auth=1&limit=1024"});
    auto json = nlohmann::json::parse(connz.output, nullptr, false);
    return json.is_object() ? json["connections"] : nlohmann::json::array();
  }
  void TearDown() override {
    // The instance's logs go with the test's directory: show them while they are there.
    if (HasFailure())
      std::cout << "the instance's logs:" << InstanceLogTails(run_dir_) << std::endl;
    if (fs::exists(run_dir_ + "/pids")) {
      Serve({"shutdown"});
      for (pid_t pid : RecordedPids()) kill(pid, SIGKILL);
    }
  }

  TempDir dir_;
  std::string run_dir_ = dir_.path() + "/run";
  int nats_port_ = FreePort();
  int monitor_port_ = FreePort();
  int http_port_ = FreePort();
  std::string nats_url_ = "nats://127.0.0.1:" + std::to_string(nats_port_);
};

TEST_F(BusOperatorTest, EachWorkerIsItsOwnUserAndCannotReadOtherReplicasRequests) {
  auto started = Serve({"start", "--http-port", std::to_string(http_port_), "--dashboard-port", "0",
                        "--node-metrics-port", "0", "--checkpointer-metrics-port", "0",
                        "--nats-monitor-port", std::to_string(monitor_port_)});
  ASSERT_EQ(started.exit_code, 0) << started.output;

  // The credentials: a private directory of private files, no secret on a command line or in
  // an environment, each service pointed at its own role's file.
  std::string creds = run_dir_ + "/creds";
  EXPECT_EQ(fs::status(creds).permissions() & fs::perms::all, fs::perms::owner_all);
  for (const char* file : {"admin.creds", "controller.creds", "proxy.creds", "node.creds",
                           "checkpointer.creds", "worker-signing.key", "nats-operator.conf"}) {
    auto perms = fs::status(creds + "/" + file).permissions();
    EXPECT_EQ(perms & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write) << file;
  }
  EXPECT_FALSE(fs::exists(creds + "/worker.creds"));  // workers get users of their own
  EXPECT_FALSE(fs::exists(run_dir_ + "/bus-credentials"));
  auto signing = bus::ParseWorkerSigningKey(ReadFile(creds + "/worker-signing.key"));
  ASSERT_TRUE(signing.ok()) << signing.error();
  for (pid_t pid : RecordedPids()) {
    std::string cmdline = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
    EXPECT_THAT(cmdline, Not(HasSubstr(signing->key.seed())));
  }
  EXPECT_THAT(EnvironOf("proxy"), HasSubstr("SERVE_NATS_CREDS=" + creds + "/proxy.creds"));
  EXPECT_THAT(EnvironOf("controller"),
              HasSubstr("SERVE_NATS_CREDS=" + creds + "/controller.creds"));
  EXPECT_THAT(EnvironOf("replica"), HasSubstr("SERVE_NATS_CREDS=" + creds + "/node.creds"));
  EXPECT_THAT(EnvironOf("replica"),
              HasSubstr("SERVE_WORKER_SIGNING_KEY_FILE=" + creds + "/worker-signing.key"));

  // Two replicas: the CLI deploys as the admin, from the run directory's admin.creds.
  std::string config = dir_.path() + "/two.yaml";
  WriteFile(config,
            "deployments:\n  - name: hello\n    route_prefix: /hello\n    runtime: "
            "builtin:hello\n    num_replicas: 2\n    resources: {num_cpus: 0.25}\n    "
            "user_config: {message: \"hello world\"}\n");
  auto deployed = Serve({"deploy", config});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;
  EXPECT_EQ(HttpGet(http_port_, "/hello").body, "hello world");

  // Each worker is connected as a user of its own, named by its replica id.
  std::set<std::string> worker_users, replica_ids;
  ASSERT_TRUE(WaitUntil([&] {
    worker_users.clear();
    replica_ids.clear();
    for (const auto& connection : Connections()) {
      std::string name = connection.value("name", "");
      if (name.rfind("serve-replica hello", 0) != 0) continue;
      std::string replica = name.substr(std::string("serve-replica ").size());
      if (connection.value("name_tag", "") != replica) return false;
      worker_users.insert(connection.value("authorized_user", ""));
      replica_ids.insert(replica);
    }
    return replica_ids.size() == 2 && worker_users.size() == 2;
  })) << Connections().dump();
  // ... distinct from the services' users, which are the roles'.
  std::set<std::string> role_names;
  for (const auto& connection : Connections()) role_names.insert(connection.value("name_tag", ""));
  for (const char* role : {"controller", "proxy", "node", "checkpointer", "admin"}) {
    EXPECT_EQ(role_names.count(std::string(kNamespace) + "-" + role), 1u) << role;
  }

  // A user made for one replica, exactly as its worker's (same key, same name), may not read
  // the requests of all replicas, nor another replica's requests, control orders or answers.
  std::string own = *replica_ids.begin();
  std::string other = *replica_ids.rbegin();
  auto minted = bus::MintWorkerUser(*signing, own);
  ASSERT_TRUE(minted.ok()) << minted.error();
  const std::string ns = kNamespace;
  for (const std::string& subject :
       {ns + ".replica.>", ns + ".replica.*", ns + ".replica." + other,
        ns + ".replica." + other + ".ctl", "_INBOX." + ns + ".worker." + other + ".>", ns + ".>"}) {
    SCOPED_TRACE(subject);
    JwtUser user(*minted);
    NatsProbe probe(nats_url_, [&](natsOptions* options) { user.Configure(options); });
    ASSERT_TRUE(probe.connected());
    probe.Subscribe(subject);
    EXPECT_TRUE(probe.WaitForViolation(subject)) << "errors seen: " << probe.errors();
  }
  // A user signed by a key the account does not list is refused outright.
  auto stranger = bus::Nkey::Generate(bus::NkeyType::kAccount);
  ASSERT_TRUE(stranger.ok());
  auto forged = bus::MintWorkerUser({signing->account, std::move(*stranger)}, own);
  ASSERT_TRUE(forged.ok());
  JwtUser forged_user(*forged);
  EXPECT_FALSE(NatsProbe(nats_url_, [&](natsOptions* options) {
                 forged_user.Configure(options);
               }).connected());

  // The system keeps serving, both replicas included.
  for (int i = 0; i < 20; ++i) {
    auto response = HttpGet(http_port_, "/hello");
    ASSERT_EQ(response.status, 200) << response.body;
  }
  auto status = nlohmann::json::parse(Serve({"status", "--json"}).output, nullptr, false);
  ASSERT_TRUE(status.is_object());
  EXPECT_EQ(status["deployments"][0]["status"], "HEALTHY");

  // A client without the admin's credentials is refused.
  auto elsewhere = RunCommand(ServeCommand({"status"}, dir_.path() + "/other"));
  EXPECT_NE(elsewhere.exit_code, 0);
  EXPECT_THAT(elsewhere.output, HasSubstr("Authorization"));

  ASSERT_EQ(Serve({"shutdown"}).exit_code, 0);
  for (pid_t pid : RecordedPids()) EXPECT_TRUE(WaitUntil([&] { return !ProcessAlive(pid); }));
}

}  // namespace
}  // namespace serve::testing
