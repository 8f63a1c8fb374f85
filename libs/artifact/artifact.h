#pragma once

// Code artifacts: what a `native` or `command` deployment runs, named by the sha256 of its
// bytes. A shared library is its own artifact; a working directory becomes a tar made the same
// way every time (entries sorted, times and owners zeroed), so the same files give the same
// digest on any machine and an unchanged directory is never uploaded twice.

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace serve::artifact {

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view bytes);
  // "sha256:<64 lowercase hex digits>". Call once.
  std::string Digest();

 private:
  void* context_;  // EVP_MD_CTX
};

// The digest of `bytes`.
std::string DigestOf(std::string_view bytes);
// The digest of the file at `path`; the error names the path and the reason.
Result<std::string> DigestFile(const std::string& path);

// Writes the directory at `directory` as a reproducible tar to `tar_path` and returns the
// tar's digest. Regular files, directories and symbolic links are kept (links as links);
// `__pycache__` directories and `.git` are left out, since they change without the code
// changing. Anything else (a socket, a device) is an error that names it.
Result<std::string> PackDirectory(const std::string& directory, const std::string& tar_path);

// Unpacks the tar at `tar_path` into `directory` (created if missing). Refuses entries that
// would land outside it (absolute paths, "..", writing through a link). Links themselves may
// point anywhere, as a virtualenv's do: the code they belong to runs with the same rights.
Status UnpackTar(const std::string& tar_path, const std::string& directory);

}  // namespace serve::artifact
