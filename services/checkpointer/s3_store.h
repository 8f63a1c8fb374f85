#pragma once

#include <memory>
#include <string>

#include "checkpointer/store.h"

namespace serve::checkpointer {

// `s3://bucket/prefix` and `gs://bucket/prefix`: objects over HTTP with AWS Signature V4.
// `uri` is the whole --checkpoint-path; errors say what is wrong with it or what is missing.
Result<std::unique_ptr<CheckpointStore>> OpenS3Store(const std::string& uri);

}  // namespace serve::checkpointer
