// User code (issue 4) on a whole instance of real processes: the C++ counter example and test
// libraries through the native runtime, the Python HTTP server through the command runtime, code
// uploaded once by digest, and each kind of bad code ending in DEPLOY_FAILED with its cause.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <future>
#include <set>
#include <thread>

#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string BuildDir() { return fs::path(BinDir()).parent_path().string(); }
std::string SourceDir() { return fs::current_path().string(); }  // ctest runs tests there

std::string Field(const std::string& json_text, const std::string& key) {
  auto json = nlohmann::json::parse(json_text, nullptr, false);
  if (!json.is_object() || !json.contains(key)) return "";
  return json[key].is_string() ? json[key].get<std::string>() : json[key].dump();
}

TEST(UserCodeTest, CounterExampleCountsReconfiguresAndUploadsOnce) {
  Cluster cluster;
  std::string library = BuildDir() + "/examples/libcounter.so";
  ASSERT_TRUE(fs::exists(library)) << library;
  std::string config = cluster.dir() + "/counter.yaml";
  auto deploy = [&](int step) {
    WriteFile(config, "deployments:\n"
                      "  - name: counter\n"
                      "    runtime: native\n"
                      "    artifact: " + library + "\n"
                      "    num_replicas: 1\n"
                      "    user_config: {step: " + std::to_string(step) + "}\n");
    return cluster.Serve({"deploy", config});
  };
  auto first = deploy(1);
  ASSERT_EQ(first.exit_code, 0) << first.output << cluster.Log("node-1");
  EXPECT_THAT(first.output, HasSubstr("uploaded libcounter.so"));
  auto ids = cluster.RunningIds("counter");
  ASSERT_EQ(ids.size(), 1u) << cluster.Status().dump(2);

  auto a = cluster.Get("/counter");
  auto b = cluster.Get("/counter");
  ASSERT_EQ(a.status, 200) << a.body;
  ASSERT_EQ(b.status, 200) << b.body;
  EXPECT_NE(a.body, b.body) << "every request counts";

  // A user_config change reconfigures the same replica in place; the code is not sent again.
  auto second = deploy(10);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, AllOf(HasSubstr("already stored"), Not(HasSubstr("uploaded"))));
  EXPECT_THAT(second.output, HasSubstr("reconfigured in place"));
  EXPECT_EQ(cluster.RunningIds("counter"), ids);
  auto before = cluster.Get("/counter");
  auto after = cluster.Get("/counter");
  ASSERT_EQ(after.status, 200);
  std::string count_before = Field(before.body, "count");
  std::string count_after = Field(after.body, "count");
  ASSERT_FALSE(count_before.empty()) << before.body;
  EXPECT_EQ(std::stol(count_after) - std::stol(count_before), 10) << before.body << after.body;
}

TEST(UserCodeTest, ThrowingHandlerAnswers500AndCrashingHandlerTakesOnlyItsWorker) {
  Cluster cluster;
  cluster.Deploy("deployments:\n"
                 "  - name: handlers\n"
                 "    runtime: native\n"
                 "    artifact: " + TestLibrary("test_handlers") + "\n"
                 "    num_replicas: 2\n");
  auto ids = cluster.RunningIds("handlers");
  ASSERT_EQ(ids.size(), 2u);

  auto thrown = cluster.Get("/handlers/throw");
  EXPECT_EQ(thrown.status, 500);
  EXPECT_THAT(thrown.body, HasSubstr("handler failed on purpose"));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(cluster.Get("/handlers/ok").status, 200);
  EXPECT_EQ(cluster.RunningIds("handlers"), ids) << "a throwing handler restarts nothing";

  // A crash ends its own worker: that request fails, the other replica keeps serving, and the
  // crashed one is replaced.
  auto crashed = cluster.Get("/handlers/crash");
  EXPECT_EQ(crashed.status, 502) << crashed.body;
  std::set<std::string> answered_by;
  for (int i = 0; i < 10; ++i) {
    auto answer = cluster.Get("/handlers/who");
    ASSERT_EQ(answer.status, 200) << answer.body;
    answered_by.insert(Field(answer.body, "replica_id"));
  }
  ASSERT_TRUE(WaitUntil([&] {
    auto now = cluster.RunningIds("handlers");
    return now.size() == 2 && now != ids;
  })) << cluster.Status().dump(2);
  auto now = cluster.RunningIds("handlers");
  std::vector<std::string> kept;
  std::set_intersection(ids.begin(), ids.end(), now.begin(), now.end(), std::back_inserter(kept));
  EXPECT_EQ(kept.size(), 1u) << "only the crashed replica is replaced";
  EXPECT_THAT(cluster.Log("controller") + cluster.Log("node-1"), HasSubstr("signal 6"));
}

TEST(UserCodeTest, PythonHttpServerPredictsThroughTheCommandRuntime) {
  if (std::system("/usr/bin/python3 -c 'import sklearn' 2>/dev/null") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 cannot import sklearn; ./dev installs python3-sklearn";
  }
  Cluster cluster;
  auto deployed = cluster.Serve({"deploy", SourceDir() + "/examples/python-http/serve.yaml"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output << cluster.Log("node-1");
  EXPECT_THAT(deployed.output, HasSubstr("uploaded python-http/"));
  auto answer = HttpRequest(cluster.http_port(), "POST", "/model-http/predict",
                            R"({"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})");
  ASSERT_EQ(answer.status, 200) << answer.body;
  auto json = nlohmann::json::parse(answer.body);
  EXPECT_EQ(json["predictions"], nlohmann::json({"setosa", "virginica"})) << answer.body;
  auto bad = HttpRequest(cluster.http_port(), "POST", "/model-http/predict", "not json");
  EXPECT_EQ(bad.status, 400) << bad.body;
  auto again = cluster.Serve({"deploy", SourceDir() + "/examples/python-http/serve.yaml"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, AllOf(HasSubstr("already stored"), HasSubstr("model-http: unchanged")));
}

TEST(UserCodeTest, BadCodeEndsInDeployFailedWithItsCause) {
  Cluster cluster;
  std::string commands = SourceDir() + "/tests/commands";
  std::string yaml = "deployments:\n";
  auto native = [&](const std::string& name, const std::string& library) {
    yaml += "  - name: " + name + "\n    runtime: native\n    artifact: " + library + "\n";
  };
  native("not-a-library", BuildDir() + "/tests/deployments/not_a_library.so");
  native("no-symbols", TestLibrary("test_no_symbols"));
  native("wrong-abi", TestLibrary("test_wrong_abi"));
  native("ctor-throws", TestLibrary("test_ctor_throws"));
  yaml += "  - name: exits-at-once\n    runtime: command\n    working_dir: " + commands +
          "\n    command: [\"/bin/sh\", \"exits_at_once.sh\"]\n";
  yaml += "  - name: never-listens\n    runtime: command\n    working_dir: " + commands +
          "\n    command: [\"/usr/bin/python3\", \"never_listens.py\"]\n"
          "    startup_timeout_s: 1\n";
  // A tar whose hard link reaches a file outside the cache: the node refuses to unpack it.
  std::string victim = cluster.dir() + "/victim.txt";
  WriteFile(victim, "original");
  std::string hostile = cluster.dir() + "/hostile.tar";
  WriteFile(cluster.dir() + "/make_tar.py",
            "import io, tarfile\n"
            "t = tarfile.open('" +
                hostile +
                "', 'w')\n"
                "i = tarfile.TarInfo('escape'); i.type = tarfile.LNKTYPE; i.linkname = '" +
                victim +
                "'\n"
                "t.addfile(i); t.close()\n");
  ASSERT_EQ(std::system(("python3 " + cluster.dir() + "/make_tar.py").c_str()), 0);
  yaml += "  - name: hostile-tar\n    runtime: command\n    artifact: " + hostile +
          "\n    command: [\"/bin/sh\", \"-c\", \"echo owned > escape\"]\n";
  std::string path = cluster.dir() + "/bad.yaml";
  WriteFile(path, yaml);
  auto submitted = cluster.Serve({"deploy", "--no-wait", path});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;

  const std::map<std::string, std::vector<std::string>> expected = {
      {"not-a-library", {"not_a_library.so", "cannot be loaded as a shared library"}},
      {"no-symbols", {"libtest_no_symbols.so", "SERVE_DEPLOYMENT"}},
      {"wrong-abi", {"libtest_wrong_abi.so", "ABI"}},
      {"ctor-throws", {"model file missing on purpose"}},
      {"exits-at-once", {"exited with code 3"}},
      {"never-listens", {"did not answer on port", "startup_timeout_s"}},
      {"hostile-tar", {"refusing the entry 'escape'", "hard link to " + victim}},
  };
  cluster.ExpectDeployFailed(expected);
  EXPECT_EQ(ReadFile(victim), "original");
}

// Local code that is not there is refused before anything is sent, with the path resolved.
TEST(UserCodeTest, MissingLocalCodeIsAClearDeployError) {
  Cluster cluster;
  std::string path = cluster.dir() + "/missing.yaml";
  WriteFile(path, "deployments:\n"
                  "  - name: lib\n"
                  "    runtime: native\n"
                  "    artifact: ./build/libnothing.so\n");
  auto missing = cluster.Serve({"deploy", path});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_THAT(missing.output, HasSubstr(cluster.dir() + "/build/libnothing.so"));
  EXPECT_THAT(missing.output, HasSubstr("does not exist; build it first"));
  WriteFile(path, "deployments:\n"
                  "  - name: cmd\n"
                  "    runtime: command\n"
                  "    working_dir: missing.yaml\n"
                  "    command: [\"true\"]\n");
  auto not_a_dir = cluster.Serve({"deploy", path});
  EXPECT_NE(not_a_dir.exit_code, 0);
  EXPECT_THAT(not_a_dir.output, HasSubstr("is not a directory"));
  EXPECT_TRUE(cluster.Status()["deployments"].empty()) << "nothing was deployed";
}

// max_concurrent_queries with slow handlers: the proxy queues what the replicas cannot take,
// and no replica ever runs more than its limit.
TEST(UserCodeTest, MaxConcurrentQueriesQueuesAtTheProxyAndHoldsPerReplica) {
  Cluster cluster;
  cluster.Deploy("deployments:\n"
                 "  - name: serial\n"
                 "    runtime: native\n"
                 "    artifact: " + TestLibrary("test_handlers") + "\n"
                 "    max_concurrent_queries: 1\n"
                 "  - name: wide\n"
                 "    runtime: native\n"
                 "    artifact: " + TestLibrary("test_concurrent") + "\n"
                 "    max_concurrent_queries: 3\n");
  auto burst = [&](const std::string& target, int count) {
    std::vector<std::future<HttpResult>> answers;
    for (int i = 0; i < count; ++i) {
      answers.push_back(std::async(std::launch::async, [&] {
        return HttpRequest(cluster.http_port(), "GET", target, "", std::chrono::seconds(30));
      }));
    }
    int ok = 0;
    for (auto& answer : answers) {
      auto result = answer.get();
      EXPECT_EQ(result.status, 200) << result.body << result.error;
      ok += result.status == 200;
    }
    return ok;
  };
  EXPECT_EQ(burst("/serial/sleep?ms=200", 4), 4);
  auto serial = cluster.Get("/serial/stats");
  EXPECT_EQ(Field(serial.body, "max_in_flight"), "1") << serial.body;

  EXPECT_EQ(burst("/wide/sleep?ms=300", 9), 9);
  auto wide = cluster.Get("/wide/stats");
  int widest = std::stoi(Field(wide.body, "max_in_flight"));
  EXPECT_LE(widest, 3) << wide.body;
  EXPECT_GE(widest, 2) << "a kConcurrent deployment runs calls side by side: " << wide.body;

  // A higher limit applies in place: the same replica now runs 5 calls side by side (each
  // /wait call returns only once 5 are in flight at once).
  auto ids = cluster.RunningIds("wide");
  std::string path = cluster.dir() + "/wider.yaml";
  WriteFile(path, "deployments:\n"
                  "  - name: wide\n"
                  "    runtime: native\n"
                  "    artifact: " + TestLibrary("test_concurrent") + "\n"
                  "    max_concurrent_queries: 5\n");
  auto wider = cluster.Serve({"deploy", path});
  ASSERT_EQ(wider.exit_code, 0) << wider.output;
  EXPECT_THAT(wider.output, HasSubstr("reconfigured in place"));
  EXPECT_EQ(burst("/wide/wait?n=5", 5), 5);
  EXPECT_EQ(cluster.RunningIds("wide"), ids);
}

// Two proxies can each keep within max_concurrent_queries and still, together, exceed it: the
// replica itself refuses what is over the limit, marked so a proxy tries another replica.
// Garbage on a replica's subjects gets an error answer and leaves the replica serving.
TEST(UserCodeTest, ReplicaRefusesRequestsOverItsLimitAndGarbage) {
  Cluster cluster;
  cluster.Deploy("deployments:\n"
                 "  - name: serial\n"
                 "    runtime: native\n"
                 "    artifact: " + TestLibrary("test_handlers") + "\n"
                 "    max_concurrent_queries: 1\n");
  auto ids = cluster.RunningIds("serial");
  ASSERT_EQ(ids.size(), 1u);
  const std::string subject = "itest.replica." + *ids.begin();

  wire::HttpRequestT request;
  request.method = "GET";
  request.path = "/serial/sleep";
  request.query = "ms=1500";
  std::string bytes = wire::Pack(request);
  auto send = [&] {
    RawClient client(cluster.nats_url());
    auto reply = client.Request(subject, bytes);
    EXPECT_TRUE(reply.ok()) << reply.error();
    auto answer = reply.ok() ? wire::Unpack<wire::HttpResponse>(reply->data)
                             : Result<wire::HttpResponseT>(Status::Error(reply.error()));
    EXPECT_TRUE(answer.ok()) << answer.error();
    return answer.ok() ? *answer : wire::HttpResponseT{};
  };
  auto first = std::async(std::launch::async, send);
  auto second = std::async(std::launch::async, send);
  std::vector<wire::HttpResponseT> answers = {first.get(), second.get()};
  int served = 0, refused = 0;
  for (const auto& answer : answers) {
    if (answer.status == 200 && !answer.overloaded) ++served;
    if (answer.status == 503 && answer.overloaded) {
      ++refused;
      EXPECT_THAT(answer.error, HasSubstr("max_concurrent_queries"));
    }
  }
  EXPECT_EQ(served, 1);
  EXPECT_EQ(refused, 1);

  RawClient client(cluster.nats_url());
  auto garbage = client.Request(subject, "\x01garbage");
  ASSERT_TRUE(garbage.ok()) << garbage.error();
  auto error = wire::Unpack<wire::HttpResponse>(garbage->data);
  ASSERT_TRUE(error.ok()) << error.error();
  EXPECT_THAT(error->error, HasSubstr("could not read the request"));
  auto control = client.Request(subject + ".ctl", wire::Pack(wire::PingRequestT{}));
  ASSERT_TRUE(control.ok()) << control.error();
  auto refusal = wire::Unpack<wire::ReconfigureReply>(control->data);
  ASSERT_TRUE(refusal.ok()) << refusal.error();
  EXPECT_THAT(refusal->error, HasSubstr("Reconfigure"));
  // What looks like JSON is answered in JSON, even when it does not parse.
  auto json_control = client.Request(subject + ".ctl", "{not a reconfigure");
  ASSERT_TRUE(json_control.ok()) << json_control.error();
  auto json_refusal = nlohmann::json::parse(json_control->data, nullptr, false);
  ASSERT_TRUE(json_refusal.is_object()) << json_control->data;
  EXPECT_THAT(json_refusal.value("error", ""), HasSubstr("Reconfigure"));
  EXPECT_EQ(cluster.Get("/serial/ok").status, 200);
  EXPECT_EQ(cluster.RunningIds("serial"), ids);
}

}  // namespace
}  // namespace serve::testing
