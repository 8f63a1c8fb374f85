// The python runtime in-process: Debian's interpreter embedded, a class built from a module in
// a working directory, answers converted, errors turned into 500s and start errors.
#include "replica/python_runtime.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

namespace serve::replica {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::mutex log_mutex;
std::string log_text;  // what serve.logger wrote, for the tests that look

void RecordLog(int level, std::string_view request_id, std::string_view message) {
  std::lock_guard<std::mutex> lock(log_mutex);
  log_text.append(std::to_string(level)).append(" [").append(request_id).append("] ");
  log_text.append(message).append("\n");
}

std::string LogText() {
  std::lock_guard<std::mutex> lock(log_mutex);
  return log_text;
}

const PythonHost kHost{SERVE_PYTHON_PACKAGE_DIR, &RecordLog, nullptr};

// A working directory of its own per test, holding `module`.py. Every test names its module
// differently: one interpreter serves the whole test process, and it caches modules.
class PythonRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "python_runtime_test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void Write(const std::string& name, const std::string& text) {
    fs::create_directories((fs::path(dir_) / name).parent_path());
    std::ofstream(fs::path(dir_) / name) << text;
  }

  RuntimeContext Context(const std::string& import_path, const std::string& user_config = "") {
    RuntimeContext context;
    context.spec.name = "py";
    context.spec.runtime = "python";
    context.spec.route_prefix = "/py";
    context.spec.import_path = import_path;
    context.spec.user_config = user_config;
    context.spec.max_concurrent_queries = 8;
    context.identity.replica_id = "py-1";
    context.artifact_path = dir_;
    context.scratch_dir = dir_;
    return context;
  }

  std::unique_ptr<Runtime> Start(const RuntimeContext& context) {
    auto runtime = CreatePythonRuntime(context, kHost);
    EXPECT_TRUE(runtime.ok()) << runtime.error();
    return runtime.ok() ? std::move(*runtime) : nullptr;
  }

  std::string StartError(const RuntimeContext& context) {
    auto runtime = CreatePythonRuntime(context, kHost);
    EXPECT_FALSE(runtime.ok());
    return runtime.ok() ? "" : runtime.error();
  }

  std::string dir_;
};

RequestView Get(std::string_view path, std::string_view query = "") {
  RequestView view;
  view.method = "GET";
  view.path = path;
  view.query = query;
  view.request_id = "req-1";
  return view;
}

std::string HeaderOf(const HandlerResponse& response, const std::string& name) {
  for (const auto& [key, value] : response.headers) {
    if (key == name) return value;
  }
  return "";
}

TEST_F(PythonRuntimeTest, BuildsTheClassWithUserConfigAndPassesTheRequest) {
  Write("echo_model.py", R"(
from serve import deployment, logger

@deployment(num_replicas=2)
class Echo:
    def __init__(self, config):
        self.greeting = config["greeting"]

    def __call__(self, request):
        logger.info("handling %s", request.path)
        return {"greeting": self.greeting, "method": request.method, "path": request.path,
                "route_prefix": request.route_prefix, "query": request.query,
                "headers": request.headers, "json": request.json(),
                "request_id": request.request_id}
)");
  auto runtime = Start(Context("echo_model:Echo", R"({"greeting": "hi"})"));
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->Concurrency(), 8);
  RequestView request = Get("/py/predict", "a=1&b=two&a=3");
  request.method = "POST";
  request.body = R"({"x": [1, 2]})";
  request.headers = {{"X-Custom", "value\xe9"}, {"Content-Type", "application/json"}};
  HandlerResponse answer = runtime->Handle(request);
  ASSERT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(HeaderOf(answer, "Content-Type"), "application/json");
  auto json = nlohmann::json::parse(answer.body);
  EXPECT_EQ(json["greeting"], "hi");
  EXPECT_EQ(json["method"], "POST");
  EXPECT_EQ(json["path"], "/py/predict");
  EXPECT_EQ(json["route_prefix"], "/py");
  EXPECT_EQ(json["query"], nlohmann::json({{"a", "1"}, {"b", "two"}}));
  EXPECT_EQ(json["headers"]["x-custom"], "value\xc3\xa9") << "Latin-1 header bytes, as text";
  EXPECT_EQ(json["json"], nlohmann::json({{"x", {1, 2}}}));
  EXPECT_EQ(json["request_id"], "req-1");
  EXPECT_THAT(LogText(), HasSubstr("20 [req-1] handling /py/predict"));
}

TEST_F(PythonRuntimeTest, ConvertsEachKindOfAnswer) {
  Write("kinds_model.py", R"(
from serve import Response

class Thing:
    pass

class Kinds:
    def __init__(self, config):
        pass

    def __call__(self, request):
        kind = request.path.rsplit("/", 1)[-1]
        return {
            "list": [1, "two"],
            "str": "héllo",
            "bytes": b"\x00\x01",
            "response": Response(b"<p>hi</p>", status=201, headers={"X-A": "b"},
                                 media_type="text/html"),
            "response_json": Response({"ok": True}, status=202),
            "none": None,
            "set": {1},
            "thing": Thing(),
            "bad_status": Response("x", status=42),
            "not_json": {"x": {1, 2}},
            "bad_header": Response("x", headers={"X": "a\r\nb"}),
        }[kind]
)");
  auto runtime = Start(Context("kinds_model:Kinds"));
  ASSERT_NE(runtime, nullptr);
  auto list = runtime->Handle(Get("/py/list"));
  EXPECT_EQ(list.status, 200);
  EXPECT_EQ(list.body, R"([1, "two"])");
  auto text = runtime->Handle(Get("/py/str"));
  EXPECT_EQ(text.body, "h\xc3\xa9llo");
  EXPECT_EQ(HeaderOf(text, "Content-Type"), "text/plain; charset=utf-8");
  auto bytes = runtime->Handle(Get("/py/bytes"));
  EXPECT_EQ(bytes.body, std::string("\0\1", 2));
  EXPECT_EQ(HeaderOf(bytes, "Content-Type"), "application/octet-stream");
  auto response = runtime->Handle(Get("/py/response"));
  EXPECT_EQ(response.status, 201);
  EXPECT_EQ(response.body, "<p>hi</p>");
  EXPECT_EQ(HeaderOf(response, "X-A"), "b");
  EXPECT_EQ(HeaderOf(response, "Content-Type"), "text/html");
  auto response_json = runtime->Handle(Get("/py/response_json"));
  EXPECT_EQ(response_json.status, 202);
  EXPECT_EQ(response_json.body, R"({"ok": true})");

  const std::map<std::string, std::string> refused = {
      {"none",
       "__call__ returned None; return a dict or list (JSON), str, bytes or "
       "serve.Response"},
      {"set", "__call__ returned a set;"},
      {"thing", "__call__ returned a kinds_model.Thing;"},
      {"bad_status", "status must be an int from 100 to 599, got 42"},
      {"not_json", "JSON cannot hold: Object of type set is not JSON serializable"},
      {"bad_header", "has a line break"},
  };
  for (const auto& [kind, words] : refused) {
    auto answer = runtime->Handle(Get("/py/" + kind));
    EXPECT_EQ(answer.status, 500) << kind;
    EXPECT_THAT(answer.body, HasSubstr(words)) << kind;
  }
}

TEST_F(PythonRuntimeTest, AnExceptionInCallAnswers500WithItsTypeAndLogsTheTraceback) {
  Write("raising_model.py", R"(
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")

class Raising:
    def __init__(self, config):
        pass

    def __call__(self, request):
        if request.path.endswith("/unprintable"):
            raise Unprintable()
        return self.fail()

    def fail(self):
        raise ValueError("the input is bad on purpose")
)");
  auto runtime = Start(Context("raising_model:Raising"));
  ASSERT_NE(runtime, nullptr);
  auto answer = runtime->Handle(Get("/py/x"));
  EXPECT_EQ(answer.status, 500);
  EXPECT_EQ(answer.body, "ValueError: the input is bad on purpose");
  EXPECT_THAT(LogText(), AllOf(HasSubstr("Traceback"), HasSubstr("in fail"),
                               HasSubstr("40 [req-1] __call__ raised")));
  auto unprintable = runtime->Handle(Get("/py/unprintable"));
  EXPECT_EQ(unprintable.status, 500);
  EXPECT_EQ(unprintable.body, "Unprintable") << "an exception whose text fails is named by type";
  // The replica goes on serving.
  EXPECT_EQ(runtime->Handle(Get("/py/x")).status, 500);
}

TEST_F(PythonRuntimeTest, CheckHealthAndReconfigureRunTheUsersMethods) {
  Write("health_model.py", R"(
class Health:
    def __init__(self, config):
        self.config = config

    def __call__(self, request):
        return self.config

    def check_health(self):
        if self.config.get("sick"):
            raise RuntimeError("the model is sick")

    def reconfigure(self, config):
        if "refuse" in config:
            raise ValueError("cannot take that")
        self.config = config
)");
  auto runtime = Start(Context("health_model:Health", R"({"v": 1})"));
  ASSERT_NE(runtime, nullptr);
  EXPECT_TRUE(runtime->CheckHealth().ok());
  ASSERT_TRUE(runtime->Reconfigure(R"({"v": 2, "sick": true})").ok());
  EXPECT_EQ(runtime->Handle(Get("/py")).body, R"({"v": 2, "sick": true})");
  Status health = runtime->CheckHealth();
  EXPECT_FALSE(health.ok());
  EXPECT_EQ(health.message(), "RuntimeError: the model is sick");
  Status refused = runtime->Reconfigure(R"({"refuse": 1})");
  EXPECT_EQ(refused.message(), "ValueError: cannot take that");
  EXPECT_THAT(runtime->Reconfigure("{not json").message(), HasSubstr("user_config is not JSON"));
  EXPECT_EQ(runtime->Handle(Get("/py")).body, R"({"v": 2, "sick": true})");
}

TEST_F(PythonRuntimeTest, AsyncCallOverlapsOnTheReplicasLoop) {
  Write("async_model.py", R"(
import asyncio
import threading
from serve import logger

class Sleeper:
    def __init__(self, config):
        self.threads = set()

    async def __call__(self, request):
        self.threads.add(threading.current_thread().name)
        await asyncio.sleep(0.5)
        logger.info("slept")
        return {"threads": sorted(self.threads)}

    async def check_health(self):
        await asyncio.sleep(0)
)");
  auto runtime = Start(Context("async_model:Sleeper"));
  ASSERT_NE(runtime, nullptr);
  auto started = std::chrono::steady_clock::now();
  std::vector<std::future<HandlerResponse>> answers;
  std::vector<std::string> ids = {"r0", "r1", "r2", "r3"};
  for (const std::string& id : ids) {
    answers.push_back(std::async(std::launch::async, [&runtime, id] {
      RequestView request = Get("/py");
      request.request_id = id;
      return runtime->Handle(request);
    }));
  }
  for (auto& answer : answers) {
    HandlerResponse response = answer.get();
    EXPECT_EQ(response.status, 200) << response.body;
    EXPECT_EQ(response.body, R"({"threads": ["serve-asyncio"]})");
  }
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_LT(took, 1.5) << "four requests sleeping 0.5 s each overlap";
  EXPECT_TRUE(runtime->CheckHealth().ok());
  for (const std::string& id : ids) EXPECT_THAT(LogText(), HasSubstr("[" + id + "] slept"));
  runtime->Stop();
}

TEST_F(PythonRuntimeTest, StartErrorsNameTheCauseWithTheTracebacksLastLines) {
  Write("broken_import.py", "import no_such_module_anywhere\n");
  Write("ctor_raises.py", R"(
class Model:
    def __init__(self, config):
        raise FileNotFoundError("model.pkl is missing on purpose")
)");
  Write("not_callable.py", "class Model:\n    def __init__(self, config):\n        pass\n");
  EXPECT_THAT(StartError(Context("broken_import:Model")),
              AllOf(HasSubstr("python deployment 'broken_import:Model'"),
                    HasSubstr("importing module 'broken_import' failed"),
                    HasSubstr("ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
                    HasSubstr("line 1")));
  EXPECT_THAT(StartError(Context("ctor_raises:Missing")),
              HasSubstr("module 'ctor_raises' has no attribute 'Missing'"));
  EXPECT_THAT(StartError(Context("ctor_raises:Model")),
              AllOf(HasSubstr("constructing ctor_raises:Model failed"),
                    HasSubstr("FileNotFoundError: model.pkl is missing on purpose")));
  EXPECT_THAT(StartError(Context("not_callable:Model")), HasSubstr("has no __call__"));
  EXPECT_THAT(StartError(Context("no_such_module:Model")),
              HasSubstr("No module named 'no_such_module'"));
  EXPECT_THAT(StartError(Context("")), HasSubstr("needs import_path"));
  RuntimeContext relative = Context("x:Y");
  relative.spec.python_path = {"venv/site-packages"};
  EXPECT_THAT(StartError(relative), HasSubstr("python_path entry 'venv/site-packages'"));
  relative.artifact_path.clear();
  EXPECT_THAT(StartError(relative), HasSubstr("has no working_dir"));
}

TEST_F(PythonRuntimeTest, PythonPathEntriesAreImportedFromAndTheInterpreterIsTheSystems) {
  Write("lib/site/helper_lib.py", "VALUE = 'from python_path'\n");
  Write("uses_path.py", R"(
import os
import sys
import helper_lib

def handler(request):
    return {"value": helper_lib.VALUE, "prefix": sys.prefix, "cwd": os.getcwd()}
)");
  RuntimeContext context = Context("uses_path:handler");
  context.spec.python_path = {"lib/site"};
  auto runtime = Start(context);
  ASSERT_NE(runtime, nullptr);
  auto answer = runtime->Handle(Get("/py"));
  ASSERT_EQ(answer.status, 200) << answer.body;
  auto json = nlohmann::json::parse(answer.body);
  EXPECT_EQ(json["value"], "from python_path");
  EXPECT_EQ(json["prefix"], "/usr") << "Debian's interpreter, whatever python3 is on PATH";
  EXPECT_EQ(json["cwd"], fs::canonical(dir_).string());
}

}  // namespace
}  // namespace serve::replica
