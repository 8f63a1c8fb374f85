#pragma once

#include <uv.h>

#include <functional>
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
//
// Each use touches <cache_dir>/<hex>.lock, whose modification time is when the artifact was
// last used on this node (see PruneArtifactCache).
Result<std::string> EnsureArtifact(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                                   const std::string& cache_dir,
                                   const wire::DeploymentSpecT& spec);

// Removes from `cache_dir` the artifacts (the file, its unpacked directory and what crashed
// fetches left) that `in_use` (given the digest's hex) says no worker of the node runs and
// that no worker has started with for `keep_unused_s` seconds. An artifact whose lock a worker
// holds (it is fetching or unpacking it) is left alone. Lock files stay: a worker may be
// waiting on one. Returns how many artifacts it removed.
size_t PruneArtifactCache(const std::string& cache_dir,
                          const std::function<bool(const std::string& hex)>& in_use,
                          double keep_unused_s);

}  // namespace serve::replica
