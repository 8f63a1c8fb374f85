#pragma once

#include <uv.h>

#include <cstdint>
#include <string>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/subjects.h"

namespace serve::artifact {

// The most bytes one message carries: well under NATS's default max_payload of 1 MiB.
constexpr uint64_t kChunkBytes = 512 * 1024;

struct UploadOutcome {
  bool sent = false;  // false: the store held this digest already
  uint64_t size = 0;
};

// Uploads the file at `path`, whose digest is `digest`, to the checkpointer in chunks, unless
// it already stores that digest. Runs `loop` until done: for the CLI, not for services.
Result<UploadOutcome> Upload(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                             const std::string& path, const std::string& digest,
                             double timeout_s);

// Fetches `digest` from the checkpointer into `path`: written beside it, verified against the
// digest, then renamed into place, so `path` only ever holds the whole, verified artifact.
// `name` (what the artifact was made from) makes messages readable. Runs `loop` until done.
Status Fetch(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
             const std::string& digest, const std::string& name, const std::string& path,
             double timeout_s);

}  // namespace serve::artifact
