#pragma once

#include <uv.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "http/server.h"
#include "metrics/metrics.h"
#include "replica/node_metrics.h"
#include "replica/replica_logs.h"
#include "replica/worker_user.h"
#include "service/service.h"
#include "wire/codec.h"
#include "wire/serve_generated.h"

namespace serve::replica {

struct NodeAgentOptions {
  std::string node_id;
  double num_cpus = 1;
  double num_gpus = 0;
  std::map<std::string, double> custom_resources;
  std::string work_dir;       // replica specs and error files live here
  std::string worker_exe;     // this executable; workers run `<exe> worker ...`
  double heartbeat_period_s = 1;
  // Extra environment for workers (bus address, namespace, log settings): never a secret.
  std::map<std::string, std::string> worker_env;
  // The workers' bus credentials (bus::SecretText), handed to each on its stdin so that no
  // environment user code can read holds them. Empty: none.
  std::string worker_bus_secrets;
  // When set, each worker's own credentials instead (bus::SecretText), made for its replica id:
  // a NATS user of its own in operator mode. An error keeps that worker from starting.
  std::function<Result<std::string>(const std::string& replica_id)> mint_worker_bus_secrets;
  // Prometheus metrics of the node and its workers at GET /metrics (node_metrics.h); port 0:
  // none served.
  std::string metrics_host = "127.0.0.1";
  int metrics_port = 0;
  std::string metrics_name_prefix = "serve_";
  // Workers told to stop at once. Each drains, says goodbye on the bus and exits; a thousand
  // doing so together (a mass delete) starve every process on the node, the node's own
  // heartbeat and the control plane included. The rest wait their turn.
  int max_concurrent_stops = 32;
  // Each replica logs to <work_dir>/logs/<replica-id>.log, rotated at this size with this many
  // older files kept; logs of replicas that exited stay this long, at most this many of them.
  double replica_log_max_mb = 20;
  int replica_log_files = 2;
  double keep_replica_logs_s = 3600;
  size_t keep_replica_logs = 200;
  // Artifacts in <work_dir>/artifacts that no worker of the node runs and none has started
  // with for this long are removed (0: kept until removed by hand). See PruneArtifactCache.
  double artifact_cache_keep_s = 86400;
  // The user workers run as, when not the agent's own (worker_user.h): each worker switches to
  // it once its code is fetched, with a scratch directory it owns and everything else of the
  // node read-only or out of reach.
  std::optional<WorkerUser> worker_user;
};

// The node agent: registers the node (its heartbeat carries its resources), starts one worker
// process per replica on the controller's order, stops it on order, and reports at once when
// a worker exits.
class NodeAgent {
 public:
  NodeAgent(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
            NodeAgentOptions options);
  ~NodeAgent();

  Status Start();
  // Stops every worker (SIGTERM, then SIGKILL after the grace period) and calls `done` once
  // all have exited.
  void Shutdown(std::function<void()> done);

  size_t worker_count() const { return workers_.size(); }
  // The port /metrics is served on (0: none).
  int metrics_port() const { return metrics_endpoint_.port(); }

 private:
  struct Worker {
    NodeAgent* agent = nullptr;
    std::string replica_id;
    std::string deployment;
    std::string version;
    std::string fingerprint;
    std::string config_hash;
    std::string artifact;  // the digest of its code; empty for builtins
    std::string error_file;
    std::string scratch_dir;  // removed when the worker exits
    double graceful_timeout_s = 20;
    uv_process_t process{};
    // The worker writes one byte here once it serves (its --ready-fd); its heartbeat says so.
    uv_pipe_t ready_pipe{};
    int open_handles = 0;  // process and ready_pipe; the Worker is freed when both closed
    int pid = 0;
    bool ready = false;
    bool stopping = false;   // ordered to stop (perhaps still waiting its turn)
    bool signalled = false;  // sent SIGTERM
    std::unique_ptr<service::OneShotTimer> kill_timer;
  };

  void OnStart(bus::Message& message);
  void OnStop(bus::Message& message);
  void OnWorkerMetrics(bus::Message& message);
  // Answers for the replicas whose log this node holds; silent about the others, which other
  // nodes may hold.
  void OnLogs(bus::Message& message);
  std::vector<prometheus::MetricFamily> CollectMetrics() const;
  Result<int> Spawn(const wire::StartReplicaT& order);
  // Stops `worker` now, or once fewer than max_concurrent_stops others are stopping.
  void StopWorker(Worker& worker);
  // SIGTERM, and SIGKILL after the worker's grace.
  void SignalStop(Worker& worker);
  void StartWaitingStops();
  void OnWorkerExit(Worker* worker, int64_t exit_status, int term_signal);
  void SendHeartbeat();
  // A heartbeat within 50 ms, one for however many changes happen meanwhile.
  void SendHeartbeatSoon();
  void MaybeFinishShutdown();
  static void CloseWorker(Worker* worker);

  uv_loop_t* loop_;
  bus::Bus& bus_;
  wire::JsonCodec codec_;  // for requests in JSON
  const bus::Subjects& subjects_;
  NodeAgentOptions options_;
  std::string host_;
  // This run of the agent and its heartbeat counter (see NodeHeartbeat in schemas/serve.fbs).
  uint64_t incarnation_;
  uint64_t heartbeat_seq_ = 0;
  std::map<std::string, std::unique_ptr<Worker>> workers_;  // by replica id
  std::deque<std::string> waiting_stops_;  // replica ids, in the order they were told to stop
  int signalled_ = 0;                      // workers sent SIGTERM that have not exited yet
  std::unique_ptr<service::RepeatingTimer> heartbeat_;
  ReplicaLogs logs_;
  std::unique_ptr<service::RepeatingTimer> prune_logs_;
  std::unique_ptr<service::RepeatingTimer> rotate_logs_;
  std::unique_ptr<service::OneShotTimer> heartbeat_soon_;
  std::chrono::steady_clock::time_point last_heartbeat_at_;
  std::function<void()> shutdown_done_;
  std::unique_ptr<service::OneShotTimer> shutdown_deadline_;
  metrics::Registry metrics_registry_;
  NodeMetrics metrics_;
  metrics::Endpoint metrics_endpoint_;
};

}  // namespace serve::replica
