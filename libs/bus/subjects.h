#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace serve::bus {

// Checks a namespace name: it prefixes every subject, so only [A-Za-z0-9_-] is allowed.
Status ValidateNamespace(const std::string& ns);

// Checks an id that becomes a token of a subject, or names a member in one: a node, replica,
// proxy or controller id. 1 to 128 letters, digits, '_' or '-': a '.', '*', '>' or white space
// would change which subjects a message reaches. `what` names the id in the error ("node id").
Status ValidateId(std::string_view id, std::string_view what);

// Every subject of one namespace (docs/protocol.md explains each). All start with the
// namespace, so several isolated instances can share one NATS server.
struct Subjects {
  explicit Subjects(const std::string& ns);

  std::string ns;
  // Control plane: request/reply, answered by the controller.
  std::string ctl_deploy, ctl_delete, ctl_status, ctl_config, ctl_ping, ctl_shutdown, ctl_routes;
  // Heartbeats: published by every service (and the supervisor of a local instance), read by
  // the controller.
  std::string hb_replica, hb_node, hb_proxy, hb_supervisor;
  // Published by the controller.
  std::string routes, events, shutdown;
  // Published by node agents when a worker process ends.
  std::string node_exited;
  // A replica's log, asked of every node agent; the node that holds it answers.
  std::string logs;
  // Checkpoints: request/reply, answered by the checkpointer.
  std::string ckpt_put, ckpt_get;
  // Code artifacts by digest: request/reply, answered by the checkpointer.
  std::string ckpt_blob_stat, ckpt_blob_put, ckpt_blob_get;

  std::string NodeStart(const std::string& node_id) const;
  std::string NodeStop(const std::string& node_id) const;
  // Where a node's workers publish their request figures for the node agent's /metrics.
  std::string NodeMetrics(const std::string& node_id) const;
  // The data-plane subject a replica worker answers on.
  std::string Replica(const std::string& replica_id) const;
  // A replica worker's control subject (reconfigure in place).
  std::string ReplicaControl(const std::string& replica_id) const;
};

}  // namespace serve::bus
