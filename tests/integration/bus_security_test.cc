// The shipped nats-server configuration (deploy/nats/nats-server.conf) with every service,
// worker and CLI call under its own role's user: the system deploys and serves, and what a role
// has no business doing is refused by the server itself, while the system keeps serving.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <algorithm>
#include <cctype>
#include <mutex>
#include <string>

#include "integration/cluster.h"
#include "integration/nats_probe.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kDeployJson[] =
    R"({"deployments": [{"name": "stolen", "route_prefix": "/stolen", "runtime": "builtin:echo"}]})";

class BusSecurityTest : public ::testing::Test {
 protected:
  static Cluster::Options Secure() {
    Cluster::Options options;
    options.secure_bus = true;
    return options;
  }
  bool StillServes() {
    auto hello = cluster_.Get("/hello");
    auto deployment = cluster_.Deployment("hello");
    return hello.status == 200 && hello.body == "hello world" && deployment.is_object() &&
           deployment["status"] == "HEALTHY";
  }
  Cluster cluster_{Secure()};
};

TEST_F(BusSecurityTest, EveryServiceUnderItsOwnUserDeploysAndServes) {
  cluster_.Deploy(kHelloConfig);
  EXPECT_TRUE(cluster_.WaitForStatus("/hello", 200));
  EXPECT_TRUE(StillServes());
  // Logs come from the node agents (the `logs` subject) and events from the controller.
  auto logs = cluster_.Serve({"logs", "hello", "--tail", "5"});
  EXPECT_EQ(logs.exit_code, 0) << logs.output;
  EXPECT_THAT(logs.output, HasSubstr("ready on serve.replica."));
  // No service met a refusal on the way.
  for (const char* name : {"controller", "proxy", "checkpointer", "node-1"}) {
    EXPECT_THAT(Lower(cluster_.Log(name)), Not(HasSubstr("permissions violation"))) << name;
  }
  EXPECT_THAT(Lower(cluster_.nats().Log()), Not(HasSubstr("violation")));
}

TEST_F(BusSecurityTest, WorkersAndTheirUserCodeHoldNoBusCredentialInTheirEnvironment) {
  cluster_.Deploy(kHelloConfig);
  auto ids = cluster_.RunningIds("hello");
  ASSERT_EQ(ids.size(), 1u);
  pid_t worker = Cluster::WorkerPid(*ids.begin());
  ASSERT_GT(worker, 0);
  std::string environment = ReadFile("/proc/" + std::to_string(worker) + "/environ");
  EXPECT_THAT(environment, Not(HasSubstr("SERVE_NATS_PASSWORD")));
  EXPECT_THAT(environment, Not(HasSubstr("SERVE_WORKER_NATS")));
  EXPECT_THAT(environment, Not(HasSubstr(cluster_.password_of("worker"))));
  EXPECT_THAT(environment, Not(HasSubstr(cluster_.password_of("node"))));

  // A command deployment's process, the user code itself, sees none either.
  std::string dir = cluster_.dir() + "/env-app";
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/server.py", R"(import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "\n".join(k + "=" + v for k, v in sorted(os.environ.items())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
)");
  cluster_.Deploy(
      "deployments:\n  - name: env\n    route_prefix: /env\n    runtime: command\n"
      "    working_dir: " +
      dir +
      "\n    command: [\"/usr/bin/python3\", \"server.py\"]\n"
      "    resources: {num_cpus: 0.1}\n");
  auto answer = cluster_.Get("/env");
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_THAT(answer.body, HasSubstr("SERVE_DEPLOYMENT=env"));
  EXPECT_THAT(answer.body, Not(HasSubstr("SERVE_NATS_USER")));
  EXPECT_THAT(answer.body, Not(HasSubstr("SERVE_NATS_PASSWORD")));
  EXPECT_THAT(answer.body, Not(HasSubstr(cluster_.password_of("worker"))));
}

TEST_F(BusSecurityTest, TheServerRefusesWhatARoleMustNotDoAndTheSystemKeepsServing) {
  cluster_.Deploy(kHelloConfig);
  ASSERT_TRUE(StillServes());
  const std::string ns = cluster_.ns();

  struct Attempt {
    const char* role;
    bool subscribe;  // else publish
    std::string subject;
    std::string data;
  };
  const std::vector<Attempt> attempts = {
      // Only the admin deploys, deletes and shuts down.
      {"proxy", false, ns + ".ctl.deploy", kDeployJson},
      {"node", false, ns + ".ctl.delete", R"({"names": ["hello"]})"},
      {"worker", false, ns + ".ctl.shutdown", "{}"},
      // Only the controller publishes route tables, shutdown notices, orders, checkpoints.
      {"worker", false, ns + ".routes", "garbage"},
      {"proxy", false, ns + ".shutdown", "garbage"},
      {"admin", false, ns + ".node.node-1.stop", "{}"},
      {"proxy", false, ns + ".ckpt.put", "garbage"},
      // Only node agents report exits and node heartbeats.
      {"worker", false, ns + ".node.exited", "garbage"},
      {"proxy", false, ns + ".hb.node", "garbage"},
      // A worker answers its own requests, and reads nobody else's traffic or answers.
      {"worker", true, ns + ".routes", ""},
      {"worker", true, ns + ".ckpt.>", ""},
      {"worker", true, ns + ".>", ""},
      {"worker", true, "_INBOX.>", ""},
      {"proxy", true, ns + ".ctl.deploy", ""},
      {"proxy", true, "_INBOX." + ns + ".controller.>", ""},
  };
  for (const Attempt& attempt : attempts) {
    SCOPED_TRACE(std::string(attempt.role) +
                 (attempt.subscribe ? " subscribing to " : " publishing to ") + attempt.subject);
    NatsProbe probe(cluster_.nats_url(), cluster_.user_of(attempt.role),
                    cluster_.password_of(attempt.role));
    ASSERT_TRUE(probe.connected()) << probe.connect_error();
    if (attempt.subscribe) {
      probe.Subscribe(attempt.subject);
    } else {
      probe.Publish(attempt.subject, attempt.data);
    }
    EXPECT_TRUE(probe.WaitForViolation(attempt.subject)) << "errors seen: " << probe.errors();
  }
  // Nothing of it took effect.
  EXPECT_TRUE(cluster_.Deployment("stolen").is_null());
  EXPECT_TRUE(StillServes());
  EXPECT_EQ(cluster_.Get("/stolen").status, 404);

  // The admin may deploy, as the CLI does.
  NatsProbe admin(cluster_.nats_url(), cluster_.user_of("admin"), cluster_.password_of("admin"));
  ASSERT_TRUE(admin.connected()) << admin.connect_error();
}

TEST_F(BusSecurityTest, AnonymousClientsAndWrongPasswordsAreRefused) {
  NatsProbe anonymous(cluster_.nats_url(), "", "");
  EXPECT_FALSE(anonymous.connected());
  EXPECT_THAT(Lower(anonymous.connect_error()), HasSubstr("authorization"));

  NatsProbe guessed(cluster_.nats_url(), cluster_.user_of("admin"), "not-the-password");
  EXPECT_FALSE(guessed.connected());

  // The CLI without the admin's credentials is told so.
  auto status = RunCommand(cluster_.ServeCommand({"status"}));
  EXPECT_NE(status.exit_code, 0);
  EXPECT_THAT(Lower(status.output), HasSubstr("authorization"));

  cluster_.Deploy(kHelloConfig);
  EXPECT_TRUE(StillServes());
}

}  // namespace
}  // namespace serve::testing
