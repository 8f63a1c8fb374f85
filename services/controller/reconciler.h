#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"
#include "controller/clock.h"
#include "wire/serve_generated.h"

namespace serve::controller {

// What the reconciler asks of the outside world. The controller sends these over the bus;
// tests record them.
class ReconcilerActions {
 public:
  virtual ~ReconcilerActions() = default;
  virtual void StartReplica(const std::string& node_id, const std::string& replica_id,
                            const wire::DeploymentSpecT& spec) = 0;
  virtual void StopReplica(const std::string& node_id, const std::string& replica_id) = 0;
  // Applies `spec`'s in-place options (user_config, heartbeat period) to a running replica;
  // the answer comes back through Reconciler::OnReconfigureResult with `config_hash`.
  virtual void ReconfigureReplica(const std::string& replica_id, const wire::DeploymentSpecT& spec,
                                  const std::string& config_hash) = 0;
  // Something a person watching would want to know; published on <ns>.events.
  virtual void Event(const std::string& kind, const std::string& name, const std::string& state,
                     const std::string& message) = 0;
};

struct ReconcilerOptions {
  // A replica that has not sent its first heartbeat within its deployment's startup_timeout_s
  // plus this margin (for fetching its code and starting its process) is a failed start. The
  // replica itself gives up at startup_timeout_s with a precise message; this deadline catches
  // a start that never reports at all (a lost order, a frozen node).
  double start_margin_s = 30;
  // Consecutive failed starts (without a replica reaching RUNNING) before DEPLOY_FAILED.
  int max_start_failures = 5;
  double max_backoff_s = 30;
  // Nodes and proxies are lost after this many missed heartbeat periods.
  double missed_heartbeats = 3;
  // After a restart, wait this long for node heartbeats so running replicas are adopted, not
  // started again.
  double adoption_grace_s = 0;
};

// The controller's state and decisions, with no I/O: desired deployments, the nodes, proxies
// and replicas it knows, and Step(), which compares the two and acts. Single-threaded: the
// controller calls it from its loop.
class Reconciler {
 public:
  // A RUNNING replica whose health check fails this many heartbeats in a row is replaced.
  static constexpr int kFailedChecksBeforeUnhealthy = 3;

  Reconciler(const Clock& clock, ReconcilerActions& actions, ReconcilerOptions options = {});

  // Creates or updates deployments; each result line reads "<name>: created|updated|...".
  Result<std::vector<std::string>> Deploy(std::vector<wire::DeploymentSpecT> specs);
  Result<std::vector<std::string>> Delete(const std::vector<std::string>& names);
  // Proxies report which controller's route table they hold; only this one's counts.
  void SetControllerId(std::string id) { controller_id_ = std::move(id); }
  // Loads desired state from a checkpoint (at start).
  void Restore(const std::vector<wire::DeploymentSpecT>& specs);
  // True during the adoption grace after a start or a Restore: replicas that still run report
  // through their nodes' heartbeats, and nothing new is started yet. The route table is not
  // complete meanwhile, so the controller does not publish one.
  bool Recovering() const;

  void OnNodeHeartbeat(const wire::NodeHeartbeatT& heartbeat);
  void OnReplicaHeartbeat(const wire::ReplicaHeartbeatT& heartbeat);
  void OnProxyHeartbeat(const wire::ProxyHeartbeatT& heartbeat);
  void OnReplicaExited(const wire::ReplicaExitedT& exited);
  void OnStartResult(const std::string& replica_id, const Status& result);
  void OnReconfigureResult(const std::string& replica_id, const std::string& config_hash,
                           const Status& result);

  // Acts on everything that changed: timeouts, placement, scaling, replacement, statuses.
  void Step();

  wire::StatusReplyT Report(const std::vector<std::string>& names) const;
  // Routes to RUNNING replicas; generation and controller id are the caller's.
  wire::RouteTableT Routes() const;
  // The desired state to checkpoint, in deployment-name order.
  std::vector<wire::DeploymentSpecT> Desired() const;

  // Fills in defaults and checks one spec (the same rules as config files), then checks it
  // against the other deployments (routes, versions).
  Status Admit(wire::DeploymentSpecT& spec) const;

 private:
  struct Replica {
    std::string id;
    std::string deployment;
    std::string node;         // empty while PENDING
    std::string fingerprint;  // of the spec it runs
    std::string config_hash;  // of the in-place options it runs with
    std::string reconfiguring_to;  // config hash of a reconfigure in flight
    std::string version;
    wire::ReplicaState state = wire::ReplicaState::PENDING;
    std::string message;
    double state_since = 0;
    double last_heartbeat = 0;
    bool ever_running = false;
    int failed_checks = 0;  // consecutive heartbeats whose health check failed
    uint64_t completed = 0;    // requests completed, as last reported
    double last_progress = 0;  // when it last completed one, or had none in flight
    wire::ResourcesT resources;
  };
  struct Node {
    std::string id;
    std::string host;
    wire::ResourcesT capacity;
    double period_s = 1;
    double last_seen = 0;
    bool healthy = true;
  };
  struct Proxy {
    std::string id;
    std::string address;
    uint64_t route_generation = 0;
    std::string route_controller_id;
    double period_s = 1;
    double last_seen = 0;
    bool healthy = true;
  };
  struct Deployment {
    wire::DeploymentSpecT spec;  // version filled in
    std::string fingerprint;
    std::string config_hash;
    wire::DeploymentState state = wire::DeploymentState::UPDATING;
    std::string message;
    bool reached_target = false;
    int start_failures = 0;
    double next_start_after = 0;
    std::string last_failure;
    std::string pending_reason;
    bool restored = false;  // from a checkpoint, and not yet HEALTHY since
  };

  void SetReplicaState(Replica& replica, wire::ReplicaState state, const std::string& message);
  void StopAndForget(Replica& replica, const std::string& why);
  void RecordStartFailure(const std::string& deployment, const std::string& why);
  void CheckLiveness();
  void ReconcileDeployment(Deployment& deployment);
  void PlacePending();
  void UpdateDeploymentState(Deployment& deployment);
  void AdoptOrStop(const std::string& node_id, const wire::NodeReplicaT& reported);
  std::string NewReplicaId(const std::string& deployment);
  std::string Shortfall(const wire::ResourcesT& need) const;
  bool FitsAnywhere(const wire::ResourcesT& need) const;
  std::map<std::string, double> Used(const Node& node) const;
  bool Fits(const Node& node, const wire::ResourcesT& need) const;
  double FreeCpus(const Node& node) const;
  std::vector<Replica*> ReplicasOf(const std::string& deployment);

  const Clock& clock_;
  ReconcilerActions& actions_;
  ReconcilerOptions options_;
  double started_at_;
  std::map<std::string, Deployment> deployments_;  // by name
  std::map<std::string, Replica> replicas_;        // by id
  std::map<std::string, Node> nodes_;              // by id
  std::map<std::string, Proxy> proxies_;           // by id
  std::string id_prefix_;
  std::string controller_id_;
  uint64_t replica_counter_ = 0;
};

// Stable short hash used for derived versions and spec fingerprints.
std::string ShortHash(const std::string& bytes);

}  // namespace serve::controller
