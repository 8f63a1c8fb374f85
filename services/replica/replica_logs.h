#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "base/status.h"

namespace serve::replica {

// The log files of one node's replicas: <dir>/<replica-id>.log, written by the worker (its own
// lines, rotated by size into <replica-id>.1.log ...) and by whatever its user code prints.
// They outlive the worker so that a replaced replica's last lines can still be read
// (`serve logs`), and are pruned by age and count.
class ReplicaLogs {
 public:
  struct Options {
    std::string dir;
    // Logs of replicas that no longer run are kept this long, and at most this many of them.
    double keep_s = 3600;
    size_t keep_count = 200;
    // The most one read returns.
    size_t max_read_bytes = 512 * 1024;
  };

  struct Chunk {
    std::string data;
    int64_t next_offset = 0;  // where the next read continues
    bool restarted = false;   // the file was shorter than the offset asked for (rotated)
  };

  explicit ReplicaLogs(Options options);

  Status Prepare() const;  // creates the directory
  std::string PathOf(const std::string& replica_id) const;
  bool Has(const std::string& replica_id) const;

  // With `offset` < 0: the last `tail_lines` lines (at most max_bytes of them). Otherwise what
  // was written from `offset` on, at most `max_bytes`, ending at a line's end where it can.
  Result<Chunk> Read(const std::string& replica_id, int64_t offset, int tail_lines,
                     size_t max_bytes) const;

  // When the log of `replica_id` is larger than `max_bytes`: its content moves to
  // <replica-id>.1.log (older ones shift up, at most `keep_files` kept) and the file is emptied
  // in place. Its writers keep their descriptors (the worker's logger, its user code's stdout),
  // opened for appending, so they go on at the new end: no process but the agent needs the
  // right to rename in the directory, and a worker running as another user needs none.
  // Returns true when it rotated.
  bool RotateIfOver(const std::string& replica_id, uint64_t max_bytes, int keep_files) const;

  // Removes the logs of replicas `running` does not name that are older than keep_s, then the
  // oldest such ones beyond keep_count. Returns how many files went.
  size_t Prune(const std::function<bool(const std::string& replica_id)>& running) const;

 private:
  Options options_;
};

}  // namespace serve::replica
