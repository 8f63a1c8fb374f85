#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "base/status.h"

namespace serve::replica {

// The unprivileged user a root node agent runs its workers as, so user code cannot read the
// node's credentials, other replicas' files or anything else root can.
struct WorkerUser {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
};

// What `--worker-user` means for an agent running as `agent_uid`: `value` is a user name or a
// numeric uid; "" is the default, `nobody` when the agent is root and the agent's own user
// otherwise. No value (nullopt) when workers run as the agent's user, nothing to switch.
Result<std::optional<WorkerUser>> ResolveWorkerUser(const std::string& value, uid_t agent_uid);

// Whether `user` can reach `dir` (search every directory from / down to it): the node's work
// directory, where its workers' code and scratch directories live. The error names the
// directory in the way and the fixes.
Status CheckWorkerCanReach(const WorkerUser& user, const std::string& dir);

// In a worker, once what needs the agent's rights is done (log file opened, bus connected, code
// fetched): becomes `user` for good, with no supplementary groups, and keeps the promise to end
// with the agent (a credential change clears the parent-death signal). `agent_pid`: 0 when not
// known.
Status BecomeWorkerUser(const WorkerUser& user, pid_t agent_pid);

}  // namespace serve::replica
