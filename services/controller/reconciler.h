#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"
#include "config/deployment_config.h"
#include "controller/clock.h"
#include "wire/serve_generated.h"

namespace serve::controller {

// What the reconciler asks of the outside world. The controller sends these over the bus;
// tests record them.
class ReconcilerActions {
 public:
  virtual ~ReconcilerActions() = default;
  // The answer comes back through Reconciler::OnStartResult. `fingerprint` and `config_hash`
  // travel with the order so the node can report what the replica runs.
  virtual void StartReplica(const std::string& node_id, const std::string& replica_id,
                            const wire::DeploymentSpecT& spec, const std::string& fingerprint,
                            const std::string& config_hash) = 0;
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
  // After the controller's own bus connection comes back, judge nothing from missing
  // heartbeats for at least this long (and at least two periods of every node and proxy), so
  // every member has had time to be heard again.
  double min_reconnect_grace_s = 2;
  // Start orders a node may have unfinished (accepted, not yet serving) before it gets more:
  // starting many workers at once on a small node only makes each of them late.
  int max_starting_per_node = 16;
  // A start order that is not answered (not delivered, or timed out) is sent again this many
  // times before it counts as a failed start.
  int max_start_attempts = 3;
  // A node or proxy lost for this long is dropped from status (the controller drops a silent
  // supervisor of a local instance after as long).
  double forget_lost_nodes_after_s = 600;
  // A stop for a worker the controller does not want is sent again only after this long.
  double orphan_stop_resend_s = 30;
  // What one deployment may ask for (--max-replicas-per-deployment, ...).
  config::Limits limits;
  // The replicas all deployments of the namespace may ask for together: each is tracked, placed
  // and reported, so the sum bounds the controller's memory and the work of every step.
  int max_replicas_per_namespace = 10'000;
};

// How a start order ended, as the node agent answered it.
struct StartOutcome {
  Status status;
  // False when the order got no answer (not delivered, timed out, or the connection dropped):
  // the node may or may not have it, so it is neither a success nor a failure of the code.
  bool delivered = true;
  uint64_t incarnation = 0;    // the agent run that accepted it
  uint64_t heartbeat_seq = 0;  // its first heartbeat that lists the replica
};

// The controller's state and decisions, with no I/O: desired deployments, the nodes, proxies
// and replicas it knows, and Step(), which compares the two and acts. Single-threaded: the
// controller calls it from its loop.
class Reconciler {
 public:
  // A RUNNING replica whose health check fails this many heartbeats in a row is replaced.
  static constexpr int kFailedChecksBeforeUnhealthy = 3;
  // A replica its node no longer lists is lost this long after: the node's exit report, which
  // names the cause, travels on another subscription and may be handed over second.
  static constexpr double kMissingGrace_s = 0.2;
  // The range of heartbeat periods taken from what members report. A period is the measure of
  // every silence (and of the grace after a reconnect), so a missing, non-finite or absurd one
  // (any bus client may publish a heartbeat) must neither stall verdicts for good nor make
  // them instant.
  static constexpr double kMinReportedPeriod_s = 0.05;
  static constexpr double kMaxReportedPeriod_s = 60;
  static double SanePeriod(double reported_s);
  // Status lists at most this many PENDING replicas of a deployment and counts the rest in the
  // deployment's message: a deploy the cluster cannot run (20,000 replicas pending for
  // resources) must not make the status answer larger than a bus message may be.
  static constexpr int kMaxListedPending = 100;
  // A step creates at most this many replicas per deployment; a larger deploy goes on at the
  // next steps (every 100 ms). So no one turn of the controller's loop, which heartbeats and
  // status requests share, grows with the size of a request.
  static constexpr int kMaxNewReplicasPerStep = 1000;

  Reconciler(const Clock& clock, ReconcilerActions& actions, ReconcilerOptions options = {});

  // Creates or updates deployments; each result line reads "<name>: created|updated|...".
  Result<std::vector<std::string>> Deploy(std::vector<wire::DeploymentSpecT> specs);
  Result<std::vector<std::string>> Delete(const std::vector<std::string>& names);
  // Makes `specs` the whole desired state: creates and updates them as Deploy does, then deletes
  // every deployment they do not list (a route may pass from a leaving deployment to a listed
  // one). An empty list deletes everything. All or nothing: an error changes nothing.
  Result<std::vector<std::string>> Apply(std::vector<wire::DeploymentSpecT> specs);
  // Proxies report which controller's route table they hold; only this one's counts.
  void SetControllerId(std::string id) { controller_id_ = std::move(id); }
  // Loads desired state from a checkpoint (at start). Returns why each deployment that fails
  // validation was left out.
  std::vector<std::string> Restore(const std::vector<wire::DeploymentSpecT>& specs);
  // True during the adoption grace after a start or a Restore: replicas that still run report
  // through their nodes' heartbeats, and nothing new is started yet. The route table is not
  // complete meanwhile, so the controller does not publish one.
  bool Recovering() const;

  void OnNodeHeartbeat(const wire::NodeHeartbeatT& heartbeat);
  void OnReplicaHeartbeat(const wire::ReplicaHeartbeatT& heartbeat);
  void OnProxyHeartbeat(const wire::ProxyHeartbeatT& heartbeat);
  void OnReplicaExited(const wire::ReplicaExitedT& exited);
  void OnStartResult(const std::string& replica_id, const StartOutcome& outcome);
  // The controller's own bus connection. While it is down, and for a grace after it returns,
  // no member is judged from silence: only what nodes and replicas say counts.
  void SetBusConnected(bool connected);
  // The controller could not listen for a while although connected (its loop was held up, so
  // heartbeats waited unread): silence before now counts no more than during a bus outage.
  void ResumeListening();
  bool HoldingVerdicts() const;
  void OnReconfigureResult(const std::string& replica_id, const std::string& config_hash,
                           const Status& result);

  // Acts on everything that changed: timeouts, placement, scaling, replacement, statuses.
  void Step();

  // Every replica but PENDING ones beyond kMaxListedPending per deployment.
  wire::StatusReplyT Report(const std::vector<std::string>& names) const;
  // Routes to RUNNING replicas; generation and controller id are the caller's.
  wire::RouteTableT Routes() const;
  // Grows whenever Routes() may have changed, so the controller rebuilds the table only then.
  uint64_t routes_version() const { return routes_version_; }
  // The desired state to checkpoint, in deployment-name order.
  std::vector<wire::DeploymentSpecT> Desired() const;
  // The desired state as a config file states it, in deployment-name order. A version derived
  // from the code is left out, so a config edited and put back derives a new one.
  std::vector<config::Deployment> DesiredConfig() const;
  // Grows whenever Desired() may have changed.
  uint64_t desired_version() const { return desired_version_; }
  // The version deployment `name` is headed for; empty for an unknown name.
  std::string TargetVersion(const std::string& name) const;
  // True when the controller knows replica `id` and places it on node `node`.
  bool HasReplicaOn(const std::string& id, const std::string& node) const;

  // Fills in defaults and checks one spec (the same rules as config files), then checks it
  // against the other deployments (routes, versions).
  // `leaving`: deployments about to be deleted, whose routes a spec may take.
  Status Admit(wire::DeploymentSpecT& spec, const std::set<std::string>& leaving = {}) const;

 private:
  Result<std::vector<std::string>> Deploy(std::vector<wire::DeploymentSpecT> specs,
                                          const std::set<std::string>& leaving);
  // Refuses a request that would take the namespace past max_replicas_per_namespace (one that
  // shrinks it is let through, so a namespace over a lowered limit can still scale down).
  Status CheckNamespaceReplicas(const std::vector<wire::DeploymentSpecT>& specs,
                                const std::set<std::string>& leaving) const;
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
    // The node accepted the start order (or listed the replica): from then on its heartbeats
    // are evidence. `incarnation` and `listed_from_seq` say which heartbeats must list it.
    bool acked = false;
    uint64_t incarnation = 0;
    uint64_t listed_from_seq = 0;
    int start_attempts = 0;  // start orders sent without an answer
    // When its node first stopped listing it, and why; it is lost a moment later, unless the
    // node's exit report (which may be delivered after the heartbeat) says more first.
    double missing_since = 0;
    std::string missing_why;
    int failed_checks = 0;  // consecutive heartbeats whose health check failed
    uint64_t completed = 0;    // requests completed, as last reported
    double last_progress = 0;  // when it last completed one, or had none in flight
    wire::ResourcesT resources;
  };
  // What the replicas placed on a node take of it.
  struct Usage {
    double cpus = 0;
    double gpus = 0;
    std::map<std::string, double> custom;
    void Add(const wire::ResourcesT& resources, double sign);
  };
  struct Node {
    std::string id;
    std::string host;
    wire::ResourcesT capacity;
    double period_s = 1;
    double last_seen = 0;
    bool healthy = true;
    uint64_t incarnation = 0;
    uint64_t seq = 0;
    int reported_starting = 0;
    std::set<std::string> replicas;  // ids of the replicas placed here
    Usage used;
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

  // Every change of a replica's node or existence goes through these, so the indexes (by
  // deployment, by node, and each node's usage) stay true.
  Replica& AddReplica(const std::string& id, const std::string& deployment);
  void AssignNode(Replica& replica, const std::string& node_id);
  void ClearNode(Replica& replica);
  void EraseReplica(const std::string& id);
  void MarkDirty(const std::string& deployment) { dirty_.insert(deployment); }

  void SetReplicaState(Replica& replica, wire::ReplicaState state, const std::string& message);
  void MarkRunning(Replica& replica, const std::string& message);
  void Ack(Replica& replica, uint64_t incarnation, uint64_t seq);
  // `failed_start`: a replica that never ran counts against its deployment's code (toward
  // DEPLOY_FAILED); false when the cause is plainly elsewhere (its node was lost).
  void LoseReplica(Replica& replica, std::string why, bool failed_start = true);
  void MarkMissing(Replica& replica, const std::string& why);
  void StopAndForget(Replica& replica, const std::string& why);
  void StopOrphan(const std::string& node_id, const std::string& replica_id);
  void RecordStartFailure(const std::string& deployment, const std::string& why);
  void CheckLiveness();
  void ReconcileDeployment(Deployment& deployment);
  void PlacePending();
  void UpdateDeploymentState(Deployment& deployment);
  void AdoptOrStop(const Node& node, const wire::NodeReplicaT& reported);
  std::string NewReplicaId(const std::string& deployment);
  std::string Shortfall(const wire::ResourcesT& need) const;
  bool FitsAnywhere(const wire::ResourcesT& need) const;
  bool Fits(const Node& node, const wire::ResourcesT& need) const;
  double ReconnectGrace() const;
  // The earliest time silence may be counted from: a member unheard since before the
  // controller's own connection came back gets a fresh start from then.
  double Since(double time) const { return std::max(time, reconnected_at_); }
  const std::set<std::string>& ReplicasOf(const std::string& deployment) const;

  const Clock& clock_;
  ReconcilerActions& actions_;
  ReconcilerOptions options_;
  double started_at_;
  std::map<std::string, Deployment> deployments_;  // by name
  std::map<std::string, Replica> replicas_;        // by id
  std::map<std::string, std::set<std::string>> replicas_by_deployment_;
  std::set<std::string> pending_;                  // ids of PENDING replicas
  std::map<std::string, Node> nodes_;              // by id
  std::map<std::string, Proxy> proxies_;           // by id
  // Stops sent for workers nobody wants, by (node, replica): when, so they are not repeated.
  std::map<std::pair<std::string, std::string>, double> orphan_stops_;
  // Replicas this controller let go, by id: a node that still lists one is told to stop it
  // rather than have it adopted.
  std::map<std::string, double> retired_;
  std::set<std::string> dirty_;  // deployments to reconcile at the next step
  bool was_recovering_ = true;
  bool bus_connected_ = true;
  double reconnected_at_ = 0;
  uint64_t routes_version_ = 1;
  uint64_t desired_version_ = 1;
  std::string id_prefix_;
  std::string controller_id_;
  uint64_t replica_counter_ = 0;
};

// Stable short hash used for derived versions and spec fingerprints.
std::string ShortHash(const std::string& bytes);

}  // namespace serve::controller
