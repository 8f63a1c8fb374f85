#include "checkpointer/store.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>

#include "checkpointer/custom_store.h"
#include "checkpointer/file_store.h"
#include "checkpointer/redis_store.h"
#include "checkpointer/s3_store.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

constexpr size_t kMaxKeyLength = 200;

constexpr char kSupportedForms[] =
    "supported: file:///absolute/dir (or file://relative/dir), "
    "redis://[user:password@]host:port[/db][?prefix=p], s3://bucket/prefix, "
    "gs://bucket/prefix and custom:///path/to/libstore.so?key=value";

// Quotes `text` for an error message, with control and non-ASCII bytes escaped so a bad key
// cannot garble the log line that reports it.
std::string Quote(std::string_view text, size_t limit = 60) {
  std::string out = "'";
  for (size_t i = 0; i < text.size() && i < limit; ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (text.size() > limit) out += "...";
  return out + "'";
}

bool IsKeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '/';
}

// RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
bool IsValidScheme(std::string_view scheme) {
  if (scheme.empty() || !std::isalpha(static_cast<unsigned char>(scheme[0]))) return false;
  return std::all_of(scheme.begin(), scheme.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.';
  });
}

std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (ec) return path;
  std::string text = absolute.lexically_normal().string();
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

}  // namespace

Status ValidateKey(const std::string& key) {
  if (key.empty()) return Status::Error("checkpoint key must not be empty");
  if (key.size() > kMaxKeyLength) {
    return Status::Error("checkpoint key " + Quote(key) + " is " + std::to_string(key.size()) +
                         " characters long; the limit is " + std::to_string(kMaxKeyLength));
  }
  auto bad = std::find_if_not(key.begin(), key.end(), IsKeyChar);
  if (bad != key.end()) {
    return Status::Error("checkpoint key " + Quote(key) + " contains " +
                         Quote(std::string_view(&*bad, 1)) +
                         "; keys may use only letters, digits, '.', '_', '-' and '/'");
  }
  if (key.find("..") != std::string::npos) {
    return Status::Error("checkpoint key " + Quote(key) + " must not contain '..'");
  }
  if (key.front() == '/') {
    return Status::Error("checkpoint key " + Quote(key) + " must not start with '/'");
  }
  // Each '/'-separated part becomes a directory or file name, so none may be empty or ".".
  size_t start = 0;
  while (true) {
    size_t slash = key.find('/', start);
    std::string_view part(key.data() + start,
                          (slash == std::string::npos ? key.size() : slash) - start);
    if (part.empty() || part == ".") {
      return Status::Error("checkpoint key " + Quote(key) +
                           " has an empty or '.' part between slashes; use names like "
                           "'controller/state'");
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return Status::Ok();
}

std::string EncodeRecord(const std::string& key, uint64_t generation, std::string_view data) {
  wire::StoredCheckpointT record;
  record.key = key;
  record.generation = generation;
  record.written_ms = service::UnixMillis();
  record.data.assign(data.begin(), data.end());
  return wire::Pack(record);
}

Result<Record> DecodeRecord(const std::string& key, std::string_view bytes,
                            const std::string& where, const std::string& untouched) {
  auto stored = wire::Verify<wire::StoredCheckpoint>(bytes);
  if (!stored.ok()) {
    return Status::Error(where + " for key '" + key + "' is corrupt (" +
                         std::to_string(bytes.size()) +
                         " bytes that are not a valid StoredCheckpoint record)" + untouched);
  }
  const wire::StoredCheckpoint* record = *stored;
  std::string stored_key = record->key() != nullptr ? record->key()->str() : "";
  if (stored_key != key) {
    // Most likely copied or renamed by hand; serving it under this key would be a lie.
    return Status::Error(where + " holds the record of key '" + stored_key + "', not of key '" +
                         key + "'" + untouched);
  }
  Record result;
  result.generation = record->generation();
  result.written_ms = record->written_ms();
  if (record->data() != nullptr) {
    result.data.assign(reinterpret_cast<const char*>(record->data()->data()),
                       record->data()->size());
  }
  return result;
}

Status OlderGenerationRefused(const std::string& key, uint64_t generation, uint64_t stored) {
  return Status::Error("refused: generation " + std::to_string(generation) +
                       " is older than the stored generation " + std::to_string(stored) +
                       " for key '" + key + "' (another controller wrote a newer state)");
}

Result<std::string> PercentDecode(std::string_view text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size() || hex(text[i + 1]) < 0 || hex(text[i + 2]) < 0) {
      return Status::Error("has a '%' that is not followed by two hex digits");
    }
    out += static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2]));
    i += 2;
  }
  return out;
}

Result<std::unique_ptr<CheckpointStore>> OpenStore(const std::string& uri) {
  if (uri.empty()) {
    return Status::Error("the checkpoint path is empty; " + std::string(kSupportedForms));
  }
  size_t separator = uri.find("://");
  if (separator == std::string::npos) {
    if (uri.rfind("file:", 0) == 0) {
      return Status::Error("checkpoint path " + Quote(uri) +
                           " is not a valid URI: write file:// followed by the directory, e.g. "
                           "file:///var/lib/serve");
    }
    return Status::Error("checkpoint path " + Quote(uri) +
                         " has no scheme; to keep checkpoints in that directory, use file://" +
                         AbsolutePath(uri));
  }
  std::string scheme = uri.substr(0, separator);
  if (!IsValidScheme(scheme)) {
    return Status::Error("checkpoint path " + Quote(uri) + " is not a valid URI; " +
                         std::string(kSupportedForms));
  }
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::string rest = uri.substr(separator + 3);

  if (scheme == "file") {
    if (rest.empty()) {
      return Status::Error("checkpoint path " + Quote(uri) +
                           " names no directory; use file:///absolute/dir, e.g. "
                           "file:///var/lib/serve");
    }
    auto store = FileStore::Open(AbsolutePath(rest));
    if (!store.ok()) return store.status();
    return std::unique_ptr<CheckpointStore>(std::move(*store));
  }
  const std::string normalized = scheme + "://" + rest;
  if (scheme == "redis") return OpenRedisStore(normalized);
  if (scheme == "s3" || scheme == "gs") return OpenS3Store(normalized);
  if (scheme == "custom") return OpenCustomStore(normalized);
  return Status::Error("unknown checkpoint store scheme " + Quote(scheme) + " in " + Quote(uri) +
                       "; " + std::string(kSupportedForms));
}

std::string DefaultStoreUri(const std::string& ns) {
  std::string home;
  if (const char* env = std::getenv("HOME"); env != nullptr && *env != '\0') {
    home = env;
  } else if (const passwd* pw = getpwuid(getuid()); pw != nullptr && pw->pw_dir != nullptr) {
    home = pw->pw_dir;
  } else {
    home = AbsolutePath(".");
  }
  while (home.size() > 1 && home.back() == '/') home.pop_back();
  if (home == "/") home.clear();
  return "file://" + home + "/.serve/" + ns + "/checkpoint";
}

}  // namespace serve::checkpointer
