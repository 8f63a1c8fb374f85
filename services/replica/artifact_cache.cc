#include "replica/artifact_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <vector>

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

bool IsDigestHex(const std::string& name) {
  return name.size() == 64 && name.find_first_not_of("0123456789abcdef") == std::string::npos;
}

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
  // The lock file's time is the artifact's last use, for PruneArtifactCache.
  ::utimensat(AT_FDCWD, (file + ".lock").c_str(), nullptr, 0);

  if (!fs::exists(file)) {
    Status fetched = artifact::Fetch(loop, bus, subjects, spec.artifact, spec.artifact_name, file,
                                     kChunkTimeoutS);
    if (!fetched.ok()) return fetched;
  }
  // A command or python deployment's artifact is its working directory, packed.
  if (spec.runtime != "command" && spec.runtime != "python") return file;

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

size_t PruneArtifactCache(const std::string& cache_dir,
                          const std::function<bool(const std::string& hex)>& in_use,
                          double keep_unused_s) {
  std::error_code ec;
  auto now = fs::file_time_type::clock::now();
  auto keep = std::chrono::duration_cast<fs::file_time_type::duration>(
      std::chrono::duration<double>(keep_unused_s));
  std::vector<std::string> unused;
  for (fs::directory_iterator it(cache_dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!IsDigestHex(name) || in_use(name)) continue;
    // The lock file's time is the last use; an artifact fetched by an agent that did not touch
    // it has only its own.
    std::error_code time_ec;
    auto used = fs::last_write_time(it->path().string() + ".lock", time_ec);
    if (time_ec) used = fs::last_write_time(it->path(), time_ec);
    if (!time_ec && now - used > keep) unused.push_back(name);
  }
  size_t removed = 0;
  for (const std::string& hex : unused) {
    std::string lock_path = cache_dir + "/" + hex + ".lock";
    int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) continue;
    // Not waiting: a worker holding it is fetching or unpacking this artifact to run it.
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      // Under the lock nobody fetches or unpacks this artifact, so what its partial files and
      // directories hold is what crashed workers left.
      std::vector<fs::path> entries;
      for (fs::directory_iterator it(cache_dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::string name = it->path().filename().string();
        if (name.rfind(hex, 0) == 0 && name != hex + ".lock") entries.push_back(it->path());
      }
      for (const fs::path& entry : entries) {
        std::error_code remove_ec;
        fs::remove_all(entry, remove_ec);
      }
      ++removed;
    }
    ::close(fd);
  }
  return removed;
}

}  // namespace serve::replica
