#pragma once

#include <memory>
#include <string>

#include "checkpointer/store.h"

namespace serve::checkpointer {

// A CheckpointStore in a local directory: key "controller/state" is the file
// <dir>/controller/state.ckpt, holding one StoredCheckpoint FlatBuffer (schemas/serve.fbs).
//
// A put writes a temporary file beside the record, fsyncs it, renames it over the record and
// fsyncs the directory, so a reader sees the old record or the new one, never a torn one, and a
// crash loses at most a put that had not returned yet. Puts hold an exclusive flock(2) on the
// directory while they read, check and replace, so writers in other threads or processes
// cannot interleave between the fencing check and the write.
//
// A record that does not verify is reported with its path and left in place: it may be the only
// copy of a cluster's state, so nothing here deletes or overwrites it.
class FileStore : public CheckpointStore {
 public:
  // Creates `directory` (and its parents) if needed and checks that files can be written in it.
  static Result<std::unique_ptr<FileStore>> Open(const std::string& directory);

  Status Put(const std::string& key, uint64_t generation, std::string_view data) override;
  Result<std::optional<Record>> Get(const std::string& key) override;
  std::string Describe() const override;
  // Blobs live in <dir>/blobs/sha256/<hex>, written like records (temp file, fsync, rename).
  Result<std::optional<uint64_t>> BlobSize(const std::string& digest) override;
  Status PutBlob(const std::string& digest, const std::string& path) override;
  Result<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                               uint64_t length) override;
  Result<std::vector<std::string>> ListBlobs() override;
  Status DeleteBlob(const std::string& digest) override;

  const std::string& directory() const { return directory_; }
  // The file that holds `key`.
  std::string PathFor(const std::string& key) const;
  // The file that holds the blob `digest`.
  std::string BlobPathFor(const std::string& digest) const;

 private:
  explicit FileStore(std::string directory) : directory_(std::move(directory)) {}

  // Reads the record at `path`; nullopt when the file does not exist.
  Result<std::optional<Record>> Read(const std::string& key, const std::string& path) const;

  std::string directory_;  // absolute, without a trailing '/'
};

}  // namespace serve::checkpointer
