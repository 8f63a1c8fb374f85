#include "checkpointer/s3_store.h"

namespace serve::checkpointer {

Result<std::unique_ptr<CheckpointStore>> OpenS3Store(const std::string& uri) {
  return Status::Error("checkpoint store '" + uri + "' is not supported by this build yet");
}

}  // namespace serve::checkpointer
