#include "replica/artifact_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "artifact/artifact.h"
#include "artifact/transfer.h"
#include "config/deployment_config.h"

namespace serve::replica {
namespace {

namespace fs = std::filesystem;

constexpr double kChunkTimeoutS = 30;

// Holds an exclusive flock(2) on a file for as long as it lives.
class FileLock {
 public:
  static Result<FileLock> Acquire(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return Status::Error("cannot open " + path + ": " + std::strerror(errno));
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        int error = errno;
        ::close(fd);
        return Status::Error("cannot lock " + path + ": " + std::strerror(error));
      }
    }
    return FileLock(fd);
  }
  FileLock(FileLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  FileLock(const FileLock&) = delete;
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace

Result<std::string> EnsureArtifact(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                                   const std::string& cache_dir,
                                   const wire::DeploymentSpecT& spec) {
  if (!config::IsArtifactDigest(spec.artifact)) {
    return Status::Error("artifact '" + spec.artifact + "' is not a digest (sha256:<64 hex>)");
  }
  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  if (ec) return Status::Error("cannot create the artifact cache " + cache_dir + ": " + ec.message());
  std::string hex = spec.artifact.substr(spec.artifact.find(':') + 1);
  std::string file = cache_dir + "/" + hex;
  auto lock = FileLock::Acquire(file + ".lock");
  if (!lock.ok()) return lock.status();

  if (!fs::exists(file)) {
    Status fetched = artifact::Fetch(loop, bus, subjects, spec.artifact, spec.artifact_name, file,
                                     kChunkTimeoutS);
    if (!fetched.ok()) return fetched;
  }
  if (spec.runtime != "command") return file;

  std::string directory = file + ".d";
  if (!fs::exists(directory)) {
    // Unpacked beside its final name and renamed, so a crash never leaves half a directory
    // that later workers would take for whole.
    std::string partial = directory + ".partial-" + std::to_string(getpid());
    fs::remove_all(partial, ec);
    Status unpacked = artifact::UnpackTar(file, partial);
    if (!unpacked.ok()) {
      fs::remove_all(partial, ec);
      std::string name = spec.artifact_name.empty() ? spec.artifact : spec.artifact_name;
      return Status::Error("cannot unpack the working directory " + name + ": " +
                           unpacked.message());
    }
    fs::rename(partial, directory, ec);
    if (ec) {
      fs::remove_all(partial);
      return Status::Error("cannot move " + partial + " to " + directory + ": " + ec.message());
    }
  }
  return directory;
}

}  // namespace serve::replica
