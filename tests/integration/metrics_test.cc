// Prometheus metrics of every service, read as Prometheus would: the proxy's /-/metrics, the
// node agent's /metrics (with its workers' figures), the controller's /metrics on the
// dashboard port and the checkpointer's /metrics. Each passes `promtool check metrics`, and the
// counters move by exactly the requests sent.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>
#include <regex>
#include <sstream>

#include "integration/cluster.h"
#include "support/servers.h"

namespace serve::testing {
namespace {

using ::testing::HasSubstr;

// The value of the sample written exactly as `series` (name and labels, labels in the order
// the exposition writes them: sorted), or nullopt when there is none.
std::optional<double> Value(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

std::string Metrics(int port, const std::string& path) {
  HttpResult result = HttpGet(port, path);
  EXPECT_EQ(result.status, 200) << path << ": " << result.body;
  return result.body;
}

// Names Serve keeps from Ray Serve, so that boards made for Ray work unchanged. promtool lints
// some of them: "_ms"/"_s" as abbreviated units, "_counter_" as a type in the name. Those
// complaints, about these names only, are accepted; every name of Serve's own passes clean.
const char* const kRayNames[] = {"http_request_latency_ms", "deployment_processing_latency_ms",
                                 "controller_control_loop_duration_s",
                                 "deployment_request_counter_total",
                                 "deployment_error_counter_total"};

// promtool's complaints about `text`, one per line, less those accepted (above).
std::string PromtoolComplaints(const std::string& dir, const std::string& name,
                               const std::string& text) {
  std::string path = dir + "/" + name + ".prom";
  WriteFile(path, text);
  CommandResult result = RunCommand({"sh", "-c", "promtool check metrics < '" + path + "'"});
  std::istringstream lines(result.output);
  std::string line, complaints;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    bool accepted = false;
    for (const char* ray_name : kRayNames) {
      accepted = accepted || line.rfind(std::string("serve_") + ray_name + " ", 0) == 0;
    }
    if (!accepted) complaints += line + "\n";
  }
  // Exit status 3 is for lint complaints only; anything else means the text did not parse.
  if (result.exit_code != 0 && result.exit_code != 3) {
    complaints += "promtool exited " + std::to_string(result.exit_code) + ": " + result.output;
  }
  return complaints;
}

bool HavePromtool() {
  return RunCommand({"sh", "-c", "command -v promtool"}).exit_code == 0;
}

const char* kTestDeployment =
    "    runtime: native\n"
    "    route_prefix: /t\n"
    "    health_check_period_s: 0.5\n"
    "    health_check_timeout_s: 5\n";

TEST(MetricsTest, EveryServiceCountsExactlyAndPassesPromtool) {
  Cluster cluster;
  cluster.Deploy("deployments:\n  - name: t\n    artifact: " + TestLibrary("test_handlers") +
                 "\n" + kTestDeployment);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(cluster.Get("/t/x").status, 200);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cluster.Get("/t/throw").status, 500);
  for (int i = 0; i < 2; ++i) ASSERT_EQ(cluster.Get("/nowhere").status, 404);

  // The proxy counts as it answers.
  std::string proxy = Metrics(cluster.http_port(), "/-/metrics");
  auto requests = [&](const std::string& route, const std::string& app, int code) {
    return Value(proxy, "serve_num_http_requests_total{application=\"" + app +
                            "\",method=\"GET\",route=\"" + route + "\",status_code=\"" +
                            std::to_string(code) + "\"}");
  };
  EXPECT_EQ(requests("/t", "t", 200), 20) << proxy;
  EXPECT_EQ(requests("/t", "t", 500), 3) << proxy;
  EXPECT_EQ(requests("", "", 404), 2) << proxy;
  EXPECT_EQ(Value(proxy, "serve_num_http_error_requests_total{error_code=\"500\",method=\"GET\","
                         "route=\"/t\"}"),
            3)
      << proxy;
  EXPECT_EQ(Value(proxy, "serve_num_deployment_http_error_requests_total{application=\"t\","
                         "deployment=\"t\",error_code=\"500\",method=\"GET\",route=\"/t\"}"),
            3)
      << proxy;
  EXPECT_EQ(Value(proxy, "serve_http_request_latency_ms_count{application=\"t\",method=\"GET\","
                         "route=\"/t\",status_code=\"200\"}"),
            20)
      << proxy;
  EXPECT_EQ(Value(proxy, "serve_num_ongoing_http_requests"), 0) << proxy;
  EXPECT_THAT(proxy, HasSubstr("process_resident_memory_bytes "));

  // The node agent has them from its worker's report (once a second while requests come).
  nlohmann::json status = cluster.Deployment("t");
  ASSERT_EQ(status["replicas"].size(), 1u) << status.dump(2);
  std::string replica = status["replicas"][0]["id"];
  std::string labels = "{application=\"t\",deployment=\"t\",replica=\"" + replica + "\"}";
  std::string node;
  ASSERT_TRUE(WaitUntil([&] {
    node = Metrics(cluster.node_metrics_port(0), "/metrics");
    return Value(node, "serve_deployment_request_counter_total" + labels) == 23;
  })) << node;
  EXPECT_EQ(Value(node, "serve_deployment_error_counter_total" + labels), 3) << node;
  EXPECT_EQ(Value(node, "serve_deployment_processing_latency_ms_count" + labels), 23) << node;
  EXPECT_EQ(Value(node, "serve_deployment_replica_healthy" + labels), 1) << node;
  EXPECT_EQ(Value(node, "serve_deployment_replica_starts_total{application=\"t\",deployment=\"t\"}"),
            1)
      << node;
  EXPECT_GT(Value(node, "serve_replica_resident_memory_bytes" + labels).value_or(0), 0) << node;

  // The controller's view.
  std::string controller = Metrics(cluster.api_port(), "/metrics");
  EXPECT_EQ(Value(controller, "serve_deployment_status{application=\"t\",deployment=\"t\","
                              "status=\"HEALTHY\"}"),
            1)
      << controller;
  EXPECT_EQ(Value(controller, "serve_deployment_running_replicas{application=\"t\","
                              "deployment=\"t\"}"),
            1)
      << controller;
  EXPECT_EQ(Value(controller, "serve_controller_nodes{state=\"HEALTHY\"}"), 1) << controller;
  EXPECT_GT(Value(controller, "serve_controller_num_control_loops_total").value_or(0), 0)
      << controller;

  // The checkpointer's: the controller stored its state, and the node fetched the artifact.
  std::string checkpointer = Metrics(cluster.checkpointer_metrics_port(), "/metrics");
  EXPECT_GE(Value(checkpointer,
                  "serve_checkpointer_requests_total{operation=\"put\","
                  "outcome=\"ok\"}")
                .value_or(0),
            1)
      << checkpointer;
  EXPECT_GE(Value(checkpointer,
                  "serve_checkpointer_requests_total{operation=\"blob_get\","
                  "outcome=\"ok\"}")
                .value_or(0),
            1)
      << checkpointer;
  EXPECT_EQ(Value(checkpointer, "serve_checkpointer_store_healthy"), 1) << checkpointer;
  EXPECT_GT(Value(checkpointer, "serve_checkpointer_bytes_written_total").value_or(0), 0)
      << checkpointer;
  EXPECT_THAT(checkpointer, HasSubstr("process_resident_memory_bytes "));
  EXPECT_EQ(HttpGet(cluster.checkpointer_metrics_port(), "/other").status, 404);

  // A replica whose health check fails moves the health figures.
  ASSERT_EQ(cluster.Get("/t/health/fail").status, 200);
  ASSERT_TRUE(WaitUntil([&] {
    node = Metrics(cluster.node_metrics_port(0), "/metrics");
    return Value(node, "serve_deployment_replica_healthy" + labels) == 0 &&
           Value(node, "serve_health_check_failures_total" + labels).value_or(0) >= 1;
  })) << node;

  // Every name the Grafana board uses is one the services serve.
  std::string board = ReadFile("deploy/grafana/serve.json");
  ASSERT_FALSE(board.empty()) << "deploy/grafana/serve.json (tests run in the source tree)";
  std::string served = proxy + node + controller + checkpointer;
  std::regex name("serve_[a-z_]+");
  for (auto it = std::sregex_iterator(board.begin(), board.end(), name);
       it != std::sregex_iterator(); ++it) {
    std::string metric = std::regex_replace(it->str(), std::regex("_(bucket|count|sum)$"), "");
    EXPECT_THAT(served, HasSubstr("# TYPE " + metric + " ")) << "the board uses " << it->str();
  }

  if (!HavePromtool()) {
    if (TestServersRequired()) FAIL() << "promtool is not installed (Debian's prometheus)";
    GTEST_SKIP() << "promtool is not installed (Debian's prometheus): not checked";
  }
  EXPECT_EQ(PromtoolComplaints(cluster.dir(), "proxy", proxy), "") << proxy;
  EXPECT_EQ(PromtoolComplaints(cluster.dir(), "node", node), "") << node;
  EXPECT_EQ(PromtoolComplaints(cluster.dir(), "controller", controller), "") << controller;
  EXPECT_EQ(PromtoolComplaints(cluster.dir(), "checkpointer", checkpointer), "") << checkpointer;
}

// --metrics-name-prefix ray_serve_ (here through the environment) gives Ray Serve's exact names.
TEST(MetricsTest, RayPrefixGivesRaysNames) {
  Cluster::Options options;
  options.env["SERVE_METRICS_NAME_PREFIX"] = "ray_serve_";
  Cluster cluster(options);
  cluster.Deploy("deployments:\n  - name: t\n    artifact: " + TestLibrary("test_handlers") +
                 "\n" + kTestDeployment);
  ASSERT_EQ(cluster.Get("/t/x").status, 200);
  std::string proxy = Metrics(cluster.http_port(), "/-/metrics");
  EXPECT_EQ(Value(proxy, "ray_serve_num_http_requests_total{application=\"t\",method=\"GET\","
                         "route=\"/t\",status_code=\"200\"}"),
            1)
      << proxy;
  EXPECT_THAT(proxy, ::testing::Not(HasSubstr("\nserve_")));
  std::string node;
  ASSERT_TRUE(WaitUntil([&] {
    node = Metrics(cluster.node_metrics_port(0), "/metrics");
    return node.find("ray_serve_deployment_request_counter_total{") != std::string::npos;
  })) << node;
  EXPECT_THAT(Metrics(cluster.api_port(), "/metrics"),
              HasSubstr("ray_serve_controller_num_control_loops_total "));
  EXPECT_THAT(Metrics(cluster.checkpointer_metrics_port(), "/metrics"),
              HasSubstr("ray_serve_checkpointer_store_healthy "));
}

}  // namespace
}  // namespace serve::testing
