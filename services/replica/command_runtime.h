#pragma once

#include <memory>

#include "replica/runtime.h"

namespace serve::replica {

// `runtime: command`: starts context.spec.command in the working directory with PORT set,
// waits until it answers, and forwards requests to it over loopback HTTP.
Result<std::unique_ptr<Runtime>> StartCommandRuntime(const RuntimeContext& context);

}  // namespace serve::replica
