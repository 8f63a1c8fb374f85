#pragma once

#include <nlohmann/json.hpp>

#include "wire/serve_generated.h"

namespace serve::wire {

// A status reply as `serve status --json` prints it and the REST API's GET /api/serve/status
// answers: deployments with their replicas, nodes, proxies and supervisors.
nlohmann::json StatusJson(const StatusReplyT& status);

}  // namespace serve::wire
