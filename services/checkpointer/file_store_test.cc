#include "checkpointer/file_store.h"
#include "checkpointer/store_contract.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "service/service.h"
#include "support/process.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class FileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = Open(); }

  std::unique_ptr<FileStore> Open() {
    auto store = FileStore::Open(dir_);
    EXPECT_TRUE(store.ok()) << store.error();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // Every file under the store directory, relative to it.
  std::vector<std::string> Files() {
    std::vector<std::string> files;
    for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
      if (!entry.is_directory()) files.push_back(fs::relative(entry.path(), dir_).string());
    }
    std::sort(files.begin(), files.end());
    return files;
  }

  testing::TempDir tmp_;
  std::string dir_ = tmp_.path() + "/store";
  std::unique_ptr<FileStore> store_;
};

TEST_F(FileStoreTest, PutThenGetReturnsTheRecord) {
  std::string data("binary\0data\xff", 12);
  int64_t before = service::UnixMillis();
  ASSERT_TRUE(store_->Put("controller/state", 3, data).ok());

  auto record = store_->Get("controller/state");
  ASSERT_TRUE(record.ok()) << record.error();
  ASSERT_TRUE(record->has_value());
  EXPECT_EQ((*record)->generation, 3u);
  EXPECT_EQ((*record)->data, data);
  EXPECT_GE((*record)->written_ms, before);
  EXPECT_LE((*record)->written_ms, service::UnixMillis());
}

TEST_F(FileStoreTest, MissingKeyIsNotFound) {
  auto record = store_->Get("nothing/here");
  ASSERT_TRUE(record.ok()) << record.error();
  EXPECT_FALSE(record->has_value());
}

TEST_F(FileStoreTest, EmptyDataIsARecordToo) {
  ASSERT_TRUE(store_->Put("empty", 1, "").ok());
  auto record = store_->Get("empty");
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->data, "");
}

TEST_F(FileStoreTest, KeysAreFilesAndSlashesAreDirectories) {
  ASSERT_TRUE(store_->Put("controller/state", 1, "x").ok());
  ASSERT_TRUE(store_->Put("top", 1, "y").ok());
  EXPECT_EQ(store_->PathFor("controller/state"), dir_ + "/controller/state.ckpt");
  EXPECT_EQ(Files(), (std::vector<std::string>{"controller/state.ckpt", "top.ckpt"}));
  EXPECT_EQ(store_->Describe(), "file://" + dir_);
}

TEST_F(FileStoreTest, OlderGenerationIsRefused) {
  ASSERT_TRUE(store_->Put("controller/state", 7, "seven").ok());
  Status refused = store_->Put("controller/state", 4, "four");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.message(),
            "refused: generation 4 is older than the stored generation 7 for key "
            "'controller/state' (another controller wrote a newer state)");
  auto record = store_->Get("controller/state");
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->generation, 7u);
  EXPECT_EQ((*record)->data, "seven");
}

TEST_F(FileStoreTest, EqualOrHigherGenerationIsStored) {
  ASSERT_TRUE(store_->Put("k", 7, "first").ok());
  ASSERT_TRUE(store_->Put("k", 7, "again").ok());
  EXPECT_EQ((*store_->Get("k"))->data, "again");
  ASSERT_TRUE(store_->Put("k", 8, "newer").ok());
  EXPECT_EQ((*store_->Get("k"))->generation, 8u);
  EXPECT_EQ((*store_->Get("k"))->data, "newer");
}

TEST_F(FileStoreTest, GenerationsAreFencedPerKey) {
  ASSERT_TRUE(store_->Put("a", 100, "a").ok());
  EXPECT_TRUE(store_->Put("b", 1, "b").ok());
}

TEST_F(FileStoreTest, RecordsSurviveReopening) {
  ASSERT_TRUE(store_->Put("controller/state", 42, "state").ok());
  store_.reset();
  auto reopened = Open();
  auto record = reopened->Get("controller/state");
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->generation, 42u);
  EXPECT_EQ((*record)->data, "state");
  // Fencing holds across restarts too.
  EXPECT_FALSE(reopened->Put("controller/state", 41, "old").ok());
}

TEST_F(FileStoreTest, InvalidKeysAreRefusedByName) {
  for (const std::string key : {"", "../escape", "/abs", "a b", "a//b"}) {
    Status put = store_->Put(key, 1, "x");
    ASSERT_FALSE(put.ok()) << key;
    EXPECT_THAT(put.message(), HasSubstr("checkpoint key")) << key;
    auto get = store_->Get(key);
    ASSERT_FALSE(get.ok()) << key;
    EXPECT_EQ(get.error(), put.message());
    if (!key.empty()) {
      EXPECT_THAT(put.message(), HasSubstr("'" + key + "'"));
    }
  }
  EXPECT_EQ(Files(), std::vector<std::string>{});
}

TEST_F(FileStoreTest, PutsLeaveNoTemporaryFilesBehind) {
  for (int generation = 1; generation <= 20; ++generation) {
    ASSERT_TRUE(store_->Put("controller/state", generation, std::string(1000, 'x')).ok());
    ASSERT_TRUE(store_->Put("blobs/sha256/ab", generation, "blob").ok());
  }
  EXPECT_FALSE(store_->Put("controller/state", 3, "old").ok());
  EXPECT_EQ(Files(), (std::vector<std::string>{"blobs/sha256/ab.ckpt", "controller/state.ckpt"}));
}

TEST_F(FileStoreTest, RecordIsAVerifiedStoredCheckpoint) {
  ASSERT_TRUE(store_->Put("k", 5, "payload").ok());
  std::string bytes = testing::ReadFile(store_->PathFor("k"));
  auto record = wire::Unpack<wire::StoredCheckpoint>(bytes);
  ASSERT_TRUE(record.ok()) << record.error();
  EXPECT_EQ(record->key, "k");
  EXPECT_EQ(record->generation, 5u);
  EXPECT_EQ(std::string(record->data.begin(), record->data.end()), "payload");
}

class CorruptRecordTest : public FileStoreTest {
 protected:
  void ExpectLeftUntouched(const std::string& key, const std::string& what) {
    std::string path = store_->PathFor(key);
    std::string before = testing::ReadFile(path);

    auto get = store_->Get(key);
    ASSERT_FALSE(get.ok()) << "a corrupt record is an error, never 'not found'";
    EXPECT_THAT(get.error(), AllOf(HasSubstr(path), HasSubstr(what),
                                   HasSubstr("the file is left untouched for inspection")));

    Status put = store_->Put(key, 1000, "would overwrite");
    ASSERT_FALSE(put.ok()) << "a corrupt record is never silently overwritten";
    EXPECT_EQ(put.message(), "refused: " + get.error());

    EXPECT_EQ(testing::ReadFile(path), before);
    EXPECT_FALSE(Files().empty());
  }
};

TEST_F(CorruptRecordTest, GarbageFile) {
  fs::create_directories(dir_ + "/controller");
  testing::WriteFile(store_->PathFor("controller/state"), "this is not a flatbuffer at all");
  ExpectLeftUntouched("controller/state", "is corrupt (31 bytes that are not a valid");
}

TEST_F(CorruptRecordTest, TruncatedRecord) {
  ASSERT_TRUE(store_->Put("k", 5, std::string(100, 'd')).ok());
  std::string path = store_->PathFor("k");
  std::string bytes = testing::ReadFile(path);
  testing::WriteFile(path, bytes.substr(0, bytes.size() / 2));
  ExpectLeftUntouched("k", "is corrupt");
}

TEST_F(CorruptRecordTest, EmptyFile) {
  testing::WriteFile(store_->PathFor("k"), "");
  ExpectLeftUntouched("k", "is corrupt (0 bytes");
}

TEST_F(CorruptRecordTest, RecordOfAnotherKey) {
  ASSERT_TRUE(store_->Put("a", 5, "a's data").ok());
  fs::copy_file(store_->PathFor("a"), store_->PathFor("b"));
  ExpectLeftUntouched("b", "holds the record of key 'a', not of key 'b'");
}

TEST_F(CorruptRecordTest, UnreadableRecord) {
  fs::create_directories(store_->PathFor("k"));  // a directory where the file should be
  auto get = store_->Get("k");
  ASSERT_FALSE(get.ok());
  EXPECT_THAT(get.error(),
              AllOf(HasSubstr("cannot read the checkpoint file " + store_->PathFor("k")),
                    HasSubstr("left untouched")));
  Status put = store_->Put("k", 1, "x");
  ASSERT_FALSE(put.ok());
  EXPECT_THAT(put.message(), StartsWith("refused: cannot read"));
  EXPECT_TRUE(fs::is_directory(store_->PathFor("k")));
}

// Writers that race on one key, each with its own store object as separate processes would
// have, never replace a newer generation with an older one.
TEST_F(FileStoreTest, ConcurrentWritersNeverLoseTheNewestGeneration) {
  constexpr int kWriters = 4;
  constexpr int kPutsEach = 200;
  std::vector<std::thread> writers;
  std::atomic<uint64_t> highest_accepted{0};
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      auto store = FileStore::Open(dir_);
      ASSERT_TRUE(store.ok());
      std::mt19937_64 rng(w);
      for (int i = 0; i < kPutsEach; ++i) {
        uint64_t generation = rng() % 1000;
        if ((*store)->Put("contended", generation, std::to_string(generation)).ok()) {
          uint64_t seen = highest_accepted.load();
          while (generation > seen && !highest_accepted.compare_exchange_weak(seen, generation)) {
          }
        }
      }
    });
  }
  for (auto& writer : writers) writer.join();
  auto record = store_->Get("contended");
  ASSERT_TRUE(record.ok() && record->has_value()) << record.error();
  EXPECT_EQ((*record)->generation, highest_accepted.load());
  EXPECT_EQ((*record)->data, std::to_string(highest_accepted.load()));
  EXPECT_EQ(Files(), std::vector<std::string>{"contended.ckpt"});
}

}  // namespace
}  // namespace serve::checkpointer

// The behaviour every store shares (store_contract.h), on a fresh directory per test.
namespace serve::checkpointer::contract {
namespace {
std::vector<std::unique_ptr<testing::TempDir>>& ContractDirs() {
  static std::vector<std::unique_ptr<testing::TempDir>> dirs;
  return dirs;
}
INSTANTIATE_TEST_SUITE_P(File, StoreContractTest,
                         ::testing::Values(StoreFactory([]() -> Result<std::unique_ptr<CheckpointStore>> {
                           ContractDirs().push_back(std::make_unique<testing::TempDir>());
                           auto store = FileStore::Open(ContractDirs().back()->path() + "/store");
                           if (!store.ok()) return store.status();
                           return std::unique_ptr<CheckpointStore>(std::move(*store));
                         })),
                         ContractName);
}  // namespace
}  // namespace serve::checkpointer::contract
