#pragma once

#include <memory>

#include "replica/runtime.h"

namespace serve::replica {

// `runtime: native`: loads the shared library at context.artifact_path (built against
// sdk/include/serve/deployment.h), checks its ABI version and constructs the user's class.
Result<std::unique_ptr<Runtime>> LoadNativeRuntime(const RuntimeContext& context);

}  // namespace serve::replica
