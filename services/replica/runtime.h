#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"
#include "wire/serve_generated.h"

namespace serve::replica {

// What a runtime answers for one request.
struct HandlerResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// Identity a runtime may show in its answers.
struct ReplicaIdentity {
  std::string replica_id;
  std::string deployment;
  std::string version;
};

// User code behind one replica. This is a seam: built-in handlers now; shared libraries
// (native) and external processes (command) plug in behind the same interface.
class Runtime {
 public:
  virtual ~Runtime() = default;
  // Answers one request. Called on the worker's loop thread.
  virtual HandlerResponse Handle(const wire::HttpRequest& request) = 0;
  // Applies a new user_config (JSON text) without a restart. The error is shown to the person
  // who deployed it.
  virtual Status Reconfigure(const std::string& user_config) = 0;
};

// Creates the runtime named by `spec.runtime`. The error names the runtime and the cause.
Result<std::unique_ptr<Runtime>> MakeRuntime(const wire::DeploymentSpecT& spec,
                                             const ReplicaIdentity& identity);

}  // namespace serve::replica
