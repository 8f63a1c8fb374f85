#include "checkpointer/checkpointer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "artifact/artifact.h"
#include "artifact/transfer.h"
#include "checkpointer/file_store.h"
#include "support/loop.h"
#include "support/process.h"

namespace serve::checkpointer {
namespace {

using serve::testing::RequestWhenAnswered;
using serve::testing::RunUntil;

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// A Checkpointer on a real nats-server and a file store, driven by a client bus on the same loop.
class CheckpointerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    auto store = FileStore::Open(tmp_.path() + "/store");
    ASSERT_TRUE(store.ok()) << store.error();
    store_ = std::move(*store);
    server_ = Connect();
    client_ = Connect();
    ASSERT_TRUE(server_ && client_);
    checkpointer_ = std::make_unique<Checkpointer>(&loop_, *server_, subjects_, *store_,
                                                   staging_.path());
    checkpointer_->SetShutdownHandler([this](const std::string& why) { shutdown_why_ = why; });
    ASSERT_TRUE(checkpointer_->Start().ok());
    // The checkpointer's subscriptions travel on another connection; wait until they are live.
    wire::CheckpointGetT get;
    get.key = "warm-up";
    auto answered = RequestWhenAnswered(&loop_, *client_, subjects_.ckpt_get, wire::Pack(get));
    ASSERT_TRUE(answered.ok()) << answered.error();
  }

  void TearDown() override {
    checkpointer_.reset();
    server_.reset();
    client_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop_), 0);
  }

  std::unique_ptr<bus::Bus> Connect() {
    bus::Options options;
    options.url = nats_.url();
    options.retry_initial_connect = false;
    auto bus = bus::Bus::Connect(&loop_, options);
    EXPECT_TRUE(bus.ok()) << bus.error();
    return bus.ok() ? std::move(*bus) : nullptr;
  }

  Result<bus::Message> Send(const std::string& subject, std::string_view bytes) {
    return bus::RequestAndWait(&loop_, *client_, subject, bytes, 10);
  }

  template <typename T>
  typename T::NativeTableType Reply(const Result<bus::Message>& reply) {
    EXPECT_TRUE(reply.ok()) << reply.error();
    if (!reply.ok()) return {};
    auto value = wire::Unpack<T>(reply->data);
    EXPECT_TRUE(value.ok()) << value.error();
    return value.ok() ? *value : typename T::NativeTableType{};
  }

  // Parses a JSON reply, checking that it is JSON and not a FlatBuffer.
  template <typename T>
  typename T::NativeTableType JsonReply(const Result<bus::Message>& reply) {
    EXPECT_TRUE(reply.ok()) << reply.error();
    if (!reply.ok()) return {};
    EXPECT_THAT(reply->data, StartsWith("{"));
    auto binary = codec_.FromJson<T>(reply->data);
    EXPECT_TRUE(binary.ok()) << binary.error();
    if (!binary.ok()) return {};
    return *wire::Unpack<T>(*binary);
  }

  wire::CheckpointPutReplyT Put(const std::string& key, uint64_t generation,
                                const std::string& data) {
    wire::CheckpointPutT put;
    put.key = key;
    put.generation = generation;
    put.data.assign(data.begin(), data.end());
    return Reply<wire::CheckpointPutReply>(Send(subjects_.ckpt_put, wire::Pack(put)));
  }

  wire::CheckpointGetReplyT Get(const std::string& key) {
    wire::CheckpointGetT get;
    get.key = key;
    return Reply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, wire::Pack(get)));
  }

  static std::string Text(const std::vector<uint8_t>& bytes) {
    return std::string(bytes.begin(), bytes.end());
  }

  testing::NatsServer nats_;
  testing::TempDir tmp_;
  testing::TempDir staging_;
  uv_loop_t loop_;
  bus::Subjects subjects_{"t"};
  wire::JsonCodec codec_;
  std::unique_ptr<FileStore> store_;
  std::unique_ptr<bus::Bus> server_;
  std::unique_ptr<bus::Bus> client_;
  std::unique_ptr<Checkpointer> checkpointer_;
  std::string shutdown_why_;
};

TEST_F(CheckpointerTest, PutThenGetOverFlatBuffers) {
  auto put = Put("controller/state", 3, std::string("state\0bytes", 11));
  EXPECT_EQ(put.error, "");
  EXPECT_EQ(put.stored_generation, 3u);

  auto get = Get("controller/state");
  EXPECT_EQ(get.error, "");
  EXPECT_TRUE(get.found);
  EXPECT_EQ(get.generation, 3u);
  EXPECT_EQ(Text(get.data), std::string("state\0bytes", 11));
}

TEST_F(CheckpointerTest, GetOfAMissingKeyIsNotFoundWithoutError) {
  auto get = Get("nobody/wrote/this");
  EXPECT_EQ(get.error, "");
  EXPECT_FALSE(get.found);
}

TEST_F(CheckpointerTest, OlderGenerationIsRefusedAndTheWinnerIsNamed) {
  ASSERT_EQ(Put("controller/state", 7, "seven").error, "");
  auto refused = Put("controller/state", 4, "four");
  EXPECT_EQ(refused.error,
            "refused: generation 4 is older than the stored generation 7 for key "
            "'controller/state' (another controller wrote a newer state)");
  EXPECT_EQ(refused.stored_generation, 7u);
  EXPECT_EQ(Put("controller/state", 7, "again").error, "");
  EXPECT_EQ(Put("controller/state", 8, "eight").stored_generation, 8u);
  EXPECT_EQ(Text(Get("controller/state").data), "eight");
}

TEST_F(CheckpointerTest, JsonRequestsAreAnsweredInJson) {
  auto put = JsonReply<wire::CheckpointPutReply>(
      Send(subjects_.ckpt_put, R"({"key":"a","generation":1,"data":[1,2,3]})"));
  EXPECT_EQ(put.error, "");
  EXPECT_EQ(put.stored_generation, 1u);

  auto get = JsonReply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, R"({"key":"a"})"));
  EXPECT_EQ(get.error, "");
  EXPECT_TRUE(get.found);
  EXPECT_EQ(get.generation, 1u);
  EXPECT_EQ(get.data, (std::vector<uint8_t>{1, 2, 3}));

  // Both encodings reach the same record.
  EXPECT_EQ(Get("a").data, (std::vector<uint8_t>{1, 2, 3}));

  auto refused = JsonReply<wire::CheckpointPutReply>(
      Send(subjects_.ckpt_put, R"({"key":"a","generation":0,"data":[]})"));
  EXPECT_THAT(refused.error, HasSubstr("refused: generation 0 is older"));
}

TEST_F(CheckpointerTest, GarbageGetsAnErrorReplyAndTheServiceCarriesOn) {
  std::string garbage("\x00\x01\x02garbage that is not a flatbuffer\xff", 37);
  auto put = Reply<wire::CheckpointPutReply>(Send(subjects_.ckpt_put, garbage));
  EXPECT_THAT(put.error, HasSubstr("not a valid CheckpointPut message (37 bytes"));
  auto get = Reply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, garbage));
  EXPECT_THAT(get.error, HasSubstr("not a valid CheckpointGet message"));
  auto empty = Reply<wire::CheckpointPutReply>(Send(subjects_.ckpt_put, ""));
  EXPECT_THAT(empty.error, HasSubstr("not a valid CheckpointPut message (0 bytes"));

  ASSERT_EQ(Put("k", 1, "still works").error, "");
  EXPECT_EQ(Text(Get("k").data), "still works");
}

TEST_F(CheckpointerTest, TruncatedBufferGetsAnErrorReply) {
  wire::CheckpointPutT put;
  put.key = "controller/state";
  put.generation = 9;
  put.data.assign(200, 'x');
  std::string bytes = wire::Pack(put);
  for (size_t size : {bytes.size() / 2, size_t{12}, size_t{8}, size_t{3}}) {
    auto reply = Reply<wire::CheckpointPutReply>(Send(subjects_.ckpt_put, bytes.substr(0, size)));
    EXPECT_THAT(reply.error, HasSubstr("not a valid CheckpointPut message")) << size;
  }
  EXPECT_FALSE(Get("controller/state").found);
  EXPECT_EQ(Put("controller/state", 9, "whole").error, "");
}

TEST_F(CheckpointerTest, BadJsonGetsAJsonErrorReply) {
  auto reply = JsonReply<wire::CheckpointPutReply>(
      Send(subjects_.ckpt_put, R"({"key":"a","generation":"many"})"));
  EXPECT_THAT(reply.error, HasSubstr("invalid JSON for CheckpointPut"));
  auto unknown = JsonReply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, R"({"kee":"a"})"));
  EXPECT_THAT(unknown.error, HasSubstr("invalid JSON for CheckpointGet"));
}

TEST_F(CheckpointerTest, InvalidKeyIsAnErrorThatNamesIt) {
  EXPECT_THAT(Put("../../etc/passwd", 1, "x").error,
              HasSubstr("checkpoint key '../../etc/passwd' must not contain '..'"));
  EXPECT_THAT(Get("").error, HasSubstr("checkpoint key must not be empty"));
}

TEST_F(CheckpointerTest, CorruptRecordIsReportedNotReplaced) {
  std::string path = store_->PathFor("k");
  testing::WriteFile(path, "corrupt!");
  auto get = Get("k");
  EXPECT_FALSE(get.found);
  EXPECT_THAT(get.error, HasSubstr(path + " for key 'k' is corrupt"));
  auto put = Put("k", 1, "x");
  EXPECT_THAT(put.error, StartsWith("refused: the checkpoint file " + path));
  EXPECT_EQ(testing::ReadFile(path), "corrupt!");
}

// The value of the sample written exactly as `series` in a text exposition; -1 when none.
double Sample(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + series.size() + 2));
}

TEST_F(CheckpointerTest, MetricsCountEveryOutcomeAndTheStoresHealth) {
  auto requests = [&](const std::string& operation, const std::string& outcome) {
    return Sample(checkpointer_->metrics().Render(),
                  "serve_checkpointer_requests_total{operation=\"" + operation + "\",outcome=\"" +
                      outcome + "\"}");
  };
  auto healthy = [&] {
    return Sample(checkpointer_->metrics().Render(), "serve_checkpointer_store_healthy");
  };
  ASSERT_EQ(Put("k", 5, "five").error, "");
  ASSERT_NE(Put("k", 4, "four").error, "");
  ASSERT_EQ(Get("k").generation, 5u);
  ASSERT_FALSE(Get("none").found);
  ASSERT_NE(Put("../k", 6, "x").error, "");
  ASSERT_NE(Reply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, "garbage")).error, "");
  EXPECT_EQ(requests("put", "ok"), 1);
  EXPECT_EQ(requests("put", "fenced"), 1);
  EXPECT_EQ(requests("put", "refused"), 1);
  EXPECT_EQ(requests("get", "ok"), 1);
  EXPECT_EQ(requests("get", "not_found"), 2);  // with SetUp's
  EXPECT_EQ(requests("get", "refused"), 1);
  // A fenced put is the store doing its job.
  EXPECT_EQ(healthy(), 1);
  std::string text = checkpointer_->metrics().Render();
  EXPECT_EQ(Sample(text, "serve_checkpointer_bytes_written_total"), 4);
  EXPECT_EQ(Sample(text, "serve_checkpointer_bytes_read_total"), 4);
  EXPECT_EQ(Sample(text, "serve_checkpointer_store_call_duration_seconds_count{call=\"put\"}"), 2);
  EXPECT_EQ(Sample(text, "serve_checkpointer_store_errors_total{call=\"put\"}"), 0);

  // A record the store cannot read is a store error, until a call succeeds again.
  testing::WriteFile(store_->PathFor("bad"), "corrupt!");
  ASSERT_NE(Get("bad").error, "");
  EXPECT_EQ(requests("get", "error"), 1);
  EXPECT_EQ(healthy(), 0);
  EXPECT_EQ(Sample(checkpointer_->metrics().Render(),
                   "serve_checkpointer_store_errors_total{call=\"get\"}"),
            1);
  ASSERT_EQ(Put("k", 6, "six").error, "");
  EXPECT_EQ(healthy(), 1);
  EXPECT_THAT(checkpointer_->metrics().Render(), HasSubstr("\nprocess_resident_memory_bytes "));
}

TEST_F(CheckpointerTest, PublishedPutWithoutReplySubjectIsStillStored) {
  wire::CheckpointPutT put;
  put.key = "fire-and-forget";
  put.generation = 2;
  put.data = {'o', 'k'};
  ASSERT_TRUE(client_->Publish(subjects_.ckpt_put, wire::Pack(put)).ok());
  ASSERT_TRUE(client_->Publish(subjects_.ckpt_put, "garbage without a reply subject").ok());
  ASSERT_TRUE(client_->Publish(subjects_.ckpt_get, wire::Pack(wire::CheckpointGetT{})).ok());
  bool stored = RunUntil(&loop_, [&] { return Get("fire-and-forget").found; });
  EXPECT_TRUE(stored);
  EXPECT_EQ(Text(Get("fire-and-forget").data), "ok");
}

TEST_F(CheckpointerTest, ShutdownNoticeStopsTheService) {
  wire::ShutdownNoticeT notice;
  notice.reason = "serve shutdown";
  ASSERT_TRUE(client_->Publish(subjects_.shutdown, wire::Pack(notice)).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return !shutdown_why_.empty(); }));
  EXPECT_EQ(shutdown_why_, "shutdown requested on t.shutdown: serve shutdown");
  // Until the bus closes, requests get an answer rather than a timeout.
  EXPECT_THAT(Put("k", 1, "late").error, HasSubstr("shutting down"));
  EXPECT_FALSE(store_->Get("k")->has_value());
}

// Anyone on the bus can publish there: garbage, or another table, stops nothing.
TEST_F(CheckpointerTest, OnlyAShutdownNoticeStopsTheService) {
  ASSERT_TRUE(client_->Publish(subjects_.shutdown, "").ok());
  ASSERT_TRUE(client_->Publish(subjects_.shutdown, "x").ok());
  ASSERT_TRUE(client_->Publish(subjects_.shutdown, wire::Pack(wire::ShutdownRequestT{})).ok());
  EXPECT_EQ(Put("k", 1, "still serving").error, "");
  EXPECT_EQ(shutdown_why_, "");
  ASSERT_TRUE(client_->Publish(subjects_.shutdown, wire::Pack(wire::ShutdownNoticeT{})).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return !shutdown_why_.empty(); }));
  EXPECT_EQ(shutdown_why_, "shutdown requested on t.shutdown");
}

TEST_F(CheckpointerTest, OtherNamespacesAreNotServed) {
  wire::CheckpointGetT get;
  get.key = "k";
  auto reply = Send("other.ckpt.get", wire::Pack(get));
  ASSERT_FALSE(reply.ok());
  EXPECT_THAT(reply.error(), HasSubstr("nothing listens on other.ckpt.get"));
}

TEST_F(CheckpointerTest, RequestForAnotherStoreIsRefused) {
  checkpointer_->SetStoreUri("file:///var/lib/serve/");
  wire::CheckpointGetT get;
  get.key = "controller/state";
  get.store = "FILE:///var/lib/serve";  // the same store, written differently
  auto same = Reply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, wire::Pack(get)));
  EXPECT_EQ(same.error, "");
  get.store = "redis://:secret@10.0.0.5:6379/0";
  auto other = Reply<wire::CheckpointGetReply>(Send(subjects_.ckpt_get, wire::Pack(get)));
  EXPECT_THAT(other.error, HasSubstr("this checkpointer serves file:///var/lib/serve/"));
  EXPECT_THAT(other.error, HasSubstr("same --checkpoint-path"));
  EXPECT_THAT(other.error, Not(HasSubstr("secret"))) << "credentials stay out of messages";
  wire::CheckpointPutT put;
  put.key = "controller/state";
  put.generation = 1;
  put.store = "s3://elsewhere/x";
  auto refused = Reply<wire::CheckpointPutReply>(Send(subjects_.ckpt_put, wire::Pack(put)));
  EXPECT_THAT(refused.error, HasSubstr("s3://elsewhere/x"));
  put.store.clear();
  EXPECT_EQ(Reply<wire::CheckpointPutReply>(Send(subjects_.ckpt_put, wire::Pack(put))).error, "")
      << "a request that names no store is served";
}

// Artifacts: the CLI's upload and the replica's fetch, through the real checkpointer.
TEST_F(CheckpointerTest, ArtifactUploadsInChunksOnceAndFetchesVerified) {
  std::string bytes;
  for (int i = 0; i < 1300 * 1000; ++i) bytes.push_back(static_cast<char>('a' + i % 23));
  std::string source = tmp_.path() + "/libbig.so";
  std::ofstream(source, std::ios::binary) << bytes;
  std::string digest = artifact::DigestOf(bytes);

  auto first = artifact::Upload(&loop_, *client_, subjects_, source, digest, 10);
  ASSERT_TRUE(first.ok()) << first.error();
  EXPECT_TRUE(first->sent);
  EXPECT_EQ(first->size, bytes.size());
  auto again = artifact::Upload(&loop_, *client_, subjects_, source, digest, 10);
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_FALSE(again->sent) << "a stored digest is not sent again";

  std::string fetched = tmp_.path() + "/fetched.so";
  Status fetch = artifact::Fetch(&loop_, *client_, subjects_, digest, "libbig.so", fetched, 10);
  ASSERT_TRUE(fetch.ok()) << fetch.message();
  std::ifstream in(fetched, std::ios::binary);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()),
            bytes);
  EXPECT_TRUE(std::filesystem::is_empty(staging_.path())) << "finished uploads leave nothing";
}

TEST_F(CheckpointerTest, ArtifactWhoseBytesDoNotMatchItsDigestIsRefused) {
  std::string source = tmp_.path() + "/lib.so";
  std::ofstream(source, std::ios::binary) << "real bytes";
  std::string wrong = artifact::DigestOf("other bytes");
  auto upload = artifact::Upload(&loop_, *client_, subjects_, source, wrong, 10);
  ASSERT_FALSE(upload.ok());
  EXPECT_THAT(upload.error(), HasSubstr("hash to " + artifact::DigestOf("real bytes")));
  auto size = store_->BlobSize(wrong);
  ASSERT_TRUE(size.ok());
  EXPECT_FALSE(size->has_value());
}

TEST_F(CheckpointerTest, FetchOfAnUnknownDigestSaysHowToFixIt) {
  std::string digest = artifact::DigestOf("never uploaded");
  Status fetch = artifact::Fetch(&loop_, *client_, subjects_, digest, "libcounter.so",
                                 tmp_.path() + "/x", 10);
  ASSERT_FALSE(fetch.ok());
  EXPECT_THAT(fetch.message(), HasSubstr("libcounter.so"));
  EXPECT_THAT(fetch.message(), HasSubstr("serve deploy"));
  EXPECT_FALSE(std::filesystem::exists(tmp_.path() + "/x"));
}

TEST_F(CheckpointerTest, TwoUploadsOfTheSameDigestAtOnceBothSucceed) {
  std::string bytes = "0123456789";
  auto chunk = [&](const std::string& id, uint64_t offset, uint64_t length) {
    wire::BlobPutT put;
    put.digest = artifact::DigestOf(bytes);
    put.total_size = bytes.size();
    put.offset = offset;
    put.upload_id = id;
    put.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                    bytes.begin() + static_cast<std::ptrdiff_t>(offset + length));
    return Reply<wire::BlobPutReply>(Send(subjects_.ckpt_blob_put, wire::Pack(put)));
  };
  EXPECT_EQ(chunk("a", 0, 4).error, "");
  EXPECT_EQ(chunk("b", 0, 6).error, "");
  auto a = chunk("a", 4, 6);
  EXPECT_EQ(a.error, "");
  EXPECT_TRUE(a.stored);
  auto b = chunk("b", 6, 4);
  EXPECT_EQ(b.error, "");
  EXPECT_TRUE(b.stored);
  EXPECT_TRUE(std::filesystem::is_empty(staging_.path()));
}

TEST_F(CheckpointerTest, ChunkThatDoesNotContinueAnUploadIsRefused) {
  wire::BlobPutT put;
  put.digest = artifact::DigestOf("0123456789");
  put.total_size = 10;
  put.offset = 4;
  put.data = {'4', '5'};
  auto reply = Reply<wire::BlobPutReply>(Send(subjects_.ckpt_blob_put, wire::Pack(put)));
  EXPECT_THAT(reply.error, HasSubstr("start again from offset 0"));
  put.digest = "md5:abc";
  reply = Reply<wire::BlobPutReply>(Send(subjects_.ckpt_blob_put, wire::Pack(put)));
  EXPECT_THAT(reply.error, HasSubstr("not an artifact digest"));
}

// One chunk of an upload of `bytes`.
wire::BlobPutT Chunk(const std::string& bytes, const std::string& id, uint64_t offset,
                     uint64_t length) {
  wire::BlobPutT put;
  put.digest = artifact::DigestOf(bytes);
  put.total_size = bytes.size();
  put.offset = offset;
  put.upload_id = id;
  put.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                  bytes.begin() + static_cast<std::ptrdiff_t>(offset + length));
  return put;
}

TEST_F(CheckpointerTest, ChunkLargerThan512KiBIsRefused) {
  std::string bytes(artifact::kChunkBytes + 1, 'x');
  auto reply = Reply<wire::BlobPutReply>(
      Send(subjects_.ckpt_blob_put, wire::Pack(Chunk(bytes, "big", 0, bytes.size()))));
  EXPECT_THAT(reply.error, HasSubstr("at most 524288 (512 KiB)"));
  EXPECT_FALSE(reply.stored);
  EXPECT_TRUE(std::filesystem::is_empty(staging_.path()));
  // The same bytes in chunks of the documented size are taken.
  std::string source = tmp_.path() + "/big.so";
  std::ofstream(source, std::ios::binary) << bytes;
  auto upload =
      artifact::Upload(&loop_, *client_, subjects_, source, artifact::DigestOf(bytes), 10);
  EXPECT_TRUE(upload.ok()) << upload.error();
}

TEST_F(CheckpointerTest, ArtifactLargerThanTheLimitIsRefusedAtItsFirstChunk) {
  checkpointer_->SetUploadLimits({.max_artifact_bytes = 100, .max_uploads_per_client = 4});
  std::string bytes(101, 'x');
  auto reply = Reply<wire::BlobPutReply>(
      Send(subjects_.ckpt_blob_put, wire::Pack(Chunk(bytes, "u", 0, 10))));
  EXPECT_THAT(reply.error, HasSubstr("is 101 bytes"));
  EXPECT_THAT(reply.error, HasSubstr("--max-artifact-bytes 100"));
  EXPECT_TRUE(std::filesystem::is_empty(staging_.path())) << "nothing is staged";
  // What the CLI says.
  std::string source = tmp_.path() + "/lib.so";
  std::ofstream(source, std::ios::binary) << bytes;
  auto upload =
      artifact::Upload(&loop_, *client_, subjects_, source, artifact::DigestOf(bytes), 10);
  ASSERT_FALSE(upload.ok());
  EXPECT_THAT(upload.error(), HasSubstr("--max-artifact-bytes"));
  // At the limit is fine.
  bytes.pop_back();
  auto at_limit = Reply<wire::BlobPutReply>(
      Send(subjects_.ckpt_blob_put, wire::Pack(Chunk(bytes, "u", 0, bytes.size()))));
  EXPECT_EQ(at_limit.error, "");
  EXPECT_TRUE(at_limit.stored);
}

TEST_F(CheckpointerTest, UploadsInProgressAreBoundedPerClient) {
  checkpointer_->SetUploadLimits({.max_artifact_bytes = 1000, .max_uploads_per_client = 2});
  auto send = [&](bus::Bus& from, const wire::BlobPutT& put) {
    return Reply<wire::BlobPutReply>(
        bus::RequestAndWait(&loop_, from, subjects_.ckpt_blob_put, wire::Pack(put), 10));
  };
  std::string a = "aaaaaaaaaa", b = "bbbbbbbbbb", c = "cccccccccc";
  EXPECT_EQ(send(*client_, Chunk(a, "1", 0, 4)).error, "");
  EXPECT_EQ(send(*client_, Chunk(b, "2", 0, 4)).error, "");
  auto third = send(*client_, Chunk(c, "3", 0, 4));
  EXPECT_THAT(third.error, HasSubstr("2 uploads in progress"));
  EXPECT_THAT(third.error, HasSubstr("--max-uploads-per-client 2"));
  // Starting one of its own uploads over is not another upload.
  EXPECT_EQ(send(*client_, Chunk(a, "1", 0, 4)).error, "");
  // Another client is not held back by this one.
  auto other = Connect();
  ASSERT_TRUE(other);
  EXPECT_EQ(send(*other, Chunk(c, "4", 0, 10)).error, "");
  // A finished upload makes room.
  auto finished = send(*client_, Chunk(a, "1", 4, 6));
  EXPECT_TRUE(finished.stored) << finished.error;
  EXPECT_EQ(send(*client_, Chunk(c, "3", 0, 4)).error, "");
}

TEST_F(CheckpointerTest, StagingFilesAreRemovedAtStartAndAtExit) {
  namespace fs = std::filesystem;
  // What a killed checkpointer left, and a file that is not ours.
  std::ofstream(staging_.path() + "/deadbeef-1.upload") << "half an upload";
  std::ofstream(staging_.path() + "/notes.txt") << "someone else's";
  // A new checkpointer, on a new connection: the old one's subscriptions go with its bus.
  checkpointer_.reset();
  server_ = Connect();
  ASSERT_TRUE(server_);
  checkpointer_ =
      std::make_unique<Checkpointer>(&loop_, *server_, subjects_, *store_, staging_.path());
  ASSERT_TRUE(checkpointer_->Start().ok());
  EXPECT_FALSE(fs::exists(staging_.path() + "/deadbeef-1.upload"));
  EXPECT_TRUE(fs::exists(staging_.path() + "/notes.txt"));

  std::string bytes = "0123456789";
  // The new subscriptions go live asynchronously: poll until the chunk is answered.
  auto answered = RequestWhenAnswered(&loop_, *client_, subjects_.ckpt_blob_put,
                                      wire::Pack(Chunk(bytes, "u", 0, 4)));
  ASSERT_TRUE(answered.ok()) << answered.error();
  EXPECT_EQ(Reply<wire::BlobPutReply>(answered).error, "");
  int staged = 0;
  for (const auto& entry : fs::directory_iterator(staging_.path())) {
    staged += entry.path().extension() == ".upload";
  }
  EXPECT_EQ(staged, 1);
  checkpointer_.reset();
  EXPECT_EQ(std::distance(fs::directory_iterator(staging_.path()), fs::directory_iterator()), 1)
      << "only notes.txt is left";
}

// Blob garbage collection (docs/security.md, "Artifacts"): what the stored controller state
// names stays; what it has not named for --blob-keep-s goes.
TEST_F(CheckpointerTest, BlobsNoDeploymentUsesAreRemovedAndUsedOnesKept) {
  auto put_blob = [&](const std::string& bytes) {
    std::string path = staging_.path() + "/blob-source";
    std::ofstream(path, std::ios::binary) << bytes;
    std::string digest = artifact::DigestOf(bytes);
    EXPECT_TRUE(store_->PutBlob(digest, path).ok());
    return digest;
  };
  std::string used = put_blob("the artifact a deployment runs");
  std::string unused = put_blob("an artifact nothing runs any more");
  wire::ControllerStateT state;
  state.generation = 1;
  auto spec = std::make_unique<wire::DeploymentSpecT>();
  spec->name = "app";
  spec->artifact = used;
  state.deployments.push_back(std::move(spec));
  ASSERT_EQ(Put("controller/state", 1, wire::Pack(state)).error, "");

  checkpointer_.reset();
  server_ = Connect();
  ASSERT_TRUE(server_);
  checkpointer_ =
      std::make_unique<Checkpointer>(&loop_, *server_, subjects_, *store_, staging_.path());
  checkpointer_->SetBlobCollection(0.2);
  ASSERT_TRUE(checkpointer_->Start().ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] {
    auto size = store_->BlobSize(unused);
    return size.ok() && !size->has_value();
  })) << "the unused blob is still stored";
  auto size = store_->BlobSize(used);
  ASSERT_TRUE(size.ok()) << size.error();
  EXPECT_TRUE(size->has_value()) << "the blob the stored state names was removed";
}

TEST(BlobCollectorTest, RemovesOnlyWhatStayedUnnamedForTheWholeKeepTime) {
  BlobCollector collector(1000);
  const std::set<std::string> named = {"sha256:a"};
  // First seen unnamed at 0: nothing goes at once, however old the blob itself is.
  EXPECT_TRUE(collector.Pass(named, {"sha256:a", "sha256:b"}, 0).empty());
  EXPECT_EQ(collector.waiting(), 1u);
  EXPECT_TRUE(collector.Pass(named, {"sha256:a", "sha256:b", "sha256:c"}, 999).empty());
  // b has been unnamed for 1000 ms; c, first seen at 999, has not.
  EXPECT_EQ(collector.Pass(named, {"sha256:a", "sha256:b", "sha256:c"}, 1000),
            std::vector<std::string>{"sha256:b"});
  // c is named again before its time: its clock starts over when it is unnamed later.
  EXPECT_TRUE(collector.Pass({"sha256:a", "sha256:c"}, {"sha256:a", "sha256:c"}, 1500).empty());
  EXPECT_TRUE(collector.Pass(named, {"sha256:a", "sha256:c"}, 2000).empty());
  EXPECT_TRUE(collector.Pass(named, {"sha256:a", "sha256:c"}, 2999).empty());
  EXPECT_EQ(collector.Pass(named, {"sha256:a", "sha256:c"}, 3000),
            std::vector<std::string>{"sha256:c"});
  EXPECT_EQ(collector.waiting(), 0u);
}

TEST(BlobCollectorTest, ReferencedArtifactsReadsTheStoredStateAndRefusesAnythingElse) {
  wire::ControllerStateT state;
  for (const char* artifact : {"sha256:1", "", "sha256:2", "sha256:1"}) {
    auto spec = std::make_unique<wire::DeploymentSpecT>();
    spec->artifact = artifact;
    state.deployments.push_back(std::move(spec));
  }
  auto referenced = ReferencedArtifacts(wire::Pack(state));
  ASSERT_TRUE(referenced.ok()) << referenced.error();
  EXPECT_EQ(*referenced, (std::set<std::string>{"sha256:1", "sha256:2"}));
  EXPECT_FALSE(ReferencedArtifacts("desired state").ok()) << "not a ControllerState";
  wire::CheckpointGetT other;
  EXPECT_FALSE(ReferencedArtifacts(wire::Pack(other)).ok()) << "another table";
}

TEST(StagingDirsTest, OnlyThoseOfDeadCheckpointersAreRemoved) {
  namespace fs = std::filesystem;
  testing::TempDir tmp;
  const std::string prefix = "serve-uploads-ns-";
  fs::create_directories(tmp.path() + "/" + prefix + std::to_string(getpid()));
  // Beyond any pid_max, so no such process.
  fs::create_directories(tmp.path() + "/" + prefix + "999999999");
  std::ofstream(tmp.path() + "/" + prefix + "999999999/x.upload") << "left";
  fs::create_directories(tmp.path() + "/" + prefix + "1-999999999");  // namespace "ns-1"
  fs::create_directories(tmp.path() + "/" + prefix + "abc");
  EXPECT_EQ(RemoveDeadStagingDirs(tmp.path(), prefix), 1);
  EXPECT_FALSE(fs::exists(tmp.path() + "/" + prefix + "999999999"));
  EXPECT_TRUE(fs::exists(tmp.path() + "/" + prefix + std::to_string(getpid())));
  EXPECT_TRUE(fs::exists(tmp.path() + "/" + prefix + "1-999999999"));
  EXPECT_TRUE(fs::exists(tmp.path() + "/" + prefix + "abc"));
}

TEST(ClientOfTest, IsTheReplyInboxWithoutItsLastToken) {
  EXPECT_EQ(ClientOf("_INBOX.abc123.7"), "_INBOX.abc123.");
  EXPECT_EQ(ClientOf("_INBOX.abc123.8"), ClientOf("_INBOX.abc123.7"));
  EXPECT_NE(ClientOf("_INBOX.other.7"), ClientOf("_INBOX.abc123.7"));
  EXPECT_EQ(ClientOf(""), "");
}

TEST_F(CheckpointerTest, GarbageOnBlobSubjectsGetsAnError) {
  // Each answers with its own reply table.
  EXPECT_THAT(Reply<wire::BlobStatReply>(Send(subjects_.ckpt_blob_stat, "\x01\x02garbage")).error,
              HasSubstr("not a valid BlobStat message"));
  EXPECT_THAT(Reply<wire::BlobPutReply>(Send(subjects_.ckpt_blob_put, "\x01\x02garbage")).error,
              HasSubstr("not a valid BlobPut message"));
  EXPECT_THAT(Reply<wire::BlobGetReply>(Send(subjects_.ckpt_blob_get, "\x01\x02garbage")).error,
              HasSubstr("not a valid BlobGet message"));
  auto json = Send(subjects_.ckpt_blob_stat, R"({"digest": "sha256:nothex"})");
  ASSERT_TRUE(json.ok()) << json.error();
  EXPECT_THAT(json->data, HasSubstr("not an artifact digest"));
}

}  // namespace
}  // namespace serve::checkpointer
