#include "checkpointer/custom_store.h"

namespace serve::checkpointer {

Result<std::unique_ptr<CheckpointStore>> OpenCustomStore(const std::string& uri) {
  return Status::Error("checkpoint store '" + uri + "' is not supported by this build yet");
}

}  // namespace serve::checkpointer
