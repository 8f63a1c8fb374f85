#include "checkpointer/file_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "config/deployment_config.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

constexpr char kRecordSuffix[] = ".ckpt";

std::string ErrnoText(int error) { return std::strerror(error); }

std::string ParentOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Closes a file descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Closes now and reports the error close(2) returned, which on some filesystems is the first
  // sign that written data did not reach the disk.
  int Close() {
    int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

// Makes a new directory entry durable: a file or directory created in `directory` survives a
// crash only once the directory itself is synced.
Status SyncDirectory(const std::string& directory) {
  Fd fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) {
    return Status::Error("cannot sync the directory " + directory + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

// mkdir -p, syncing the parent of every directory it creates.
Status MakeDirectories(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0) {
    if (S_ISDIR(info.st_mode)) return Status::Ok();
    return Status::Error(path + " exists and is not a directory");
  }
  // ENOTDIR: some ancestor is a file; the recursion below finds and names it.
  if (errno != ENOENT && errno != ENOTDIR) {
    return Status::Error("cannot use " + path + ": " + ErrnoText(errno));
  }
  std::string parent = ParentOf(path);
  if (parent != path) {
    Status status = MakeDirectories(parent);
    if (!status.ok()) return status;
  }
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::Error("cannot create the directory " + path + ": " + ErrnoText(errno));
  }
  return SyncDirectory(parent);
}

Status WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t written = ::write(fd, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return Status::Error(ErrnoText(errno));
    }
    bytes.remove_prefix(static_cast<size_t>(written));
  }
  return Status::Ok();
}

// Replaces `path` with `bytes` so that readers and crashes see either the old content or the
// new one: write a temporary file in the same directory, sync it, rename it over `path`, sync
// the directory.
Status ReplaceFileAtomically(const std::string& path, std::string_view bytes) {
  std::string directory = ParentOf(path);
  std::string temp = directory + "/." + BaseName(path) + ".tmp-XXXXXX";
  Fd fd(::mkostemp(temp.data(), O_CLOEXEC));
  if (!fd.valid()) {
    return Status::Error("cannot create a temporary file in " + directory + ": " +
                         ErrnoText(errno));
  }
  auto fail = [&](const std::string& what, int error) {
    fd.Reset();
    ::unlink(temp.c_str());
    return Status::Error(what + ": " + ErrnoText(error));
  };
  Status written = WriteAll(fd.get(), bytes);
  if (!written.ok()) {
    fd.Reset();
    ::unlink(temp.c_str());
    return Status::Error("cannot write " + temp + ": " + written.message());
  }
  if (::fsync(fd.get()) != 0) return fail("cannot sync " + temp, errno);
  if (fd.Close() != 0) return fail("cannot write " + temp, errno);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    return fail("cannot rename " + temp + " to " + path, errno);
  }
  return SyncDirectory(directory);
}

// Holds an exclusive flock(2) on a directory. Each holder opens its own descriptor, so the lock
// excludes other threads of this process as well as other processes.
class DirectoryLock {
 public:
  static Result<std::unique_ptr<DirectoryLock>> Acquire(const std::string& directory) {
    int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      return Status::Error("cannot open the checkpoint directory " + directory + ": " +
                           ErrnoText(errno));
    }
    std::unique_ptr<DirectoryLock> lock(new DirectoryLock(fd));
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        return Status::Error("cannot lock the checkpoint directory " + directory + ": " +
                             ErrnoText(errno));
      }
    }
    return lock;
  }
  // Closing the descriptor releases the lock.

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  Fd fd_;
};

Status BadDigest(const std::string& digest) {
  return Status::Error("'" + digest + "' is not an artifact digest (sha256:<64 hex digits>)");
}

std::string Untouched(const std::string& key) {
  return "; the file is left untouched for inspection: move it aside to let key '" + key +
         "' be written again";
}

}  // namespace

Result<std::unique_ptr<FileStore>> FileStore::Open(const std::string& directory) {
  if (directory.empty() || directory.front() != '/') {
    return Status::Error("the file checkpoint store needs an absolute directory, got '" +
                         directory + "'");
  }
  std::string normalized = directory;
  while (normalized.size() > 1 && normalized.back() == '/') normalized.pop_back();
  Status made = MakeDirectories(normalized);
  if (!made.ok()) return made.WithContext("cannot open the checkpoint store file://" + normalized);
  // Fail now, not at the first put minutes later, when the directory is not writable.
  std::string probe = normalized + "/.probe-XXXXXX";
  Fd fd(::mkostemp(probe.data(), O_CLOEXEC));
  if (!fd.valid()) {
    return Status::Error("cannot open the checkpoint store file://" + normalized +
                         ": cannot create files in " + normalized + ": " + ErrnoText(errno));
  }
  fd.Reset();
  ::unlink(probe.c_str());
  return std::unique_ptr<FileStore>(new FileStore(normalized));
}

std::string FileStore::Describe() const { return "file://" + directory_; }

std::string FileStore::PathFor(const std::string& key) const {
  return (directory_ == "/" ? "" : directory_) + "/" + key + kRecordSuffix;
}

Result<std::optional<Record>> FileStore::Read(const std::string& key,
                                              const std::string& path) const {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ENOTDIR) return std::optional<Record>();
    return Status::Error("cannot read the checkpoint file " + path + " for key '" + key +
                         "': " + ErrnoText(errno) + Untouched(key));
  }
  std::string bytes;
  char buffer[64 * 1024];
  while (true) {
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Error("cannot read the checkpoint file " + path + " for key '" + key +
                           "': " + ErrnoText(errno) + Untouched(key));
    }
    bytes.append(buffer, static_cast<size_t>(n));
  }
  auto record = DecodeRecord(key, bytes, "the checkpoint file " + path, Untouched(key));
  if (!record.ok()) return record.status();
  return std::optional<Record>(std::move(*record));
}

Result<std::optional<Record>> FileStore::Get(const std::string& key) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  return Read(key, PathFor(key));
}

Status FileStore::Put(const std::string& key, uint64_t generation, std::string_view data) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  std::string path = PathFor(key);
  Status made = MakeDirectories(ParentOf(path));
  if (!made.ok()) return made.WithContext("cannot store key '" + key + "'");

  auto lock = DirectoryLock::Acquire(directory_);
  if (!lock.ok()) return lock.status();
  auto current = Read(key, path);
  if (!current.ok()) return Status::Error("refused: " + current.error());
  if (current->has_value() && (*current)->generation > generation) {
    return OlderGenerationRefused(key, generation, (*current)->generation);
  }

  Status replaced = ReplaceFileAtomically(path, EncodeRecord(key, generation, data));
  if (!replaced.ok()) return replaced.WithContext("cannot store key '" + key + "'");
  return Status::Ok();
}

std::string FileStore::BlobPathFor(const std::string& digest) const {
  // "sha256:<hex>" -> <dir>/blobs/sha256/<hex>
  std::string algorithm = digest.substr(0, digest.find(':'));
  std::string hex = digest.substr(digest.find(':') + 1);
  return (directory_ == "/" ? "" : directory_) + "/blobs/" + algorithm + "/" + hex;
}

Result<std::optional<uint64_t>> FileStore::BlobSize(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  struct stat info {};
  std::string path = BlobPathFor(digest);
  if (::stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::optional<uint64_t>();
    return Status::Error("cannot read " + path + ": " + ErrnoText(errno));
  }
  return std::optional<uint64_t>(static_cast<uint64_t>(info.st_size));
}

Status FileStore::PutBlob(const std::string& digest, const std::string& source) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  std::string path = BlobPathFor(digest);
  if (::access(path.c_str(), F_OK) == 0) return Status::Ok();  // same digest, same bytes
  Status made = MakeDirectories(ParentOf(path));
  if (!made.ok()) return made.WithContext("cannot store " + digest);
  Fd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return Status::Error("cannot read " + source + ": " + ErrnoText(errno));
  std::string temp = ParentOf(path) + "/.tmp-XXXXXX";
  Fd out(::mkostemp(temp.data(), O_CLOEXEC));
  if (!out.valid()) {
    return Status::Error("cannot create a temporary file in " + ParentOf(path) + ": " +
                         ErrnoText(errno));
  }
  auto fail = [&](const std::string& what) {
    out.Reset();
    ::unlink(temp.c_str());
    return Status::Error(what);
  };
  char buffer[64 * 1024];
  while (true) {
    ssize_t n = ::read(in.get(), buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot read " + source + ": " + ErrnoText(errno));
    }
    Status written = WriteAll(out.get(), std::string_view(buffer, static_cast<size_t>(n)));
    if (!written.ok()) return fail("cannot write " + temp + ": " + written.message());
  }
  if (::fsync(out.get()) != 0) return fail("cannot sync " + temp + ": " + ErrnoText(errno));
  if (out.Close() != 0) return fail("cannot write " + temp + ": " + ErrnoText(errno));
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    return fail("cannot rename " + temp + " to " + path + ": " + ErrnoText(errno));
  }
  return SyncDirectory(ParentOf(path));
}

Result<std::string> FileStore::ReadBlob(const std::string& digest, uint64_t offset,
                                        uint64_t length) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  std::string path = BlobPathFor(digest);
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return Status::Error(digest + " is not stored in " + Describe());
    return Status::Error("cannot read " + path + ": " + ErrnoText(errno));
  }
  std::string bytes(length, '\0');
  size_t filled = 0;
  while (filled < length) {
    ssize_t n = ::pread(fd.get(), bytes.data() + filled, length - filled,
                        static_cast<off_t>(offset + filled));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Error("cannot read " + path + ": " + ErrnoText(errno));
    }
    filled += static_cast<size_t>(n);
  }
  bytes.resize(filled);
  return bytes;
}

Result<std::vector<std::string>> FileStore::ListBlobs() {
  std::vector<std::string> digests;
  std::string folder = (directory_ == "/" ? "" : directory_) + "/blobs/sha256";
  std::error_code error;
  std::filesystem::directory_iterator entries(folder, error);
  if (error == std::errc::no_such_file_or_directory) return digests;
  if (error) return Status::Error("cannot list " + folder + ": " + error.message());
  for (const auto& entry : entries) {
    // Temporary files of puts in progress (".tmp-*") and anything else are not blobs.
    std::string digest = "sha256:" + entry.path().filename().string();
    if (config::IsArtifactDigest(digest)) digests.push_back(std::move(digest));
  }
  return digests;
}

Status FileStore::DeleteBlob(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  std::string path = BlobPathFor(digest);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::Error("cannot remove " + path + ": " + ErrnoText(errno));
  }
  return SyncDirectory(ParentOf(path));
}

}  // namespace serve::checkpointer
