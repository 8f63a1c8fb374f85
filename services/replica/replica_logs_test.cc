#include "replica/replica_logs.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "support/process.h"

namespace serve::replica {
namespace {

namespace fs = std::filesystem;
using serve::testing::ReadFile;

class ReplicaLogsTest : public ::testing::Test {
 protected:
  ReplicaLogs Logs(size_t keep_count = 200, double keep_s = 3600) {
    ReplicaLogs::Options options;
    options.dir = dir_;
    options.keep_count = keep_count;
    options.keep_s = keep_s;
    options.max_read_bytes = 64;
    return ReplicaLogs(options);
  }
  void Write(const std::string& name, const std::string& text, bool append = false) {
    std::ofstream out(dir_ + "/" + name, append ? std::ios::app : std::ios::trunc);
    out << text;
  }

  serve::testing::TempDir temp_;
  const std::string& dir_ = temp_.path();
};

TEST_F(ReplicaLogsTest, RotationKeepsTheWritersDescriptorAndTheNewestFiles) {
  ReplicaLogs logs = Logs();
  // A writer that appends, as a worker's logger and its user code's stdout do.
  int fd = open((dir_ + "/r1.log").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  auto append = [&](const std::string& text) {
    ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  };
  append("first\n");
  EXPECT_FALSE(logs.RotateIfOver("r1", 100, 2)) << "under the limit";
  append(std::string(200, 'a') + "\n");
  EXPECT_TRUE(logs.RotateIfOver("r1", 100, 2));
  append("after\n");
  EXPECT_EQ(ReadFile(dir_ + "/r1.log"), "after\n") << "the writer goes on at the new end";
  EXPECT_EQ(ReadFile(dir_ + "/r1.1.log"), "first\n" + std::string(200, 'a') + "\n");

  append(std::string(200, 'b') + "\n");
  EXPECT_TRUE(logs.RotateIfOver("r1", 100, 2));
  append(std::string(200, 'c') + "\n");
  EXPECT_TRUE(logs.RotateIfOver("r1", 100, 2));
  close(fd);
  EXPECT_EQ(ReadFile(dir_ + "/r1.log"), "");
  EXPECT_EQ(ReadFile(dir_ + "/r1.1.log"), std::string(200, 'c') + "\n");
  EXPECT_EQ(ReadFile(dir_ + "/r1.2.log"), "after\n" + std::string(200, 'b') + "\n");
  EXPECT_FALSE(fs::exists(dir_ + "/r1.3.log")) << "at most 2 rotated files";
  EXPECT_FALSE(logs.RotateIfOver("missing", 100, 2));
}

TEST_F(ReplicaLogsTest, TailGivesTheLastLines) {
  ReplicaLogs logs = Logs();
  Write("r1.log", "one\ntwo\nthree\n");
  auto tail = logs.Read("r1", -1, 2, 1000);
  ASSERT_TRUE(tail.ok()) << tail.error();
  EXPECT_EQ(tail->data, "two\nthree\n");
  EXPECT_EQ(tail->next_offset, 14);
  EXPECT_EQ(logs.Read("r1", -1, 10, 1000)->data, "one\ntwo\nthree\n");
  EXPECT_EQ(logs.Read("r1", -1, 0, 1000)->data, "");
  Write("r2.log", "one\nlast without newline");
  EXPECT_EQ(logs.Read("r2", -1, 1, 1000)->data, "last without newline");
}

TEST_F(ReplicaLogsTest, TailOfABigFileDropsThePartialFirstLine) {
  ReplicaLogs logs = Logs();  // reads at most 64 bytes
  std::string text;
  for (int i = 0; i < 20; ++i) text += "line " + std::to_string(i) + " of the log\n";
  Write("r1.log", text);
  auto tail = logs.Read("r1", -1, 100, 1 << 20);
  ASSERT_TRUE(tail.ok());
  EXPECT_LE(tail->data.size(), 64u);
  EXPECT_EQ(tail->data.substr(0, 5), "line ");
  EXPECT_EQ(tail->data.substr(tail->data.size() - 19), "line 19 of the log\n");
}

TEST_F(ReplicaLogsTest, FollowingReadsWholeLinesFromAnOffset) {
  ReplicaLogs logs = Logs();
  Write("r1.log", "first line\n");
  auto start = logs.Read("r1", -1, 10, 1000);
  ASSERT_TRUE(start.ok());
  auto nothing = logs.Read("r1", start->next_offset, 10, 1000);
  ASSERT_TRUE(nothing.ok());
  EXPECT_EQ(nothing->data, "");
  EXPECT_EQ(nothing->next_offset, start->next_offset);
  Write("r1.log", "second line\nthird line\n", true);
  auto more = logs.Read("r1", start->next_offset, 10, 15);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(more->data, "second line\n") << "cut at a line's end";
  auto rest = logs.Read("r1", more->next_offset, 10, 1000);
  EXPECT_EQ(rest->data, "third line\n");
  EXPECT_FALSE(rest->restarted);

  Write("r1.log", "after rotation\n");  // shorter than the offset
  auto rotated = logs.Read("r1", rest->next_offset, 10, 1000);
  ASSERT_TRUE(rotated.ok());
  EXPECT_TRUE(rotated->restarted);
  EXPECT_EQ(rotated->data, "after rotation\n");
}

TEST_F(ReplicaLogsTest, AMissingLogIsNotFound) {
  ReplicaLogs logs = Logs();
  auto missing = logs.Read("nobody", -1, 10, 1000);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().kind(), ErrorKind::kNotFound);
  EXPECT_NE(missing.error().find("no log of replica nobody"), std::string::npos);
  EXPECT_FALSE(logs.Has("nobody"));
}

TEST_F(ReplicaLogsTest, PruneKeepsRunningAndRecentReplicas) {
  ReplicaLogs logs = Logs(/*keep_count=*/2);
  for (const char* id : {"a", "b", "c", "d"}) Write(std::string(id) + ".log", "x\n");
  Write("a.1.log", "rotated\n");
  auto old = fs::file_time_type::clock::now() - std::chrono::hours(2);
  fs::last_write_time(dir_ + "/a.log", old);
  fs::last_write_time(dir_ + "/a.1.log", old);
  fs::last_write_time(dir_ + "/b.log", old - std::chrono::minutes(1));
  fs::last_write_time(dir_ + "/c.log", fs::file_time_type::clock::now() - std::chrono::minutes(5));
  // b runs: kept however old. a is older than an hour: gone with its rotated file. Of c and d,
  // both recent, both fit in keep_count.
  size_t removed = logs.Prune([](const std::string& id) { return id == "b"; });
  EXPECT_EQ(removed, 2u);
  EXPECT_FALSE(logs.Has("a"));
  EXPECT_FALSE(fs::exists(dir_ + "/a.1.log"));
  EXPECT_TRUE(logs.Has("b"));
  EXPECT_TRUE(logs.Has("c"));
  EXPECT_TRUE(logs.Has("d"));
  // With b stopped too, three recent logs exceed keep_count: the oldest (b) goes.
  fs::last_write_time(dir_ + "/b.log", fs::file_time_type::clock::now() - std::chrono::minutes(9));
  EXPECT_EQ(logs.Prune([](const std::string&) { return false; }), 1u);
  EXPECT_FALSE(logs.Has("b"));
  EXPECT_TRUE(logs.Has("c"));
  EXPECT_TRUE(logs.Has("d"));
}

}  // namespace
}  // namespace serve::replica
