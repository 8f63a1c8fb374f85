#pragma once

#include <memory>
#include <string>

#include "checkpointer/store.h"

namespace serve::checkpointer {

// `redis://[user:password@]host:port[/db][?prefix=p]`: records and blobs in Redis (hiredis).
// `uri` is the whole --checkpoint-path; errors say what is wrong with it or what is missing.
Result<std::unique_ptr<CheckpointStore>> OpenRedisStore(const std::string& uri);

}  // namespace serve::checkpointer
