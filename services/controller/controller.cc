#include "controller/controller.h"

#include <cmath>

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <optional>

#include "config/spec.h"
#include "log/log.h"
#include "wire/replica_logs.h"

namespace serve::controller {
namespace {

constexpr char kStateKey[] = "controller/state";
constexpr char kVersion[] = "0.1.0";

// The outcome of a request whose reply table has an `error` field: transport, decoding or the
// replier's own error, in that order.
template <typename ReplyTable>
Status ReplyStatus(const Result<bus::Message>& reply) {
  if (!reply.ok()) return reply.status();
  auto decoded = wire::Unpack<ReplyTable>(reply->data);
  if (!decoded.ok()) return decoded.status();
  if (!decoded->error.empty()) return Status::Error(decoded->error);
  return Status::Ok();
}

// The ids an event carries that the controller puts into subjects (a node's orders, a replica's
// requests) or shows: each must be one a subject can carry.
Status CheckIds(const wire::NodeHeartbeatT& heartbeat) {
  Status node = bus::ValidateId(heartbeat.node_id, "node id");
  if (!node.ok()) return node;
  for (const auto& replica : heartbeat.replicas) {
    if (replica == nullptr) continue;
    Status id = bus::ValidateId(replica->id, "replica id");
    if (!id.ok()) return id;
  }
  return Status::Ok();
}
Status CheckIds(const wire::ReplicaHeartbeatT& heartbeat) {
  return bus::ValidateId(heartbeat.replica_id, "replica id");
}
Status CheckIds(const wire::ProxyHeartbeatT& heartbeat) {
  return bus::ValidateId(heartbeat.proxy_id, "proxy id");
}
Status CheckIds(const wire::ReplicaExitedT& exited) {
  Status node = bus::ValidateId(exited.node_id, "node id");
  return node.ok() ? bus::ValidateId(exited.replica_id, "replica id") : node;
}
Status CheckIds(const wire::SupervisorHeartbeatT&) { return Status::Ok(); }  // checked on use

// Decodes a published event (heartbeat, exit report). One that does not verify, or carries an
// id no subject can hold, is dropped with a log line: a publisher gets no reply to read an
// error from.
template <typename Table>
std::optional<typename Table::NativeTableType> DecodeEvent(const bus::Message& message,
                                                           const char* what) {
  auto decoded = wire::Unpack<Table>(message.data);
  if (decoded.ok()) {
    if (Status ids = CheckIds(*decoded); !ids.ok()) decoded = ids;
  }
  if (!decoded.ok()) {
    static log::RateLimit limit;
    uint64_t suppressed = 0;
    if (limit.Allow(&suppressed)) {
      spdlog::warn("dropped a {} on {}: {}{}", what, message.subject, decoded.error(),
                   suppressed > 0 ? " (and " + std::to_string(suppressed) +
                                        " more undecodable messages since the last such line)"
                                  : "");
    }
    return std::nullopt;
  }
  return std::move(*decoded);
}

}  // namespace

Controller::Controller(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                       ControllerOptions options)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      options_(std::move(options)),
      reconciler_(clock_, *this, options_.reconciler),
      host_(service::HostName()),
      started_ms_(service::UnixMillis()),
      run_(options_.controller_id + "-" + service::RandomHex(8)),
      metrics_registry_(options_.metrics_name_prefix) {
  control_loops_ = &prometheus::BuildCounter()
                        .Name(metrics_registry_.Name("controller_num_control_loops_total"))
                        .Help("The number of control loops the controller has run.")
                        .Register(metrics_registry_.registry())
                        .Add({});
  control_loop_duration_ = &prometheus::BuildGauge()
                                .Name(metrics_registry_.Name("controller_control_loop_duration_s"))
                                .Help("The duration of the controller's last control loop, in s.")
                                .Register(metrics_registry_.registry())
                                .Add({});
  metrics_registry_.AddCollector([this] { return CollectMetrics(); });
}

Controller::~Controller() { Stop(); }

void Controller::SetShutdownHandler(std::function<void()> on_shutdown) {
  on_shutdown_ = std::move(on_shutdown);
}

void Controller::Subscribe(const std::string& subject,
                           void (Controller::*handler)(bus::Message&)) {
  Status status = bus_.Subscribe(subject, [this, handler](bus::Message& m) {
    (this->*handler)(m);
    Sync();
  });
  if (!status.ok()) spdlog::error("{}", status.message());
}

Status Controller::Start() {
  reconciler_.SetControllerId(options_.controller_id);
  Subscribe(subjects_.ctl_ping, &Controller::OnPing);
  Subscribe(subjects_.ctl_status, &Controller::OnStatus);
  Subscribe(subjects_.ctl_config, &Controller::OnConfig);
  Subscribe(subjects_.ctl_deploy, &Controller::OnDeploy);
  Subscribe(subjects_.ctl_delete, &Controller::OnDelete);
  Subscribe(subjects_.ctl_shutdown, &Controller::OnShutdown);
  Subscribe(subjects_.ctl_routes, &Controller::OnRoutesRequest);
  Subscribe(subjects_.hb_node, &Controller::OnNodeHeartbeat);
  Subscribe(subjects_.hb_replica, &Controller::OnReplicaHeartbeat);
  Subscribe(subjects_.hb_proxy, &Controller::OnProxyHeartbeat);
  Subscribe(subjects_.node_exited, &Controller::OnReplicaExited);
  Subscribe(subjects_.hb_supervisor, &Controller::OnSupervisorHeartbeat);
  // Cut off from the bus, the controller hears nobody: that silence is no evidence against
  // anyone (see Reconciler::SetBusConnected).
  reconciler_.SetBusConnected(bus_.connected());
  bus_.SetConnectionListener([this](bool connected) {
    if (stopped_) return;
    spdlog::log(connected ? spdlog::level::info : spdlog::level::warn,
                connected ? "bus connection back: holding verdicts until every member is heard"
                          : "bus connection lost: no verdicts from missing heartbeats until it "
                            "is back");
    reconciler_.SetBusConnected(connected);
  });
  load_retry_ = std::make_unique<service::OneShotTimer>(loop_);
  routes_timer_ = std::make_unique<service::OneShotTimer>(loop_);
  LoadCheckpoint();
  ticker_ = std::make_unique<service::RepeatingTimer>(loop_, options_.tick_s, [this] { Tick(); });
  // No route table goes out before the checkpoint is loaded and running replicas are adopted:
  // proxies keep serving with the table they hold, which an empty one would wipe.
  return Status::Ok();
}

void Controller::Stop() {
  stopped_ = true;
  ticker_.reset();
  load_retry_.reset();
  routes_timer_.reset();
}

void Controller::StepDown(const std::string& why) {
  if (stepped_down_) return;
  stepped_down_ = true;
  spdlog::error("stepping down: {}", why);
  Event("controller", options_.controller_id, "STEPPED_DOWN", why);
  Stop();
  if (on_fenced_) on_fenced_(why);
}

void Controller::LoadCheckpoint() {
  wire::CheckpointGetT get;
  get.key = kStateKey;
  get.store = options_.checkpoint_path;
  bus_.Request(subjects_.ckpt_get, wire::Pack(get), options_.request_timeout_s,
               [this](Result<bus::Message> reply) {
                 // Stopped meanwhile (the request then fails as the bus closes): the answer,
                 // whatever it is, has nobody to serve, and the retry timer is gone.
                 if (stopped_) return;
                 auto retry = [this](const std::string& why) {
                   spdlog::warn("cannot load the checkpoint yet ({}); retrying", why);
                   load_retry_->Start(1.0, [this] { LoadCheckpoint(); });
                 };
                 if (!reply.ok()) return retry(reply.error());
                 auto got = wire::Unpack<wire::CheckpointGetReply>(reply->data);
                 if (!got.ok()) return retry(got.error());
                 if (!got->error.empty()) {
                   // A corrupt checkpoint is left alone for a person to inspect; nothing is
                   // written over it, and nothing is deployed until it is fixed.
                   load_error_ = "the checkpoint cannot be loaded: " + got->error;
                   spdlog::error("{}", load_error_);
                   return retry(got->error);
                 }
                 if (got->found) {
                   std::string data(got->data.begin(), got->data.end());
                   auto state = wire::Unpack<wire::ControllerState>(data);
                   if (!state.ok()) {
                     load_error_ = "the checkpoint holds no valid controller state (" +
                                   state.error() + "); it is left untouched: move it aside "
                                   "to start from nothing";
                     spdlog::error("{}", load_error_);
                     return retry(state.error());
                   }
                   std::vector<wire::DeploymentSpecT> specs;
                   for (auto& spec : state->deployments) {
                     if (spec != nullptr) specs.push_back(*spec);
                   }
                   for (const std::string& why : reconciler_.Restore(specs)) {
                     spdlog::error("left a deployment of the checkpoint out: {}; deploy it again "
                                   "within the limits",
                                   why);
                   }
                   checkpoint_generation_ = got->generation;
                   state->generation = 0;  // compared with desired state, which has none
                   checkpointed_bytes_ = wire::Pack(*state);
                   checkpoint_current_ = desired_bytes_ == checkpointed_bytes_;
                   spdlog::info("restored {} deployments from checkpoint generation {}",
                                specs.size(), got->generation);
                 }
                 loaded_ = true;
                 load_error_.clear();
                 Sync();
               });
}

void Controller::Tick() {
  double now = clock_.Now();
  double gap = now - last_tick_at_;
  if (last_tick_at_ > 0 && gap > options_.tick_s + 1.0) {
    // Heartbeats that arrived meanwhile are still unread: missing them proves nothing.
    spdlog::warn("the controller's loop was held up for {:.1f} s; judging no member from "
                 "missing heartbeats until each had time to be heard again",
                 gap);
    reconciler_.ResumeListening();
  }
  last_tick_at_ = now;
  ForgetSilentSupervisors();
  if (!loaded_) return;
  traffic_.Forget(now);
  reconciler_.Step();
  Sync();
  control_loops_->Increment();
  control_loop_duration_->Set(clock_.Now() - now);
}

std::vector<prometheus::MetricFamily> Controller::CollectMetrics() const {
  using prometheus::MetricType;
  auto family = [&](const char* suffix, const char* help, MetricType type) {
    return metrics::Family(metrics_registry_.Name(suffix), help, type);
  };
  auto status = family("deployment_status",
                       "1 for the state each deployment is in (the status label), else absent.",
                       MetricType::Gauge);
  auto target = family("deployment_target_replicas",
                       "The number of replicas each deployment asks for.", MetricType::Gauge);
  auto running = family("deployment_running_replicas",
                        "The number of RUNNING replicas of each deployment at its target version.",
                        MetricType::Gauge);
  auto nodes = family("controller_nodes", "The nodes the controller knows, by state.",
                      MetricType::Gauge);
  auto proxies = family("controller_proxies", "The proxies the controller knows, by state.",
                        MetricType::Gauge);
  auto unsaved = family("controller_checkpoint_unsaved",
                        "1 while the desired state is not safely stored, else 0.",
                        MetricType::Gauge);
  auto events = family("controller_events_total",
                       "The number of events the controller has published.", MetricType::Counter);
  auto loaded = family("controller_checkpoint_loaded",
                       "1 once the controller has read its checkpoint and serves, else 0.",
                       MetricType::Gauge);
  loaded.metric.push_back(metrics::Sample({}, loaded_ ? 1 : 0, MetricType::Gauge));
  events.metric.push_back(
      metrics::Sample({}, static_cast<double>(last_event_seq_), MetricType::Counter));
  if (loaded_) {
    wire::StatusReplyT report = reconciler_.Report({});
    unsaved.metric.push_back(
        metrics::Sample({}, CheckpointWarning().empty() ? 0 : 1, MetricType::Gauge));
    for (const auto& d : report.deployments) {
      auto labels = metrics::DeploymentLabels(d->name);
      auto with_status = labels;
      with_status.push_back({"status", wire::EnumNameDeploymentState(d->status)});
      status.metric.push_back(metrics::Sample(with_status, 1, MetricType::Gauge));
      target.metric.push_back(metrics::Sample(labels, d->num_replicas, MetricType::Gauge));
      int up = 0;
      for (const auto& r : d->replicas) {
        if (r->state == wire::ReplicaState::RUNNING && r->version == d->version) ++up;
      }
      running.metric.push_back(metrics::Sample(labels, up, MetricType::Gauge));
    }
    std::map<std::string, int> node_states;
    for (const auto& n : report.nodes) ++node_states[wire::EnumNameMemberState(n->state)];
    for (const auto& [state, count] : node_states) {
      nodes.metric.push_back(metrics::Sample({{"state", state}}, count, MetricType::Gauge));
    }
    std::map<std::string, int> proxy_states;
    for (const auto& p : report.proxies) ++proxy_states[wire::EnumNameMemberState(p->state)];
    for (const auto& [state, count] : proxy_states) {
      proxies.metric.push_back(metrics::Sample({{"state", state}}, count, MetricType::Gauge));
    }
  }
  std::vector<prometheus::MetricFamily> families;
  for (auto* f : {&status, &target, &running, &nodes, &proxies, &unsaved, &events, &loaded}) {
    families.push_back(std::move(*f));
  }
  return families;
}

void Controller::OnPing(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::PingRequest>(json_, message.data);
  wire::PingReplyT reply;
  if (!request.ok()) reply.error = request.error();
  reply.namespace_ = subjects_.ns;
  reply.controller_id = options_.controller_id;
  reply.host = host_;
  reply.pid = getpid();
  reply.version = kVersion;
  reply.started_ms = started_ms_;
  (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
}

Status Controller::Available() const {
  if (!loaded_) return Status::Error(NotLoadedYet(), ErrorKind::kUnavailable);
  return Status::Ok();
}

namespace {

// Logs what a change to desired state did (a line per deployment), or why it was refused.
Result<std::vector<std::string>> Logged(const char* what,
                                        Result<std::vector<std::string>> lines) {
  if (!lines.ok()) {
    spdlog::warn("{} refused: {}", what, lines.error());
  } else {
    for (const auto& line : *lines) spdlog::info("{}: {}", what, line);
  }
  return lines;
}

}  // namespace

Result<std::vector<std::string>> Controller::Deploy(std::vector<wire::DeploymentSpecT> specs) {
  if (Status available = Available(); !available.ok()) return available;
  return Logged("deploy", reconciler_.Deploy(std::move(specs)));
}

Result<std::vector<std::string>> Controller::Apply(std::vector<wire::DeploymentSpecT> specs) {
  if (Status available = Available(); !available.ok()) return available;
  return Logged("apply", reconciler_.Apply(std::move(specs)));
}

Result<std::vector<std::string>> Controller::Delete(const std::vector<std::string>& names) {
  if (Status available = Available(); !available.ok()) return available;
  auto deleted = reconciler_.Delete(names);
  if (!deleted.ok()) return deleted;
  for (const auto& name : *deleted) spdlog::info("deleted deployment {}", name);
  return deleted;
}

Result<wire::StatusReplyT> Controller::Report(const std::vector<std::string>& names) {
  if (Status available = Available(); !available.ok()) return available;
  wire::StatusReplyT reply = reconciler_.Report(names);
  traffic_.Fill(clock_.Now(), reply);
  reply.checkpoint_warning = CheckpointWarning();
  reply.supervisors = SupervisorReport();
  reply.namespace_ = subjects_.ns;
  reply.route_generation = route_generation_;
  reply.routes_pending = reconciler_.routes_version() != routes_version_;
  reply.controller_run = run_;
  return reply;
}

Result<std::vector<config::Deployment>> Controller::DesiredConfig() const {
  if (Status available = Available(); !available.ok()) return available;
  return reconciler_.DesiredConfig();
}

void Controller::OnDeploy(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::DeployRequest>(json_, message.data);
  wire::DeployReplyT reply;
  if (!request.ok()) {
    reply.error = request.error();
  } else {
    std::vector<wire::DeploymentSpecT> specs;
    std::vector<std::string> names;
    for (auto& spec : request->deployments) {
      if (spec == nullptr) continue;
      names.push_back(spec->name);
      specs.push_back(std::move(*spec));
    }
    auto results = Deploy(std::move(specs));
    if (results.ok()) {
      reply.results = std::move(*results);
      for (const auto& name : names) reply.versions.push_back(TargetVersion(name));
      reply.controller_run = run_;
    } else {
      reply.error = results.error();
    }
  }
  (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
}

void Controller::OnDelete(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::DeleteRequest>(json_, message.data);
  wire::DeleteReplyT reply;
  if (!request.ok()) {
    reply.error = request.error();
  } else {
    auto deleted = Delete(request->names);
    if (deleted.ok()) {
      reply.deleted = std::move(*deleted);
    } else {
      reply.error = deleted.error();
    }
  }
  (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
}

void Controller::OnStatus(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::StatusRequest>(json_, message.data);
  wire::StatusReplyT reply;
  if (!request.ok()) {
    reply.error = request.error();
  } else {
    auto status = Report(request->names);
    if (status.ok()) {
      reply = std::move(*status);
    } else {
      reply.error = status.error();
    }
  }
  reply.namespace_ = subjects_.ns;
  reply.route_generation = route_generation_;
  std::string encoded = wire::EncodeReply(json_, request, reply);
  const uint64_t limit = bus_.max_payload();
  if (limit > 0 && encoded.size() > limit) {
    // Unsent, the asker would only see a timeout; an answer that says why lets it act.
    wire::StatusReplyT too_large;
    too_large.namespace_ = subjects_.ns;
    too_large.error = "the status is " + std::to_string(encoded.size()) +
                      " bytes, more than the bus carries in one message (" + std::to_string(limit) +
                      "); ask for fewer deployments by name, or raise the NATS server's "
                      "max_payload";
    encoded = wire::EncodeReply(json_, request, too_large);
  }
  (void)bus_.Respond(message, encoded);
}

void Controller::OnConfig(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::ConfigRequest>(json_, message.data);
  wire::ConfigReplyT reply;
  if (!request.ok()) {
    reply.error = request.error();
  } else {
    auto desired = DesiredConfig();
    if (desired.ok()) {
      for (const config::Deployment& deployment : *desired) {
        reply.deployments.push_back(
            std::make_unique<wire::DeploymentSpecT>(config::ToSpec(deployment)));
      }
    } else {
      reply.error = desired.error();
    }
  }
  (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
}

void Controller::OnShutdown(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::ShutdownRequest>(json_, message.data);
  wire::ShutdownReplyT reply;
  if (!request.ok()) {
    reply.error = request.error();
    (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
    return;
  }
  spdlog::info("shutdown requested: telling every service of namespace {}", subjects_.ns);
  wire::ShutdownNoticeT notice;
  notice.reason = "serve shutdown";
  (void)bus_.Publish(subjects_.shutdown, wire::Pack(notice));
  (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
  if (on_shutdown_) on_shutdown_();
}

void Controller::OnRoutesRequest(bus::Message& message) {
  // An empty request is fine: asking is all a proxy needs to say.
  auto request = message.data.empty()
                     ? wire::Request<wire::RouteTableRequestT>(wire::RouteTableRequestT{}, false)
                     : wire::DecodeRequest<wire::RouteTableRequest>(json_, message.data);
  if (!request.ok() || !loaded_ || reconciler_.Recovering()) {
    wire::RouteTableT reply;
    reply.error = request.ok() ? "the controller is recovering its state; keep the routes you have"
                               : request.error();
    (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
    return;
  }
  if (!request.looked_like_json()) {
    (void)bus_.Respond(message, RouteTableBytes());
    return;
  }
  auto json = json_.ToJson(RouteTableBytes(), wire::RouteTable::GetFullyQualifiedName());
  if (!json.ok()) {
    wire::RouteTableT reply;
    reply.error = json.error();
    (void)bus_.Respond(message, wire::EncodeReply(json_, request, reply));
    return;
  }
  (void)bus_.Respond(message, *json);
}

void Controller::OnNodeHeartbeat(bus::Message& message) {
  auto heartbeat = DecodeEvent<wire::NodeHeartbeat>(message, "node heartbeat");
  if (!heartbeat.has_value() || !loaded_) return;
  reconciler_.OnNodeHeartbeat(*heartbeat);
  traffic_.OnNodeHeartbeat(clock_.Now(), *heartbeat, [&](const std::string& id) {
    return reconciler_.HasReplicaOn(id, heartbeat->node_id);
  });
}

void Controller::OnReplicaHeartbeat(bus::Message& message) {
  auto heartbeat = DecodeEvent<wire::ReplicaHeartbeat>(message, "replica heartbeat");
  if (heartbeat.has_value() && loaded_) reconciler_.OnReplicaHeartbeat(*heartbeat);
}

void Controller::OnProxyHeartbeat(bus::Message& message) {
  auto heartbeat = DecodeEvent<wire::ProxyHeartbeat>(message, "proxy heartbeat");
  if (heartbeat.has_value()) reconciler_.OnProxyHeartbeat(*heartbeat);
}

void Controller::OnReplicaExited(bus::Message& message) {
  auto exited = DecodeEvent<wire::ReplicaExited>(message, "exit report");
  if (exited.has_value() && loaded_) reconciler_.OnReplicaExited(*exited);
}

void Controller::OnSupervisorHeartbeat(bus::Message& message) {
  auto heartbeat = DecodeEvent<wire::SupervisorHeartbeat>(message, "supervisor heartbeat");
  if (!heartbeat.has_value()) return;
  // Shown in every status reply: what any bus client publishes here is kept within bounds.
  std::string problem;
  if (message.data.size() > kMaxSupervisorHeartbeatBytes) {
    problem = "it is " + std::to_string(message.data.size()) + " bytes (at most " +
              std::to_string(kMaxSupervisorHeartbeatBytes) + ")";
  } else if (heartbeat->supervisor_id.empty()) {
    problem = "it has no supervisor_id";
  } else if (heartbeat->supervisor_id.size() > kMaxMemberIdBytes) {
    problem = "its supervisor_id is longer than " + std::to_string(kMaxMemberIdBytes) + " bytes";
  } else if (heartbeat->services.size() > kMaxSupervisedServices) {
    problem = "it lists " + std::to_string(heartbeat->services.size()) + " services (at most " +
              std::to_string(kMaxSupervisedServices) + ")";
  }
  bool known = supervisors_.count(heartbeat->supervisor_id) > 0;
  if (problem.empty() && !known && supervisors_.size() >= kMaxSupervisors) {
    problem = "the controller already shows " + std::to_string(kMaxSupervisors) +
              " supervisors; a silent one is dropped after --forget-lost-nodes-after-s";
  }
  if (!problem.empty()) {
    static log::RateLimit limit;
    uint64_t suppressed = 0;
    if (limit.Allow(&suppressed)) {
      spdlog::warn("ignored a supervisor heartbeat on {}: {}{}", message.subject, problem,
                   suppressed > 0 ? " (and " + std::to_string(suppressed) + " more since)" : "");
    }
    return;
  }
  heartbeat->period_s = Reconciler::SanePeriod(heartbeat->period_s);
  // A supervisor started for the same run directory (after the previous one died) takes the
  // place of the previous one.
  std::erase_if(supervisors_, [&](const auto& entry) {
    const wire::SupervisorHeartbeatT& seen = entry.second.heartbeat;
    return entry.first != heartbeat->supervisor_id && seen.host == heartbeat->host &&
           seen.run_dir == heartbeat->run_dir;
  });
  SeenSupervisor& seen = supervisors_[heartbeat->supervisor_id];
  seen.heartbeat = std::move(*heartbeat);
  seen.last_seen = clock_.Now();
}

void Controller::ForgetSilentSupervisors() {
  double now = clock_.Now();
  std::erase_if(supervisors_, [&](const auto& entry) {
    return now - entry.second.last_seen > options_.reconciler.forget_lost_nodes_after_s;
  });
}

std::vector<std::unique_ptr<wire::SupervisorStatusT>> Controller::SupervisorReport() const {
  std::vector<std::unique_ptr<wire::SupervisorStatusT>> report;
  for (const auto& [id, seen] : supervisors_) {
    auto status = std::make_unique<wire::SupervisorStatusT>();
    status->heartbeat = std::make_unique<wire::SupervisorHeartbeatT>(seen.heartbeat);
    status->last_seen_s = clock_.Now() - seen.last_seen;
    double period = seen.heartbeat.period_s;
    // As for nodes and proxies: three missed heartbeats and it is presumed gone.
    status->state = status->last_seen_s > 3 * period ? wire::MemberState::UNHEALTHY
                                                     : wire::MemberState::HEALTHY;
    report.push_back(std::move(status));
  }
  return report;
}

void Controller::StartReplica(const std::string& node_id, const std::string& replica_id,
                              const wire::DeploymentSpecT& spec, const std::string& fingerprint,
                              const std::string& config_hash) {
  wire::StartReplicaT order;
  order.replica_id = replica_id;
  order.spec = std::make_unique<wire::DeploymentSpecT>(spec);
  order.fingerprint = fingerprint;
  order.config_hash = config_hash;
  spdlog::info("starting replica {} of {} on node {}", replica_id, spec.name, node_id);
  bus_.Request(subjects_.NodeStart(node_id), wire::Pack(order), options_.request_timeout_s,
               [this, replica_id](Result<bus::Message> reply) {
                 if (stopped_) return;
                 StartOutcome outcome;
                 outcome.delivered = reply.ok();
                 outcome.status = ReplyStatus<wire::StartReplicaReply>(reply);
                 if (reply.ok()) {
                   auto answer = wire::Unpack<wire::StartReplicaReply>(reply->data);
                   if (answer.ok()) {
                     outcome.incarnation = answer->incarnation;
                     outcome.heartbeat_seq = answer->heartbeat_seq;
                   }
                 }
                 reconciler_.OnStartResult(replica_id, outcome);
                 Sync();
               });
}

void Controller::StopReplica(const std::string& node_id, const std::string& replica_id) {
  // Sent by Sync() after the route table that no longer lists the replica: proxies stop
  // choosing it before it stops listening.
  pending_stops_.emplace_back(node_id, replica_id);
}

void Controller::SendStops() {
  auto stops = std::move(pending_stops_);
  pending_stops_.clear();
  for (const auto& [node_id, replica_id] : stops) {
    wire::StopReplicaT order;
    order.replica_id = replica_id;
    spdlog::info("stopping replica {} on node {}", replica_id, node_id);
    bus_.Request(subjects_.NodeStop(node_id), wire::Pack(order), options_.request_timeout_s,
                 [replica_id = replica_id, node_id = node_id](Result<bus::Message> reply) {
                   if (!reply.ok()) {
                     spdlog::warn("stop of replica {} on node {}: {}", replica_id, node_id,
                                  reply.error());
                   }
                 });
  }
}

void Controller::ReconfigureReplica(const std::string& replica_id,
                                    const wire::DeploymentSpecT& spec,
                                    const std::string& config_hash) {
  wire::ReconfigureT order;
  order.replica_id = replica_id;
  order.user_config = spec.user_config;
  order.health_check_period_s = spec.health_check_period_s;
  order.max_concurrent_queries = spec.max_concurrent_queries;
  order.health_check_timeout_s = spec.health_check_timeout_s;
  spdlog::info("reconfiguring replica {} of {}", replica_id, spec.name);
  bus_.Request(subjects_.ReplicaControl(replica_id), wire::Pack(order),
               options_.request_timeout_s,
               [this, replica_id, config_hash](Result<bus::Message> reply) {
                 if (stopped_) return;
                 reconciler_.OnReconfigureResult(replica_id, config_hash,
                                                 ReplyStatus<wire::ReconfigureReply>(reply));
                 Sync();
               });
}

void Controller::Event(const std::string& kind, const std::string& name, const std::string& state,
                       const std::string& message) {
  spdlog::info("{} {}: {}{}{}", kind, name, state, message.empty() ? "" : " - ", message);
  wire::EventT event;
  event.time_ms = service::UnixMillis();
  event.seq = ++last_event_seq_;
  event.kind = kind;
  event.name = name;
  event.state = state;
  event.message = message;
  (void)bus_.Publish(subjects_.events, wire::Pack(event));
  if (event_listener_) event_listener_(event);
  recent_events_.push_back(std::move(event));
  if (recent_events_.size() > kRecentEvents) recent_events_.pop_front();
}

void Controller::AskReplicaLogs(const wire::ReplicaLogsRequestT& request,
                                std::function<void(Result<wire::ReplicaLogsReplyT>)> done) {
  std::string replica_id = request.replica_id;
  // Only the node holding the log answers: silence from all of them means none has it.
  bus_.Request(subjects_.logs, wire::Pack(request), 2.0,
               [replica_id, done = std::move(done)](Result<bus::Message> reply) {
                 done(wire::ReplicaLogsAnswer(
                     replica_id, reply.ok() ? std::optional<std::string_view>(reply->data)
                                            : std::nullopt));
               });
}

std::vector<wire::EventT> Controller::EventsSince(uint64_t since) const {
  std::vector<wire::EventT> events;
  // Sequence numbers are consecutive, so the first wanted one is found by arithmetic.
  if (recent_events_.empty() || since >= recent_events_.back().seq) return events;
  uint64_t first = recent_events_.front().seq;
  size_t from = since < first ? 0 : static_cast<size_t>(since + 1 - first);
  events.assign(recent_events_.begin() + static_cast<ptrdiff_t>(from), recent_events_.end());
  return events;
}

std::string Controller::RouteTableBytes() {
  wire::RouteTableT table = reconciler_.Routes();
  table.generation = route_generation_;
  table.controller_id = options_.controller_id;
  return wire::Pack(table);
}

void Controller::Sync() {
  // A stopped controller (shut down, or stepped down for a newer one) publishes no routes and
  // sends no orders, even for replies that arrive while its bus closes.
  if (!loaded_ || stopped_) return;
  // Building the table costs a pass over every replica: only when something it shows changed,
  // and at most every kRoutesInterval_s, so a burst of changes (hundreds of replicas coming
  // up) goes out as a few tables rather than one per replica.
  if (reconciler_.routes_version() != routes_version_ && !reconciler_.Recovering()) {
    double wait = last_routes_at_ + kRoutesInterval_s - clock_.Now();
    if (wait > 0) {
      if (!routes_timer_->active()) routes_timer_->Start(wait, [this] { Sync(); });
    } else {
      routes_version_ = reconciler_.routes_version();
      last_routes_at_ = clock_.Now();
      std::string routes = wire::Pack(reconciler_.Routes());
      if (routes != published_routes_) {
        published_routes_ = std::move(routes);
        ++route_generation_;
        (void)bus_.Publish(subjects_.routes, RouteTableBytes());
      }
    }
  }
  // Stops follow the routes that no longer lead to the replicas; while recovering no table
  // goes out, so no stop does either.
  if (!reconciler_.Recovering() && routes_version_ == reconciler_.routes_version()) SendStops();
  if (reconciler_.desired_version() != desired_version_) {
    desired_version_ = reconciler_.desired_version();
    wire::ControllerStateT state;
    for (auto& spec : reconciler_.Desired()) {
      state.deployments.push_back(std::make_unique<wire::DeploymentSpecT>(std::move(spec)));
    }
    desired_bytes_ = wire::Pack(state);
    checkpoint_current_ = desired_bytes_ == checkpointed_bytes_;
  }
  WriteCheckpoint();
}

std::string Controller::NotLoadedYet() const {
  if (!load_error_.empty()) return load_error_;
  return "the controller is still loading its checkpoint (is serve-checkpointer running?); "
         "try again in a moment";
}

std::string Controller::CheckpointWarning() const {
  if (checkpoint_current_ || unsaved_since_ == 0) return "";
  double lag = clock_.Now() - unsaved_since_;
  if (lag < 2 && checkpoint_failures_ == 0) return "";  // a write in progress
  char seconds[32];
  snprintf(seconds, sizeof(seconds), "%.0f", lag);
  std::string warning = std::string("the latest changes are not checkpointed yet (for ") +
                        seconds + " s)";
  if (!last_checkpoint_error_.empty()) warning += ": " + last_checkpoint_error_;
  return warning + "; Serve keeps serving and retries";
}

void Controller::WriteCheckpoint() {
  if (checkpoint_current_) {
    unsaved_since_ = 0;
    return;
  }
  if (unsaved_since_ == 0) unsaved_since_ = clock_.Now();
  if (checkpoint_in_flight_) return;
  if (clock_.Now() < checkpoint_retry_at_) return;
  // The stored record carries the generation inside the state too, for people reading it.
  auto state = wire::Unpack<wire::ControllerState>(desired_bytes_);
  if (!state.ok()) return;
  uint64_t generation = checkpoint_generation_ + 1;
  state->generation = generation;
  std::string written = desired_bytes_;
  wire::CheckpointPutT put;
  put.key = kStateKey;
  put.generation = generation;
  put.store = options_.checkpoint_path;
  std::string data = wire::Pack(*state);
  put.data.assign(data.begin(), data.end());
  checkpoint_in_flight_ = true;
  bus_.Request(subjects_.ckpt_put, wire::Pack(put), options_.request_timeout_s,
               [this, generation, written](Result<bus::Message> reply) {
                 checkpoint_in_flight_ = false;
                 if (reply.ok()) {
                   auto answer = wire::Unpack<wire::CheckpointPutReply>(reply->data);
                   if (answer.ok() && !answer->error.empty() &&
                       answer->stored_generation > generation) {
                     // Another controller stored a newer state: this one is stale and must
                     // not act on the cluster any longer.
                     StepDown("checkpoint generation " +
                              std::to_string(answer->stored_generation) +
                              " was written by another controller (this one is at " +
                              std::to_string(generation) + ")");
                     return;
                   }
                 }
                 Status written_ok = ReplyStatus<wire::CheckpointPutReply>(reply);
                 if (!written_ok.ok()) {
                   ++checkpoint_failures_;
                   last_checkpoint_error_ = written_ok.message();
                   double backoff =
                       std::min(30.0, 0.5 * std::pow(2.0, std::min(checkpoint_failures_, 8) - 1));
                   spdlog::warn("checkpoint write failed (retrying in {} s): {}", backoff,
                                written_ok.message());
                   checkpoint_retry_at_ = clock_.Now() + backoff;
                   return;
                 }
                 if (checkpoint_failures_ > 0) {
                   spdlog::info("checkpoint written again after {} failed attempts",
                                checkpoint_failures_);
                 }
                 checkpoint_failures_ = 0;
                 last_checkpoint_error_.clear();
                 checkpoint_generation_ = generation;
                 checkpointed_bytes_ = written;
                 checkpoint_current_ = desired_bytes_ == checkpointed_bytes_;
                 if (checkpoint_current_) unsaved_since_ = 0;
                 spdlog::debug("checkpointed generation {}", generation);
                 WriteCheckpoint();  // something may have changed meanwhile
               });
}

}  // namespace serve::controller
