#include "cli/bus_credentials.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "support/process.h"

namespace serve::cli {
namespace {

using ::testing::HasSubstr;

TEST(BusCredentialsTest, WrittenPrivatelyAndReadBack) {
  testing::TempDir dir;
  std::string path = BusCredentialsPath(dir.path());
  auto none = ReadBusCredentials(path);
  ASSERT_TRUE(none.ok()) << none.error();
  EXPECT_FALSE(none->has_value()) << "no file is not an error";

  auto generated = BusCredentials::Generate("ns");
  ASSERT_TRUE(generated.ok());
  EXPECT_EQ(generated->Of(bus::Role::kProxy).user, "ns-proxy");
  EXPECT_EQ(generated->Of(bus::Role::kProxy).password.size(), 32u);
  EXPECT_NE(generated->Of(bus::Role::kProxy).password, generated->Of(bus::Role::kAdmin).password);
  ASSERT_TRUE(WriteBusCredentials(path, *generated).ok());
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto read = ReadBusCredentials(path);
  ASSERT_TRUE(read.ok() && read->has_value());
  EXPECT_EQ((*read)->Of(bus::Role::kAdmin).password, generated->Of(bus::Role::kAdmin).password);
}

TEST(BusCredentialsTest, OperatorModeFilesArePrivateAndReplacePasswordMode) {
  testing::TempDir dir;
  auto passwords = BusCredentials::Generate("ns");
  ASSERT_TRUE(passwords.ok());
  ASSERT_TRUE(WriteBusCredentials(BusCredentialsPath(dir.path()), *passwords).ok());
  // A directory left group-readable by something else is made private again.
  ASSERT_EQ(mkdir(CredsDir(dir.path()).c_str(), 0755), 0);

  auto setup = bus::GenerateOperatorSetup("ns");
  ASSERT_TRUE(setup.ok()) << setup.error();
  ASSERT_TRUE(WriteOperatorCredentials(dir.path(), *setup).ok());
  struct stat st {};
  ASSERT_EQ(stat(CredsDir(dir.path()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const std::string& path :
       {RoleCredsPath(dir.path(), bus::Role::kAdmin), RoleCredsPath(dir.path(), bus::Role::kNode),
        WorkerSigningKeyPath(dir.path()), NatsOperatorConfigPath(dir.path())}) {
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << path;
  }
  EXPECT_NE(stat(RoleCredsPath(dir.path(), bus::Role::kWorker).c_str(), &st), 0);
  EXPECT_NE(stat(BusCredentialsPath(dir.path()).c_str(), &st), 0) << "password mode's file stays";
  auto admin = bus::ParseCreds(testing::ReadFile(RoleCredsPath(dir.path(), bus::Role::kAdmin)));
  EXPECT_TRUE(admin.ok()) << admin.error();

  RemoveOperatorCredentials(dir.path());
  EXPECT_NE(stat(CredsDir(dir.path()).c_str(), &st), 0);
}

TEST(BusCredentialsTest, MalformedFilesAreRefusedWithTheFix) {
  testing::TempDir dir;
  std::string path = BusCredentialsPath(dir.path());
  for (const char* text : {"garbage\n", "chef ns-chef pw\n", "admin ns-admin\n",
                           "proxy ns-proxy pw\n", "\x01\x02\xff\n"}) {
    testing::WriteFile(path, text);
    auto read = ReadBusCredentials(path);
    ASSERT_FALSE(read.ok()) << text;
    EXPECT_THAT(read.error(), HasSubstr(path));
    EXPECT_THAT(read.error(), HasSubstr("serve start"));
  }
}

TEST(BusCredentialsTest, QuotedForTheServerConfiguration) {
  EXPECT_EQ(bus::QuotedPassword("a\"b\\c"), "\"a\\\"b\\\\c\"");
}

}  // namespace
}  // namespace serve::cli
