#include "checkpointer/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "support/process.h"

namespace serve::checkpointer {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(ValidateKey, AcceptsPathLikeNames) {
  for (const std::string key :
       {"controller/state", "a", "A.b_c-9", "blobs/sha256/ab12", ".hidden", "x.ckpt"}) {
    EXPECT_TRUE(ValidateKey(key).ok()) << key << ": " << ValidateKey(key).message();
  }
  EXPECT_TRUE(ValidateKey(std::string(200, 'k')).ok());
}

TEST(ValidateKey, RefusesWhatCouldEscapeOrConfuseTheStore) {
  struct Case {
    std::string key;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"", "must not be empty"},
           {std::string(201, 'k'), "is 201 characters long; the limit is 200"},
           {"a b", "contains ' '; keys may use only letters, digits"},
           {"a\nb", "contains '\\x0a'"},
           {"caf\xc3\xa9", "contains '\\xc3'"},
           {"a:b", "contains ':'"},
           {"../etc/passwd", "must not contain '..'"},
           {"a/../b", "must not contain '..'"},
           {"a..b", "must not contain '..'"},
           {"/abs", "must not start with '/'"},
           {"a/", "empty or '.' part"},
           {"a//b", "empty or '.' part"},
           {"./a", "empty or '.' part"},
           {"a/./b", "empty or '.' part"},
       }) {
    Status status = ValidateKey(c.key);
    ASSERT_FALSE(status.ok()) << c.key;
    EXPECT_THAT(status.message(), HasSubstr(c.expected)) << c.key;
    if (!c.key.empty() && c.key.size() < 60 && c.key.find_first_of("\n\xc3") == std::string::npos) {
      EXPECT_THAT(status.message(), HasSubstr("'" + c.key + "'")) << "names the key";
    }
  }
}

TEST(OpenStore, FileUriCreatesTheDirectory) {
  testing::TempDir tmp;
  std::string dir = tmp.path() + "/a/b/checkpoint";
  auto store = OpenStore("file://" + dir);
  ASSERT_TRUE(store.ok()) << store.error();
  EXPECT_EQ((*store)->Describe(), "file://" + dir);
  EXPECT_TRUE(fs::is_directory(dir));
  // Opening leaves nothing behind in the directory.
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(OpenStore, TrailingSlashesAndDotsAreNormalized) {
  testing::TempDir tmp;
  auto store = OpenStore("file://" + tmp.path() + "/x/./y/");
  ASSERT_TRUE(store.ok()) << store.error();
  EXPECT_EQ((*store)->Describe(), "file://" + tmp.path() + "/x/y");
}

TEST(OpenStore, RelativeFileUriIsTakenFromTheWorkingDirectory) {
  testing::TempDir tmp;
  std::string previous = fs::current_path().string();
  fs::current_path(tmp.path());
  auto store = OpenStore("file://rel/dir");
  fs::current_path(previous);
  ASSERT_TRUE(store.ok()) << store.error();
  std::string expected = fs::canonical(tmp.path()).string() + "/rel/dir";
  EXPECT_EQ((*store)->Describe(), "file://" + expected);
  EXPECT_TRUE(fs::is_directory(expected));
}

TEST(OpenStore, SchemeIsCaseInsensitive) {
  testing::TempDir tmp;
  auto store = OpenStore("FILE://" + tmp.path() + "/c");
  ASSERT_TRUE(store.ok()) << store.error();
  // Other backends get the URI with its scheme in lower case.
  EXPECT_THAT(OpenStore("Redis://no-port-given/0").error(), HasSubstr("redis://"));
}

TEST(OpenStore, BarePathSuggestsAFileUri) {
  auto store = OpenStore("/var/lib/serve");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.error(), AllOf(HasSubstr("'/var/lib/serve' has no scheme"),
                                   HasSubstr("use file:///var/lib/serve")));

  auto relative = OpenStore("state/dir");
  ASSERT_FALSE(relative.ok());
  EXPECT_THAT(relative.error(),
              HasSubstr("use file://" + fs::current_path().string() + "/state/dir"));
}

TEST(OpenStore, EmptyPathIsAnError) {
  EXPECT_THAT(OpenStore("").error(), AllOf(HasSubstr("empty"), HasSubstr("file:///")));
  EXPECT_THAT(OpenStore("file://").error(),
              AllOf(HasSubstr("'file://' names no directory"), HasSubstr("file:///")));
}

TEST(OpenStore, UnknownSchemeListsTheSupportedForms) {
  auto store = OpenStore("bogus://x");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.error(),
              AllOf(HasSubstr("unknown checkpoint store scheme 'bogus'"), HasSubstr("'bogus://x'"),
                    HasSubstr("file:///absolute/dir"), HasSubstr("redis://"),
                    HasSubstr("s3://bucket/prefix"), HasSubstr("custom://")));
}

TEST(OpenStore, MalformedUrisListTheSupportedForms) {
  for (const std::string uri : {"://x", "1ab://x", "fi le://x", "file:/var/lib/serve"}) {
    auto store = OpenStore(uri);
    ASSERT_FALSE(store.ok()) << uri;
    EXPECT_THAT(store.error(),
                AllOf(HasSubstr("'" + uri + "' is not a valid URI"), HasSubstr("file://")))
        << uri;
  }
}

TEST(OpenStore, UnusableDirectoryFailsAtOpen) {
  testing::TempDir tmp;
  testing::WriteFile(tmp.path() + "/plain-file", "x");

  auto under_a_file = OpenStore("file://" + tmp.path() + "/plain-file/checkpoint");
  ASSERT_FALSE(under_a_file.ok());
  EXPECT_THAT(under_a_file.error(),
              AllOf(HasSubstr("cannot open the checkpoint store file://" + tmp.path() +
                              "/plain-file/checkpoint"),
                    HasSubstr(tmp.path() + "/plain-file exists and is not a directory")));

  auto a_file = OpenStore("file://" + tmp.path() + "/plain-file");
  ASSERT_FALSE(a_file.ok());
  EXPECT_THAT(a_file.error(), HasSubstr("is not a directory"));
}

TEST(OpenStore, ReadOnlyDirectoryFailsAtOpen) {
  if (geteuid() == 0) GTEST_SKIP() << "root may write anywhere";
  testing::TempDir tmp;
  std::string dir = tmp.path() + "/ro";
  fs::create_directory(dir);
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  auto store = OpenStore("file://" + dir);
  fs::permissions(dir, fs::perms::owner_all);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.error(),
              AllOf(HasSubstr("cannot create files in " + dir), HasSubstr("Permission denied")));
}

TEST(DefaultStoreUri, LivesUnderHomePerNamespace) {
  const char* saved = std::getenv("HOME");
  std::string previous = saved != nullptr ? saved : "";
  setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(DefaultStoreUri("serve"), "file:///home/someone/.serve/serve/checkpoint");
  setenv("HOME", "/home/other/", 1);
  EXPECT_EQ(DefaultStoreUri("ns2"), "file:///home/other/.serve/ns2/checkpoint");
  if (saved != nullptr) {
    setenv("HOME", previous.c_str(), 1);
  } else {
    unsetenv("HOME");
  }
}

}  // namespace
}  // namespace serve::checkpointer
