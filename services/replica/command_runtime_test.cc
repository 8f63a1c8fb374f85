#include "replica/command_runtime.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

namespace serve::replica {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

const std::string kSourceDir = SERVE_SOURCE_DIR;
const std::string kCommands = kSourceDir + "/tests/commands";
const std::string kPython = "/usr/bin/python3";

bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 20s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

// True when no process (not even a zombie) has this id.
bool ProcessGone(pid_t pid) { return kill(pid, 0) == -1 && errno == ESRCH; }

// True when no process is left in the group.
bool GroupGone(pid_t pgid) { return kill(-pgid, 0) == -1 && errno == ESRCH; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/command_runtime_test.XXXXXX";
    path_ = mkdtemp(name);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

RuntimeContext CommandContext(std::vector<std::string> command, std::string dir) {
  RuntimeContext context;
  context.spec.name = "echo";
  context.spec.runtime = "command";
  context.spec.command = std::move(command);
  context.spec.health_path = "/healthz";
  context.spec.startup_timeout_s = 20;
  context.spec.health_check_timeout_s = 5;
  context.spec.graceful_shutdown_timeout_s = 5;
  context.spec.max_concurrent_queries = 4;
  context.spec.user_config = R"({"threshold": 0.5})";
  context.identity = ReplicaIdentity{"echo#r1", "echo", "v1"};
  context.artifact_path = dir;
  context.scratch_dir = dir;
  return context;
}

RuntimeContext EchoContext() { return CommandContext({kPython, "echo_server.py"}, kCommands); }

// A request that owns its bytes; View() is what Handle sees.
struct Request {
  std::string method = "GET";
  std::string path = "/";
  std::string query;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string request_id;

  RequestView View() const {
    RequestView view{method, path, query, body, {}, request_id};
    for (const auto& [name, value] : headers) view.headers.emplace_back(name, value);
    return view;
  }
};

HandlerResponse Send(Runtime& runtime, const Request& request) {
  return runtime.Handle(request.View());
}

std::string HeaderOf(const HandlerResponse& response, const std::string& name) {
  for (const auto& [key, value] : response.headers) {
    if (strcasecmp(key.c_str(), name.c_str()) == 0) return value;
  }
  return "";
}

// The value of the first header called `name` the echo server received, or "<none>".
std::string ReceivedHeader(const json& echoed, const std::string& name) {
  for (const auto& pair : echoed["headers"]) {
    if (strcasecmp(pair[0].get<std::string>().c_str(), name.c_str()) == 0) {
      return pair[1].get<std::string>();
    }
  }
  return "<none>";
}

std::unique_ptr<Runtime> StartOrFail(const RuntimeContext& context) {
  auto runtime = StartCommandRuntime(context);
  EXPECT_TRUE(runtime.ok()) << runtime.error();
  return runtime.ok() ? std::move(*runtime) : nullptr;
}

// The command sees the request id the proxy and the worker log, whatever header the client
// sent, and one that could break the header block is not sent at all.
TEST(CommandRuntime, ForwardsTheRequestId) {
  auto made = MakeRuntime(EchoContext());
  ASSERT_TRUE(made.ok()) << made.error();
  Request request;
  request.headers = {{"X-Request-ID", "from-the-client"}};
  request.request_id = "as-the-proxy-has-it";
  json echoed = json::parse(Send(**made, request).body);
  EXPECT_EQ(ReceivedHeader(echoed, "X-Request-Id"), "as-the-proxy-has-it");
  request.request_id = "bad\r\nX-Injected: 1";
  echoed = json::parse(Send(**made, request).body);
  EXPECT_EQ(ReceivedHeader(echoed, "X-Injected"), "<none>");
  EXPECT_EQ(ReceivedHeader(echoed, "X-Request-Id"), "from-the-client");
}

TEST(CommandRuntime, ForwardsAGetWithQueryAndHeaders) {
  auto made = MakeRuntime(EchoContext());  // through the factory, as the worker does
  ASSERT_TRUE(made.ok()) << made.error();
  Runtime& runtime = **made;

  Request request;
  request.path = "/echo/items";
  request.query = "id=7&sort=asc";
  request.headers = {{"X-Request-Id", "abc"},
                     {"Host", "example.com"},
                     {"Connection", "keep-alive"},
                     {"X-Empty", ""}};
  HandlerResponse response = Send(runtime, request);
  ASSERT_EQ(response.status, 200) << response.body;
  json echoed = json::parse(response.body);
  EXPECT_EQ(echoed["method"], "GET");
  EXPECT_EQ(echoed["path"], "/echo/items");
  EXPECT_EQ(echoed["query"], "id=7&sort=asc");
  EXPECT_EQ(ReceivedHeader(echoed, "X-Request-Id"), "abc");
  EXPECT_EQ(ReceivedHeader(echoed, "X-Empty"), "");
  EXPECT_NE(ReceivedHeader(echoed, "Host"), "example.com");
  // curl adds none of its own.
  EXPECT_EQ(ReceivedHeader(echoed, "Accept"), "<none>");
  EXPECT_EQ(ReceivedHeader(echoed, "Content-Type"), "<none>");
  EXPECT_EQ(ReceivedHeader(echoed, "Expect"), "<none>");

  // What the command was started with.
  pid_t pid = CommandRuntimePidForTest(runtime);
  EXPECT_EQ(echoed["pid"], pid);
  EXPECT_EQ(echoed["cwd"], kCommands);
  EXPECT_FALSE(echoed["env"]["PORT"].get<std::string>().empty());
  EXPECT_EQ(echoed["env"]["SERVE_REPLICA_ID"], "echo#r1");
  EXPECT_EQ(echoed["env"]["SERVE_DEPLOYMENT"], "echo");
  EXPECT_EQ(echoed["env"]["SERVE_USER_CONFIG"], R"({"threshold": 0.5})");

  // The answer's own headers come back; the connection's do not.
  EXPECT_EQ(HeaderOf(response, "X-Echo"), "yes");
  EXPECT_EQ(HeaderOf(response, "Content-Type"), "application/json");
  EXPECT_EQ(HeaderOf(response, "Content-Length"), "");
  EXPECT_EQ(HeaderOf(response, "Connection"), "");

  EXPECT_TRUE(runtime.Reconfigure(R"({"threshold": 0.9})").ok());
  runtime.Stop();
}

TEST(CommandRuntime, ForwardsBodiesAndMethods) {
  auto runtime = StartOrFail(EchoContext());
  ASSERT_NE(runtime, nullptr);

  Request post;
  post.method = "POST";
  post.path = "/echo/predict";
  post.body = R"({"features": [[1, 2]]})";
  post.headers = {{"Content-Type", "application/json"},
                  {"Accept", "application/json"},
                  {"Content-Length", "999"},
                  {"Transfer-Encoding", "chunked"}};
  HandlerResponse response = Send(*runtime, post);
  ASSERT_EQ(response.status, 200) << response.body;
  json echoed = json::parse(response.body);
  EXPECT_EQ(echoed["method"], "POST");
  EXPECT_EQ(echoed["body"], post.body);
  EXPECT_EQ(ReceivedHeader(echoed, "Content-Type"), "application/json");
  EXPECT_EQ(ReceivedHeader(echoed, "Accept"), "application/json");
  EXPECT_EQ(ReceivedHeader(echoed, "Content-Length"), std::to_string(post.body.size()));
  EXPECT_EQ(ReceivedHeader(echoed, "Transfer-Encoding"), "<none>");

  // Large enough that curl would ask for 100-continue if it were allowed to.
  Request big = post;
  big.body = std::string(2 << 20, 'x');
  response = Send(*runtime, big);
  ASSERT_EQ(response.status, 200);
  echoed = json::parse(response.body);
  EXPECT_EQ(echoed["body"].get<std::string>().size(), big.body.size());
  EXPECT_EQ(ReceivedHeader(echoed, "Expect"), "<none>");

  for (std::string method : {"PUT", "PATCH", "DELETE"}) {
    Request request;
    request.method = method;
    request.path = "/thing";
    request.body = method == "DELETE" ? "" : "data-" + method;
    response = Send(*runtime, request);
    ASSERT_EQ(response.status, 200) << method;
    echoed = json::parse(response.body);
    EXPECT_EQ(echoed["method"], method);
    EXPECT_EQ(echoed["body"], request.body);
  }

  Request head;
  head.method = "HEAD";
  head.path = "/thing";
  response = Send(*runtime, head);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "");

  // The server's status is passed through, not judged.
  Request teapot;
  teapot.path = "/status/418";
  EXPECT_EQ(Send(*runtime, teapot).status, 418);
}

TEST(CommandRuntime, AnswersFromSeveralThreadsAtOnce) {
  RuntimeContext context = EchoContext();
  context.spec.max_concurrent_queries = 8;
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);
  ASSERT_EQ(runtime->Concurrency(), 8);

  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        Request request;
        request.method = "POST";
        request.path = "/thread/" + std::to_string(t);
        request.query = "i=" + std::to_string(i);
        request.body = "body " + std::to_string(t) + " " + std::to_string(i);
        HandlerResponse response = Send(*runtime, request);
        if (response.status != 200) continue;
        json echoed = json::parse(response.body);
        if (echoed["path"] == request.path && echoed["query"] == request.query &&
            echoed["body"] == request.body) {
          ++right;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(right.load(), 8 * 25);
}

TEST(CommandRuntime, ConcurrencyIsAtLeastOne) {
  RuntimeContext context = EchoContext();
  context.spec.max_concurrent_queries = 0;
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 1);
}

TEST(CommandRuntime, HealthCheckFollowsTheServer) {
  auto runtime = StartOrFail(EchoContext());
  ASSERT_NE(runtime, nullptr);
  Status health = runtime->CheckHealth();
  EXPECT_TRUE(health.ok()) << health.message();

  Request toggle;
  toggle.method = "POST";
  toggle.path = "/toggle-health";
  ASSERT_EQ(Send(*runtime, toggle).status, 200);
  health = runtime->CheckHealth();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.message(), "GET /healthz answered 503: unhealthy");

  ASSERT_EQ(Send(*runtime, toggle).status, 200);
  EXPECT_TRUE(runtime->CheckHealth().ok());
}

TEST(CommandRuntime, WithoutHealthPathAnyListenerWillDo) {
  RuntimeContext context = EchoContext();
  context.spec.health_path = "";
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);
  EXPECT_TRUE(runtime->CheckHealth().ok());
  pid_t pid = CommandRuntimePidForTest(*runtime);
  runtime->Stop();
  EXPECT_TRUE(ProcessGone(pid));
  Status health = runtime->CheckHealth();
  ASSERT_FALSE(health.ok());
  EXPECT_NE(health.message().find("exited with code 0"), std::string::npos) << health.message();
}

TEST(CommandRuntime, ServerThatDoesNotAnswerIsA502) {
  auto runtime = StartOrFail(EchoContext());
  ASSERT_NE(runtime, nullptr);
  runtime->Stop();  // nothing listens on the port any more
  Request request;
  request.path = "/after-stop";
  HandlerResponse response = Send(*runtime, request);
  EXPECT_EQ(response.status, 502);
  EXPECT_NE(response.body.find("echo_server.py` on port"), std::string::npos) << response.body;
  EXPECT_NE(response.body.find("failed to answer GET /after-stop"), std::string::npos)
      << response.body;
  EXPECT_NE(response.body.find("onnect"), std::string::npos) << response.body;  // curl's words
}

TEST(CommandRuntime, CommandNotFound) {
  TempDir dir;
  auto runtime = StartCommandRuntime(CommandContext({"nosuch", "server.py"}, dir.path()));
  ASSERT_FALSE(runtime.ok());
  EXPECT_EQ(runtime.error(),
            "cannot run `nosuch server.py` in " + dir.path() + ": No such file or directory");
}

TEST(CommandRuntime, CommandNotExecutable) {
  TempDir dir;
  std::ofstream(dir.path() + "/server.sh") << "#!/bin/sh\n";
  auto runtime = StartCommandRuntime(CommandContext({"./server.sh"}, dir.path()));
  ASSERT_FALSE(runtime.ok());
  EXPECT_EQ(runtime.error(), "cannot run `./server.sh` in " + dir.path() + ": Permission denied");
}

TEST(CommandRuntime, WorkingDirectoryMissing) {
  auto runtime = StartCommandRuntime(CommandContext({kPython, "x.py"}, "/nonexistent/dir"));
  ASSERT_FALSE(runtime.ok());
  EXPECT_NE(runtime.error().find("in /nonexistent/dir: cannot change into the directory: No such "
                                 "file or directory"),
            std::string::npos)
      << runtime.error();
}

TEST(CommandRuntime, RunsInScratchDirWithoutWorkingDir) {
  TempDir scratch;
  RuntimeContext context = CommandContext({kPython, kCommands + "/echo_server.py"}, "");
  context.scratch_dir = scratch.path();
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);
  HandlerResponse response = Send(*runtime, Request{});
  ASSERT_EQ(response.status, 200);
  EXPECT_EQ(json::parse(response.body)["cwd"], scratch.path());
}

TEST(CommandRuntime, CommandThatExitsAtOnce) {
  auto runtime = StartCommandRuntime(CommandContext({"/bin/sh", "exits_at_once.sh"}, kCommands));
  ASSERT_FALSE(runtime.ok());
  const std::string& error = runtime.error();
  EXPECT_EQ(error.rfind("command `/bin/sh exits_at_once.sh` exited with code 3 before it "
                        "answered on port ",
                        0),
            0u)
      << error;
  EXPECT_NE(error.find("last lines of its output:"), std::string::npos) << error;
  EXPECT_NE(error.find("fatal: model file missing"), std::string::npos) << error;
  EXPECT_NE(error.find("starting up"), std::string::npos) << error;
}

TEST(CommandRuntime, CommandKilledBySignalBeforeAnswering) {
  auto runtime = StartCommandRuntime(CommandContext({"/bin/sh", "-c", "kill -9 $$"}, kCommands));
  ASSERT_FALSE(runtime.ok());
  EXPECT_NE(runtime.error().find("was killed by signal 9 (SIGKILL) before it answered"),
            std::string::npos)
      << runtime.error();
  EXPECT_NE(runtime.error().find("it printed nothing"), std::string::npos) << runtime.error();
}

TEST(CommandRuntime, CommandThatNeverListensTimesOutAndIsKilled) {
  TempDir dir;
  std::string pid_file = dir.path() + "/pid";
  RuntimeContext context =
      CommandContext({kPython, kCommands + "/never_listens.py", pid_file}, dir.path());
  context.spec.startup_timeout_s = 1.5;
  auto started = std::chrono::steady_clock::now();
  auto runtime = StartCommandRuntime(context);
  auto took = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(runtime.ok());
  EXPECT_LT(took, 10s);
  EXPECT_NE(runtime.error().find("never_listens.py " + pid_file + "` did not answer on port "),
            std::string::npos)
      << runtime.error();
  EXPECT_NE(runtime.error().find("within startup_timeout_s (1.5 s)"), std::string::npos)
      << runtime.error();
  EXPECT_NE(runtime.error().find("loading a very large model..."), std::string::npos)
      << runtime.error();

  std::string pid_text = ReadFile(pid_file);
  ASSERT_FALSE(pid_text.empty()) << "never_listens.py did not write its pid";
  pid_t pid = std::stoi(pid_text);
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_TRUE(GroupGone(pid));
}

TEST(CommandRuntime, StopLeavesNoProcessBehind) {
  auto runtime = StartOrFail(EchoContext());
  ASSERT_NE(runtime, nullptr);
  pid_t pid = CommandRuntimePidForTest(*runtime);
  ASSERT_GT(pid, 0);
  EXPECT_FALSE(ProcessGone(pid));
  auto started = std::chrono::steady_clock::now();
  runtime->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);  // SIGTERM sufficed
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_TRUE(GroupGone(pid));
  runtime->Stop();  // a second Stop does nothing
}

TEST(CommandRuntime, StopKillsACommandThatIgnoresSigterm) {
  RuntimeContext context =
      CommandContext({kPython, "echo_server.py", "--ignore-sigterm"}, kCommands);
  context.spec.graceful_shutdown_timeout_s = 0.5;
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);
  pid_t pid = CommandRuntimePidForTest(*runtime);
  auto started = std::chrono::steady_clock::now();
  runtime->Stop();
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_GE(took, 400ms);
  EXPECT_LT(took, 5s);
  EXPECT_TRUE(ProcessGone(pid));
}

TEST(CommandRuntime, StopEndsTheWholeProcessGroup) {
  TempDir dir;
  std::string helper_pid_file = dir.path() + "/helper";
  RuntimeContext context = CommandContext(
      {"/bin/sh", "-c",
       "sleep 1000 & echo $! > " + helper_pid_file + "; exec " + kPython + " echo_server.py"},
      kCommands);
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);
  pid_t pid = CommandRuntimePidForTest(*runtime);
  ASSERT_TRUE(WaitUntil([&] { return !ReadFile(helper_pid_file).empty(); }));
  pid_t helper = std::stoi(ReadFile(helper_pid_file));
  EXPECT_FALSE(ProcessGone(helper));
  runtime->Stop();
  EXPECT_TRUE(ProcessGone(pid));
  // The sleep shares the command's process group. Once dead it is reaped by whoever adopted it
  // (init, in a container perhaps nobody): gone or a zombie both mean it no longer runs.
  EXPECT_TRUE(WaitUntil([&] {
    std::string stat = ReadFile("/proc/" + std::to_string(helper) + "/stat");
    return stat.empty() || stat.find(") Z ") != std::string::npos;
  }));
}

TEST(CommandRuntime, DestructorLeavesNoProcessBehind) {
  auto runtime = StartOrFail(EchoContext());
  ASSERT_NE(runtime, nullptr);
  pid_t pid = CommandRuntimePidForTest(*runtime);
  runtime.reset();  // no Stop
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_TRUE(GroupGone(pid));
}

TEST(CommandRuntime, PidForTestIsMinusOneForOtherRuntimes) {
  RuntimeContext context;
  context.spec.runtime = "builtin:hello";
  auto runtime = MakeRuntime(context);
  ASSERT_TRUE(runtime.ok());
  EXPECT_EQ(CommandRuntimePidForTest(**runtime), -1);
}

// Death tests run first, while the test process has no other threads, so "fast" (fork) is safe.
TEST(CommandRuntimeDeathTest, CommandExitingWhileServingEndsTheWorker) {
  GTEST_FLAG_SET(death_test_style, "fast");
  TempDir dir;
  std::string error_file = dir.path() + "/error";
  RuntimeContext context = CommandContext({kPython, "dies_later.py"}, kCommands);
  context.spec.health_path = "";
  context.error_file = error_file;
  EXPECT_EXIT(
      {
        auto runtime = StartCommandRuntime(context);
        if (!runtime.ok()) _exit(10);
        Request die;
        die.path = "/die";
        (void)Send(**runtime, die);
        WaitUntil([] { return false; });  // the watcher ends this process before the deadline
        _exit(11);
      },
      ::testing::ExitedWithCode(4), "");
  std::string error = ReadFile(error_file);
  EXPECT_EQ(error.rfind("command `/usr/bin/python3 dies_later.py` exited with code 7 while "
                        "serving; last lines of its output:\n",
                        0),
            0u)
      << error;
  EXPECT_NE(error.find("dies_later: asked to die"), std::string::npos) << error;
}

TEST(CommandRuntime, PythonModelExampleAnswersAPrediction) {
  if (std::system((kPython + " -c 'import sklearn' 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << kPython << " cannot import sklearn (apt-get install python3-sklearn)";
  }
  RuntimeContext context =
      CommandContext({kPython, "server.py"}, kSourceDir + "/examples/python-http");
  context.spec.name = "model";
  context.spec.startup_timeout_s = 60;
  auto runtime = StartOrFail(context);
  ASSERT_NE(runtime, nullptr);

  Request predict;
  predict.method = "POST";
  predict.path = "/model/predict";
  predict.headers = {{"Content-Type", "application/json"}};
  predict.body = R"({"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})";
  HandlerResponse response = Send(*runtime, predict);
  ASSERT_EQ(response.status, 200) << response.body;
  json answer = json::parse(response.body);
  EXPECT_EQ(answer["predictions"], json({"setosa", "virginica"}));
  ASSERT_EQ(answer["probabilities"].size(), 2u);
  EXPECT_EQ(answer["probabilities"][0].size(), 3u);

  predict.body = R"({"features": [[5.1, 3.5]]})";
  response = Send(*runtime, predict);
  EXPECT_EQ(response.status, 400);
  EXPECT_NE(json::parse(response.body)["error"].get<std::string>().find("4 numbers"),
            std::string::npos)
      << response.body;

  predict.body = "not json";
  response = Send(*runtime, predict);
  EXPECT_EQ(response.status, 400);
  EXPECT_NE(response.body.find("not valid JSON"), std::string::npos) << response.body;

  Request describe;
  describe.path = "/model/";
  response = Send(*runtime, describe);
  ASSERT_EQ(response.status, 200);
  answer = json::parse(response.body);
  EXPECT_EQ(answer["classes"], json({"setosa", "versicolor", "virginica"}));
  EXPECT_GT(answer["training_accuracy"].get<double>(), 0.9);

  EXPECT_TRUE(runtime->CheckHealth().ok());
  pid_t pid = CommandRuntimePidForTest(*runtime);
  runtime->Stop();
  EXPECT_TRUE(ProcessGone(pid));
}

}  // namespace
}  // namespace serve::replica
