#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace serve::checkpointer {

// One stored checkpoint.
struct Record {
  uint64_t generation = 0;
  std::string data;
  int64_t written_ms = 0;  // Unix milliseconds of the put that wrote it
};

// A CheckpointStore is a durable map from keys ("controller/state") to the latest Record
// written under each key. It is the seam behind --checkpoint-path: file:// today; redis://,
// s3://, gs:// and custom:// plugins later.
//
// Writes are fenced: a Put whose generation is lower than the one stored for its key is refused,
// so a controller that lost its place to a newer one cannot overwrite the newer state. The check
// and the write are one atomic step per key, also against other writers of the same backend.
//
// Keys are 1 to 200 characters of [A-Za-z0-9._/-], without ".." or a leading '/'; '/' groups
// keys into folders, like object-store prefixes.
class CheckpointStore {
 public:
  virtual ~CheckpointStore() = default;

  // Stores `data` under `key` unless the stored generation is higher than `generation`. An equal
  // generation replaces the data (a controller may re-save its state). Once Put returns OK the
  // record survives a crash of the process or the machine.
  virtual Status Put(const std::string& key, uint64_t generation, std::string_view data) = 0;

  // The record stored under `key`, or nullopt when there is none. An unreadable or corrupt
  // record is an error, never "not found": recovering from nothing would lose the state.
  virtual Result<std::optional<Record>> Get(const std::string& key) = 0;

  // Where the records live, as a URI a person can pass back to --checkpoint-path
  // ("file:///var/lib/serve").
  virtual std::string Describe() const = 0;

  // Code artifacts, by digest ("sha256:<64 hex>", checked with IsArtifactDigest). Blobs are
  // immutable: the same digest always names the same bytes, so a second put of one is a no-op.
  //
  // The size of the stored blob, or nullopt when there is none.
  virtual Result<std::optional<uint64_t>> BlobSize(const std::string& digest) = 0;
  // Stores the file at `path`, whose content the caller has checked against `digest`. Once it
  // returns OK the blob survives a crash.
  virtual Status PutBlob(const std::string& digest, const std::string& path) = 0;
  // Up to `length` bytes of the blob from `offset` (fewer at its end); an error when the blob
  // does not exist.
  virtual Result<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                                       uint64_t length) = 0;
  // The digests of every stored blob, in any order, for garbage collection (BlobCollector).
  virtual Result<std::vector<std::string>> ListBlobs() = 0;
  // Removes a blob; removing one that is not stored succeeds.
  virtual Status DeleteBlob(const std::string& digest) = 0;
};

// Checks a key against the rules above; the error names the key and the rule it breaks.
Status ValidateKey(const std::string& key);

// Records as every store keeps them: the StoredCheckpoint FlatBuffer of schemas/serve.fbs,
// which carries its key, so a record copied or renamed by hand is caught.
std::string EncodeRecord(const std::string& key, uint64_t generation, std::string_view data);
// Decodes the bytes stored for `key`. `where` names the place for messages ("the checkpoint
// file /var/lib/serve/controller/state.ckpt"); `untouched` ends them, saying how to let the key
// be written again. Bytes that do not verify, or a record of another key, are an error.
Result<Record> DecodeRecord(const std::string& key, std::string_view bytes,
                            const std::string& where, const std::string& untouched);
// The refusal of a put whose generation is older than the stored one (the fencing message).
Status OlderGenerationRefused(const std::string& key, uint64_t generation, uint64_t stored);

// Decodes %XX escapes in a part of a --checkpoint-path (a password, a parameter). A '%' without
// two hex digits after it is an error "has a '%' that is not followed by two hex digits", for
// the caller to put the part's name in front of.
Result<std::string> PercentDecode(std::string_view text);

// Opens the store named by a --checkpoint-path URI: "file:///abs/dir" (a relative
// "file://dir" is taken from the working directory). The file store creates its directory, so
// a store that cannot be used fails here rather than at the first put.
Result<std::unique_ptr<CheckpointStore>> OpenStore(const std::string& uri);

// The embedded default: file://$HOME/.serve/<namespace>/checkpoint.
std::string DefaultStoreUri(const std::string& ns);

}  // namespace serve::checkpointer
