// The control loop at scale: a thousand deployments from one file, under load.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "integration/bus_client.h"
#include "integration/cluster.h"
#include "support/load.h"
#include "wire/codec.h"

namespace serve::testing {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A thousand deployments from one file on one large node: all HEALTHY, no replica started twice,
// none DEPLOY_FAILED, status answering quickly throughout, then all deleted. Too heavy for the
// sanitizer build (a thousand instrumented worker processes), so only the Release build has it;
// it runs alone (RUN_SERIAL), since it takes both cores for a while.
TEST(ScaleTest, AThousandDeploymentsSettleAnswerAndGo) {
  constexpr int kDeployments = 1000;
  Cluster::Options cluster_options;
  cluster_options.node_cpus = 64;
  Cluster cluster(cluster_options);
  cluster.Deploy("deployments:\n"
                 "  - name: probe\n"
                 "    runtime: builtin:hello\n");
  LoadGenerator::Options options;
  options.port = cluster.http_port();
  options.clients = 2;
  options.target = "/probe";
  options.duration = std::chrono::seconds(240);
  LoadGenerator load(options);
  ASSERT_TRUE(load.WaitForRequests(100)) << load.Snapshot().Summary();

  std::string yaml = "deployments:\n";
  for (int i = 0; i < kDeployments; ++i) {
    char name[16];
    snprintf(name, sizeof(name), "d%04d", i);
    yaml += std::string("  - name: ") + name +
            "\n    runtime: builtin:hello\n    resources: {num_cpus: 0.05}\n";
  }
  std::string file = cluster.dir() + "/many.yaml";
  WriteFile(file, yaml);

  // Status over the bus, as any client asks it, timed all along.
  std::atomic<bool> watching{true};
  std::atomic<bool> paused{false};  // while the controller's idle cost is measured
  std::atomic<double> slowest_status{0};
  std::atomic<int> status_failures{0};
  std::string first_status_error;  // written by the watcher, read after it joined
  std::thread watcher([&] {
    RawClient client(cluster.nats_url());
    while (watching) {
      if (paused) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // pacing, not a wait
        continue;
      }
      auto asked = Clock::now();
      auto reply = client.Request("itest.ctl.status", wire::Pack(wire::StatusRequestT{}));
      double took = Seconds(Clock::now() - asked);
      if (!reply.ok() && status_failures++ == 0) first_status_error = reply.error();
      if (took > slowest_status) slowest_status = took;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // pacing, not a wait
    }
  });

  auto deploy_started = Clock::now();
  CommandResult deployed = cluster.Serve({"deploy", file}, std::chrono::seconds(300));
  double deploy_s = Seconds(Clock::now() - deploy_started);
  EXPECT_EQ(deployed.exit_code, 0) << deployed.output.substr(0, 4000);

  nlohmann::json status = cluster.Status();
  int healthy = 0, failed = 0;
  for (const auto& d : status["deployments"]) {
    if (d["status"] == "HEALTHY") ++healthy;
    if (d["status"] == "DEPLOY_FAILED") ++failed;
  }
  EXPECT_EQ(healthy, kDeployments + 1);
  EXPECT_EQ(failed, 0);
  std::string node_log = cluster.Log("node-1");
  size_t started = CountOccurrences(node_log, "started replica d");
  EXPECT_EQ(started, static_cast<size_t>(kDeployments)) << "no replica started twice";

  // Idle: what the controller costs with a thousand replicas and nothing changing.
  auto cpu_seconds = [&] {
    std::ifstream stat("/proc/" + std::to_string(cluster.controller().pid()) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i == 14 || i == 15) ticks += std::stod(field);
    }
    return ticks / sysconf(_SC_CLK_TCK);
  };
  // Measured over 10 s of traffic to the probe (the controller is not on that path), with no
  // status asked meanwhile, after the deploy's last events and checkpoint write have settled.
  paused = true;
  ASSERT_TRUE(load.WaitForMoreRequests(1000, std::chrono::seconds(60)));
  double cpu_before = cpu_seconds();
  auto idle_from = Clock::now();
  ASSERT_TRUE(WaitUntil([&] { return Seconds(Clock::now() - idle_from) >= 10; },
                        std::chrono::seconds(30), std::chrono::milliseconds(100)));
  double idle_cpu = (cpu_seconds() - cpu_before) / Seconds(Clock::now() - idle_from);
  paused = false;

  std::vector<std::string> remove = {"delete"};
  for (int i = 0; i < kDeployments; ++i) {
    char name[16];
    snprintf(name, sizeof(name), "d%04d", i);
    remove.push_back(name);
  }
  auto delete_started = Clock::now();
  CommandResult deleted = cluster.Serve(remove, std::chrono::seconds(120));
  double delete_s = Seconds(Clock::now() - delete_started);
  EXPECT_EQ(deleted.exit_code, 0) << deleted.output.substr(0, 4000);
  ASSERT_TRUE(WaitUntil([&] { return cluster.Status()["deployments"].size() == 1; },
                        std::chrono::seconds(60)));
  watching = false;
  watcher.join();

  auto report = load.Stop();
  std::cout << kDeployments << " deployments: all HEALTHY after " << deploy_s
            << " s; deleted in " << delete_s << " s; slowest status " << slowest_status
            << " s; controller idle CPU " << idle_cpu * 100 << "% of a core\n"
            << report.Summary() << std::flush;
  EXPECT_EQ(status_failures, 0) << first_status_error;
  EXPECT_LT(slowest_status, 5.0) << "status must keep answering";
  EXPECT_LT(deploy_s, 180.0);
  EXPECT_LT(delete_s, 60.0);
  if (report.failed > 0) {
    std::istringstream lines(cluster.Log("controller"));
    for (std::string line; std::getline(lines, line);) {
      if (line.find("probe") != std::string::npos) std::cout << line << "\n";
    }
  }
  EXPECT_EQ(report.failed, 0u) << report.Summary();
}

}  // namespace
}  // namespace serve::testing
