#include "checkpointer/custom_store.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <strings.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "config/deployment_config.h"
#include "serve/checkpoint_store.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

constexpr char kForm[] = "custom:///abs/path/libstore.so[?key=value&k2=v2]";
constexpr char kRecordFolder[] = "ckpt/";

Status UriError(const std::string& uri, const std::string& problem) {
  return Status::Error("checkpoint path '" + uri + "' " + problem + "; the form is " + kForm);
}

// Parameter values whose names suggest a secret stay out of Describe(), which is logged.
bool LooksSecret(const std::string& name) {
  for (const char* word : {"password", "secret", "token", "credential"}) {
    if (name.find(word) != std::string::npos) return true;
  }
  return false;
}

// The functions of a loaded plugin.
struct PluginApi {
  ServeStoreAbiVersionFn abi_version = nullptr;
  ServeStoreOpenFn open = nullptr;
  ServeStoreCloseFn close = nullptr;
  ServeStorePutFn put = nullptr;
  ServeStoreGetFn get = nullptr;
  ServeStoreDeleteFn remove = nullptr;
  ServeStoreListFn list = nullptr;
};

// An error buffer for one plugin call.
class PluginError {
 public:
  PluginError() { buffer_[0] = '\0'; }
  char* data() { return buffer_; }
  size_t size() const { return sizeof(buffer_); }
  std::string message() {
    buffer_[sizeof(buffer_) - 1] = '\0';
    return buffer_[0] != '\0' ? buffer_ : "the plugin gave no reason";
  }

 private:
  char buffer_[SERVE_STORE_ERROR_SIZE];
};

Status BadDigest(const std::string& digest) {
  return Status::Error("'" + digest + "' is not an artifact digest (sha256:<64 hex digits>)");
}

class CustomStore : public CheckpointStore {
 public:
  CustomStore(std::string library_path, std::string describe, void* library, PluginApi api,
              ServeStore* store)
      : library_path_(std::move(library_path)),
        describe_(std::move(describe)),
        library_(library),
        api_(api),
        store_(store) {}
  ~CustomStore() override {
    api_.close(store_);
    dlclose(library_);
  }
  CustomStore(const CustomStore&) = delete;
  CustomStore& operator=(const CustomStore&) = delete;

  Status Put(const std::string& key, uint64_t generation, std::string_view data) override;
  Result<std::optional<Record>> Get(const std::string& key) override;
  std::string Describe() const override { return describe_; }
  Result<std::optional<uint64_t>> BlobSize(const std::string& digest) override;
  Status PutBlob(const std::string& digest, const std::string& path) override;
  Result<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                               uint64_t length) override;
  Result<std::vector<std::string>> ListBlobs() override;
  Status DeleteBlob(const std::string& digest) override;

 private:
  static std::string BlobKey(const std::string& digest) {
    // "sha256:<hex>" -> "blobs/sha256/<hex>"
    return "blobs/" + digest.substr(0, digest.find(':')) + "/" +
           digest.substr(digest.find(':') + 1);
  }
  Status PluginPut(const std::string& plugin_key, std::string_view bytes);
  Result<std::optional<std::string>> PluginGet(const std::string& plugin_key);
  Result<bool> PluginHas(const std::string& plugin_key);
  // The blob, from the one-entry cache or the plugin; nullopt when it is not stored.
  Result<std::optional<std::string>> LoadBlob(const std::string& digest);

  const std::string library_path_;
  const std::string describe_;
  void* const library_;  // dlopen handle, closed after store_
  const PluginApi api_;
  ServeStore* const store_;
  std::string cached_digest_;  // the last blob loaded; blobs never change
  std::string cached_blob_;
};

Status CustomStore::PluginPut(const std::string& plugin_key, std::string_view bytes) {
  PluginError error;
  if (api_.put(store_, plugin_key.c_str(), bytes.data(), bytes.size(), error.data(),
               error.size()) != 0) {
    return Status::Error("the store plugin " + library_path_ + " could not put '" + plugin_key +
                         "': " + error.message());
  }
  return Status::Ok();
}

Result<std::optional<std::string>> CustomStore::PluginGet(const std::string& plugin_key) {
  PluginError error;
  std::string value;
  int found = 0;
  auto copy = [](void* context, const void* data, size_t size) {
    static_cast<std::string*>(context)->assign(static_cast<const char*>(data), size);
  };
  if (api_.get(store_, plugin_key.c_str(), copy, &value, &found, error.data(), error.size()) != 0) {
    return Status::Error("the store plugin " + library_path_ + " could not get '" + plugin_key +
                         "': " + error.message());
  }
  if (found == 0) return std::optional<std::string>();
  return std::optional<std::string>(std::move(value));
}

Result<bool> CustomStore::PluginHas(const std::string& plugin_key) {
  struct Search {
    const std::string* key;
    bool found;
  } search{&plugin_key, false};
  auto on_key = [](void* context, const char* key) -> int {
    auto* search = static_cast<Search*>(context);
    search->found = search->found || *search->key == key;
    return search->found ? 1 : 0;
  };
  PluginError error;
  if (api_.list(store_, plugin_key.c_str(), on_key, &search, error.data(), error.size()) != 0) {
    return Status::Error("the store plugin " + library_path_ + " could not list '" + plugin_key +
                         "': " + error.message());
  }
  return search.found;
}

Result<std::vector<std::string>> CustomStore::ListBlobs() {
  static const std::string kFolder = "blobs/sha256/";
  std::vector<std::string> digests;
  auto on_key = [](void* context, const char* key) -> int {
    std::string_view name(key);
    if (name.substr(0, kFolder.size()) != kFolder) return 0;
    std::string digest = "sha256:" + std::string(name.substr(kFolder.size()));
    if (config::IsArtifactDigest(digest)) {
      static_cast<std::vector<std::string>*>(context)->push_back(std::move(digest));
    }
    return 0;
  };
  PluginError error;
  if (api_.list(store_, kFolder.c_str(), on_key, &digests, error.data(), error.size()) != 0) {
    return Status::Error("the store plugin " + library_path_ + " could not list '" + kFolder +
                         "': " + error.message());
  }
  return digests;
}

Status CustomStore::DeleteBlob(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  std::string key = BlobKey(digest);
  PluginError error;
  if (api_.remove(store_, key.c_str(), error.data(), error.size()) != 0) {
    return Status::Error("the store plugin " + library_path_ + " could not delete '" + key +
                         "': " + error.message());
  }
  if (cached_digest_ == digest) {
    cached_digest_.clear();
    cached_blob_.clear();
  }
  return Status::Ok();
}

Result<std::optional<Record>> CustomStore::Get(const std::string& key) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  std::string plugin_key = kRecordFolder + key;
  auto bytes = PluginGet(plugin_key);
  if (!bytes.ok()) return bytes.status().WithContext("cannot read key '" + key + "'");
  if (!bytes->has_value()) return std::optional<Record>();
  const std::string untouched = "; it is left untouched for inspection: delete '" + plugin_key +
                                "' from the plugin's storage to let key '" + key +
                                "' be written again";
  auto record = DecodeRecord(key, **bytes, "the checkpoint record '" + plugin_key + "' in " +
                             describe_, untouched);
  if (!record.ok()) return record.status();
  return std::optional<Record>(std::move(*record));
}

Status CustomStore::Put(const std::string& key, uint64_t generation, std::string_view data) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  // Get, compare, put: atomic because one checkpointer per namespace calls this (see header).
  auto current = Get(key);
  if (!current.ok()) return Status::Error("refused: " + current.error());
  if (current->has_value() && (*current)->generation > generation) {
    return OlderGenerationRefused(key, generation, (*current)->generation);
  }
  Status put = PluginPut(kRecordFolder + key, EncodeRecord(key, generation, data));
  if (!put.ok()) return put.WithContext("cannot store key '" + key + "'");
  return Status::Ok();
}

Result<std::optional<std::string>> CustomStore::LoadBlob(const std::string& digest) {
  if (digest == cached_digest_) return std::optional<std::string>(cached_blob_);
  auto blob = PluginGet(BlobKey(digest));
  if (!blob.ok()) return blob.status();
  if (blob->has_value()) {
    cached_digest_ = digest;
    cached_blob_ = **blob;
  }
  return blob;
}

Result<std::optional<uint64_t>> CustomStore::BlobSize(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  auto blob = LoadBlob(digest);
  if (!blob.ok()) return blob.status().WithContext("cannot look up " + digest);
  if (!blob->has_value()) return std::optional<uint64_t>();
  return std::optional<uint64_t>((*blob)->size());
}

Status CustomStore::PutBlob(const std::string& digest, const std::string& path) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  const std::string context = "cannot store " + digest + " in " + describe_;
  auto exists = PluginHas(BlobKey(digest));
  if (!exists.ok()) return exists.status().WithContext(context);
  if (*exists) return Status::Ok();  // same digest, same bytes

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error(context + ": cannot read " + path + ": " + strerror(errno));
  std::string bytes;
  char buffer[64 * 1024];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      int error = errno;
      ::close(fd);
      return Status::Error(context + ": cannot read " + path + ": " + strerror(error));
    }
    bytes.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  Status put = PluginPut(BlobKey(digest), bytes);
  if (!put.ok()) return put.WithContext(context);
  return Status::Ok();
}

Result<std::string> CustomStore::ReadBlob(const std::string& digest, uint64_t offset,
                                          uint64_t length) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  auto blob = LoadBlob(digest);
  if (!blob.ok()) return blob.status().WithContext("cannot read " + digest);
  if (!blob->has_value()) return Status::Error(digest + " is not stored in " + describe_);
  const std::string& bytes = **blob;
  if (offset >= bytes.size()) return std::string();
  return bytes.substr(offset, length);
}

}  // namespace

Result<std::unique_ptr<CheckpointStore>> OpenCustomStore(const std::string& uri) {
  constexpr std::string_view kScheme = "custom://";
  if (uri.size() < kScheme.size() ||
      strncasecmp(uri.c_str(), kScheme.data(), kScheme.size()) != 0) {
    return UriError(uri, "does not start with custom://");
  }
  std::string rest = uri.substr(kScheme.size());
  std::string query;
  if (size_t question = rest.find('?'); question != std::string::npos) {
    query = rest.substr(question + 1);
    rest = rest.substr(0, question);
  }
  const std::string& library_path = rest;
  if (library_path.empty() || library_path.front() != '/') {
    return UriError(uri,
                    "needs the absolute path of the plugin library after custom:// (three "
                    "slashes: custom:///usr/lib/serve/libstore.so)");
  }
  if (library_path.back() == '/') return UriError(uri, "names a directory, not a library");

  std::vector<std::pair<std::string, std::string>> params;
  std::string describe = "custom://" + library_path;
  size_t start = 0;
  while (start < query.size()) {
    size_t amp = query.find('&', start);
    std::string_view param(query.data() + start,
                           (amp == std::string::npos ? query.size() : amp) - start);
    start = amp == std::string::npos ? query.size() : amp + 1;
    size_t equals = param.find('=');
    if (equals == std::string_view::npos || equals == 0) {
      return UriError(uri,
                      "has the parameter '" + std::string(param) + "', which is not name=value");
    }
    auto name = PercentDecode(param.substr(0, equals));
    auto value = PercentDecode(param.substr(equals + 1));
    if (!name.ok()) return UriError(uri, "parameter name " + name.error());
    if (!value.ok()) return UriError(uri, "parameter '" + *name + "' " + value.error());
    for (const auto& [seen, unused] : params) {
      if (seen == *name) return UriError(uri, "gives the parameter '" + *name + "' twice");
    }
    describe += (params.empty() ? "?" : "&") + std::string(param.substr(0, equals)) + "=" +
                (LooksSecret(*name) ? "***" : std::string(param.substr(equals + 1)));
    params.emplace_back(std::move(*name), std::move(*value));
  }

  void* library = dlopen(library_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* why = dlerror();
    return Status::Error("cannot load the checkpoint store plugin " + library_path + ": " +
                         (why != nullptr ? why : "unknown dlopen error"));
  }
  auto unload = [&](Status status) {
    dlclose(library);
    return status;
  };
  PluginApi api;
  std::vector<std::string> missing;
  auto find = [&](const char* name, auto& function) {
    function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(library, name));
    if (function == nullptr) missing.push_back(name);
  };
  find("serve_store_abi_version", api.abi_version);
  if (api.abi_version != nullptr && api.abi_version() != SERVE_STORE_ABI_VERSION) {
    // Checked first: a plugin for another version may name its functions differently.
    return unload(Status::Error(
        "the checkpoint store plugin " + library_path + " was built for store ABI version " +
        std::to_string(api.abi_version()) + ", but this serve-checkpointer speaks version " +
        std::to_string(SERVE_STORE_ABI_VERSION) +
        "; rebuild it against this release's sdk/include/serve/checkpoint_store.h"));
  }
  find("serve_store_open", api.open);
  find("serve_store_close", api.close);
  find("serve_store_put", api.put);
  find("serve_store_get", api.get);
  find("serve_store_delete", api.remove);
  find("serve_store_list", api.list);
  if (!missing.empty()) {
    std::string names;
    for (const auto& name : missing) names += (names.empty() ? "" : ", ") + name;
    return unload(Status::Error("the library " + library_path +
                                " is not a checkpoint store plugin: it does not export " + names +
                                " (see sdk/include/serve/checkpoint_store.h)"));
  }

  std::vector<ServeStoreParam> plugin_params;
  for (const auto& [name, value] : params) plugin_params.push_back({name.c_str(), value.c_str()});
  PluginError error;
  ServeStore* store =
      api.open(plugin_params.data(), plugin_params.size(), error.data(), error.size());
  if (store == nullptr) {
    return unload(Status::Error("the checkpoint store plugin " + library_path + " could not open " +
                                describe + ": " + error.message()));
  }
  return std::unique_ptr<CheckpointStore>(
      new CustomStore(library_path, describe, library, api, store));
}

}  // namespace serve::checkpointer
