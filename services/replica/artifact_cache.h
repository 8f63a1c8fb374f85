#pragma once

#include <uv.h>

#include <string>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/subjects.h"
#include "wire/serve_generated.h"

namespace serve::replica {

// A node's cache of deployment code, shared by its workers: <cache_dir>/<hex> holds the
// artifact with digest sha256:<hex>, verified when it was fetched, and <cache_dir>/<hex>.d its
// unpacked working directory (for `command`). Workers that need the same artifact at once
// take turns on a lock file, so each artifact is fetched and unpacked once per node.
//
// Returns the path the runtime needs: the library for `native`, the directory for `command`.
// Runs `loop` while fetching: call it before the worker's loop starts.
Result<std::string> EnsureArtifact(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                                   const std::string& cache_dir,
                                   const wire::DeploymentSpecT& spec);

}  // namespace serve::replica
