#include "controller/reconciler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "config/spec.h"
#include "wire/codec.h"

namespace serve::controller {
namespace {

using wire::DeploymentState;
using wire::ReplicaState;

bool Serving(ReplicaState state) {
  return state == ReplicaState::PENDING || state == ReplicaState::STARTING ||
         state == ReplicaState::RUNNING;
}

std::string FormatAmount(double amount) {
  char text[32];
  snprintf(text, sizeof(text), "%g", amount);
  return text;
}

wire::ResourcesT ResourcesOf(const wire::DeploymentSpecT& spec) {
  return spec.resources != nullptr ? *spec.resources : wire::ResourcesT{};
}

double CustomAmount(const wire::ResourcesT& resources, const std::string& name) {
  for (const auto& r : resources.custom) {
    if (r != nullptr && r->name == name) return r->amount;
  }
  return 0;
}

// What must match for a running replica to count as up to date: the whole spec except the
// replica count and what changes in place (see ConfigHash). A change here rolls replicas over.
std::string Fingerprint(const wire::DeploymentSpecT& spec) {
  wire::DeploymentSpecT copy = spec;
  copy.num_replicas = 0;
  // A command reads user_config from its environment at start, so for it a new user_config
  // means new replicas; every other runtime takes it in place.
  if (spec.runtime != "command") copy.user_config.clear();
  copy.health_check_period_s = 0;
  copy.health_check_timeout_s = 0;
  copy.max_concurrent_queries = 0;
  return ShortHash(wire::Pack(copy));
}

// What a running replica takes without a restart: user_config (through the user's
// reconfigure), its heartbeat period, and the limits it enforces itself (max_concurrent_queries,
// the health-check deadline), which proxies and the controller apply too.
std::string ConfigHash(const wire::DeploymentSpecT& spec) {
  return ShortHash(spec.user_config + "\n" + std::to_string(spec.health_check_period_s) + "\n" +
                   std::to_string(spec.max_concurrent_queries) + "\n" +
                   std::to_string(spec.health_check_timeout_s));
}

// What a derived version covers: the code. Options that change in place do not count.
// What the code of a deployment is: its runtime, its artifact's digest, its command line and
// what a python deployment imports from where.
std::string CodeOf(const wire::DeploymentSpecT& spec) {
  std::string code = spec.runtime + "\n" + spec.artifact;
  for (const std::string& arg : spec.command) code += "\n" + arg;
  if (!spec.import_path.empty()) code += "\nimport " + spec.import_path;
  for (const std::string& entry : spec.python_path) code += "\npath " + entry;
  return code;
}

// A short description of the code for messages: "runtime native (libcounter.so, sha256:ab12...)".
std::string DescribeCode(const wire::DeploymentSpecT& spec) {
  std::string text = "runtime " + spec.runtime;
  if (!spec.artifact.empty()) {
    text += " (" + (spec.artifact_name.empty() ? "" : spec.artifact_name + ", ") +
            spec.artifact.substr(0, 19) + "...)";
  }
  return text;
}

std::string DerivedVersion(const wire::DeploymentSpecT& spec) {
  return "auto-" + ShortHash(CodeOf(spec)).substr(0, 8);
}

}  // namespace

std::string ShortHash(const std::string& bytes) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  char text[17];
  snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

Reconciler::Reconciler(const Clock& clock, ReconcilerActions& actions, ReconcilerOptions options)
    : clock_(clock),
      actions_(actions),
      options_(options),
      started_at_(clock.Now()),
      // Replica ids stay unique across controller restarts: a random part plus a counter.
      id_prefix_(ShortHash(std::to_string(std::random_device{}())).substr(0, 4)) {}

Status Reconciler::Admit(wire::DeploymentSpecT& spec,
                         const std::set<std::string>& leaving) const {
  if (spec.route_prefix.empty() && !spec.name.empty()) spec.route_prefix = "/" + spec.name;
  if (spec.resources == nullptr) spec.resources = std::make_unique<wire::ResourcesT>();
  config::Deployment deployment = config::FromSpec(spec);
  Status valid = config::ValidateDeployment(deployment, options_.limits);
  if (valid.ok()) valid = config::ValidateArtifactReference(deployment);
  if (!valid.ok()) return valid;
  for (const auto& [name, other] : deployments_) {
    if (name != spec.name && other.spec.route_prefix == spec.route_prefix &&
        leaving.count(name) == 0) {
      return Status::Error("deployment '" + spec.name + "': route_prefix " + spec.route_prefix +
                               " is already used by deployment '" + name +
                               "'; choose another route_prefix or delete '" + name + "' first",
                           ErrorKind::kConflict);
    }
  }
  auto existing = deployments_.find(spec.name);
  if (existing != deployments_.end() && spec.artifact_name.empty() &&
      spec.artifact == existing->second.spec.artifact) {
    // The same code by digest without the file name it came from (a config read back from the
    // REST API or `serve config`): the same deployment, not a new one.
    spec.artifact_name = existing->second.spec.artifact_name;
  }
  if (!spec.version.empty() && existing != deployments_.end() &&
      existing->second.spec.version == spec.version &&
      CodeOf(existing->second.spec) != CodeOf(spec)) {
    return Status::Error("deployment '" + spec.name + "': version '" + spec.version +
                         "' is already deployed with other code, " +
                         DescribeCode(existing->second.spec) + "; give the new code a new version "
                         "(or leave version out to derive one from the code)");
  }
  if (spec.version.empty()) spec.version = DerivedVersion(spec);
  return Status::Ok();
}

Status Reconciler::CheckNamespaceReplicas(const std::vector<wire::DeploymentSpecT>& specs,
                                          const std::set<std::string>& leaving) const {
  // What the namespace asks for once this request is applied: the request's deployments at
  // their new counts, the others as they are, those leaving not at all.
  std::map<std::string, int64_t> wanted;
  int64_t now = 0;
  for (const auto& [name, d] : deployments_) {
    now += d.spec.num_replicas;
    if (leaving.count(name) == 0) wanted[name] = d.spec.num_replicas;
  }
  for (const auto& spec : specs) wanted[spec.name] = spec.num_replicas;
  int64_t total = 0;
  for (const auto& [name, count] : wanted) total += count;
  if (total <= options_.max_replicas_per_namespace || total <= now) return Status::Ok();
  std::string names;
  for (const auto& spec : specs) names += (names.empty() ? "'" : ", '") + spec.name + "'";
  return Status::Error("num_replicas: deploying " + names + " would make " + std::to_string(total) +
                       " replicas in the namespace, more than " +
                       std::to_string(options_.max_replicas_per_namespace) +
                       " (serve-controller --max-replicas-per-namespace); ask for fewer "
                       "replicas or delete a deployment first");
}

std::string Reconciler::TargetVersion(const std::string& name) const {
  auto it = deployments_.find(name);
  return it == deployments_.end() ? std::string() : it->second.spec.version;
}

bool Reconciler::HasReplicaOn(const std::string& id, const std::string& node) const {
  auto it = replicas_.find(id);
  return it != replicas_.end() && it->second.node == node;
}

Result<std::vector<std::string>> Reconciler::Deploy(std::vector<wire::DeploymentSpecT> specs) {
  return Deploy(std::move(specs), {});
}

Result<std::vector<std::string>> Reconciler::Apply(std::vector<wire::DeploymentSpecT> specs) {
  std::set<std::string> listed;
  for (const auto& spec : specs) listed.insert(spec.name);
  std::set<std::string> leaving;
  for (const auto& [name, d] : deployments_) {
    if (listed.count(name) == 0) leaving.insert(name);
  }
  std::vector<std::string> results;
  if (!specs.empty()) {
    auto deployed = Deploy(std::move(specs), leaving);
    if (!deployed.ok()) return deployed;
    results = std::move(*deployed);
  }
  if (!leaving.empty()) {
    auto deleted = Delete(std::vector<std::string>(leaving.begin(), leaving.end()));
    if (!deleted.ok()) return deleted;  // cannot happen: every name exists
    for (const auto& name : *deleted) results.push_back(name + ": deleted");
  }
  return results;
}

Result<std::vector<std::string>> Reconciler::Deploy(std::vector<wire::DeploymentSpecT> specs,
                                                    const std::set<std::string>& leaving) {
  if (specs.empty()) return Status::Error("deploy request lists no deployments");
  std::set<std::string> names;
  std::map<std::string, std::string> routes;
  for (auto& spec : specs) {
    Status admitted = Admit(spec, leaving);
    if (!admitted.ok()) return admitted;
    if (!names.insert(spec.name).second) {
      return Status::Error("deployment '" + spec.name + "' is listed twice");
    }
    auto [it, inserted] = routes.emplace(spec.route_prefix, spec.name);
    if (!inserted) {
      return Status::Error("deployments '" + it->second + "' and '" + spec.name +
                               "' both use route_prefix " + spec.route_prefix,
                           ErrorKind::kConflict);
    }
  }
  if (Status total = CheckNamespaceReplicas(specs, leaving); !total.ok()) return total;
  std::vector<std::string> results;
  for (auto& spec : specs) {
    std::string fingerprint = Fingerprint(spec);
    std::string config_hash = ConfigHash(spec);
    auto it = deployments_.find(spec.name);
    std::string outcome;
    if (it == deployments_.end()) {
      outcome = "created";
    } else if (it->second.fingerprint != fingerprint) {
      outcome = it->second.spec.version == spec.version
                    ? "updating (rolling restart)"
                    : "updating from version " + it->second.spec.version + " to " + spec.version;
    } else {
      const Deployment& before = it->second;
      if (before.spec.num_replicas != spec.num_replicas) {
        outcome = "scaled from " + std::to_string(before.spec.num_replicas) + " to " +
                  std::to_string(spec.num_replicas) + " replicas";
      }
      if (before.config_hash != config_hash) {
        outcome += std::string(outcome.empty() ? "" : ", ") + "reconfigured in place";
      } else if (wire::Pack(before.spec) != wire::Pack(spec) && outcome.empty()) {
        outcome = "options updated in place";
      }
      if (outcome.empty() && before.start_failures == 0) {
        results.push_back(spec.name + ": unchanged");
        continue;
      }
      if (outcome.empty()) {
        // The same spec again after failed starts: the cause may have been outside the spec.
        outcome = "retrying after " + std::to_string(before.start_failures) + " failed starts";
      }
    }
    Deployment& d = deployments_[spec.name];
    d.restored = false;  // a new intent, no longer the checkpoint's
    d.spec = std::move(spec);
    d.fingerprint = fingerprint;
    d.config_hash = config_hash;
    d.reached_target = false;
    d.start_failures = 0;
    d.next_start_after = 0;
    d.last_failure.clear();
    d.state = DeploymentState::UPDATING;
    d.message = outcome;
    MarkDirty(d.spec.name);
    actions_.Event("deployment", d.spec.name, "UPDATING", outcome);
    results.push_back(d.spec.name + ": " + outcome);
  }
  ++routes_version_;
  ++desired_version_;
  Step();
  return results;
}

Result<std::vector<std::string>> Reconciler::Delete(const std::vector<std::string>& names) {
  if (names.empty()) return Status::Error("delete request names no deployment");
  for (const auto& name : names) {
    if (deployments_.count(name) == 0) {
      std::string known;
      for (const auto& [n, d] : deployments_) known += (known.empty() ? "" : ", ") + n;
      return Status::Error(
          "no deployment named '" + name + "'" +
              (known.empty() ? " (nothing is deployed)" : "; deployed: " + known),
          ErrorKind::kNotFound);
    }
  }
  std::vector<std::string> deleted;
  for (const auto& name : names) {
    deployments_.erase(name);
    dirty_.erase(name);
    std::vector<std::string> ids(ReplicasOf(name).begin(), ReplicasOf(name).end());
    for (const auto& id : ids) {
      Replica& replica = replicas_.at(id);
      if (replica.state == ReplicaState::STOPPING) continue;
      StopAndForget(replica, "deployment deleted");
      if (replica.node.empty()) EraseReplica(id);  // never placed: nothing to wait for
    }
    actions_.Event("deployment", name, "DELETED", "");
    deleted.push_back(name);
  }
  ++routes_version_;
  ++desired_version_;
  return deleted;
}

std::vector<std::string> Reconciler::Restore(const std::vector<wire::DeploymentSpecT>& specs) {
  std::vector<std::string> skipped;
  for (const auto& spec : specs) {
    // The store is not trusted more than the bus: a deployment that breaks today's rules
    // (tampered with, or admitted under looser ones) is left out rather than acted on.
    Status valid = config::ValidateDeployment(config::FromSpec(spec), options_.limits);
    if (!valid.ok()) {
      skipped.push_back(valid.message());
      continue;
    }
    Deployment& d = deployments_[spec.name];
    d.spec = spec;
    d.fingerprint = Fingerprint(spec);
    d.config_hash = ConfigHash(spec);
    d.message = "restored from the checkpoint";
    d.state = DeploymentState::RECOVERING;
    d.restored = true;
    MarkDirty(spec.name);
  }
  started_at_ = clock_.Now();
  was_recovering_ = true;
  ++routes_version_;
  ++desired_version_;
  return skipped;
}

bool Reconciler::Recovering() const {
  return clock_.Now() - started_at_ < options_.adoption_grace_s;
}

void Reconciler::SetBusConnected(bool connected) {
  if (connected == bus_connected_) return;
  bus_connected_ = connected;
  if (connected) {
    reconnected_at_ = clock_.Now();
    actions_.Event("controller", controller_id_, "CONNECTED",
                   "the bus is back; verdicts from missing heartbeats wait " +
                       FormatAmount(ReconnectGrace()) + " s to hear from every member");
  }
}

double Reconciler::SanePeriod(double reported_s) {
  if (!std::isfinite(reported_s) || reported_s <= 0) return 1;
  return std::clamp(reported_s, kMinReportedPeriod_s, kMaxReportedPeriod_s);
}

void Reconciler::ResumeListening() {
  if (bus_connected_) reconnected_at_ = clock_.Now();
}

double Reconciler::ReconnectGrace() const {
  double longest = 0;
  for (const auto& [id, node] : nodes_) longest = std::max(longest, node.period_s);
  for (const auto& [id, proxy] : proxies_) longest = std::max(longest, proxy.period_s);
  return std::max(options_.min_reconnect_grace_s, 2 * longest + 0.5);
}

bool Reconciler::HoldingVerdicts() const {
  return !bus_connected_ ||
         (reconnected_at_ > 0 && clock_.Now() - reconnected_at_ < ReconnectGrace());
}

void Reconciler::Usage::Add(const wire::ResourcesT& resources, double sign) {
  cpus += sign * resources.num_cpus;
  gpus += sign * resources.num_gpus;
  for (const auto& c : resources.custom) {
    if (c != nullptr) custom[c->name] += sign * c->amount;
  }
}

Reconciler::Replica& Reconciler::AddReplica(const std::string& id, const std::string& deployment) {
  Replica& replica = replicas_[id];
  replica.id = id;
  replica.deployment = deployment;
  replicas_by_deployment_[deployment].insert(id);
  MarkDirty(deployment);
  return replica;
}

void Reconciler::AssignNode(Replica& replica, const std::string& node_id) {
  if (replica.node == node_id) return;
  ClearNode(replica);
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) return;
  replica.node = node_id;
  it->second.replicas.insert(replica.id);
  it->second.used.Add(replica.resources, 1);
}

void Reconciler::ClearNode(Replica& replica) {
  if (replica.node.empty()) return;
  auto it = nodes_.find(replica.node);
  if (it != nodes_.end() && it->second.replicas.erase(replica.id) > 0) {
    it->second.used.Add(replica.resources, -1);
  }
  replica.node.clear();
  replica.acked = false;
}

void Reconciler::EraseReplica(const std::string& id) {
  auto it = replicas_.find(id);
  if (it == replicas_.end()) return;
  Replica& replica = it->second;
  ClearNode(replica);
  if (replica.state == ReplicaState::RUNNING) ++routes_version_;
  pending_.erase(id);
  retired_[id] = clock_.Now();
  MarkDirty(replica.deployment);
  auto index = replicas_by_deployment_.find(replica.deployment);
  if (index != replicas_by_deployment_.end()) {
    index->second.erase(id);
    if (index->second.empty()) replicas_by_deployment_.erase(index);
  }
  replicas_.erase(it);
}

const std::set<std::string>& Reconciler::ReplicasOf(const std::string& deployment) const {
  static const std::set<std::string> kNone;
  auto it = replicas_by_deployment_.find(deployment);
  return it == replicas_by_deployment_.end() ? kNone : it->second;
}

void Reconciler::OnNodeHeartbeat(const wire::NodeHeartbeatT& heartbeat) {
  if (heartbeat.node_id.empty()) return;
  double now = clock_.Now();
  auto [it, inserted] = nodes_.try_emplace(heartbeat.node_id);
  Node& node = it->second;
  // A heartbeat of an earlier run of the agent, or one overtaken by a newer one, says nothing.
  if (!inserted && heartbeat.incarnation != 0) {
    if (heartbeat.incarnation < node.incarnation) return;
    if (heartbeat.incarnation == node.incarnation && heartbeat.seq != 0 &&
        heartbeat.seq <= node.seq) {
      return;
    }
  }
  bool new_run = !inserted && node.incarnation != 0 && heartbeat.incarnation != node.incarnation;
  if (new_run && node.healthy) {
    actions_.Event("node", heartbeat.node_id, "RESTARTED", "its node agent started again");
  }
  if (inserted || !node.healthy) {
    actions_.Event("node", heartbeat.node_id, "HEALTHY", inserted ? "registered" : "back");
    for (const auto& [name, d] : deployments_) {
      if (!d.pending_reason.empty()) MarkDirty(name);  // room for what waits
    }
  }
  node.id = heartbeat.node_id;
  node.host = heartbeat.host;
  node.capacity = heartbeat.resources != nullptr ? *heartbeat.resources : wire::ResourcesT{};
  node.period_s = SanePeriod(heartbeat.period_s);
  node.last_seen = now;
  node.healthy = true;
  node.incarnation = heartbeat.incarnation;
  node.seq = heartbeat.seq;
  node.reported_starting = heartbeat.starting;

  std::set<std::string> reported;
  for (const auto& r : heartbeat.replicas) {
    if (r == nullptr || r->id.empty()) continue;
    reported.insert(r->id);
    auto known = replicas_.find(r->id);
    if (known == replicas_.end()) {
      AdoptOrStop(node, *r);
      continue;
    }
    Replica& replica = known->second;
    if (replica.node.empty() && replica.state == ReplicaState::PENDING) {
      // A start order that got no answer reached this node after all: it runs here.
      pending_.erase(replica.id);
      AssignNode(replica, node.id);
      SetReplicaState(replica, ReplicaState::STARTING, "starting on node " + node.id);
    } else if (replica.node != node.id) {
      StopOrphan(node.id, r->id);  // placed elsewhere since: this copy is stale
      continue;
    }
    replica.missing_since = 0;  // listed again: whatever was missing was a stale view
    if ((!replica.acked || replica.incarnation == 0) && replica.state != ReplicaState::STOPPING) {
      Ack(replica, heartbeat.incarnation, heartbeat.seq);
    }
  }
  // What this node no longer lists is gone, but only once the node has accepted it: a start
  // order still on its way, or waiting in the agent's queue, is not missing.
  std::vector<std::string> placed(node.replicas.begin(), node.replicas.end());
  for (const auto& id : placed) {
    if (reported.count(id) > 0) continue;
    Replica& replica = replicas_.at(id);
    if (replica.state == ReplicaState::STOPPING) {
      EraseReplica(id);  // finished stopping
      continue;
    }
    if (!replica.acked) continue;
    if (heartbeat.seq == 0 || replica.incarnation == 0) {
      // No sequence to go by (an agent that sends none, or a replica known only from its own
      // heartbeat): it is missing once the node had time to list it.
      if (now - replica.state_since > 2 * node.period_s + 1) {
        MarkMissing(replica, "no longer running on node " + node.id);
      }
    } else if (heartbeat.incarnation != replica.incarnation) {
      LoseReplica(replica, "its node agent on " + node.id + " restarted (its workers end with it)",
                  /*failed_start=*/false);
    } else if (heartbeat.seq >= replica.listed_from_seq) {
      MarkMissing(replica, "no longer running on node " + node.id);
    }
  }
  for (auto stop = orphan_stops_.lower_bound({node.id, ""});
       stop != orphan_stops_.end() && stop->first.first == node.id;) {
    stop = reported.count(stop->first.second) > 0 ? std::next(stop) : orphan_stops_.erase(stop);
  }
}

void Reconciler::AdoptOrStop(const Node& node, const wire::NodeReplicaT& reported) {
  auto it = deployments_.find(reported.deployment);
  if (it != deployments_.end()) {
    Deployment& d = it->second;
    bool current = reported.fingerprint.empty() ? reported.version == d.spec.version
                                                : reported.fingerprint == d.fingerprint;
    int serving = 0;
    if (current) {
      // Placeholders that wait for placement run nothing: a live replica takes precedence.
      for (const auto& id : ReplicasOf(d.spec.name)) {
        const Replica& r = replicas_.at(id);
        if (r.fingerprint == d.fingerprint && !r.node.empty() &&
            (r.state == ReplicaState::STARTING || r.state == ReplicaState::RUNNING)) {
          ++serving;
        }
      }
    }
    // A replica of an older spec is adopted too: during an update it serves until the new
    // version's replicas run, by the same rule as before the restart. One this controller
    // already let go (stopped, replaced, lost) never comes back.
    if ((!current || serving < d.spec.num_replicas) && retired_.count(reported.id) == 0) {
      Replica& replica = AddReplica(reported.id, d.spec.name);
      replica.fingerprint = current ? d.fingerprint
                                    : (reported.fingerprint.empty() ? "version " + reported.version
                                                                    : reported.fingerprint);
      replica.config_hash = reported.config_hash.empty() && current ? d.config_hash
                                                                    : reported.config_hash;
      replica.version = reported.version;
      replica.resources = ResourcesOf(d.spec);
      AssignNode(replica, node.id);
      Ack(replica, node.incarnation, node.seq);
      replica.last_heartbeat = clock_.Now();
      replica.last_progress = clock_.Now();
      if (reported.ready) {
        replica.ever_running = true;
        SetReplicaState(replica, ReplicaState::RUNNING, "adopted after a controller restart");
      } else {
        SetReplicaState(replica, ReplicaState::STARTING,
                        "adopted while starting on node " + node.id);
      }
      return;
    }
  }
  StopOrphan(node.id, reported.id);
}

void Reconciler::StopOrphan(const std::string& node_id, const std::string& replica_id) {
  double now = clock_.Now();
  auto [it, inserted] = orphan_stops_.try_emplace({node_id, replica_id}, now);
  if (!inserted) {
    if (now - it->second < options_.orphan_stop_resend_s) return;  // still on its way
    it->second = now;
  }
  actions_.StopReplica(node_id, replica_id);
}

void Reconciler::Ack(Replica& replica, uint64_t incarnation, uint64_t seq) {
  replica.acked = true;
  replica.incarnation = incarnation;
  replica.listed_from_seq = seq;
  replica.start_attempts = 0;
  // A start is timed from when the node took it, not from when it was ordered: a node with a
  // queue of orders is not late.
  if (replica.state == ReplicaState::STARTING) replica.state_since = clock_.Now();
}

void Reconciler::MarkRunning(Replica& replica, const std::string& message) {
  replica.ever_running = true;
  replica.last_heartbeat = clock_.Now();
  replica.last_progress = clock_.Now();
  SetReplicaState(replica, ReplicaState::RUNNING, message);
  auto d = deployments_.find(replica.deployment);
  if (d != deployments_.end() && replica.fingerprint == d->second.fingerprint) {
    d->second.start_failures = 0;
    d->second.last_failure.clear();
  }
}

void Reconciler::MarkMissing(Replica& replica, const std::string& why) {
  if (replica.missing_since > 0) return;
  replica.missing_since = clock_.Now();
  replica.missing_why = why;
}

void Reconciler::LoseReplica(Replica& replica, std::string why, bool failed_start) {
  std::string deployment = replica.deployment;
  failed_start = failed_start && !replica.ever_running;
  SetReplicaState(replica, ReplicaState::UNHEALTHY, why);
  std::string id = replica.id;
  EraseReplica(id);
  if (failed_start) RecordStartFailure(deployment, "replica " + id + ": " + why);
}

void Reconciler::OnReplicaHeartbeat(const wire::ReplicaHeartbeatT& heartbeat) {
  auto it = replicas_.find(heartbeat.replica_id);
  if (it == replicas_.end()) return;  // node heartbeats decide on unknown replicas
  Replica& replica = it->second;
  if (!heartbeat.node_id.empty() && !replica.node.empty() && heartbeat.node_id != replica.node) {
    return;  // a stale copy elsewhere; its node is told to stop it
  }
  double now = clock_.Now();
  replica.last_heartbeat = now;
  if (replica.state == ReplicaState::RUNNING) {
    if (heartbeat.in_flight == 0 || heartbeat.completed != replica.completed) {
      replica.last_progress = now;
    }
    replica.completed = heartbeat.completed;
    auto d = deployments_.find(replica.deployment);
    double timeout = d != deployments_.end() ? d->second.spec.health_check_timeout_s : 30;
    if (now - Since(replica.last_progress) > timeout) {
      // Half-alive: it answers heartbeats but finishes no request.
      std::string why = std::to_string(heartbeat.in_flight) +
                        " requests in flight and none completed for " +
                        FormatAmount(now - replica.last_progress) + " s";
      SetReplicaState(replica, ReplicaState::UNHEALTHY, "stalled: " + why);
      StopAndForget(replica, "stalled: " + why);
      return;
    }
    replica.failed_checks = heartbeat.healthy ? 0 : replica.failed_checks + 1;
    if (replica.failed_checks >= kFailedChecksBeforeUnhealthy) {
      SetReplicaState(replica, ReplicaState::UNHEALTHY,
                      "health check failed " + std::to_string(replica.failed_checks) +
                          " times in a row: " + heartbeat.health_message);
      StopAndForget(replica, "health check failed: " + heartbeat.health_message);
    }
    return;
  }
  if (replica.state == ReplicaState::STARTING && heartbeat.healthy) {
    // The worker itself speaks: whatever became of the order's answer, it runs.
    if (!replica.acked) Ack(replica, 0, 0);
    replica.completed = heartbeat.completed;
    MarkRunning(replica, "");
  }
}

void Reconciler::OnProxyHeartbeat(const wire::ProxyHeartbeatT& heartbeat) {
  if (heartbeat.proxy_id.empty()) return;
  auto [it, inserted] = proxies_.try_emplace(heartbeat.proxy_id);
  Proxy& proxy = it->second;
  if (inserted || !proxy.healthy) {
    actions_.Event("proxy", heartbeat.proxy_id, "HEALTHY", heartbeat.address);
  }
  proxy.id = heartbeat.proxy_id;
  proxy.address = heartbeat.address;
  proxy.route_generation = heartbeat.route_generation;
  proxy.route_controller_id = heartbeat.route_controller_id;
  proxy.period_s = SanePeriod(heartbeat.period_s);
  proxy.last_seen = clock_.Now();
  proxy.healthy = true;
}

void Reconciler::OnReplicaExited(const wire::ReplicaExitedT& exited) {
  auto it = replicas_.find(exited.replica_id);
  if (it == replicas_.end()) return;
  Replica& replica = it->second;
  // An exit on another node is a stale copy's, not this replica's.
  if (!replica.node.empty() && !exited.node_id.empty() && exited.node_id != replica.node) return;
  if (replica.state == ReplicaState::STOPPING) {
    EraseReplica(exited.replica_id);
    return;
  }
  LoseReplica(replica, exited.message);
}

void Reconciler::OnStartResult(const std::string& replica_id, const StartOutcome& outcome) {
  auto it = replicas_.find(replica_id);
  if (it == replicas_.end()) return;
  Replica& replica = it->second;
  if (replica.state != ReplicaState::STARTING && replica.state != ReplicaState::RUNNING) return;
  if (outcome.status.ok()) {
    if (!replica.acked || replica.incarnation == 0) {
      Ack(replica, outcome.incarnation, outcome.heartbeat_seq);
    }
    return;
  }
  if (replica.acked) return;  // the node listed it meanwhile: the order did arrive
  std::string node = replica.node;
  if (!outcome.delivered && ++replica.start_attempts < options_.max_start_attempts) {
    // The node may never have seen it; placing it again (maybe on the same node, where the
    // order is idempotent) is safe, and a copy that did start is stopped as a stale one.
    ClearNode(replica);
    SetReplicaState(replica, ReplicaState::PENDING,
                    "the start order to node " + node + " got no answer (" +
                        outcome.status.message() + "); placing it again");
    return;
  }
  std::string deployment = replica.deployment;
  std::string why = "node " + node + " could not start replica " + replica_id + ": " +
                    outcome.status.message();
  SetReplicaState(replica, ReplicaState::UNHEALTHY, why);
  EraseReplica(replica_id);
  RecordStartFailure(deployment, why);
}

void Reconciler::OnReconfigureResult(const std::string& replica_id,
                                     const std::string& config_hash, const Status& result) {
  auto it = replicas_.find(replica_id);
  if (it == replicas_.end()) return;
  Replica& replica = it->second;
  if (replica.reconfiguring_to == config_hash) replica.reconfiguring_to.clear();
  MarkDirty(replica.deployment);
  if (result.ok()) {
    replica.config_hash = config_hash;
    return;
  }
  // A replica that cannot take the new config is replaced by one started with it.
  if (replica.state == ReplicaState::RUNNING) {
    SetReplicaState(replica, ReplicaState::UNHEALTHY, result.message());
    StopAndForget(replica, result.message());
  }
}

void Reconciler::RecordStartFailure(const std::string& deployment, const std::string& why) {
  auto it = deployments_.find(deployment);
  if (it == deployments_.end()) return;
  Deployment& d = it->second;
  ++d.start_failures;
  d.last_failure = why;
  double backoff = std::min(options_.max_backoff_s, 0.5 * std::pow(2.0, d.start_failures - 1));
  d.next_start_after = clock_.Now() + backoff;
  MarkDirty(deployment);
}

void Reconciler::SetReplicaState(Replica& replica, wire::ReplicaState state,
                                 const std::string& message) {
  if (replica.state == state && replica.message == message) return;
  actions_.Event("replica", replica.id, wire::EnumNameReplicaState(state), message);
  if ((replica.state == ReplicaState::RUNNING) != (state == ReplicaState::RUNNING)) {
    ++routes_version_;
  }
  if (state == ReplicaState::PENDING) {
    pending_.insert(replica.id);
  } else {
    pending_.erase(replica.id);
  }
  if (replica.state != state) replica.state_since = clock_.Now();
  replica.state = state;
  replica.message = message;
  MarkDirty(replica.deployment);
}

void Reconciler::StopAndForget(Replica& replica, const std::string& why) {
  if (replica.node.empty()) {
    // Never placed: nothing runs, so it simply goes.
    pending_.erase(replica.id);
    if (replica.state == ReplicaState::RUNNING) ++routes_version_;
    replica.state = ReplicaState::STOPPING;
    MarkDirty(replica.deployment);
    return;
  }
  SetReplicaState(replica, ReplicaState::STOPPING, why);
  actions_.StopReplica(replica.node, replica.id);
}

void Reconciler::Step() {
  CheckLiveness();
  bool recovering = Recovering();
  if (was_recovering_ && !recovering) {
    for (const auto& [name, d] : deployments_) MarkDirty(name);
  }
  was_recovering_ = recovering;
  double now = clock_.Now();
  for (auto& [name, d] : deployments_) {
    if (d.next_start_after > 0 && now >= d.next_start_after) {
      d.next_start_after = 0;  // a backoff ran out: try again
      MarkDirty(name);
    }
  }
  std::set<std::string> dirty;
  if (!recovering) {
    dirty.swap(dirty_);
    for (const auto& name : dirty) {
      auto it = deployments_.find(name);
      if (it != deployments_.end()) ReconcileDeployment(it->second);
    }
    // Replicas that never ran anywhere and were told to go are simply dropped.
    for (const auto& name : dirty) {
      std::vector<std::string> gone;
      for (const auto& id : ReplicasOf(name)) {
        const Replica& r = replicas_.at(id);
        if (r.node.empty() && r.state == ReplicaState::STOPPING) gone.push_back(id);
      }
      for (const auto& id : gone) EraseReplica(id);
    }
    PlacePending();
  }
  // What changed while reconciling is reported now, and reconciled again at the next step.
  dirty.insert(dirty_.begin(), dirty_.end());
  for (const auto& name : dirty) {
    auto it = deployments_.find(name);
    if (it != deployments_.end()) UpdateDeploymentState(it->second);
  }
  if (recovering) {
    dirty_.insert(dirty.begin(), dirty.end());
  }
}

void Reconciler::CheckLiveness() {
  double now = clock_.Now();
  // Forgetting long-lost nodes and proxies is bookkeeping, not a verdict: it goes on while cut off.
  std::erase_if(nodes_, [&](const auto& entry) {
    const Node& node = entry.second;
    return !node.healthy && node.replicas.empty() &&
           now - node.last_seen > options_.forget_lost_nodes_after_s;
  });
  std::erase_if(proxies_, [&](const auto& entry) {
    const Proxy& proxy = entry.second;
    return !proxy.healthy && now - proxy.last_seen > options_.forget_lost_nodes_after_s;
  });
  std::erase_if(retired_, [&](const auto& entry) {
    return now - entry.second > options_.forget_lost_nodes_after_s;
  });
  // What a node said is gone is gone, cut off or not; the short wait lets the node's exit
  // report, delivered on another subscription, arrive first and name the cause.
  std::vector<std::string> missing;
  for (const auto& [id, replica] : replicas_) {
    if (replica.missing_since > 0 && now - replica.missing_since >= kMissingGrace_s) {
      missing.push_back(id);
    }
  }
  for (const auto& id : missing) {
    Replica& replica = replicas_.at(id);
    LoseReplica(replica, replica.missing_why);
  }
  // Silence is evidence only while this controller could have heard: not while its own
  // connection is down, nor until every member had time to speak again after it returned.
  if (HoldingVerdicts()) return;
  for (auto& [id, node] : nodes_) {
    if (node.healthy &&
        now - Since(node.last_seen) > options_.missed_heartbeats * node.period_s + 0.5) {
      node.healthy = false;
      actions_.Event("node", id, "UNHEALTHY", "no heartbeat for " +
                                                  FormatAmount(now - node.last_seen) + " s");
      std::vector<std::string> placed(node.replicas.begin(), node.replicas.end());
      for (const auto& rid : placed) {
        Replica& replica = replicas_.at(rid);
        if (replica.state == ReplicaState::STOPPING) {
          EraseReplica(rid);
        } else {
          LoseReplica(replica, "its node " + id + " was lost", /*failed_start=*/false);
        }
      }
      for (auto& [name, d] : deployments_) MarkDirty(name);
    }
  }
  for (auto& [id, proxy] : proxies_) {
    if (proxy.healthy &&
        now - Since(proxy.last_seen) > options_.missed_heartbeats * proxy.period_s + 0.5) {
      proxy.healthy = false;
      actions_.Event("proxy", id, "UNHEALTHY", "no heartbeat");
    }
  }
  std::vector<std::string> timed_out, silent, abandoned;
  for (auto& [id, replica] : replicas_) {
    if (replica.state == ReplicaState::STARTING && replica.acked) {
      auto d = deployments_.find(replica.deployment);
      double start_timeout = (d != deployments_.end() ? d->second.spec.startup_timeout_s : 60) +
                             options_.start_margin_s;
      if (now - Since(replica.state_since) > start_timeout) timed_out.push_back(id);
    } else if (replica.state == ReplicaState::RUNNING) {
      auto d = deployments_.find(replica.deployment);
      double timeout = d != deployments_.end() ? d->second.spec.health_check_timeout_s : 30;
      if (now - Since(replica.last_heartbeat) > timeout) silent.push_back(id);
    } else if (replica.state == ReplicaState::STOPPING && !replica.node.empty()) {
      auto d = deployments_.find(replica.deployment);
      double grace = d != deployments_.end() ? d->second.spec.graceful_shutdown_timeout_s : 20;
      if (now - Since(replica.state_since) > grace + 10) abandoned.push_back(id);
    }
  }
  for (const auto& id : timed_out) {
    Replica& replica = replicas_.at(id);
    auto d = deployments_.find(replica.deployment);
    double start_timeout = (d != deployments_.end() ? d->second.spec.startup_timeout_s : 60) +
                           options_.start_margin_s;
    RecordStartFailure(replica.deployment, "replica " + id + " did not report healthy within " +
                                               FormatAmount(start_timeout) + " s of its start");
    StopAndForget(replica, "did not start in time");
  }
  for (const auto& id : silent) {
    Replica& replica = replicas_.at(id);
    SetReplicaState(replica, ReplicaState::UNHEALTHY,
                    "no heartbeat for " + FormatAmount(now - replica.last_heartbeat) + " s");
    StopAndForget(replica, "no heartbeat");
  }
  for (const auto& id : abandoned) {
    // Its node never confirmed the stop: give up on it. Should it still run, the node's next
    // heartbeat lists a worker nobody wants, and it is stopped again.
    EraseReplica(id);
  }
}

void Reconciler::ReconcileDeployment(Deployment& d) {
  double now = clock_.Now();
  std::vector<Replica*> current, old;
  for (const auto& id : ReplicasOf(d.spec.name)) {
    Replica* r = &replicas_.at(id);
    if (!Serving(r->state)) continue;
    (r->fingerprint == d.fingerprint ? current : old).push_back(r);
  }
  int target = d.spec.num_replicas;
  bool failed = d.start_failures >= options_.max_start_failures;

  // Too many: stop the ones that serve least first (pending, then starting, then the newest).
  if (static_cast<int>(current.size()) > target) {
    std::sort(current.begin(), current.end(), [](const Replica* a, const Replica* b) {
      if (a->state != b->state) return a->state < b->state;  // PENDING < STARTING < RUNNING
      return a->state_since > b->state_since;
    });
    for (size_t i = 0; i < current.size() - static_cast<size_t>(target); ++i) {
      StopAndForget(*current[i], "scaled down");
    }
    current.erase(current.begin(), current.end() - target);
  }
  // Too few: add pending replicas, unless start failures are backing off or gave up.
  if (static_cast<int>(current.size()) < target && !failed && now >= d.next_start_after) {
    int missing = target - static_cast<int>(current.size());
    if (missing > kMaxNewReplicasPerStep) {
      missing = kMaxNewReplicasPerStep;
      MarkDirty(d.spec.name);  // the rest at the next step
    }
    for (int i = 0; i < missing; ++i) {
      Replica& replica = AddReplica(NewReplicaId(d.spec.name), d.spec.name);
      replica.fingerprint = d.fingerprint;
      replica.config_hash = d.config_hash;
      replica.version = d.spec.version;
      replica.resources = ResourcesOf(d.spec);
      SetReplicaState(replica, ReplicaState::PENDING, "waiting for placement");
      current.push_back(&replica);
    }
  }
  // In-place changes reach running replicas of the current version; a replica that started
  // with an older config catches up once it runs.
  for (Replica* r : current) {
    if (r->state == ReplicaState::RUNNING && r->config_hash != d.config_hash &&
        r->reconfiguring_to != d.config_hash) {
      r->reconfiguring_to = d.config_hash;
      actions_.ReconfigureReplica(r->id, d.spec, d.config_hash);
    }
  }
  // Old versions: keep only as many running as the new version still lacks.
  int running_current = 0;
  bool current_starting = false;
  bool current_blocked = false;
  for (Replica* r : current) {
    if (r->state == ReplicaState::RUNNING) ++running_current;
    if (r->state == ReplicaState::STARTING) current_starting = true;
    if (r->state == ReplicaState::PENDING && !FitsAnywhere(r->resources)) current_blocked = true;
  }
  int keep = std::max(0, target - running_current);
  std::sort(old.begin(), old.end(), [](const Replica* a, const Replica* b) {
    if (a->state != b->state) return a->state > b->state;  // RUNNING first
    return a->state_since < b->state_since;
  });
  bool stopping_old = false;
  for (const auto& id : ReplicasOf(d.spec.name)) {
    const Replica& r = replicas_.at(id);
    if (r.fingerprint != d.fingerprint && r.state == ReplicaState::STOPPING && !r.node.empty()) {
      stopping_old = true;
    }
  }
  Replica* last_kept = nullptr;
  for (size_t i = 0; i < old.size(); ++i) {
    Replica* r = old[i];
    if (r->state == ReplicaState::RUNNING && static_cast<int>(i) < keep) {
      last_kept = r;
    } else {
      StopAndForget(*r, "replaced by version " + d.spec.version);
    }
  }
  // A new replica that fits nowhere gets room from an old one: one at a time, and only once
  // the replica that got the last room is running, so something always serves.
  if (current_blocked && !current_starting && !stopping_old && last_kept != nullptr) {
    StopAndForget(*last_kept, "making room for version " + d.spec.version);
  }
}

void Reconciler::PlacePending() {
  if (pending_.empty()) return;
  // How many starts each node has not finished: its own count, or the controller's when that
  // is higher (orders the node has not reported yet).
  std::map<std::string, int> starting;
  for (const auto& [node_id, node] : nodes_) {
    if (!node.healthy) continue;
    int own = 0;
    for (const auto& id : node.replicas) {
      if (replicas_.at(id).state == ReplicaState::STARTING) ++own;
    }
    starting[node_id] = std::max(own, node.reported_starting);
  }
  // Replicas of one deployment and spec need the same resources: once one of them finds no
  // node, the others of this pass find none either (placing only takes resources), so they
  // get its reason without the search. This keeps a pass over 20,000 replicas waiting for
  // resources to a few string comparisons each.
  std::map<std::string, std::string> unplaceable;  // deployment + fingerprint -> why
  std::vector<std::string> ids(pending_.begin(), pending_.end());
  for (const auto& id : ids) {
    Replica& replica = replicas_.at(id);
    auto d = deployments_.find(replica.deployment);
    if (d == deployments_.end()) continue;
    const std::string kind = replica.deployment + "\n" + replica.fingerprint;
    if (auto known = unplaceable.find(kind); known != unplaceable.end()) {
      if (replica.message != known->second) {
        SetReplicaState(replica, ReplicaState::PENDING, known->second);
      }
      continue;
    }
    Node* best = nullptr;
    int best_same = 0;
    double best_free = 0;
    bool busy = false;  // fits somewhere, but every such node is busy starting others
    for (auto& [node_id, node] : nodes_) {
      if (!node.healthy || !Fits(node, replica.resources)) continue;
      if (starting[node_id] >= options_.max_starting_per_node) {
        busy = true;
        continue;
      }
      int same = 0;
      for (const auto& rid : node.replicas) {
        if (replicas_.at(rid).deployment == replica.deployment) ++same;
      }
      double free = node.capacity.num_cpus - node.used.cpus;
      if (best == nullptr || same < best_same || (same == best_same && free > best_free)) {
        best = &node;
        best_same = same;
        best_free = free;
      }
    }
    if (best == nullptr) {
      std::string why = busy ? "waiting for a node to finish starting other replicas"
                             : Shortfall(replica.resources);
      if (!busy) d->second.pending_reason = why;
      if (replica.message != why) SetReplicaState(replica, ReplicaState::PENDING, why);
      unplaceable.emplace(kind, std::move(why));
      continue;
    }
    AssignNode(replica, best->id);
    replica.acked = false;
    ++starting[best->id];
    SetReplicaState(replica, ReplicaState::STARTING, "starting on node " + best->id);
    actions_.StartReplica(best->id, id, d->second.spec, replica.fingerprint,
                          replica.config_hash);
  }
}

bool Reconciler::Fits(const Node& node, const wire::ResourcesT& need) const {
  constexpr double kEpsilon = 1e-9;
  if (node.used.cpus + need.num_cpus > node.capacity.num_cpus + kEpsilon) return false;
  if (node.used.gpus + need.num_gpus > node.capacity.num_gpus + kEpsilon) return false;
  for (const auto& c : need.custom) {
    if (c == nullptr || c->amount <= 0) continue;
    auto used = node.used.custom.find(c->name);
    double taken = used == node.used.custom.end() ? 0 : used->second;
    if (taken + c->amount > CustomAmount(node.capacity, c->name) + kEpsilon) return false;
  }
  return true;
}

bool Reconciler::FitsAnywhere(const wire::ResourcesT& need) const {
  for (const auto& [id, node] : nodes_) {
    if (node.healthy && Fits(node, need)) return true;
  }
  return false;
}

std::string Reconciler::Shortfall(const wire::ResourcesT& need) const {
  std::vector<const Node*> healthy;
  for (const auto& [id, node] : nodes_) {
    if (node.healthy) healthy.push_back(&node);
  }
  if (healthy.empty()) {
    return "no node is available: start a node agent (serve-replica) on this namespace";
  }
  std::vector<std::pair<std::string, double>> wanted = {{"num_cpus", need.num_cpus},
                                                        {"num_gpus", need.num_gpus}};
  for (const auto& c : need.custom) {
    if (c != nullptr) wanted.emplace_back(c->name, c->amount);
  }
  auto capacity = [](const Node& node, const std::string& name) {
    if (name == "num_cpus") return node.capacity.num_cpus;
    if (name == "num_gpus") return node.capacity.num_gpus;
    return CustomAmount(node.capacity, name);
  };
  auto used = [](const Node& node, const std::string& name) {
    if (name == "num_cpus") return node.used.cpus;
    if (name == "num_gpus") return node.used.gpus;
    auto it = node.used.custom.find(name);
    return it == node.used.custom.end() ? 0.0 : it->second;
  };
  constexpr double kEpsilon = 1e-9;
  // First what no node could ever hold: that needs a person, not patience.
  for (const auto& [name, amount] : wanted) {
    if (amount <= 0) continue;
    double largest = 0;
    for (const Node* node : healthy) largest = std::max(largest, capacity(*node, name));
    if (largest + kEpsilon < amount) {
      return "needs " + name + "=" + FormatAmount(amount) + " but no node has that much (largest: " +
             FormatAmount(largest) + "); lower the request or add a node that has it";
    }
  }
  // Then what is taken right now.
  for (const auto& [name, amount] : wanted) {
    if (amount <= 0) continue;
    bool free_somewhere = false;
    for (const Node* node : healthy) {
      if (used(*node, name) + amount <= capacity(*node, name) + kEpsilon) free_somewhere = true;
    }
    if (!free_somewhere) {
      return "waiting for resources: needs " + name + "=" + FormatAmount(amount) +
             " and every node that has it is full";
    }
  }
  return "waiting for resources: no single node has all of them free at once";
}

void Reconciler::UpdateDeploymentState(Deployment& d) {
  int target = d.spec.num_replicas;
  int running_current = 0, others = 0, reconfiguring = 0;
  bool pending = false;
  for (const auto& id : ReplicasOf(d.spec.name)) {
    const Replica& r = replicas_.at(id);
    if (r.state == ReplicaState::RUNNING && r.fingerprint == d.fingerprint) {
      ++running_current;
      if (r.config_hash != d.config_hash) ++reconfiguring;
    }
    if (r.fingerprint != d.fingerprint && Serving(r.state)) ++others;
    if (r.state == ReplicaState::PENDING) pending = true;
  }
  DeploymentState state;
  std::string message;
  std::string count = std::to_string(running_current) + "/" + std::to_string(target) +
                      " replicas running at version " + d.spec.version;
  if (d.start_failures >= options_.max_start_failures && running_current < target) {
    state = DeploymentState::DEPLOY_FAILED;
    message = std::to_string(d.start_failures) + " replica starts failed in a row; last: " +
              d.last_failure + " (fix it and deploy again)";
  } else if (running_current == target && others == 0 && reconfiguring == 0 && !Recovering()) {
    state = DeploymentState::HEALTHY;
    message = target == 0 ? "scaled to zero replicas: requests get 503" : count;
    d.reached_target = true;
    d.restored = false;
  } else if (d.restored) {
    state = DeploymentState::RECOVERING;
    message = "restored from the checkpoint; " + count +
              (Recovering() ? " (adopting replicas that still run)" : " (starting what is missing)");
    if (!d.last_failure.empty()) message += "; last failure: " + d.last_failure;
  } else {
    state = d.reached_target ? DeploymentState::UNHEALTHY : DeploymentState::UPDATING;
    message = count;
    if (reconfiguring > 0) message += "; reconfiguring " + std::to_string(reconfiguring);
    if (pending && !d.pending_reason.empty()) message += "; " + d.pending_reason;
    if (!d.last_failure.empty()) message += "; last failure: " + d.last_failure;
  }
  if (!pending) d.pending_reason.clear();
  if (state != d.state) {
    actions_.Event("deployment", d.spec.name, wire::EnumNameDeploymentState(state), message);
  }
  d.state = state;
  d.message = message;
}

std::string Reconciler::NewReplicaId(const std::string& deployment) {
  return deployment + "-" + id_prefix_ + std::to_string(++replica_counter_);
}

wire::StatusReplyT Reconciler::Report(const std::vector<std::string>& names) const {
  wire::StatusReplyT reply;
  double now = clock_.Now();
  for (const auto& [name, d] : deployments_) {
    if (!names.empty() && std::find(names.begin(), names.end(), name) == names.end()) continue;
    auto status = std::make_unique<wire::DeploymentStatusT>();
    status->name = name;
    status->status = d.state;
    status->message = d.message;
    status->version = d.spec.version;
    status->route_prefix = d.spec.route_prefix;
    status->runtime = d.spec.runtime;
    status->num_replicas = d.spec.num_replicas;
    int pending_listed = 0;
    int pending_not_listed = 0;
    for (const auto& id : ReplicasOf(name)) {
      const Replica& r = replicas_.at(id);
      if (r.state == ReplicaState::PENDING && pending_listed++ >= kMaxListedPending) {
        ++pending_not_listed;
        continue;
      }
      auto replica = std::make_unique<wire::ReplicaStatusT>();
      replica->id = id;
      replica->state = r.state;
      replica->node = r.node;
      replica->version = r.version;
      replica->message = r.message;
      status->replicas.push_back(std::move(replica));
    }
    if (pending_not_listed > 0) {
      status->message.append(status->message.empty() ? "" : "; ")
          .append(std::to_string(pending_not_listed) + " more PENDING replicas not listed");
    }
    reply.deployments.push_back(std::move(status));
  }
  for (const auto& [id, node] : nodes_) {
    auto status = std::make_unique<wire::NodeStatusT>();
    status->id = id;
    status->state = node.healthy ? wire::MemberState::HEALTHY : wire::MemberState::UNHEALTHY;
    status->host = node.host;
    status->last_seen_s = now - node.last_seen;
    status->num_cpus = node.capacity.num_cpus;
    status->num_gpus = node.capacity.num_gpus;
    status->replicas = static_cast<int>(node.replicas.size());
    if (!node.healthy) {
      status->message = "no heartbeat for " + FormatAmount(std::round(now - node.last_seen)) +
                        " s; dropped from status after " +
                        FormatAmount(options_.forget_lost_nodes_after_s) + " s";
    } else if (HoldingVerdicts()) {
      status->message = "the controller's bus connection was down: waiting to hear again";
    }
    reply.nodes.push_back(std::move(status));
  }
  for (const auto& [id, proxy] : proxies_) {
    auto status = std::make_unique<wire::ProxyStatusT>();
    status->id = id;
    status->state = proxy.healthy ? wire::MemberState::HEALTHY : wire::MemberState::UNHEALTHY;
    status->address = proxy.address;
    status->last_seen_s = now - proxy.last_seen;
    // A table from another (earlier) controller says nothing about this one's.
    status->route_generation =
        proxy.route_controller_id == controller_id_ ? proxy.route_generation : 0;
    reply.proxies.push_back(std::move(status));
  }
  return reply;
}

wire::RouteTableT Reconciler::Routes() const {
  wire::RouteTableT table;
  for (const auto& [name, d] : deployments_) {
    auto route = std::make_unique<wire::RouteT>();
    route->route_prefix = d.spec.route_prefix;
    route->deployment = name;
    for (const auto& id : ReplicasOf(name)) {
      const Replica& r = replicas_.at(id);
      if (r.state != ReplicaState::RUNNING) continue;
      auto replica = std::make_unique<wire::RouteReplicaT>();
      replica->id = id;
      replica->max_concurrent_queries = d.spec.max_concurrent_queries;
      route->replicas.push_back(std::move(replica));
    }
    table.routes.push_back(std::move(route));
  }
  return table;
}

std::vector<config::Deployment> Reconciler::DesiredConfig() const {
  std::vector<config::Deployment> config;
  for (const auto& [name, d] : deployments_) {
    config::Deployment deployment = config::FromSpec(d.spec);
    if (d.spec.version == DerivedVersion(d.spec)) deployment.version.clear();
    config.push_back(std::move(deployment));
  }
  return config;
}

std::vector<wire::DeploymentSpecT> Reconciler::Desired() const {
  std::vector<wire::DeploymentSpecT> specs;
  for (const auto& [name, d] : deployments_) specs.push_back(d.spec);
  return specs;
}

}  // namespace serve::controller
