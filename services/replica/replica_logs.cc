#include "replica/replica_logs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <vector>

namespace serve::replica {

namespace fs = std::filesystem;

namespace {

// Reads [offset, offset + size) of `fd`; fewer bytes when the file ends first.
Result<std::string> ReadAt(int fd, int64_t offset, size_t size) {
  std::string data(size, '\0');
  size_t got = 0;
  while (got < size) {
    ssize_t n = pread(fd, data.data() + got, size - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::Error(std::string("cannot read the log: ") + strerror(errno));
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  data.resize(got);
  return data;
}

}  // namespace

ReplicaLogs::ReplicaLogs(Options options) : options_(std::move(options)) {}

Status ReplicaLogs::Prepare() const {
  std::error_code ec;
  fs::create_directories(options_.dir, ec);
  if (ec) {
    return Status::Error("cannot create the replica log directory " + options_.dir + ": " +
                         ec.message());
  }
  return Status::Ok();
}

std::string ReplicaLogs::PathOf(const std::string& replica_id) const {
  return options_.dir + "/" + replica_id + ".log";
}

bool ReplicaLogs::Has(const std::string& replica_id) const {
  struct stat st {};
  return stat(PathOf(replica_id).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Result<ReplicaLogs::Chunk> ReplicaLogs::Read(const std::string& replica_id, int64_t offset,
                                             int tail_lines, size_t max_bytes) const {
  std::string path = PathOf(replica_id);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) {
      return Status::Error("no log of replica " + replica_id + " on this node",
                           ErrorKind::kNotFound);
    }
    return Status::Error("cannot open " + path + ": " + strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return Status::Error(path + " is not a regular file");
  }
  auto size = static_cast<int64_t>(st.st_size);
  max_bytes = std::clamp<size_t>(max_bytes, 1, options_.max_read_bytes);
  Chunk chunk;
  if (offset < 0) {
    // The last lines: read back at most max_bytes, then keep what follows the tail_lines-th
    // newline from the end (a last line without one counts too).
    int64_t from = std::max<int64_t>(0, size - static_cast<int64_t>(max_bytes));
    auto data = ReadAt(fd, from, static_cast<size_t>(size - from));
    close(fd);
    if (!data.ok()) return data.status();
    const std::string& text = *data;
    // A block that starts mid-file starts mid-line: that partial line goes.
    size_t begin = 0;
    if (from > 0) {
      size_t newline = text.find('\n');
      begin = newline == std::string::npos ? text.size() : newline + 1;
    }
    size_t start = begin;
    size_t scan = text.size() > begin && text.back() == '\n' ? text.size() - 1 : text.size();
    int lines = 0;
    while (scan > begin) {
      size_t newline = text.rfind('\n', scan - 1);
      if (newline == std::string::npos || newline < begin) break;  // the block's first line
      if (++lines == tail_lines) {
        start = newline + 1;
        break;
      }
      scan = newline;
    }
    if (tail_lines <= 0) start = text.size();
    chunk.data = text.substr(start);
    chunk.next_offset = size;
    return chunk;
  }
  if (offset > size) {
    chunk.restarted = true;  // rotated (or truncated) since: what is there now is new
    offset = 0;
  }
  size_t want =
      static_cast<size_t>(std::min<int64_t>(size - offset, static_cast<int64_t>(max_bytes)));
  auto data = ReadAt(fd, offset, want);
  close(fd);
  if (!data.ok()) return data.status();
  std::string& text = *data;
  if (offset + static_cast<int64_t>(text.size()) < size) {
    // More follows: end at a line's end, so the next read starts at a line's start.
    size_t newline = text.rfind('\n');
    if (newline != std::string::npos) text.resize(newline + 1);
  }
  chunk.next_offset = offset + static_cast<int64_t>(text.size());
  chunk.data = std::move(text);
  return chunk;
}

bool ReplicaLogs::RotateIfOver(const std::string& replica_id, uint64_t max_bytes,
                               int keep_files) const {
  std::string path = PathOf(replica_id);
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) <= max_bytes) return false;
  auto rotated = [&](int n) {
    return (fs::path(options_.dir) / (replica_id + "." + std::to_string(n) + ".log")).string();
  };
  keep_files = std::max(keep_files, 1);
  for (int n = keep_files - 1; n >= 1; --n) {
    (void)rename(rotated(n).c_str(), rotated(n + 1).c_str());
  }
  std::error_code ec;
  fs::copy_file(path, rotated(1), fs::copy_options::overwrite_existing, ec);
  // Lines written between the copy and the truncation are lost: a few at most, the price of
  // rotating under writers that cannot reopen the file.
  if (truncate(path.c_str(), 0) != 0) return false;
  return !ec;
}

size_t ReplicaLogs::Prune(const std::function<bool(const std::string&)>& running) const {
  struct Files {
    fs::file_time_type newest = fs::file_time_type::min();
    std::vector<fs::path> paths;
  };
  std::map<std::string, Files> by_replica;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".log") continue;
    std::string id = name.substr(0, name.find('.'));  // ids hold no dots; <id>.<n>.log rotated
    if (id.empty() || running(id)) continue;
    std::error_code time_ec;
    auto written = fs::last_write_time(entry.path(), time_ec);
    if (time_ec) continue;
    Files& files = by_replica[id];
    files.newest = std::max(files.newest, written);
    files.paths.push_back(entry.path());
  }
  std::vector<std::pair<fs::file_time_type, const Files*>> kept;
  size_t removed = 0;
  auto remove = [&](const Files& files) {
    for (const auto& path : files.paths) removed += fs::remove(path, ec) ? 1 : 0;
  };
  auto now = fs::file_time_type::clock::now();
  auto keep_for = std::chrono::duration_cast<fs::file_time_type::duration>(
      std::chrono::duration<double>(options_.keep_s));
  for (const auto& [id, files] : by_replica) {
    if (now - files.newest > keep_for) {
      remove(files);
    } else {
      kept.emplace_back(files.newest, &files);
    }
  }
  if (kept.size() > options_.keep_count) {
    std::sort(kept.begin(), kept.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t i = options_.keep_count; i < kept.size(); ++i) remove(*kept[i].second);
  }
  return removed;
}

}  // namespace serve::replica
