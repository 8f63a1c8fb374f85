// A node agent running as root runs its workers, and so the user code, as an unprivileged user
// (`--worker-user`, nobody by default): the code it runs is read-only to it, its scratch
// directory is its own, and the node's other files are out of its reach.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "integration/cluster.h"

namespace serve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// The uid in /proc/<pid>/status (real, effective, saved and filesystem ones all the same).
std::string UidsOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Uid:", 0) == 0) return line.substr(4);
  }
  return "";
}

// A command deployment that reports what its process may do, as JSON.
constexpr char kProbeServer[] = R"(import json, os, http.server, urllib.parse
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as e:
        return type(e).__name__
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        replicas = q["replicas"][0]
        def write(path):
            with open(path, "w") as f:
                f.write("x")
        report = {
            "uid": os.getuid(), "euid": os.geteuid(), "home": os.environ.get("HOME"),
            "write_code": attempt(lambda: write(os.path.join(os.getcwd(), "planted"))),
            "write_home": attempt(lambda: write(os.path.join(os.environ["HOME"], "own"))),
            "list_replicas": attempt(lambda: os.listdir(replicas)),
            "read_spec": attempt(lambda: open(os.path.join(replicas, q["replica"][0] + ".spec")).read()),
            "become_root": attempt(lambda: os.setuid(0)),
        }
        body = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
)";

class WorkerUserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "only a root node agent switches users";
  }
};

TEST_F(WorkerUserTest, RootAgentRunsUserCodeAsNobodyWithItsCodeReadOnlyAndTheNodeOutOfReach) {
  Cluster cluster;
  std::string dir = cluster.dir() + "/probe-app";
  fs::create_directories(dir);
  WriteFile(dir + "/server.py", kProbeServer);
  cluster.Deploy(
      "deployments:\n  - name: probe\n    route_prefix: /probe\n    runtime: command\n"
      "    working_dir: " +
      dir +
      "\n    command: [\"/usr/bin/python3\", \"server.py\"]\n"
      "    user_config: {secret: do-not-share}\n"
      "    resources: {num_cpus: 0.1}\n");
  auto ids = cluster.RunningIds("probe");
  ASSERT_EQ(ids.size(), 1u);
  const std::string replica = *ids.begin();
  pid_t worker = Cluster::WorkerPid(replica);
  ASSERT_GT(worker, 0);
  EXPECT_EQ(UidsOf(worker), "\t65534\t65534\t65534\t65534") << "the worker runs as nobody";

  std::string replicas_dir = cluster.dir() + "/node-1/replicas";
  ASSERT_TRUE(fs::exists(replicas_dir + "/" + replica + ".spec")) << replicas_dir;
  auto answer = cluster.Get("/probe?replicas=" + replicas_dir + "&replica=" + replica);
  ASSERT_EQ(answer.status, 200) << answer.body;
  auto report = nlohmann::json::parse(answer.body, nullptr, false);
  ASSERT_TRUE(report.is_object()) << answer.body;
  EXPECT_EQ(report["uid"], 65534);
  EXPECT_EQ(report["euid"], 65534);
  EXPECT_EQ(report["write_code"], "PermissionError") << "its code is read-only to it";
  EXPECT_EQ(report["write_home"], "allowed") << "its scratch directory, $HOME, is its own";
  EXPECT_THAT(report["home"].get<std::string>(), HasSubstr(replica));
  EXPECT_EQ(report["list_replicas"], "PermissionError") << "other replicas are not listed";
  EXPECT_EQ(report["read_spec"], "PermissionError") << "specs (user_config) are the node's";
  EXPECT_EQ(report["become_root"], "PermissionError");

  // Built-in and native deployments switch too: the worker process itself is nobody.
  cluster.Deploy(
      "deployments:\n  - name: hello\n    runtime: builtin:hello\n"
      "    resources: {num_cpus: 0.1}\n");
  auto hello = cluster.RunningIds("hello");
  ASSERT_EQ(hello.size(), 1u);
  EXPECT_EQ(UidsOf(Cluster::WorkerPid(*hello.begin())), "\t65534\t65534\t65534\t65534");
  EXPECT_EQ(cluster.Get("/hello").status, 200);
}

TEST_F(WorkerUserTest, WorkerUserRootKeepsWorkersRoot) {
  Cluster::Options options;
  options.env["SERVE_WORKER_USER"] = "root";
  Cluster cluster(options);
  cluster.Deploy(
      "deployments:\n  - name: hello\n    runtime: builtin:hello\n"
      "    resources: {num_cpus: 0.1}\n");
  auto hello = cluster.RunningIds("hello");
  ASSERT_EQ(hello.size(), 1u);
  EXPECT_EQ(UidsOf(Cluster::WorkerPid(*hello.begin())), "\t0\t0\t0\t0");
}

TEST_F(WorkerUserTest, AnUnknownUserOrAWorkDirectoryTheWorkersCannotReachStopsTheAgentWithTheFix) {
  NatsServer nats;
  TempDir dir;
  auto agent = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {BinDir() + "/serve-replica", "--address", nats.url(),
                                     "--namespace", "wutest"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv, {}, std::chrono::seconds(30));
  };
  auto unknown = agent({"--work-dir", dir.path() + "/node", "--worker-user", "no-such-user-x"});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_THAT(unknown.output, HasSubstr("there is no user 'no-such-user-x'"));

  std::string closed = dir.path() + "/closed";
  fs::create_directories(closed);
  fs::permissions(closed, fs::perms::owner_all);
  auto unreachable = agent({"--work-dir", closed + "/node"});
  EXPECT_EQ(unreachable.exit_code, 2) << unreachable.output;
  EXPECT_THAT(unreachable.output, HasSubstr("cannot reach the node's work directory"));
  EXPECT_THAT(unreachable.output, HasSubstr(closed + " is mode 0700"));
  EXPECT_THAT(unreachable.output, HasSubstr("--work-dir"));
}

}  // namespace
}  // namespace serve::testing
