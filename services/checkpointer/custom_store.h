#pragma once

#include <memory>
#include <string>

#include "checkpointer/store.h"

namespace serve::checkpointer {

// `custom:///abs/path/libstore.so[?key=value&k2=v2]`: a plugin implementing the store C ABI of
// sdk/include/serve/checkpoint_store.h. `uri` is the whole --checkpoint-path.
//
// Open loads the library (dlopen RTLD_NOW | RTLD_LOCAL), checks its functions and ABI version,
// and hands the percent-decoded query parameters to serve_store_open; every failure is an error
// naming the library and what is wrong with it, with the plugin's own message where it gave one.
//
// Records: checkpoint key K is the plugin key "ckpt/K" holding the StoredCheckpoint FlatBuffer
// (the bytes the file store writes). The host does the fencing: it gets the record, verifies
// it, compares generations and then puts. Those are two plugin calls, so the check and the
// write are atomic only because the controller runs a single checkpointer per namespace; a
// plugin over storage that other writers share must add its own check. A corrupt record is
// reported and never overwritten.
//
// Blobs: "sha256:<hex>" is the plugin key "blobs/sha256/<hex>". PutBlob reads the file and puts
// it whole, ReadBlob gets the blob and slices it (the last one read is kept, since blobs never
// change and are read in chunks), so a blob passes through memory: fine for code artifacts.
Result<std::unique_ptr<CheckpointStore>> OpenCustomStore(const std::string& uri);

}  // namespace serve::checkpointer
