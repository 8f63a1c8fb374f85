#include "replica/artifact_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>

#include "support/process.h"

namespace serve::replica {
namespace {

namespace fs = std::filesystem;

// A node's cache with artifacts last used `age` ago.
class PruneArtifactCacheTest : public ::testing::Test {
 protected:
  std::string Hex(char c) { return std::string(64, c); }
  void AddArtifact(const std::string& hex, std::chrono::seconds age, bool unpacked = true) {
    std::ofstream(dir_ + "/" + hex) << "code";
    if (unpacked) {
      fs::create_directories(dir_ + "/" + hex + ".d/pkg");
      std::ofstream(dir_ + "/" + hex + ".d/pkg/server.py") << "print()";
    }
    std::ofstream(dir_ + "/" + hex + ".lock");
    fs::last_write_time(dir_ + "/" + hex + ".lock", fs::file_time_type::clock::now() - age);
  }
  bool Cached(const std::string& hex) { return fs::exists(dir_ + "/" + hex); }

  serve::testing::TempDir tmp_;
  std::string dir_ = tmp_.path() + "/artifacts";
  std::set<std::string> running_;
  std::function<bool(const std::string&)> in_use_ = [this](const std::string& hex) {
    return running_.count(hex) > 0;
  };
};

TEST_F(PruneArtifactCacheTest, RemovesOnlyArtifactsUnusedForLongAndRunByNoWorker) {
  using std::chrono::hours;
  fs::create_directories(dir_);
  AddArtifact(Hex('a'), hours(48));  // unused for two days: goes
  AddArtifact(Hex('b'), hours(48));  // as old, but a worker runs it: stays
  AddArtifact(Hex('c'), hours(1));   // used an hour ago: stays
  running_.insert(Hex('b'));
  // What a crashed unpack of 'a' left goes with it.
  fs::create_directories(dir_ + "/" + Hex('a') + ".d.partial-123");
  std::ofstream(dir_ + "/notes.txt") << "not an artifact";

  EXPECT_EQ(PruneArtifactCache(dir_, in_use_, 86400), 1u);
  EXPECT_FALSE(Cached(Hex('a')));
  EXPECT_FALSE(fs::exists(dir_ + "/" + Hex('a') + ".d"));
  EXPECT_FALSE(fs::exists(dir_ + "/" + Hex('a') + ".d.partial-123"));
  EXPECT_TRUE(fs::exists(dir_ + "/" + Hex('a') + ".lock")) << "a worker may be waiting on it";
  EXPECT_TRUE(Cached(Hex('b')));
  EXPECT_TRUE(fs::exists(dir_ + "/" + Hex('b') + ".d/pkg/server.py"));
  EXPECT_TRUE(Cached(Hex('c')));
  EXPECT_TRUE(fs::exists(dir_ + "/notes.txt"));
}

TEST_F(PruneArtifactCacheTest, LeavesAnArtifactAWorkerIsFetching) {
  fs::create_directories(dir_);
  AddArtifact(Hex('d'), std::chrono::hours(48), false);
  // A worker in EnsureArtifact holds the lock.
  int fd = ::open((dir_ + "/" + Hex('d') + ".lock").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  EXPECT_EQ(PruneArtifactCache(dir_, in_use_, 86400), 0u);
  EXPECT_TRUE(Cached(Hex('d')));
  ::close(fd);
  EXPECT_EQ(PruneArtifactCache(dir_, in_use_, 86400), 1u);
  EXPECT_FALSE(Cached(Hex('d')));
}

TEST_F(PruneArtifactCacheTest, AMissingCacheIsNothingToDo) {
  EXPECT_EQ(PruneArtifactCache(dir_ + "/absent", in_use_, 1), 0u);
}

}  // namespace
}  // namespace serve::replica
