#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "wire/serve_generated.h"

namespace serve::wire {

// What a ReplicaLogsRequest on <ns>.logs came to: the answering node's reply, given its bytes, or
// a not-found error when no node answered (only the node holding the log does).
Result<ReplicaLogsReplyT> ReplicaLogsAnswer(const std::string& replica_id,
                                           std::optional<std::string_view> reply);

}  // namespace serve::wire
