#include "replica/native_runtime.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <serve/abi.h>

namespace serve::replica {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kDeployments = SERVE_TEST_DEPLOYMENTS_DIR;
const std::string kCounterLibrary = std::string(SERVE_EXAMPLES_DIR) + "/libcounter.so";
const std::string kSdkInclude = SERVE_SDK_INCLUDE_DIR;
const std::string kCounterSource = kSdkInclude + "/../../examples/counter/counter.cc";

std::string Library(const std::string& name) { return kDeployments + "/lib" + name + ".so"; }

RuntimeContext Context(const std::string& artifact_path, const std::string& user_config = "") {
  RuntimeContext context;
  context.spec.name = "testdep";
  context.spec.runtime = "native";
  context.spec.user_config = user_config;
  context.spec.max_concurrent_queries = 8;
  context.identity.replica_id = "testdep-r1";
  context.identity.deployment = "testdep";
  context.artifact_path = artifact_path;
  return context;
}

std::unique_ptr<Runtime> Load(const RuntimeContext& context) {
  auto runtime = LoadNativeRuntime(context);
  EXPECT_TRUE(runtime.ok()) << runtime.error();
  return runtime.ok() ? std::move(*runtime) : nullptr;
}

// Loading must fail; returns the message.
std::string LoadError(const RuntimeContext& context) {
  auto runtime = LoadNativeRuntime(context);
  EXPECT_FALSE(runtime.ok());
  return runtime.ok() ? "" : runtime.error();
}

RequestView Get(std::string_view path, std::string_view query = "") {
  RequestView request;
  request.method = "GET";
  request.path = path;
  request.query = query;
  return request;
}

std::string HeaderOf(const HandlerResponse& response, std::string_view name) {
  for (const auto& [key, value] : response.headers) {
    if (key == name) return value;
  }
  return "";
}

// Runs a command; returns its exit status and what it printed (stdout and stderr).
std::pair<int, std::string> RunCommand(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  return {pclose(pipe), output};
}

// A fresh directory under TMPDIR, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "native_rt_XXXXXX").string();
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- The counter example -------------------------------------------------------------------

TEST(NativeRuntimeCounter, CountsBySteps) {
  auto runtime = Load(Context(kCounterLibrary, R"({"step": 2})"));
  ASSERT_NE(runtime, nullptr);
  HandlerResponse first = runtime->Handle(Get("/counter"));
  EXPECT_EQ(first.status, 200);
  EXPECT_THAT(first.body, HasSubstr("\"count\": 2"));
  EXPECT_THAT(first.body, HasSubstr("testdep-r1"));
  EXPECT_EQ(HeaderOf(first, "Content-Type"), "application/json");
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 4"));
}

TEST(NativeRuntimeCounter, StepDefaultsToOne) {
  auto runtime = Load(Context(kCounterLibrary));
  ASSERT_NE(runtime, nullptr);
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 1"));
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 2"));
}

TEST(NativeRuntimeCounter, ReconfigureChangesTheStep) {
  auto runtime = Load(Context(kCounterLibrary, R"({"step": 1})"));
  ASSERT_NE(runtime, nullptr);
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 1"));
  ASSERT_TRUE(runtime->Reconfigure(R"({"step": 10})").ok());
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 11"));
}

TEST(NativeRuntimeCounter, RejectedReconfigureCarriesTheMessage) {
  auto runtime = Load(Context(kCounterLibrary));
  ASSERT_NE(runtime, nullptr);
  Status status = runtime->Reconfigure(R"({"step": "many"})");
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("step must be a positive integer"));
  // The old step still applies.
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 1"));
}

TEST(NativeRuntimeCounter, HealthFollowsRequests) {
  auto runtime = Load(Context(kCounterLibrary));
  ASSERT_NE(runtime, nullptr);
  EXPECT_TRUE(runtime->CheckHealth().ok());
  EXPECT_EQ(runtime->Handle(Get("/counter/fail-health")).status, 200);
  Status unhealthy = runtime->CheckHealth();
  ASSERT_FALSE(unhealthy.ok());
  EXPECT_THAT(unhealthy.message(), HasSubstr("told to fail"));
  EXPECT_EQ(runtime->Handle(Get("/counter/heal")).status, 200);
  EXPECT_TRUE(runtime->CheckHealth().ok());
}

TEST(NativeRuntimeCounter, IsNonBlockingSoItRunsOnTheWorkersLoop) {
  auto runtime = Load(Context(kCounterLibrary));
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 0);
  EXPECT_FALSE(runtime->ScalesWithLimit());
  // check_health and reconfigure are user code that may wait: never on the loop.
  EXPECT_FALSE(runtime->ChecksOnLoop());
}

TEST(NativeRuntimeCounter, ExportsOnlyTheAbi) {
  auto [status, symbols] = RunCommand("nm -D --defined-only '" + kCounterLibrary + "'");
  ASSERT_EQ(status, 0) << symbols;
  for (const char* symbol :
       {"serve_abi_version", "serve_deployment_flags", "serve_deployment_create",
        "serve_deployment_destroy", "serve_deployment_handle", "serve_deployment_check_health",
        "serve_deployment_reconfigure"}) {
    EXPECT_THAT(symbols, HasSubstr(symbol));
  }
  EXPECT_THAT(symbols, Not(HasSubstr("Counter")));
}

// The SDK promise: a deployment builds with the header and nothing else.
TEST(NativeRuntimeCounter, BuildsWithPlainGxxAndLoads) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string library = dir.path() + "/libcounter.so";
  auto [status, output] = RunCommand("g++ -std=c++20 -shared -fPIC -I '" + kSdkInclude + "' '" +
                                     kCounterSource + "' -o '" + library + "'");
  ASSERT_EQ(status, 0) << output;
  auto runtime = Load(Context(library, R"({"step": 5})"));
  ASSERT_NE(runtime, nullptr);
  EXPECT_THAT(runtime->Handle(Get("/counter")).body, HasSubstr("\"count\": 5"));
}

// ---- Handlers that misbehave ---------------------------------------------------------------

TEST(NativeRuntimeHandlers, SeesTheRequestAndTheConfig) {
  auto runtime = Load(Context(Library("test_handlers"), R"({"a": 1})"));
  ASSERT_NE(runtime, nullptr);
  RequestView request;
  request.method = "POST";
  request.path = "/t/echo";
  request.query = "x=1";
  request.body = "hello \"body\"";
  request.headers = {{"Accept", "*/*"}, {"X-Test", "yes"}};
  HandlerResponse response = runtime->Handle(request);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body,
            R"({"replica_id": "testdep-r1", "deployment": "testdep", "path": "/t/echo", )"
            R"("method": "POST", "query": "x=1", "body": "hello \"body\"", "x_test": "yes"})");
  EXPECT_EQ(runtime->Handle(Get("/t/config")).body, R"({"a": 1})");
}

TEST(NativeRuntimeHandlers, ThrowingHandlerIsA500AndTheNextRequestIsFine) {
  auto runtime = Load(Context(Library("test_handlers")));
  ASSERT_NE(runtime, nullptr);
  HandlerResponse failed = runtime->Handle(Get("/t/throw"));
  EXPECT_EQ(failed.status, 500);
  EXPECT_EQ(failed.body, "handler failed on purpose");
  EXPECT_THAT(HeaderOf(failed, "Content-Type"), HasSubstr("text/plain"));
  EXPECT_EQ(runtime->Handle(Get("/t/anything")).status, 200);
}

TEST(NativeRuntimeHandlers, CheckHealthFailsAndRecovers) {
  auto runtime = Load(Context(Library("test_handlers")));
  ASSERT_NE(runtime, nullptr);
  EXPECT_TRUE(runtime->CheckHealth().ok());
  runtime->Handle(Get("/t/health/fail"));
  Status status = runtime->CheckHealth();
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("told to fail"));
  runtime->Handle(Get("/t/health/ok"));
  EXPECT_TRUE(runtime->CheckHealth().ok());
}

TEST(NativeRuntimeHandlers, ReconfigureAppliesOrReportsTheError) {
  auto runtime = Load(Context(Library("test_handlers"), "{}"));
  ASSERT_NE(runtime, nullptr);
  ASSERT_TRUE(runtime->Reconfigure(R"({"b": 2})").ok());
  EXPECT_EQ(runtime->Handle(Get("/t/config")).body, R"({"b": 2})");
  Status rejected = runtime->Reconfigure(R"({"reject": true})");
  ASSERT_FALSE(rejected.ok());
  EXPECT_THAT(rejected.message(), HasSubstr("user_config rejected on purpose"));
  EXPECT_EQ(runtime->Handle(Get("/t/config")).body, R"({"b": 2})");
}

TEST(NativeRuntimeHandlers, AbortingHandlerEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto runtime = Load(Context(Library("test_handlers")));
  ASSERT_NE(runtime, nullptr);
  EXPECT_DEATH(runtime->Handle(Get("/t/crash")), "");
}

// ---- Concurrency ---------------------------------------------------------------------------

// Calls `path` from `threads` threads at once and waits for all answers.
std::vector<HandlerResponse> CallFromThreads(Runtime& runtime, int threads, std::string path,
                                             std::string query) {
  std::vector<HandlerResponse> responses(threads);
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] { responses[i] = runtime.Handle(Get(path, query)); });
  }
  for (auto& worker : workers) worker.join();
  return responses;
}

TEST(NativeRuntimeConcurrency, SerializedClassReportsOneAndIsNeverCalledTwiceAtOnce) {
  auto runtime = Load(Context(Library("test_handlers")));
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 1);
  for (const HandlerResponse& response : CallFromThreads(*runtime, 4, "/t/sleep", "ms=20")) {
    EXPECT_EQ(response.status, 200);
  }
  EXPECT_EQ(runtime->Handle(Get("/t/stats")).body, R"({"max_in_flight": 1, "calls": 5})");
}

TEST(NativeRuntimeConcurrency, ConcurrentClassReportsMaxConcurrentQueries) {
  RuntimeContext context = Context(Library("test_concurrent"));
  context.spec.max_concurrent_queries = 8;
  auto runtime = Load(context);
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 8);
  // Each call waits until three are in flight together, which only happens if the runtime
  // lets them overlap.
  for (const HandlerResponse& response : CallFromThreads(*runtime, 3, "/t/wait", "n=3")) {
    EXPECT_EQ(response.status, 200);
    EXPECT_EQ(response.body, "met");
  }
  EXPECT_THAT(runtime->Handle(Get("/t/stats")).body, HasSubstr(R"("max_in_flight": 3)"));
}

TEST(NativeRuntimeConcurrency, ConcurrentClassGetsAtLeastOne) {
  RuntimeContext context = Context(Library("test_concurrent"));
  context.spec.max_concurrent_queries = 0;
  auto runtime = Load(context);
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 1);
}

TEST(NativeRuntimeConcurrency, NonBlockingClassRunsOnTheLoopEvenWhenConcurrent) {
  RuntimeContext context = Context(Library("test_non_blocking"));
  context.spec.max_concurrent_queries = 8;
  auto runtime = Load(context);
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 0);
  EXPECT_FALSE(runtime->ScalesWithLimit());
  // Whoever calls, one call at a time.
  for (const HandlerResponse& response : CallFromThreads(*runtime, 4, "/t/sleep", "ms=20")) {
    EXPECT_EQ(response.status, 200);
  }
  EXPECT_EQ(runtime->Handle(Get("/t/stats")).body, R"({"max_in_flight": 1, "calls": 5})");
}

// ---- Libraries that do not load ------------------------------------------------------------

TEST(NativeRuntimeLoad, MissingFileNamesTheLibraryAndDlerror) {
  const std::string path = kDeployments + "/no_such_library.so";
  std::string error = LoadError(Context(path));
  EXPECT_THAT(error, HasSubstr(path));
  EXPECT_THAT(error, HasSubstr("No such file"));
}

TEST(NativeRuntimeLoad, TextFileIsNotASharedLibrary) {
  RuntimeContext context = Context(kDeployments + "/not_a_library.so");
  context.spec.artifact_name = "model.so";
  std::string error = LoadError(context);
  EXPECT_THAT(error, HasSubstr("'model.so'"));
  EXPECT_THAT(error, HasSubstr("cannot be loaded as a shared library"));
  // dlerror's own words, e.g. "invalid ELF header" or "file too short".
  EXPECT_THAT(error, HasSubstr("not_a_library.so:"));
}

TEST(NativeRuntimeLoad, LibraryWithoutTheAbiSaysHowToBuildOne) {
  std::string error = LoadError(Context(Library("test_no_symbols")));
  EXPECT_THAT(error, HasSubstr("libtest_no_symbols.so"));
  EXPECT_THAT(error, HasSubstr("serve_abi_version"));
  EXPECT_THAT(error, HasSubstr("SERVE_DEPLOYMENT"));
  EXPECT_THAT(error, HasSubstr("sdk/include/serve/deployment.h"));
}

TEST(NativeRuntimeLoad, WrongAbiVersionNamesBothVersions) {
  std::string error = LoadError(Context(Library("test_wrong_abi")));
  EXPECT_THAT(error, HasSubstr("libtest_wrong_abi.so"));
  EXPECT_THAT(error, HasSubstr("ABI version " + std::to_string(SERVE_ABI_VERSION + 1)));
  EXPECT_THAT(error, HasSubstr("supports ABI version " + std::to_string(SERVE_ABI_VERSION)));
  EXPECT_THAT(error, HasSubstr("rebuild it against this release's sdk/include"));
}

TEST(NativeRuntimeLoad, ThrowingConstructorCarriesItsMessage) {
  std::string error = LoadError(Context(Library("test_ctor_throws")));
  EXPECT_THAT(error, HasSubstr("libtest_ctor_throws.so"));
  EXPECT_THAT(error,
              HasSubstr("the constructor of the deployment threw: model file missing on purpose"));
}

TEST(NativeRuntimeLoad, ManyLoadsAndUnloads) {
  // Each runtime owns its dlopen handle; destroying one must not disturb another.
  auto first = Load(Context(kCounterLibrary));
  {
    auto second = Load(Context(kCounterLibrary));
    ASSERT_NE(second, nullptr);
    EXPECT_THAT(second->Handle(Get("/counter")).body, HasSubstr("\"count\": 1"));
  }
  ASSERT_NE(first, nullptr);
  EXPECT_THAT(first->Handle(Get("/counter")).body, HasSubstr("\"count\": 1"));
}

}  // namespace
}  // namespace serve::replica
