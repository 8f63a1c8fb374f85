#include "bus/subjects.h"

namespace serve::bus {

Status ValidateNamespace(const std::string& ns) {
  if (ns.empty() || ns.size() > 64) {
    return Status::Error("namespace must be 1 to 64 characters, got '" + ns + "'");
  }
  for (char c : ns) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) {
      return Status::Error("namespace '" + ns +
                           "' may hold only letters, digits, '_' and '-' (it prefixes every "
                           "NATS subject)");
    }
  }
  return Status::Ok();
}

Status ValidateId(std::string_view id, std::string_view what) {
  constexpr size_t kMaxIdBytes = 128;
  std::string name(what);
  if (id.empty()) return Status::Error(name + " is empty");
  if (id.size() > kMaxIdBytes) {
    return Status::Error(name + " is " + std::to_string(id.size()) + " bytes long (at most " +
                         std::to_string(kMaxIdBytes) + ")");
  }
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) {
      std::string shown;
      for (char s : id.substr(0, 64)) shown += (s >= 0x20 && s < 0x7f) ? s : '?';
      return Status::Error(name + " '" + shown +
                           "' may hold only letters, digits, '_' and '-' (it is part of NATS "
                           "subjects; write '-' for '.')");
    }
  }
  return Status::Ok();
}

Subjects::Subjects(const std::string& n)
    : ns(n),
      ctl_deploy(n + ".ctl.deploy"),
      ctl_delete(n + ".ctl.delete"),
      ctl_status(n + ".ctl.status"),
      ctl_config(n + ".ctl.config"),
      ctl_ping(n + ".ctl.ping"),
      ctl_shutdown(n + ".ctl.shutdown"),
      ctl_routes(n + ".ctl.routes"),
      hb_replica(n + ".hb.replica"),
      hb_node(n + ".hb.node"),
      hb_proxy(n + ".hb.proxy"),
      hb_supervisor(n + ".hb.supervisor"),
      routes(n + ".routes"),
      events(n + ".events"),
      shutdown(n + ".shutdown"),
      node_exited(n + ".node.exited"),
      logs(n + ".logs"),
      ckpt_put(n + ".ckpt.put"),
      ckpt_get(n + ".ckpt.get"),
      ckpt_blob_stat(n + ".ckpt.blob.stat"),
      ckpt_blob_put(n + ".ckpt.blob.put"),
      ckpt_blob_get(n + ".ckpt.blob.get") {}

std::string Subjects::NodeStart(const std::string& node_id) const {
  return ns + ".node." + node_id + ".start";
}
std::string Subjects::NodeStop(const std::string& node_id) const {
  return ns + ".node." + node_id + ".stop";
}
std::string Subjects::NodeMetrics(const std::string& node_id) const {
  return ns + ".node." + node_id + ".metrics";
}
std::string Subjects::Replica(const std::string& replica_id) const {
  return ns + ".replica." + replica_id;
}

std::string Subjects::ReplicaControl(const std::string& replica_id) const {
  return ns + ".replica." + replica_id + ".ctl";
}

}  // namespace serve::bus
