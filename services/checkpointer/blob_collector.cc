#include "checkpointer/blob_collector.h"

#include "wire/codec.h"

namespace serve::checkpointer {

Result<std::set<std::string>> ReferencedArtifacts(std::string_view controller_state) {
  auto state = wire::Verify<wire::ControllerState>(controller_state);
  if (!state.ok()) return state.status();
  std::set<std::string> digests;
  if ((*state)->deployments() == nullptr) return digests;
  for (const wire::DeploymentSpec* spec : *(*state)->deployments()) {
    if (spec != nullptr && spec->artifact() != nullptr && spec->artifact()->size() > 0) {
      digests.insert(spec->artifact()->str());
    }
  }
  return digests;
}

std::vector<std::string> BlobCollector::Pass(const std::set<std::string>& referenced,
                                             const std::vector<std::string>& stored,
                                             uint64_t now_ms) {
  std::map<std::string, uint64_t> still_unreferenced;
  std::vector<std::string> remove;
  for (const std::string& digest : stored) {
    if (referenced.count(digest) != 0) continue;
    auto seen = unreferenced_since_.find(digest);
    uint64_t since = seen == unreferenced_since_.end() ? now_ms : seen->second;
    if (now_ms - since >= keep_ms_ && seen != unreferenced_since_.end()) {
      remove.push_back(digest);
    } else {
      still_unreferenced.emplace(digest, since);
    }
  }
  // Blobs named again, or gone from the store, start over if they are ever unnamed again.
  unreferenced_since_ = std::move(still_unreferenced);
  return remove;
}

}  // namespace serve::checkpointer
