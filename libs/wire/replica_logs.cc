#include "wire/replica_logs.h"

#include "wire/codec.h"

namespace serve::wire {

Result<ReplicaLogsReplyT> ReplicaLogsAnswer(const std::string& replica_id,
                                           std::optional<std::string_view> reply) {
  if (!reply.has_value()) {
    return Status::Error("no node holds a log of replica " + replica_id +
                             " (a replica's log stays on its node for an hour after it exits; "
                             "`serve status` lists the replicas)",
                         ErrorKind::kNotFound);
  }
  auto answer = Unpack<ReplicaLogsReply>(*reply);
  if (!answer.ok()) {
    return Status::Error("unreadable answer from a node: " + answer.error(),
                         ErrorKind::kUnavailable);
  }
  if (!answer->error.empty()) return Status::Error(answer->error);
  return std::move(*answer);
}

}  // namespace serve::wire
