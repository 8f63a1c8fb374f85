#include "wire/status_json.h"

namespace serve::wire {

nlohmann::json StatusJson(const StatusReplyT& status) {
  nlohmann::json out;
  out["namespace"] = status.namespace_;
  out["controller_run"] = status.controller_run;
  if (!status.checkpoint_warning.empty()) out["checkpoint_warning"] = status.checkpoint_warning;
  out["deployments"] = nlohmann::json::array();
  for (const auto& d : status.deployments) {
    nlohmann::json replicas = nlohmann::json::array();
    for (const auto& r : d->replicas) {
      replicas.push_back({{"id", r->id},
                          {"state", EnumNameReplicaState(r->state)},
                          {"node", r->node},
                          {"version", r->version},
                          {"message", r->message},
                          {"pid", r->pid},
                          {"in_flight", r->in_flight},
                          {"queued", r->queued},
                          {"heard_s", r->heard_s}});
    }
    out["deployments"].push_back({{"name", d->name},
                                  {"status", EnumNameDeploymentState(d->status)},
                                  {"message", d->message},
                                  {"version", d->version},
                                  {"route_prefix", d->route_prefix},
                                  {"runtime", d->runtime},
                                  {"num_replicas", d->num_replicas},
                                  {"requests_per_s", d->requests_per_s},
                                  {"error_rate", d->error_rate},
                                  {"p50_ms", d->p50_ms},
                                  {"p99_ms", d->p99_ms},
                                  {"replicas", replicas}});
  }
  out["nodes"] = nlohmann::json::array();
  for (const auto& n : status.nodes) {
    out["nodes"].push_back({{"id", n->id},
                            {"state", EnumNameMemberState(n->state)},
                            {"message", n->message},
                            {"host", n->host},
                            {"last_seen_s", n->last_seen_s},
                            {"num_cpus", n->num_cpus},
                            {"num_gpus", n->num_gpus},
                            {"replicas", n->replicas}});
  }
  out["proxies"] = nlohmann::json::array();
  for (const auto& p : status.proxies) {
    out["proxies"].push_back({{"id", p->id},
                              {"state", EnumNameMemberState(p->state)},
                              {"address", p->address},
                              {"last_seen_s", p->last_seen_s}});
  }
  out["supervisors"] = nlohmann::json::array();
  for (const auto& supervisor : status.supervisors) {
    if (supervisor == nullptr || supervisor->heartbeat == nullptr) continue;
    const SupervisorHeartbeatT& hb = *supervisor->heartbeat;
    nlohmann::json services = nlohmann::json::array();
    for (const auto& service : hb.services) {
      if (service == nullptr) continue;
      services.push_back({{"name", service->name},
                          {"state", EnumNameSupervisedState(service->state)},
                          {"pid", service->pid},
                          {"restarts", service->restarts},
                          {"last_exit", service->last_exit},
                          {"since_ms", service->since_ms}});
    }
    out["supervisors"].push_back({{"id", hb.supervisor_id},
                                  {"state", EnumNameMemberState(supervisor->state)},
                                  {"host", hb.host},
                                  {"pid", hb.pid},
                                  {"run_dir", hb.run_dir},
                                  {"last_seen_s", supervisor->last_seen_s},
                                  {"services", services}});
  }
  return out;
}

}  // namespace serve::wire
