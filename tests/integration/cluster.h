#pragma once

#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/process.h"

namespace serve::testing {

// A whole Serve instance of real processes on free ports: nats-server, checkpointer,
// controller, proxy and `nodes` node agents, each logging to a file in a temp directory. The
// destructor stops them with SIGTERM (so sanitizer builds check their exits) and fails the test
// if any log holds a sanitizer report.
class Cluster {
 public:
  struct Options {
    int nodes = 1;
    double node_cpus = 4;
    // The checkpointer's --checkpoint-path; empty: a file store in the cluster's directory.
    std::string checkpoint_uri;
    // Extra environment for every service (store credentials, say).
    std::map<std::string, std::string> env;
    // More flags for serve-controller (--max-replicas-per-namespace, say).
    std::vector<std::string> controller_flags;
    // Wait in the constructor until the controller answers status with the nodes and a proxy.
    bool wait_until_ready = true;
    // nats-server runs the shipped deploy/nats/nats-server.conf (namespace "serve", a user per
    // role), and every service, worker and CLI call connects as its role's user.
    bool secure_bus = false;
  };
  Cluster();
  explicit Cluster(Options options);
  ~Cluster();

  const std::string& dir() const { return dir_.path(); }
  int http_port() const { return http_port_; }
  // The controller's REST API and dashboard.
  int api_port() const { return api_port_; }
  std::string nats_url() const { return nats_.url(); }
  const std::string& ns() const { return ns_; }
  // With secure_bus: the NATS user and password of `role` ("proxy", "worker", ...).
  std::string user_of(const std::string& role) const { return ns_ + "-" + role; }
  std::string password_of(const std::string& role) const;
  // The environment of a `serve` command (the admin's credentials, with secure_bus).
  std::map<std::string, std::string> ServeEnvironment() const;
  NatsServer& nats() { return nats_; }

  // The argv of the `serve` CLI against this instance, for a command left running.
  std::vector<std::string> ServeCommand(const std::vector<std::string>& args) const;
  // Runs the `serve` CLI against this instance.
  CommandResult Serve(std::vector<std::string> args,
                      std::chrono::milliseconds timeout = std::chrono::seconds(90));
  // `serve status --json`, parsed; null when the CLI failed.
  nlohmann::json Status();
  // One deployment's entry of Status(); null when absent.
  nlohmann::json Deployment(const std::string& name);
  // The ids of `name`'s replicas in RUNNING state.
  std::set<std::string> RunningIds(const std::string& name);
  // Writes `yaml` to a file and deploys it, expecting success.
  void Deploy(const std::string& yaml);
  HttpResult Get(const std::string& target) { return HttpGet(http_port_, target); }
  // Polls until GET `target` answers `status`.
  bool WaitForStatus(const std::string& target, int status);
  // Waits (up to 90 s) until every deployment named is DEPLOY_FAILED, expects its message to
  // hold each of the words given for it, and prints the messages.
  void ExpectDeployFailed(const std::map<std::string, std::vector<std::string>>& expected);

  Process& node(size_t i) { return nodes_[i]; }
  // The port node i serves its /metrics on.
  int node_metrics_port(size_t i) const { return node_metrics_ports_[i]; }
  int checkpointer_metrics_port() const { return checkpointer_metrics_port_; }
  void StartNode(const std::string& node_id, double cpus);
  Process& proxy() { return proxy_; }
  Process& controller() { return controller_; }
  Process& checkpointer() { return checkpointer_; }
  // (Re)starts the controller or the checkpointer after a test stopped or killed it.
  void StartController();
  void StartCheckpointer();
  // kill -9 of every process of the instance, nats-server included: a total loss.
  void KillAll();
  // Starts one more proxy, on `port`, logging to `name`.log; stopped with the cluster.
  void StartProxy(const std::string& name, int port);
  // The pid of replica `replica_id`'s worker process (found in /proc), or -1.
  static pid_t WorkerPid(const std::string& replica_id);
  std::string Log(const std::string& name) const;
  // The log of replica `replica_id` on node `node_id` (its worker's lines and its user code's).
  std::string ReplicaLog(const std::string& node_id, const std::string& replica_id) const;

 private:
  std::vector<std::string> CommonFlags() const;
  // options_.env, and the credentials of `role` with secure_bus.
  std::map<std::string, std::string> EnvFor(const std::string& role) const;
  std::vector<int> node_metrics_ports_;
  void CheckLogsForSanitizerReports();

  Options options_;
  std::string ns_;
  std::map<std::string, std::string> passwords_;  // by role, with secure_bus
  TempDir dir_;
  NatsServer nats_;
  int http_port_;
  int api_port_;
  int checkpointer_metrics_port_;
  Process checkpointer_;
  Process controller_;
  Process proxy_;
  std::vector<Process> nodes_;
  std::vector<Process> extra_proxies_;
  std::vector<std::string> log_names_;
  std::vector<std::string> node_ids_;  // their work directories hold the replicas' logs
  int deploy_files_ = 0;
};

// One replica of builtin:hello at /hello, answering "hello world".
inline constexpr char kHelloConfig[] = R"(
deployments:
  - name: hello
    route_prefix: /hello
    runtime: builtin:hello
    num_replicas: 1
    user_config: {message: "hello world"}
)";

// The path of a deployment library built for tests (tests/deployments), e.g. "test_handlers".
std::string TestLibrary(const std::string& name);

}  // namespace serve::testing
