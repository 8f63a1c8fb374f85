#include "integration/cluster.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>

namespace serve::testing {

namespace {

const char* const kRoles[] = {"controller", "proxy", "node", "worker", "checkpointer", "admin"};

std::map<std::string, std::string> MakePasswords(const Cluster::Options& options) {
  std::map<std::string, std::string> out;
  if (!options.secure_bus) return out;
  std::random_device random;
  for (const char* role : kRoles) {
    char text[33];
    snprintf(text, sizeof text, "%08x%08x%08x%08x", random(), random(), random(), random());
    // nats-server reads a variable's value as a configuration value: "5e3..." would be a
    // number. A leading letter keeps it a string (docs/security.md).
    out[role] = std::string("pw") + text;
  }
  return out;
}

std::vector<std::string> NatsArgs(const Cluster::Options& options) {
  if (!options.secure_bus) return {};
  return {"-c", std::string(SERVE_SOURCE_DIR) + "/deploy/nats/nats-server.conf"};
}

// The shipped configuration reads each role's password from SERVE_NATS_PASSWORD_<ROLE>.
std::map<std::string, std::string> NatsEnv(const std::map<std::string, std::string>& passwords) {
  std::map<std::string, std::string> env;
  for (const auto& [role, password] : passwords) {
    std::string name = "SERVE_NATS_PASSWORD_";
    for (char c : role) name += static_cast<char>(toupper(static_cast<unsigned char>(c)));
    env[name] = password;
  }
  return env;
}

}  // namespace

Cluster::Cluster() : Cluster(Options{}) {}

Cluster::Cluster(Options options)
    : options_(options),
      ns_(options.secure_bus ? "serve" : "itest"),
      passwords_(MakePasswords(options)),
      nats_(NatsArgs(options), NatsEnv(passwords_)),
      http_port_(FreePort()),
      api_port_(FreePort()),
      checkpointer_metrics_port_(FreePort()) {
  std::string bin = BinDir();
  auto flags = CommonFlags();
  auto with = [&](std::vector<std::string> argv) {
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
  };
  log_names_ = {"checkpointer", "controller", "proxy"};
  if (options_.checkpoint_uri.empty()) options_.checkpoint_uri = "file://" + dir() + "/checkpoint";
  StartCheckpointer();
  StartController();
  proxy_ = Process(with({bin + "/serve-proxy", "--http-port", std::to_string(http_port_)}),
                   dir() + "/proxy.log", EnvFor("proxy"));
  for (int i = 0; i < options_.nodes; ++i) {
    StartNode("node-" + std::to_string(i + 1), options_.node_cpus);
  }
  if (!options_.wait_until_ready) return;
  bool ready = WaitUntil([&] {
    auto status = Status();
    if (!status.is_object()) return false;
    int healthy_nodes = 0;
    for (const auto& node : status["nodes"]) healthy_nodes += node["state"] == "HEALTHY";
    return healthy_nodes >= options_.nodes && !status["proxies"].empty() &&
           HttpGet(http_port_, "/-/healthz").status == 200;
  });
  EXPECT_TRUE(ready) << "the cluster did not come up; controller log:\n" << Log("controller");
}

void Cluster::StartCheckpointer() {
  std::vector<std::string> argv = {BinDir() + "/serve-checkpointer", "--checkpoint-path",
                                   options_.checkpoint_uri, "--metrics-port",
                                   std::to_string(checkpointer_metrics_port_)};
  auto flags = CommonFlags();
  argv.insert(argv.end(), flags.begin(), flags.end());
  // Appended, so a restart keeps the earlier run's lines for the test's messages.
  checkpointer_ = Process(argv, dir() + "/checkpointer.log", EnvFor("checkpointer"));
}

void Cluster::StartController() {
  std::vector<std::string> argv = {BinDir() + "/serve-controller", "--checkpoint-path",
                                   options_.checkpoint_uri, "--dashboard-port",
                                   std::to_string(api_port_)};
  auto flags = CommonFlags();
  argv.insert(argv.end(), flags.begin(), flags.end());
  argv.insert(argv.end(), options_.controller_flags.begin(), options_.controller_flags.end());
  controller_ = Process(argv, dir() + "/controller.log", EnvFor("controller"));
}

void Cluster::KillAll() {
  for (auto& node : nodes_) node.Kill();
  for (auto& proxy : extra_proxies_) proxy.Kill();
  proxy_.Kill();
  controller_.Kill();
  checkpointer_.Kill();
  nats_.Stop();
}

void Cluster::StartNode(const std::string& node_id, double cpus) {
  auto flags = CommonFlags();
  int metrics_port = FreePort();
  node_metrics_ports_.push_back(metrics_port);
  std::vector<std::string> argv = {BinDir() + "/serve-replica", "--node-id", node_id,
                                   "--num-cpus", std::to_string(cpus), "--work-dir",
                                   dir() + "/" + node_id, "--metrics-port",
                                   std::to_string(metrics_port)};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto env = EnvFor("node");
  if (options_.secure_bus) {
    env["SERVE_WORKER_NATS_USER"] = user_of("worker");
    env["SERVE_WORKER_NATS_PASSWORD"] = password_of("worker");
  }
  nodes_.emplace_back(argv, dir() + "/" + node_id + ".log", env);
  log_names_.push_back(node_id);
  node_ids_.push_back(node_id);
}

void Cluster::StartProxy(const std::string& name, int port) {
  auto flags = CommonFlags();
  std::vector<std::string> argv = {BinDir() + "/serve-proxy", "--http-port", std::to_string(port)};
  argv.insert(argv.end(), flags.begin(), flags.end());
  extra_proxies_.emplace_back(argv, dir() + "/" + name + ".log", EnvFor("proxy"));
  log_names_.push_back(name);
}

pid_t Cluster::WorkerPid(const std::string& replica_id) {
  const std::string wanted = std::string("--replica-id") + '\0' + replica_id + '\0';
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = ReadFile(entry.path().string() + "/cmdline");
    if (cmdline.find(wanted) != std::string::npos) return std::stoi(name);
  }
  return -1;
}

std::vector<std::string> Cluster::CommonFlags() const {
  return {"--address", nats_.url(), "--namespace", ns_};
}

std::string Cluster::password_of(const std::string& role) const {
  auto it = passwords_.find(role);
  return it == passwords_.end() ? "" : it->second;
}

std::map<std::string, std::string> Cluster::EnvFor(const std::string& role) const {
  std::map<std::string, std::string> env = options_.env;
  if (options_.secure_bus) {
    env["SERVE_NATS_USER"] = user_of(role);
    env["SERVE_NATS_PASSWORD"] = password_of(role);
  }
  return env;
}

std::map<std::string, std::string> Cluster::ServeEnvironment() const { return EnvFor("admin"); }

Cluster::~Cluster() {
  for (auto& node : nodes_) node.Stop(std::chrono::seconds(30));
  for (auto& proxy : extra_proxies_) proxy.Stop();
  proxy_.Stop();
  controller_.Stop();
  checkpointer_.Stop();
  CheckLogsForSanitizerReports();
}

void Cluster::CheckLogsForSanitizerReports() {
  std::vector<std::string> paths;
  for (const auto& name : log_names_) paths.push_back(dir() + "/" + name + ".log");
  std::error_code ec;
  for (const auto& node_id : node_ids_) {
    for (const auto& entry :
         std::filesystem::directory_iterator(dir() + "/" + node_id + "/logs", ec)) {
      paths.push_back(entry.path().string());
    }
  }
  for (const auto& path : paths) {
    std::string name = path;
    std::string log = ReadFile(path);
    for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                               "runtime error:"}) {
      if (log.find(marker) != std::string::npos) {
        ADD_FAILURE() << name << " reported \"" << marker << "\":\n" << log;
        break;
      }
    }
  }
}

std::string Cluster::Log(const std::string& name) const {
  return ReadFile(dir() + "/" + name + ".log");
}

std::string Cluster::ReplicaLog(const std::string& node_id, const std::string& replica_id) const {
  return ReadFile(dir() + "/" + node_id + "/logs/" + replica_id + ".log");
}

std::vector<std::string> Cluster::ServeCommand(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {BinDir() + "/serve", "--address", nats_.url(),
                                   "--namespace",       ns_,         "--run-dir",
                                   dir() + "/run"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

CommandResult Cluster::Serve(std::vector<std::string> args, std::chrono::milliseconds timeout) {
  return RunCommand(ServeCommand(args), ServeEnvironment(), timeout);
}

nlohmann::json Cluster::Status() {
  auto result = Serve({"status", "--json"}, std::chrono::seconds(10));
  if (result.exit_code != 0) return nullptr;
  return nlohmann::json::parse(result.output, nullptr, false);
}

nlohmann::json Cluster::Deployment(const std::string& name) {
  auto status = Status();
  if (!status.is_object()) return nullptr;
  for (const auto& d : status["deployments"]) {
    if (d["name"] == name) return d;
  }
  return nullptr;
}

void Cluster::Deploy(const std::string& yaml) {
  std::string path = dir() + "/deploy-" + std::to_string(++deploy_files_) + ".yaml";
  WriteFile(path, yaml);
  auto result = Serve({"deploy", path});
  ASSERT_EQ(result.exit_code, 0) << result.output << "\ncontroller log:\n" << Log("controller");
}

bool Cluster::WaitForStatus(const std::string& target, int status) {
  return WaitUntil([&] { return Get(target).status == status; });
}

std::set<std::string> Cluster::RunningIds(const std::string& name) {
  std::set<std::string> ids;
  nlohmann::json deployment = Deployment(name);
  if (!deployment.is_object()) return ids;
  for (const auto& r : deployment["replicas"]) {
    if (r["state"] == "RUNNING") ids.insert(r["id"].get<std::string>());
  }
  return ids;
}

std::string TestLibrary(const std::string& name) {
  return std::filesystem::path(BinDir()).parent_path().string() + "/tests/deployments/lib" +
         name + ".so";
}

void Cluster::ExpectDeployFailed(const std::map<std::string, std::vector<std::string>>& expected) {
  bool all_failed = WaitUntil(
      [&] {
        for (const auto& entry : expected) {
          if (Deployment(entry.first)["status"] != "DEPLOY_FAILED") return false;
        }
        return true;
      },
      std::chrono::seconds(90));
  ASSERT_TRUE(all_failed) << Status().dump(2);
  std::cout << "DEPLOY_FAILED messages:\n";
  for (const auto& [name, words] : expected) {
    std::string message = Deployment(name)["message"].get<std::string>();
    for (const auto& word : words) {
      EXPECT_NE(message.find(word), std::string::npos) << name << ": " << message;
    }
    std::cout << "  " << name << ": " << message << "\n";
  }
}

}  // namespace serve::testing
