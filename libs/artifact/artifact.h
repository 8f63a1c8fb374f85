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

// Checks that the file at `path` is a tar as UnpackTar takes it: uncompressed, with a ustar
// (or pax) header. A compressed tar (gzip, bzip2, xz, zstd, recognised by their first bytes) is
// refused with the command that decompresses it: the node never runs a decompressor on uploaded
// bytes, whose unpacked size nothing would bound. `serve deploy` checks a command deployment's
// `artifact` with this, so a wrong file is refused when it is deployed, not when replicas start.
Status CheckTar(const std::string& path);

// Unpacks the tar at `tar_path` into `directory` (created if missing), in a child process whose
// working directory it is. Only regular files, directories, symbolic links and hard links to
// files unpacked before them are accepted; an entry that would land outside the directory (an
// absolute path, "..", a path through a symbolic link), a hard link to anything outside it or
// through a link, a device, a FIFO or a socket is refused with an error naming the entry, before
// anything is written for it. setuid, setgid and sticky bits are dropped. Symbolic links
// themselves may point anywhere, as a virtualenv's do: the code they belong to runs with the
// same rights. On an error, entries before the refused one stay in `directory`: unpack into a
// fresh directory and remove it on failure.
Status UnpackTar(const std::string& tar_path, const std::string& directory);

namespace internal {

// What UnpackTar's child process does: unpacks the tar open on `tar_fd` into the working
// directory with every check above, without CheckTar. The fuzzer (fuzz/tar_unpack.cc) calls it
// in its own process, where it sees the code's coverage and its crashes; a service never does,
// as changing the working directory of a process with other threads is unsafe.
Status UnpackIntoWorkingDirectory(int tar_fd, const std::string& tar_path);

}  // namespace internal

}  // namespace serve::artifact
