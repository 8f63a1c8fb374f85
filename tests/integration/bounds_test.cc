// Bounded inputs (docs/security.md): what a deploy request may ask for, and that a request far
// larger than the cluster can run does not starve the controller.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

constexpr int kBigReplicas = 20'000;

// The CPU time process `pid` has used (user and system), from /proc.
double CpuSeconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string LogEnd(const std::string& log) {
  return log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
}

// 20,000 replicas on a node with room for one: one runs, the rest wait for resources. Meanwhile
// the controller keeps processing heartbeats (the node stays HEALTHY, so does a deployment that
// was there before), status keeps answering, the probe keeps serving, and a request past the
// namespace's cap is refused and changes nothing.
TEST(LargeDeploy, TwentyThousandPendingReplicasDoNotStarveTheController) {
  Cluster::Options cluster_options;
  cluster_options.node_cpus = 1.5;
  cluster_options.controller_flags = {"--max-replicas-per-deployment", std::to_string(kBigReplicas),
                                      "--max-replicas-per-namespace",
                                      std::to_string(kBigReplicas + 1)};
  Cluster cluster(cluster_options);
  cluster.Deploy(
      "deployments:\n"
      "  - name: probe\n"
      "    runtime: builtin:hello\n"
      "    resources: {num_cpus: 0.25}\n");

  // Status of every deployment and of the probe alone, over the bus as any client asks it; each
  // answer is checked for the node and the probe.
  std::atomic<bool> watching{true};
  std::atomic<int> answers{0};
  std::atomic<int> failures{0};
  std::atomic<double> slowest{0};
  std::string first_failure;  // written by the watcher, read after it joined
  std::thread watcher;
  // Joined on every way out of the test, a failed assertion included.
  struct Joiner {
    std::atomic<bool>& watching;
    std::thread& thread;
    ~Joiner() {
      watching = false;
      if (thread.joinable()) thread.join();
    }
  } joiner{watching, watcher};
  watcher = std::thread([&] {
    RawClient client(cluster.nats_url());
    for (int turn = 0; watching; ++turn) {
      wire::StatusRequestT request;
      if (turn % 2 == 1) request.names.push_back("probe");
      auto asked = Clock::now();
      auto reply = client.Request("itest.ctl.status", wire::Pack(request));
      slowest = std::max(slowest.load(), Seconds(Clock::now() - asked));
      std::string problem;
      if (!reply.ok()) {
        problem = "status did not answer: " + reply.error();
      } else if (auto status = wire::Unpack<wire::StatusReply>(reply->data); !status.ok()) {
        problem = "status answered what is not a StatusReply: " + status.error();
      } else {
        for (const auto& node : status->nodes) {
          if (node->state != wire::MemberState::HEALTHY) {
            problem = "node " + node->id + " is not HEALTHY: " + node->message;
          }
        }
        for (const auto& d : status->deployments) {
          if (d->name == "probe" && d->status != wire::DeploymentState::HEALTHY) {
            problem = "probe is " + std::string(wire::EnumNameDeploymentState(d->status)) + ": " +
                      d->message;
          }
        }
      }
      if (problem.empty()) {
        ++answers;
      } else if (failures++ == 0) {
        first_failure = problem;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // pacing, not a wait
    }
  });

  std::string big = cluster.dir() + "/big.yaml";
  WriteFile(big,
            "deployments:\n"
            "  - name: big\n"
            "    runtime: builtin:hello\n"
            "    num_replicas: " +
                std::to_string(kBigReplicas) +
                "\n"
                "    resources: {num_cpus: 1}\n");
  auto deploy_started = Clock::now();
  CommandResult deployed = cluster.Serve({"deploy", "--no-wait", big});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.output;

  // One more replica would pass the namespace's cap: refused, naming the rule, nothing changed.
  std::string more = cluster.dir() + "/more.yaml";
  WriteFile(more,
            "deployments:\n"
            "  - name: more\n"
            "    runtime: builtin:hello\n"
            "    num_replicas: 2\n");
  CommandResult refused = cluster.Serve({"deploy", "--no-wait", more});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("--max-replicas-per-namespace"), std::string::npos)
      << refused.output;

  // The REST API checks against the controller's own limits: past them is a 400 naming the flag.
  HttpResult put = HttpRequest(cluster.api_port(), "PUT", "/api/serve/deployments",
                               R"({"deployments": [{"name": "probe", "runtime": "builtin:hello"},
                                   {"name": "big", "runtime": "builtin:hello",
                                    "num_replicas": 20001}]})");
  EXPECT_EQ(put.status, 400) << put.body;
  EXPECT_NE(put.body.find("num_replicas must be at most 20000 (serve-controller "
                          "--max-replicas-per-deployment)"),
            std::string::npos)
      << put.body;
  // A route under the proxy's own prefix is refused before anything is sent.
  std::string reserved = cluster.dir() + "/reserved.yaml";
  WriteFile(reserved,
            "deployments:\n"
            "  - name: sneaky\n"
            "    runtime: builtin:hello\n"
            "    route_prefix: /-/metrics\n");
  CommandResult refused_route = cluster.Serve({"deploy", "--no-wait", reserved});
  EXPECT_NE(refused_route.exit_code, 0);
  EXPECT_NE(refused_route.output.find("route_prefix '/-/metrics' is reserved"), std::string::npos)
      << refused_route.output;

  // The controller has taken the whole request in: every replica is tracked, one runs. Status
  // lists a hundred of those pending and counts the others.
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto status = cluster.Deployment("big");
        if (!status.is_object()) return false;
        int running = 0;
        for (const auto& r : status["replicas"]) running += r["state"] == "RUNNING";
        const size_t listed = status["replicas"].size();
        const std::string not_listed = std::to_string(kBigReplicas - static_cast<int>(listed)) +
                                       " more PENDING replicas not listed";
        return running == 1 && listed == 101 &&
               status["message"].get<std::string>().find(not_listed) != std::string::npos;
      },
      std::chrono::seconds(40), std::chrono::milliseconds(200)))
      << cluster.Serve({"status"}).output.substr(0, 3000)
      << "\nfirst status failure: " << first_failure << "\ncontroller log (end):\n"
      << LogEnd(cluster.Log("controller"));
  double settled_s = Seconds(Clock::now() - deploy_started);
  EXPECT_TRUE(cluster.Deployment("more").is_null()) << "the refused request changed nothing";

  // Long enough for a starved controller to declare the node lost (3 missed heartbeats of 1 s)
  // many times over, with the big deployment's replicas pending all along.
  int answers_before = answers;
  auto watch_from = Clock::now();
  double cpu_before = CpuSeconds(cluster.controller().pid());
  ASSERT_TRUE(WaitUntil([&] { return Seconds(Clock::now() - watch_from) >= 10; },
                        std::chrono::seconds(30), std::chrono::milliseconds(100)));
  double pending_cpu =
      (CpuSeconds(cluster.controller().pid()) - cpu_before) / Seconds(Clock::now() - watch_from);
  EXPECT_GT(answers - answers_before, 10) << "status kept answering";
  EXPECT_EQ(cluster.Get("/probe").status, 200);

  CommandResult deleted = cluster.Serve({"delete", "big"});
  EXPECT_EQ(deleted.exit_code, 0) << deleted.output;
  ASSERT_TRUE(WaitUntil([&] { return cluster.Deployment("big").is_null(); },
                        std::chrono::seconds(60), std::chrono::milliseconds(200)));
  watching = false;
  watcher.join();

  std::cout << kBigReplicas << " replicas tracked after " << settled_s << " s; " << answers
            << " status answers, slowest " << slowest << " s; controller CPU with them pending "
            << pending_cpu * 100 << "% of a core\n";
  EXPECT_EQ(failures, 0) << first_failure << "\ncontroller log (end):\n"
                         << LogEnd(cluster.Log("controller"));
  EXPECT_EQ(cluster.Log("controller").find("UNHEALTHY"), std::string::npos)
      << "no node or deployment was declared lost";
}

}  // namespace
}  // namespace serve::testing
