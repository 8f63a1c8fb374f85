#include "replica/command_runtime.h"

namespace serve::replica {

Result<std::unique_ptr<Runtime>> StartCommandRuntime(const RuntimeContext&) {
  return Status::Error("runtime 'command' is not supported by this build yet");
}

}  // namespace serve::replica
