// The custom:// store: the host side of the plugin ABI against the example directory plugin and
// two broken test-only plugins (testdata/).
#include "checkpointer/custom_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "artifact/artifact.h"
#include "checkpointer/store_contract.h"
#include "serve/checkpoint_store.h"
#include "support/process.h"

namespace serve::checkpointer {
namespace {

using ::testing::HasSubstr;

constexpr char kDirectoryPlugin[] = SERVE_DIRECTORY_STORE_PLUGIN;

std::string DirectoryUri(const std::string& dir) {
  return std::string("custom://") + kDirectoryPlugin + "?dir=" + dir;
}

class CustomStoreTest : public ::testing::Test {
 protected:
  testing::TempDir dir_;
};

TEST_F(CustomStoreTest, OpenStoreLoadsThePluginEndToEnd) {
  std::string root = dir_.path() + "/store with space";
  auto store = OpenStore(std::string("custom://") + kDirectoryPlugin + "?dir=" + dir_.path() +
                         "/store%20with%20space");
  ASSERT_TRUE(store.ok()) << store.error();
  ASSERT_TRUE((*store)->Put("controller/state", 2, "state").ok());
  EXPECT_TRUE(std::filesystem::is_regular_file(root + "/ckpt/controller/state.value"));
  std::string digest = artifact::DigestOf("code");
  testing::WriteFile(dir_.path() + "/code", "code");
  ASSERT_TRUE((*store)->PutBlob(digest, dir_.path() + "/code").ok());
  EXPECT_EQ(testing::ReadFile(root + "/blobs/sha256/" + digest.substr(7) + ".value"), "code");
  EXPECT_EQ((*store)->Describe(), std::string("custom://") + kDirectoryPlugin +
                                      "?dir=" + dir_.path() + "/store%20with%20space");

  // A second store object on the same directory sees what the first wrote, and is fenced.
  auto again = OpenCustomStore(DirectoryUri(root));
  ASSERT_TRUE(again.ok()) << again.error();
  auto record = (*again)->Get("controller/state");
  ASSERT_TRUE(record.ok() && record->has_value()) << record.error();
  EXPECT_EQ((*record)->data, "state");
  EXPECT_EQ((*again)->Put("controller/state", 1, "older").message(),
            "refused: generation 1 is older than the stored generation 2 for key "
            "'controller/state' (another controller wrote a newer state)");
}

TEST_F(CustomStoreTest, KeyAndTheFolderOfAnotherKeyCoexist) {
  auto store = OpenCustomStore(DirectoryUri(dir_.path()));
  ASSERT_TRUE(store.ok()) << store.error();
  ASSERT_TRUE((*store)->Put("a", 1, "a").ok());
  ASSERT_TRUE((*store)->Put("a/b", 1, "a/b").ok());
  EXPECT_EQ((*(*store)->Get("a"))->data, "a");
  EXPECT_EQ((*(*store)->Get("a/b"))->data, "a/b");
}

TEST_F(CustomStoreTest, CorruptRecordIsRefusedAndLeftUntouched) {
  auto store = OpenCustomStore(DirectoryUri(dir_.path()));
  ASSERT_TRUE(store.ok()) << store.error();
  std::filesystem::create_directories(dir_.path() + "/ckpt");
  std::string path = dir_.path() + "/ckpt/broken.value";
  testing::WriteFile(path, "garbage");
  auto got = (*store)->Get("broken");
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(got.error(), HasSubstr("'ckpt/broken'"));
  EXPECT_THAT(got.error(), HasSubstr("corrupt"));
  EXPECT_FALSE((*store)->Put("broken", 9, "new").ok());
  EXPECT_EQ(testing::ReadFile(path), "garbage");
}

TEST_F(CustomStoreTest, PluginErrorsReachTheCaller) {
  auto no_dir = OpenStore(std::string("custom://") + kDirectoryPlugin);
  ASSERT_FALSE(no_dir.ok());
  EXPECT_THAT(no_dir.error(), HasSubstr(kDirectoryPlugin));
  EXPECT_THAT(no_dir.error(), HasSubstr("the directory store needs an absolute directory"));
  EXPECT_THAT(no_dir.error(), HasSubstr("no dir parameter given"));

  auto unknown = OpenCustomStore(DirectoryUri(dir_.path()) + "&colour=blue");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.error(), HasSubstr("does not know the parameter 'colour'"));

  testing::WriteFile(dir_.path() + "/file", "");
  auto unusable = OpenCustomStore(DirectoryUri(dir_.path() + "/file/sub"));
  ASSERT_FALSE(unusable.ok());
  EXPECT_THAT(unusable.error(), HasSubstr("cannot create the directory " + dir_.path()));
}

TEST_F(CustomStoreTest, LibraryErrorsAreClear) {
  std::string text = dir_.path() + "/libtext.so";
  testing::WriteFile(text, std::string(4096, '#'));  // long enough to have a header
  auto not_library = OpenCustomStore("custom://" + text);
  ASSERT_FALSE(not_library.ok());
  EXPECT_THAT(not_library.error(), HasSubstr("cannot load the checkpoint store plugin " + text));
  EXPECT_THAT(not_library.error(), HasSubstr("invalid ELF header")) << "dlerror's text";

  auto absent = OpenCustomStore("custom://" + dir_.path() + "/nothing.so");
  ASSERT_FALSE(absent.ok());
  EXPECT_THAT(absent.error(), HasSubstr("No such file"));

  auto no_symbols = OpenCustomStore(std::string("custom://") + SERVE_PLUGIN_WITHOUT_SYMBOLS);
  ASSERT_FALSE(no_symbols.ok());
  EXPECT_THAT(no_symbols.error(), HasSubstr("is not a checkpoint store plugin"));
  EXPECT_THAT(no_symbols.error(),
              HasSubstr("serve_store_abi_version, serve_store_open, serve_store_close, "
                        "serve_store_put, serve_store_get, serve_store_delete, "
                        "serve_store_list"));

  auto wrong_abi = OpenCustomStore(std::string("custom://") + SERVE_PLUGIN_WRONG_ABI);
  ASSERT_FALSE(wrong_abi.ok());
  EXPECT_THAT(wrong_abi.error(), HasSubstr("built for store ABI version " +
                                           std::to_string(SERVE_STORE_ABI_VERSION + 98) +
                                           ", but this serve-checkpointer speaks version " +
                                           std::to_string(SERVE_STORE_ABI_VERSION)));
}

TEST(CustomStoreUri, MalformedFormsAreRejected) {
  struct Case {
    std::string uri;
    std::string problem;
  };
  const std::vector<Case> cases = {
      {"custom://", "absolute path of the plugin library"},
      {"custom://lib/libstore.so", "absolute path of the plugin library"},
      {"custom:///usr/lib/", "names a directory"},
      {"custom:///lib.so?dir", "'dir', which is not name=value"},
      {"custom:///lib.so?=x", "which is not name=value"},
      {"custom:///lib.so?a=1&a=2", "gives the parameter 'a' twice"},
      {"custom:///lib.so?a=%2", "not followed by two hex digits"},
  };
  for (const auto& c : cases) {
    auto store = OpenCustomStore(c.uri);
    ASSERT_FALSE(store.ok()) << c.uri;
    EXPECT_THAT(store.error(), HasSubstr(c.problem)) << c.uri;
    EXPECT_THAT(store.error(), HasSubstr("custom:///abs/path/libstore.so")) << c.uri;
  }
}

}  // namespace
}  // namespace serve::checkpointer

// The behaviour every store shares (store_contract.h), on the example plugin with a fresh
// directory per store.
namespace serve::checkpointer::contract {
namespace {

Result<std::unique_ptr<CheckpointStore>> FreshDirectoryStore() {
  static std::vector<std::unique_ptr<testing::TempDir>> dirs;
  dirs.push_back(std::make_unique<testing::TempDir>());
  return OpenStore(DirectoryUri(dirs.back()->path() + "/store"));
}

INSTANTIATE_TEST_SUITE_P(Custom, StoreContractTest,
                         ::testing::Values(StoreFactory(FreshDirectoryStore)),
                         ContractName);

}  // namespace
}  // namespace serve::checkpointer::contract
