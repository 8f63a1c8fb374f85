#pragma once

#include <memory>
#include <string>

#include "checkpointer/store.h"

namespace serve::checkpointer {

// `custom:///path/to/libstore.so?key=value`: a plugin implementing the store C ABI.
// `uri` is the whole --checkpoint-path; errors say what is wrong with it or what is missing.
Result<std::unique_ptr<CheckpointStore>> OpenCustomStore(const std::string& uri);

}  // namespace serve::checkpointer
