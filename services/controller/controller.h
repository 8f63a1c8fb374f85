#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "config/deployment_config.h"
#include "controller/clock.h"
#include "controller/reconciler.h"
#include "controller/traffic.h"
#include "http/server.h"
#include "metrics/metrics.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::controller {

struct ControllerOptions {
  std::string controller_id;
  double tick_s = 0.1;
  // How long a bus request to a node or the checkpointer may take.
  double request_timeout_s = 10;
  // The store this controller's state lives in (--checkpoint-path); when set, a checkpointer
  // serving another store is refused rather than recovered from. Empty: whichever answers.
  std::string checkpoint_path;
  ReconcilerOptions reconciler;
  std::string metrics_name_prefix = "serve_";
};

// The controller: answers the control plane, keeps the Reconciler fed with heartbeats and exit
// reports, carries out its orders over the bus, publishes the route table whenever it changes,
// and checkpoints the desired state after every change.
class Controller : public ReconcilerActions {
 public:
  Controller(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
             ControllerOptions options);
  ~Controller() override;

  // Loads the checkpoint (retrying until the checkpointer answers), then serves.
  Status Start();
  // Called once a shutdown was requested on the bus and everyone was told.
  void SetShutdownHandler(std::function<void()> on_shutdown);
  // Called when the checkpoint store refused a write because another controller stored a newer
  // generation: this controller has stopped acting and the process should exit.
  void SetFencedHandler(std::function<void(const std::string& why)> on_fenced) {
    on_fenced_ = std::move(on_fenced);
  }
  void Stop();

  // What the REST API (api.h) asks; the bus handlers answer from the same methods. Each fails
  // with ErrorKind::kUnavailable until the checkpoint is loaded.
  Result<std::vector<std::string>> Deploy(std::vector<wire::DeploymentSpecT> specs);
  // Ok once the checkpoint is loaded; before, an ErrorKind::kUnavailable error that says why.
  Status Available() const;
  // Declarative: `specs` become the whole desired state (Reconciler::Apply).
  Result<std::vector<std::string>> Apply(std::vector<wire::DeploymentSpecT> specs);
  Result<std::vector<std::string>> Delete(const std::vector<std::string>& names);
  Result<wire::StatusReplyT> Report(const std::vector<std::string>& names);
  Result<std::vector<config::Deployment>> DesiredConfig() const;
  // The version deployment `name` is headed for; empty for an unknown name.
  std::string TargetVersion(const std::string& name) const {
    return reconciler_.TargetVersion(name);
  }
  // What one deployment may ask for; the REST API parses request bodies against it.
  const config::Limits& limits() const { return options_.reconciler.limits; }
  // This run of the controller (StatusReply.controller_run).
  const std::string& run() const { return run_; }
  // GET /metrics on the dashboard port: the control loop, the deployments, nodes and proxies as
  // the controller sees them, and the process.
  http::Response Metrics() const { return metrics_registry_.Response(); }
  // The recent events (the last kRecentEvents) with a sequence number above `since`, oldest
  // first. Those older were dropped: a caller seeing a gap after `since` missed some.
  std::vector<wire::EventT> EventsSince(uint64_t since) const;
  uint64_t last_event_seq() const { return last_event_seq_; }
  // Called on the loop thread with every event as it happens (the API's event streams).
  void SetEventListener(std::function<void(const wire::EventT&)> listener) {
    event_listener_ = std::move(listener);
  }
  static constexpr size_t kRecentEvents = 1000;
  // Asks the node agents for a replica's log (see ReplicaLogsRequest); `done` runs on the loop
  // with the answer of the node that holds it, or a not-found error when none answered.
  void AskReplicaLogs(const wire::ReplicaLogsRequestT& request,
                      std::function<void(Result<wire::ReplicaLogsReplyT>)> done);

  // ReconcilerActions
  void StartReplica(const std::string& node_id, const std::string& replica_id,
                    const wire::DeploymentSpecT& spec, const std::string& fingerprint,
                    const std::string& config_hash) override;
  void StopReplica(const std::string& node_id, const std::string& replica_id) override;
  void ReconfigureReplica(const std::string& replica_id, const wire::DeploymentSpecT& spec,
                          const std::string& config_hash) override;
  void Event(const std::string& kind, const std::string& name, const std::string& state,
             const std::string& message) override;

 private:
  void Subscribe(const std::string& subject, void (Controller::*handler)(bus::Message&));
  void OnDeploy(bus::Message& message);
  void OnDelete(bus::Message& message);
  void OnStatus(bus::Message& message);
  void OnConfig(bus::Message& message);
  void OnPing(bus::Message& message);
  void OnShutdown(bus::Message& message);
  void OnRoutesRequest(bus::Message& message);
  void OnNodeHeartbeat(bus::Message& message);
  void OnReplicaHeartbeat(bus::Message& message);
  void OnProxyHeartbeat(bus::Message& message);
  void OnReplicaExited(bus::Message& message);
  void OnSupervisorHeartbeat(bus::Message& message);
  void ForgetSilentSupervisors();
  // The supervisors for `serve status`, each with the age of its last heartbeat.
  std::vector<std::unique_ptr<wire::SupervisorStatusT>> SupervisorReport() const;

  void LoadCheckpoint();
  void Tick();
  // Publishes routes and writes the checkpoint if either changed.
  void Sync();
  void WriteCheckpoint();
  void StepDown(const std::string& why);
  // Why deploys and status cannot be answered before the checkpoint is loaded.
  std::string NotLoadedYet() const;
  // For `serve status`: the desired state is not safely stored, since when and why.
  std::string CheckpointWarning() const;
  void SendStops();
  std::string RouteTableBytes();

  uv_loop_t* loop_;
  bus::Bus& bus_;
  const bus::Subjects& subjects_;
  ControllerOptions options_;
  SteadyClock clock_;
  Reconciler reconciler_;
  TrafficStats traffic_;
  wire::JsonCodec json_;
  std::string host_;
  int64_t started_ms_;
  // Changes with every start, also under a fixed --controller-id (see StatusReply).
  std::string run_;
  metrics::Registry metrics_registry_;
  prometheus::Counter* control_loops_ = nullptr;
  prometheus::Gauge* control_loop_duration_ = nullptr;
  std::vector<prometheus::MetricFamily> CollectMetrics() const;

  bool loaded_ = false;  // the checkpoint was read (or found empty)
  std::unique_ptr<service::OneShotTimer> load_retry_;
  std::unique_ptr<service::RepeatingTimer> ticker_;
  std::function<void()> on_shutdown_;
  std::function<void(const std::string&)> on_fenced_;
  bool stepped_down_ = false;
  bool stopped_ = false;  // Stop() ran: replies that still arrive change nothing
  std::string load_error_;  // why the checkpoint cannot be loaded, while it cannot

  std::vector<std::pair<std::string, std::string>> pending_stops_;  // (node, replica)
  uint64_t route_generation_ = 0;
  std::string published_routes_;  // the last route table published, without its generation
  uint64_t routes_version_ = 0;    // the reconciler's routes_version() it was built at
  static constexpr double kRoutesInterval_s = 0.05;
  double last_routes_at_ = 0;
  std::unique_ptr<service::OneShotTimer> routes_timer_;
  double last_tick_at_ = 0;
  uint64_t desired_version_ = 0;   // the reconciler's desired_version() desired_bytes_ shows

  uint64_t checkpoint_generation_ = 0;
  std::string desired_bytes_;        // the desired state now
  std::string checkpointed_bytes_;   // what the store holds
  // desired_bytes_ == checkpointed_bytes_, kept as either changes: every message ends in a
  // Sync(), and with a thousand deployments comparing the bytes each time costs more than the
  // message itself.
  bool checkpoint_current_ = true;
  bool checkpoint_in_flight_ = false;
  double checkpoint_retry_at_ = 0;
  int checkpoint_failures_ = 0;         // failed writes in a row
  std::string last_checkpoint_error_;
  double unsaved_since_ = 0;            // when desired state first differed from the stored one

  // The last heartbeat of each supervisor of a local instance, and when it came. Only shown in
  // `serve status`: the controller decides nothing from them.
  struct SeenSupervisor {
    wire::SupervisorHeartbeatT heartbeat;
    double last_seen = 0;
  };
  std::map<std::string, SeenSupervisor> supervisors_;  // by supervisor id
  uint64_t last_event_seq_ = 0;
  std::deque<wire::EventT> recent_events_;
  std::function<void(const wire::EventT&)> event_listener_;
  static constexpr size_t kMaxSupervisors = 256;
  static constexpr size_t kMaxSupervisedServices = 32;
  static constexpr size_t kMaxMemberIdBytes = 256;
  static constexpr size_t kMaxSupervisorHeartbeatBytes = 64 * 1024;
};

}  // namespace serve::controller
