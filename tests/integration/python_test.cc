// `runtime: python` (issue 15) on a whole instance of real processes: the iris class example,
// an async handler overlapping max_concurrent_queries requests, reconfigure in place, a failing
// check_health replaced, each kind of error, and handlers that end their own worker.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <set>

#include "integration/cluster.h"

namespace serve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

std::string SourceDir() { return fs::current_path().string(); }  // ctest runs tests there
std::string TestCode() { return SourceDir() + "/tests/python"; }

bool HasSklearn() { return std::system("/usr/bin/python3 -c 'import sklearn' 2>/dev/null") == 0; }

// A python deployment of tests/python with health options short enough for a test.
std::string Deployment(const std::string& name, const std::string& import_path,
                       const std::string& more = "") {
  return "  - name: " + name +
         "\n"
         "    runtime: python\n"
         "    import_path: \"" +
         import_path +
         "\"\n"
         "    working_dir: " +
         TestCode() +
         "\n"
         "    health_check_period_s: 0.2\n"
         "    health_check_timeout_s: 1.5\n"
         "    graceful_shutdown_timeout_s: 1\n"
         "    resources: {num_cpus: 0.25}\n" +
         more;
}

TEST(PythonTest, IrisClassPredictsAndReconfiguresInPlace) {
  if (!HasSklearn()) {
    GTEST_SKIP() << "/usr/bin/python3 cannot import sklearn; ./dev installs python3-sklearn";
  }
  Cluster cluster;
  auto deployed = cluster.Serve({"deploy", SourceDir() + "/examples/python-model/serve.yaml"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output << cluster.Log("node-1");
  EXPECT_THAT(deployed.output, HasSubstr("uploaded python-model/"));
  // serve.yaml leaves these to the class's decorator.
  EXPECT_THAT(deployed.output, HasSubstr("model: num_replicas 1, max_concurrent_queries 8 from "
                                         "@deployment in model.py"));
  EXPECT_EQ(cluster.Deployment("model")["num_replicas"], 1);
  auto answer = HttpRequest(cluster.http_port(), "POST", "/model/predict",
                            R"({"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})");
  ASSERT_EQ(answer.status, 200) << answer.body;
  auto json = nlohmann::json::parse(answer.body);
  EXPECT_EQ(json["predictions"], nlohmann::json({"setosa", "virginica"})) << answer.body;
  EXPECT_EQ(json["probabilities"][0][0], 0.9816) << "user_config digits: 4";
  auto bad = HttpRequest(cluster.http_port(), "POST", "/model/predict", "not json");
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_THAT(bad.body, HasSubstr("the body is not valid JSON"));
  auto described = cluster.Get("/model/");
  ASSERT_EQ(described.status, 200) << described.body;
  EXPECT_EQ(nlohmann::json::parse(described.body)["predict"]["path"], "/model/predict");

  // A new user_config goes to reconfigure() in the same replica: no retraining, no restart.
  auto ids = cluster.RunningIds("model");
  ASSERT_EQ(ids.size(), 1u);
  std::string yaml = ReadFile(SourceDir() + "/examples/python-model/serve.yaml");
  yaml.replace(yaml.find("working_dir: ."), 14,
               "working_dir: " + SourceDir() + "/examples/python-model");
  yaml.replace(yaml.find("{digits: 4}"), 11, "{digits: 2}");
  WriteFile(cluster.dir() + "/model.yaml", yaml);
  auto again = cluster.Serve({"deploy", cluster.dir() + "/model.yaml"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, AllOf(HasSubstr("already stored"), HasSubstr("reconfigured in place")));
  EXPECT_EQ(cluster.RunningIds("model"), ids);
  auto rounded = HttpRequest(cluster.http_port(), "POST", "/model/predict",
                             R"({"features": [[5.1, 3.5, 1.4, 0.2]]})");
  ASSERT_EQ(rounded.status, 200) << rounded.body;
  EXPECT_EQ(nlohmann::json::parse(rounded.body)["probabilities"][0][0], 0.98) << rounded.body;
}

// Four requests to an async handler that sleeps a second each overlap on the replica's loop.
TEST(PythonTest, AsyncHandlerRunsMaxConcurrentQueriesAtOnce) {
  Cluster cluster;
  cluster.Deploy("deployments:\n" + Deployment("sleeper", "sleeper:Sleeper",
                                               "    max_concurrent_queries: 4\n"
                                               "    user_config: {seconds: 1}\n"));
  const auto start = Clock::now();
  std::vector<std::future<HttpResult>> answers;
  for (int i = 0; i < 4; ++i) {
    answers.push_back(std::async(std::launch::async, [&] { return cluster.Get("/sleeper"); }));
  }
  int most = 0;
  for (auto& answer : answers) {
    HttpResult result = answer.get();
    ASSERT_EQ(result.status, 200) << result.body;
    most = std::max(most, nlohmann::json::parse(result.body)["most_at_once"].get<int>());
  }
  double took = std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << "measured: 4 requests sleeping 1 s each, max_concurrent_queries 4: " << took
            << " s, at most " << most << " at once" << std::endl;
  EXPECT_EQ(most, 4);
  EXPECT_LT(took, 3.0) << "one after another they take 4 s";
}

TEST(PythonTest, ErrorsInCallAnswer500AndFailingHealthCheckIsReplaced) {
  Cluster cluster;
  cluster.Deploy("deployments:\n" +
                 Deployment("h", "handlers:Handlers", "    user_config: {step: 1}\n"));
  auto ids = cluster.RunningIds("h");
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(cluster.Get("/h/ok").body, "ok");

  auto raised = cluster.Get("/h/raise");
  EXPECT_EQ(raised.status, 500);
  EXPECT_THAT(raised.body, HasSubstr("KeyError: 'no such thing, on purpose'"));
  auto unsupported = cluster.Get("/h/unsupported");
  EXPECT_EQ(unsupported.status, 500);
  EXPECT_THAT(unsupported.body, HasSubstr("__call__ returned a set"));
  EXPECT_EQ(cluster.RunningIds("h"), ids) << "a failing request restarts nothing";
  // The traceback is in the replica's log, with the request's id.
  const std::string replica = *ids.begin();
  ASSERT_TRUE(WaitUntil([&] {
    return cluster.ReplicaLog("node-1", replica).find("Traceback") != std::string::npos;
  })) << cluster.ReplicaLog("node-1", replica);
  EXPECT_THAT(cluster.ReplicaLog("node-1", replica),
              AllOf(HasSubstr("__call__ raised"), HasSubstr("in __call__"),
                    HasSubstr("KeyError: 'no such thing, on purpose'"), HasSubstr(" request=")));
  EXPECT_THAT(cluster.ReplicaLog("node-1", replica), HasSubstr("handlers constructed"));

  ASSERT_EQ(cluster.Get("/h/health/fail").status, 200);
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto now = cluster.RunningIds("h");
        return now.size() == 1 && now != ids;
      },
      std::chrono::seconds(30)))
      << cluster.Status().dump(2);
  EXPECT_THAT(cluster.Log("controller"), HasSubstr("RuntimeError: told to fail"));
  EXPECT_EQ(cluster.Get("/h/ok").status, 200);
}

// How the crash test crashes a worker. AddressSanitizer reports a SEGV as an error, which
// fails every test of the sanitizer build, so there the handler aborts instead.
#ifdef SERVE_SANITIZED
constexpr const char* kCrash = "abort";
constexpr const char* kCrashSignal = "signal 6";
#else
constexpr const char* kCrash = "segfault";
constexpr const char* kCrashSignal = "signal 11";
#endif

// sys.exit() and a segfault through ctypes end only their own worker: that request gets a
// 502, the other replica keeps serving, and the ended one is replaced.
TEST(PythonTest, ExitOrSegfaultEndsOnlyItsOwnWorker) {
  Cluster cluster;
  cluster.Deploy("deployments:\n" + Deployment("h", "handlers:Handlers", "    num_replicas: 2\n"));
  for (const std::string action : {"exit", kCrash}) {
    SCOPED_TRACE(action);
    auto ids = cluster.RunningIds("h");
    ASSERT_EQ(ids.size(), 2u) << cluster.Status().dump(2);
    auto ended = cluster.Get("/h/" + action);
    EXPECT_EQ(ended.status, 502) << ended.body;
    for (int i = 0; i < 6; ++i) EXPECT_EQ(cluster.Get("/h/ok").status, 200);
    ASSERT_TRUE(WaitUntil(
        [&] {
          auto now = cluster.RunningIds("h");
          std::vector<std::string> kept;
          std::set_intersection(ids.begin(), ids.end(), now.begin(), now.end(),
                                std::back_inserter(kept));
          return now.size() == 2 && kept.size() == 1;
        },
        std::chrono::seconds(30)))
        << cluster.Status().dump(2);
  }
  std::string logs = cluster.Log("controller") + cluster.Log("node-1");
  EXPECT_THAT(logs, HasSubstr("__call__ called sys.exit(7)"));
  EXPECT_THAT(logs, HasSubstr(kCrashSignal));
}

TEST(PythonTest, StartErrorsEndInDeployFailedWithTheTraceback) {
  Cluster cluster;
  std::string yaml = "deployments:\n";
  yaml += Deployment("broken-import", "broken_import:Model");
  yaml += Deployment("no-attribute", "handlers:NoSuchClass");
  yaml += Deployment("ctor-raises", "failing_ctor:Model");
  yaml += Deployment("no-module", "no_such_module:Model");
  std::string path = cluster.dir() + "/bad.yaml";
  WriteFile(path, yaml);
  auto submitted = cluster.Serve({"deploy", "--no-wait", path});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;

  const std::map<std::string, std::vector<std::string>> expected = {
      {"broken-import",
       {"importing module 'broken_import' failed:\nTraceback (most recent call last):\n"
        "  File \"broken_import.py\", line 1, in <module>",
        "ModuleNotFoundError: No module named 'no_such_module_for_serve_tests'"}},
      {"no-attribute", {"module 'handlers' has no attribute 'NoSuchClass'"}},
      {"ctor-raises",
       {"constructing failing_ctor:Model failed:\nTraceback (most recent call last):\n"
        "  File \"failing_ctor.py\", line 3, in __init__",
        "  File \"failing_ctor.py\", line 6, in load",
        "FileNotFoundError: weights.bin is missing on purpose"}},
      {"no-module", {"No module named 'no_such_module'"}},
  };
  cluster.ExpectDeployFailed(expected);
}

}  // namespace
}  // namespace serve::testing
