#include "replica/native_runtime.h"

namespace serve::replica {

Result<std::unique_ptr<Runtime>> LoadNativeRuntime(const RuntimeContext&) {
  return Status::Error("runtime 'native' is not supported by this build yet");
}

}  // namespace serve::replica
