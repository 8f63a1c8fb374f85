#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace serve::checkpointer {

// The artifact digests the deployments of a stored controller state (a ControllerState
// FlatBuffer, the data of the record "controller/state") run. An error when the bytes are not
// one: a state that cannot be read is no evidence that a blob is unused.
Result<std::set<std::string>> ReferencedArtifacts(std::string_view controller_state);

// Decides which stored blobs are garbage: those the stored controller state has not named for
// `keep_ms`, measured over passes. The clock starts when a pass first sees a blob unnamed, so
// a blob just uploaded for a deploy that the controller has yet to store is kept, and so is
// one whose deployment changed minutes ago while its old replicas still drain. Nothing is
// remembered across restarts: a restarted checkpointer waits `keep_ms` again before removing
// anything, which errs on the side of keeping.
class BlobCollector {
 public:
  explicit BlobCollector(uint64_t keep_ms) : keep_ms_(keep_ms) {}

  // One pass at `now_ms` over the blobs `stored`, given the digests `referenced` now. Returns
  // the blobs to remove; they are forgotten, as if removed.
  std::vector<std::string> Pass(const std::set<std::string>& referenced,
                                const std::vector<std::string>& stored, uint64_t now_ms);

  // Blobs seen unnamed and not yet old enough to remove.
  size_t waiting() const { return unreferenced_since_.size(); }

 private:
  const uint64_t keep_ms_;
  std::map<std::string, uint64_t> unreferenced_since_;
};

}  // namespace serve::checkpointer
