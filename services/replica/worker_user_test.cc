#include "replica/worker_user.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "support/process.h"

namespace serve::replica {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST(WorkerUserTest, RootDefaultsToNobodyAndOthersKeepTheirOwnUser) {
  auto as_root = ResolveWorkerUser("", 0);
  ASSERT_TRUE(as_root.ok()) << as_root.error();
  ASSERT_TRUE(as_root->has_value());
  EXPECT_EQ((*as_root)->name, "nobody");
  EXPECT_EQ((*as_root)->uid, 65534u);

  auto as_user = ResolveWorkerUser("", 1000);
  ASSERT_TRUE(as_user.ok()) << as_user.error();
  EXPECT_FALSE(as_user->has_value()) << "nothing to switch";

  auto root_kept = ResolveWorkerUser("root", 0);
  ASSERT_TRUE(root_kept.ok());
  EXPECT_FALSE(root_kept->has_value());

  auto numeric = ResolveWorkerUser("4242", 0);
  ASSERT_TRUE(numeric.ok()) << numeric.error();
  ASSERT_TRUE(numeric->has_value());
  EXPECT_EQ((*numeric)->uid, 4242u);
}

TEST(WorkerUserTest, UnknownUsersAndSwitchingWithoutRootAreClearErrors) {
  auto unknown = ResolveWorkerUser("no-such-user-x", 0);
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.error(), HasSubstr("there is no user 'no-such-user-x'"));
  EXPECT_THAT(unknown.error(), HasSubstr("useradd"));

  auto not_root = ResolveWorkerUser("nobody", 1000);
  ASSERT_FALSE(not_root.ok());
  EXPECT_THAT(not_root.error(), HasSubstr("only a node agent running as root"));
}

TEST(WorkerUserTest, ReachabilityNamesTheDirectoryInTheWay) {
  serve::testing::TempDir dir;
  WorkerUser nobody{"nobody", 65534, 65534};
  fs::create_directories(dir.path() + "/open/closed/deeper");
  chmod((dir.path() + "/open").c_str(), 0755);
  chmod((dir.path() + "/open/closed").c_str(), 0750);
  EXPECT_TRUE(CheckWorkerCanReach(nobody, dir.path() + "/open").ok());
  EXPECT_TRUE(CheckWorkerCanReach(nobody, dir.path() + "/open/not-made-yet").ok());
  Status blocked = CheckWorkerCanReach(nobody, dir.path() + "/open/closed/deeper");
  ASSERT_FALSE(blocked.ok());
  EXPECT_THAT(blocked.message(), HasSubstr(dir.path() + "/open/closed is mode 0750"));
  EXPECT_THAT(blocked.message(), HasSubstr("--work-dir"));
  // Its own directory, or its group's, is reachable without the bit for others.
  chown((dir.path() + "/open/closed").c_str(), 65534, 0);
  chmod((dir.path() + "/open/closed").c_str(), 0700);
  if (geteuid() == 0) {
    EXPECT_TRUE(CheckWorkerCanReach(nobody, dir.path() + "/open/closed").ok());
  }
}

}  // namespace
}  // namespace serve::replica
