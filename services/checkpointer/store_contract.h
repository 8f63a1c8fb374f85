#pragma once

// The behaviour every CheckpointStore promises (store.h), as one test suite each backend
// instantiates with a factory:
//
//   INSTANTIATE_STORE_CONTRACT(Redis, [] { return OpenStore(uri_of_a_live_redis); });
//
// A factory returns a fresh, empty store each call (a new prefix, database or directory), or
// an error; a store whose server is missing skips the suite with the error as the reason.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "artifact/artifact.h"
#include "checkpointer/store.h"

namespace serve::checkpointer::contract {

using StoreFactory = std::function<Result<std::unique_ptr<CheckpointStore>>()>;

// Names the one instantiation of each backend "store", so test names stay the same from build
// to build (the default would print the factory's bytes).
inline std::string ContractName(const ::testing::TestParamInfo<StoreFactory>&) {
  return "store";
}

class StoreContractTest : public ::testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override {
    auto store = GetParam()();
    if (!store.ok()) GTEST_SKIP() << store.error();
    store_ = std::move(*store);
  }

  std::string WriteTempFile(const std::string& bytes) {
    std::string path = (std::filesystem::temp_directory_path() /
                        ("serve-contract-" + std::to_string(::getpid()) + "-" +
                         std::to_string(counter_++)))
                           .string();
    std::ofstream(path, std::ios::binary) << bytes;
    temp_files_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const auto& path : temp_files_) std::remove(path.c_str());
  }

  std::unique_ptr<CheckpointStore> store_;
  std::vector<std::string> temp_files_;
  int counter_ = 0;
};

TEST_P(StoreContractTest, PutThenGet) {
  std::string data("state\0with\xff" "bytes", 16);
  ASSERT_TRUE(store_->Put("controller/state", 3, data).ok());
  auto record = store_->Get("controller/state");
  ASSERT_TRUE(record.ok()) << record.error();
  ASSERT_TRUE(record->has_value());
  EXPECT_EQ((*record)->generation, 3u);
  EXPECT_EQ((*record)->data, data);
  EXPECT_GT((*record)->written_ms, 0);
}

TEST_P(StoreContractTest, MissingKeyIsNotFound) {
  auto record = store_->Get("nothing/here");
  ASSERT_TRUE(record.ok()) << record.error();
  EXPECT_FALSE(record->has_value());
}

TEST_P(StoreContractTest, OlderGenerationIsRefusedEqualOrNewerStored) {
  ASSERT_TRUE(store_->Put("k", 5, "five").ok());
  Status older = store_->Put("k", 4, "four");
  ASSERT_FALSE(older.ok());
  EXPECT_THAT(older.message(), ::testing::HasSubstr("generation 4"));
  EXPECT_THAT(older.message(), ::testing::HasSubstr("5"));
  EXPECT_EQ((*store_->Get("k"))->data, "five");
  ASSERT_TRUE(store_->Put("k", 5, "five again").ok());
  ASSERT_TRUE(store_->Put("k", 6, "six").ok());
  EXPECT_EQ((*store_->Get("k"))->data, "six");
  EXPECT_TRUE(store_->Put("other", 1, "fenced per key").ok());
}

TEST_P(StoreContractTest, EmptyDataIsARecord) {
  ASSERT_TRUE(store_->Put("empty", 1, "").ok());
  auto record = store_->Get("empty");
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->data, "");
}

TEST_P(StoreContractTest, InvalidKeyIsRefused) {
  EXPECT_FALSE(store_->Put("../escape", 1, "x").ok());
  EXPECT_FALSE(store_->Get("a b").ok());
}

TEST_P(StoreContractTest, BlobsByDigest) {
  std::string bytes(700 * 1024, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 % 251);
  std::string digest = artifact::DigestOf(bytes);
  auto absent = store_->BlobSize(digest);
  ASSERT_TRUE(absent.ok()) << absent.error();
  EXPECT_FALSE(absent->has_value());
  EXPECT_FALSE(store_->ReadBlob(digest, 0, 10).ok());

  ASSERT_TRUE(store_->PutBlob(digest, WriteTempFile(bytes)).ok());
  ASSERT_TRUE(store_->PutBlob(digest, WriteTempFile(bytes)).ok()) << "a second put is a no-op";
  auto size = store_->BlobSize(digest);
  ASSERT_TRUE(size.ok() && size->has_value()) << size.error();
  EXPECT_EQ(**size, bytes.size());
  auto head = store_->ReadBlob(digest, 0, 1000);
  ASSERT_TRUE(head.ok()) << head.error();
  EXPECT_EQ(*head, bytes.substr(0, 1000));
  auto middle = store_->ReadBlob(digest, 512 * 1024, 4096);
  ASSERT_TRUE(middle.ok()) << middle.error();
  EXPECT_EQ(*middle, bytes.substr(512 * 1024, 4096));
  auto tail = store_->ReadBlob(digest, bytes.size() - 10, 4096);
  ASSERT_TRUE(tail.ok()) << tail.error();
  EXPECT_EQ(*tail, bytes.substr(bytes.size() - 10));
  EXPECT_FALSE(store_->BlobSize("md5:abc").ok()) << "not a digest";
}

TEST_P(StoreContractTest, BlobsAreListedAndDeleted) {
  auto none = store_->ListBlobs();
  ASSERT_TRUE(none.ok()) << none.error();
  EXPECT_TRUE(none->empty());
  std::vector<std::string> digests;
  for (const char* bytes : {"one", "two", "three"}) {
    digests.push_back(artifact::DigestOf(bytes));
    ASSERT_TRUE(store_->PutBlob(digests.back(), WriteTempFile(bytes)).ok());
  }
  ASSERT_TRUE(store_->Put("controller/state", 1, "records are not blobs").ok());
  auto listed = store_->ListBlobs();
  ASSERT_TRUE(listed.ok()) << listed.error();
  std::sort(listed->begin(), listed->end());
  std::vector<std::string> expected = digests;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(*listed, expected);

  ASSERT_TRUE(store_->DeleteBlob(digests[1]).ok());
  ASSERT_TRUE(store_->DeleteBlob(digests[1]).ok()) << "deleting what is gone succeeds";
  auto size = store_->BlobSize(digests[1]);
  ASSERT_TRUE(size.ok()) << size.error();
  EXPECT_FALSE(size->has_value());
  EXPECT_FALSE(store_->ReadBlob(digests[1], 0, 10).ok());
  listed = store_->ListBlobs();
  ASSERT_TRUE(listed.ok()) << listed.error();
  EXPECT_EQ(listed->size(), 2u);
  EXPECT_EQ(std::count(listed->begin(), listed->end(), digests[1]), 0);
  EXPECT_EQ(*store_->ReadBlob(digests[0], 0, 10), "one") << "the others are untouched";
  EXPECT_FALSE(store_->DeleteBlob("md5:abc").ok()) << "not a digest";
}

TEST_P(StoreContractTest, DescribeNamesAUri) {
  EXPECT_NE(store_->Describe().find("://"), std::string::npos) << store_->Describe();
}

}  // namespace serve::checkpointer::contract
