// The redis:// store against real redis-server processes started on free ports.
#include "checkpointer/redis_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "artifact/artifact.h"
#include "checkpointer/store_contract.h"
#include "support/process.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

using ::testing::HasSubstr;

bool RedisInstalled() { return ::system("command -v redis-server >/dev/null 2>&1") == 0; }

bool ServersRequired() {
  const char* required = std::getenv("SERVE_REQUIRE_TEST_SERVERS");
  return required != nullptr && std::string(required) == "1";
}

constexpr char kNotInstalled[] =
    "redis-server is not on PATH; `./dev test` installs it (apt-get install redis-server)";

// A redis-server on a free port with nothing persisted, killed by the destructor.
class RedisServer {
 public:
  explicit RedisServer(std::vector<std::string> extra_args = {}, int port = 0)
      : port_(port != 0 ? port : testing::FreePort()), extra_args_(std::move(extra_args)) {
    Start();
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool Start() {
    std::vector<std::string> argv = {
        "redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1",
        "--save",       "",       "--appendonly",        "no",     "--dir",
        dir_.path()};
    argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
    process_ = testing::Process(argv, dir_.path() + "/redis.log");
    return testing::WaitUntil([this] { return testing::PortOpen(port_); });
  }
  void Stop() {
    process_.Kill();
    testing::WaitUntil([this] { return !testing::PortOpen(port_); });
  }
  // Freezes the server (SIGSTOP): connections stay open but nothing answers.
  void Pause() { process_.Signal(SIGSTOP); }
  void Resume() { process_.Signal(SIGCONT); }
  std::string log() const { return testing::ReadFile(dir_.path() + "/redis.log"); }

 private:
  int port_;
  std::vector<std::string> extra_args_;
  testing::TempDir dir_;
  testing::Process process_;
};

// A plain hiredis client, to look at and tamper with what the store wrote.
class RawClient {
 public:
  explicit RawClient(int port, const std::string& password = "") {
    context_ = redisConnect("127.0.0.1", port);
    if (!password.empty()) Command({"AUTH", password});
  }
  ~RawClient() { redisFree(context_); }
  // The reply as text: a string, an integer in decimal, "(nil)", or "ERR: ...".
  std::string Command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    for (const auto& arg : args) {
      argv.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), lengths.data()));
    if (reply == nullptr) return "IO: " + std::string(context_->errstr);
    std::string text;
    switch (reply->type) {
      case REDIS_REPLY_STRING:
      case REDIS_REPLY_STATUS:
        text.assign(reply->str, reply->len);
        break;
      case REDIS_REPLY_INTEGER:
        text = std::to_string(reply->integer);
        break;
      case REDIS_REPLY_NIL:
        text = "(nil)";
        break;
      case REDIS_REPLY_ERROR:
        text = "ERR: " + std::string(reply->str, reply->len);
        break;
      case REDIS_REPLY_ARRAY:
        for (size_t i = 0; i < reply->elements; ++i) {
          text += (i == 0 ? "" : ",") + std::string(reply->element[i]->str, reply->element[i]->len);
        }
        break;
    }
    freeReplyObject(reply);
    return text;
  }

 private:
  redisContext* context_;
};

std::unique_ptr<CheckpointStore> MustOpen(const std::string& uri) {
  auto store = OpenRedisStore(uri);
  EXPECT_TRUE(store.ok()) << store.error();
  return store.ok() ? std::move(*store) : nullptr;
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RedisInstalled()) {
      if (ServersRequired()) FAIL() << kNotInstalled << " (SERVE_REQUIRE_TEST_SERVERS=1)";
      GTEST_SKIP() << kNotInstalled;
    }
    server_ = std::make_unique<RedisServer>();
  }
  std::string Uri(const std::string& rest = "") const {
    return "redis://" + server_->address() + rest;
  }

  std::unique_ptr<RedisServer> server_;
};

TEST_F(RedisStoreTest, LayoutIsPrefixedKeysHoldingTheFileStoreBytes) {
  auto store = MustOpen(Uri());
  ASSERT_TRUE(store->Put("controller/state", 7, "hello").ok());
  RawClient raw(server_->port());
  std::string bytes = raw.Command({"GET", "serve:ckpt:controller/state"});
  auto record = wire::Verify<wire::StoredCheckpoint>(bytes);
  ASSERT_TRUE(record.ok()) << record.error();
  EXPECT_EQ((*record)->key()->str(), "controller/state");
  EXPECT_EQ((*record)->generation(), 7u);
  EXPECT_EQ(raw.Command({"GET", "serve:gen:controller/state"}), "7");

  std::string digest = artifact::DigestOf("blob bytes");
  testing::TempDir dir;
  testing::WriteFile(dir.path() + "/blob", "blob bytes");
  ASSERT_TRUE(store->PutBlob(digest, dir.path() + "/blob").ok());
  EXPECT_EQ(raw.Command({"GET", "serve:blob:" + digest}), "blob bytes");
  EXPECT_EQ(raw.Command({"TTL", "serve:blob:" + digest}), "-1") << "the upload expiry is gone";
  EXPECT_EQ(raw.Command({"KEYS", "serve:upload:*"}), "") << "no upload left behind";
  EXPECT_EQ(store->Describe(), "redis://" + server_->address() + "/0?prefix=serve");
}

TEST_F(RedisStoreTest, EmptyBlobAndFailedUploadLeaveNoTemporaryKey) {
  auto store = MustOpen(Uri("?prefix=t"));
  std::string empty = artifact::DigestOf("");
  testing::TempDir dir;
  testing::WriteFile(dir.path() + "/empty", "");
  ASSERT_TRUE(store->PutBlob(empty, dir.path() + "/empty").ok());
  auto size = store->BlobSize(empty);
  ASSERT_TRUE(size.ok() && size->has_value()) << size.error();
  EXPECT_EQ(**size, 0u);
  auto read = store->ReadBlob(empty, 0, 10);
  ASSERT_TRUE(read.ok()) << read.error();
  EXPECT_EQ(*read, "");

  Status missing = store->PutBlob(artifact::DigestOf("x"), dir.path() + "/no-such-file");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.message(), HasSubstr("no-such-file"));
  EXPECT_EQ(RawClient(server_->port()).Command({"KEYS", "t:upload:*"}), "");
}

TEST_F(RedisStoreTest, FencingIsDoneByTheScriptAcrossStoreObjects) {
  auto first = MustOpen(Uri("?prefix=fence"));
  auto second = MustOpen(Uri("?prefix=fence"));
  ASSERT_TRUE(first->Put("k", 5, "five").ok());
  Status older = second->Put("k", 4, "four");
  ASSERT_FALSE(older.ok());
  EXPECT_EQ(older.message(),
            "refused: generation 4 is older than the stored generation 5 for key 'k' (another "
            "controller wrote a newer state)");
  ASSERT_TRUE(second->Put("k", 6, "six").ok());
  EXPECT_FALSE(first->Put("k", 5, "five again").ok());

  // A newer generation written behind the record's back (as a racing writer would between the
  // read and the script) is still seen: the check happens inside Redis, not in the client.
  RawClient raw(server_->port());
  ASSERT_EQ(raw.Command({"SET", "fence:gen:k", "9"}), "OK");
  Status raced = first->Put("k", 7, "seven");
  ASSERT_FALSE(raced.ok());
  EXPECT_THAT(raced.message(), HasSubstr("stored generation 9"));
  EXPECT_EQ((*second->Get("k"))->data, "six");

  // Generations are compared exactly, beyond the 2^53 a Lua number holds.
  ASSERT_TRUE(first->Put("big", 18446744073709551614u, "max-1").ok());
  EXPECT_FALSE(first->Put("big", 18446744073709551613u, "max-2").ok());
  EXPECT_TRUE(first->Put("big", 18446744073709551615u, "max").ok());
}

TEST_F(RedisStoreTest, CorruptRecordIsRefusedAndLeftUntouched) {
  auto store = MustOpen(Uri());
  RawClient raw(server_->port());
  ASSERT_EQ(raw.Command({"SET", "serve:ckpt:broken", "not a flatbuffer"}), "OK");
  auto got = store->Get("broken");
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(got.error(), HasSubstr("serve:ckpt:broken"));
  EXPECT_THAT(got.error(), HasSubstr("key 'broken'"));
  EXPECT_THAT(got.error(), HasSubstr("corrupt"));
  Status put = store->Put("broken", 100, "new");
  ASSERT_FALSE(put.ok());
  EXPECT_THAT(put.message(), HasSubstr("refused"));
  EXPECT_EQ(raw.Command({"GET", "serve:ckpt:broken"}), "not a flatbuffer");

  // A valid record whose generation key is gone: the script refuses rather than guess.
  ASSERT_TRUE(store->Put("orphan", 3, "three").ok());
  ASSERT_EQ(raw.Command({"DEL", "serve:gen:orphan"}), "1");
  Status orphan = store->Put("orphan", 4, "four");
  ASSERT_FALSE(orphan.ok());
  EXPECT_THAT(orphan.message(), HasSubstr("no generation key serve:gen:orphan"));
  EXPECT_EQ((*store->Get("orphan"))->data, "three");

  ASSERT_EQ(raw.Command({"SET", "serve:gen:orphan", "three"}), "OK");
  EXPECT_THAT(store->Put("orphan", 4, "four").message(), HasSubstr("not a generation number"));
}

TEST_F(RedisStoreTest, DatabasesAreSeparate) {
  auto one = MustOpen(Uri("/1"));
  auto two = MustOpen(Uri("/2?prefix=serve"));
  ASSERT_TRUE(one->Put("k", 1, "in db 1").ok());
  auto absent = two->Get("k");
  ASSERT_TRUE(absent.ok()) << absent.error();
  EXPECT_FALSE(absent->has_value());
  RawClient raw(server_->port());
  EXPECT_EQ(raw.Command({"EXISTS", "serve:ckpt:k"}), "0") << "db 0 is untouched";
  raw.Command({"SELECT", "1"});
  EXPECT_EQ(raw.Command({"EXISTS", "serve:ckpt:k"}), "1");

  auto out_of_range = MustOpen(Uri("/99"));
  Status put = out_of_range->Put("k", 1, "x");
  ASSERT_FALSE(put.ok());
  EXPECT_THAT(put.message(), HasSubstr("cannot select database 99"));
  EXPECT_THAT(put.message(), HasSubstr(server_->address()));
}

TEST_F(RedisStoreTest, UnreachableServerFailsEachCallNotOpenAndRecovers) {
  int port = testing::FreePort();
  std::string address = "127.0.0.1:" + std::to_string(port);
  auto opened = OpenRedisStore("redis://" + address);
  ASSERT_TRUE(opened.ok()) << "a server that is down must not fail the start: " << opened.error();
  auto& store = *opened;
  std::string expected =
      "cannot reach redis at " + address + ": Connection refused; is redis-server running?";
  EXPECT_THAT(store->Put("k", 1, "x").message(), HasSubstr(expected));
  EXPECT_THAT(store->Get("k").error(), HasSubstr(expected));
  std::string digest = artifact::DigestOf("b");
  EXPECT_THAT(store->BlobSize(digest).error(), HasSubstr(expected));
  EXPECT_THAT(store->ReadBlob(digest, 0, 1).error(), HasSubstr(expected));

  RedisServer late({}, port);
  ASSERT_TRUE(store->Put("k", 1, "x").ok()) << "the next call connects";
  EXPECT_EQ((*store->Get("k"))->data, "x");

  // A server that goes away fails the call in flight; one that comes back serves the next.
  late.Stop();
  EXPECT_FALSE(store->Get("k").ok());
  ASSERT_TRUE(late.Start());
  auto after = store->Get("k");
  ASSERT_TRUE(after.ok()) << after.error();
  EXPECT_FALSE(after->has_value()) << "nothing persisted across the restart (--save \"\")";
}

TEST_F(RedisStoreTest, ServerThatStopsAnsweringTimesOutAndRecovers) {
  auto store = MustOpen(Uri());
  ASSERT_TRUE(store->Put("k", 1, "x").ok());
  server_->Pause();
  auto start = std::chrono::steady_clock::now();
  auto stalled = store->Get("k");
  auto waited = std::chrono::steady_clock::now() - start;
  server_->Resume();
  ASSERT_FALSE(stalled.ok());
  EXPECT_THAT(stalled.error(), HasSubstr("no answer within 2 s"));
  EXPECT_THAT(stalled.error(), HasSubstr(server_->address()));
  EXPECT_LT(waited, std::chrono::seconds(5));
  auto after = store->Get("k");
  ASSERT_TRUE(after.ok()) << after.error();
  EXPECT_EQ((*after)->data, "x");
}

TEST_F(RedisStoreTest, PasswordAuthentication) {
  RedisServer secured({"--requirepass", "s3cret:@x"});
  std::string address = secured.address();

  auto right = MustOpen("redis://:s3cret%3A%40x@" + address);
  ASSERT_TRUE(right->Put("k", 1, "x").ok());
  EXPECT_EQ(right->Describe().find("s3cret"), std::string::npos) << right->Describe();

  auto wrong = MustOpen("redis://:nope@" + address);
  Status refused = wrong->Put("k", 2, "y");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.message(), HasSubstr("refused the password"));
  EXPECT_THAT(refused.message(), HasSubstr(address));

  auto none = MustOpen("redis://" + address);
  auto missing = none->Get("k");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error(), HasSubstr("requires a password"));
  EXPECT_THAT(missing.error(), HasSubstr("redis://:password@"));
}

TEST_F(RedisStoreTest, AclUserAuthentication) {
  RedisServer acl({"--user", "checkpointer", "on", ">pw", "~*", "+@all"});
  auto right = MustOpen("redis://checkpointer:pw@" + acl.address());
  ASSERT_TRUE(right->Put("k", 1, "x").ok());
  EXPECT_EQ(right->Describe(), "redis://checkpointer@" + acl.address() + "/0?prefix=serve");
  auto wrong = MustOpen("redis://checkpointer:bad@" + acl.address());
  EXPECT_THAT(wrong->Put("k", 2, "y").message(), HasSubstr("refused the user 'checkpointer'"));
}

TEST(RedisStoreUri, MalformedFormsAreRejectedAtOpen) {
  struct Case {
    std::string uri;
    std::string problem;
  };
  const std::vector<Case> cases = {
      {"redis://", "names no host"},
      {"redis://127.0.0.1", "has no port"},
      {"redis://127.0.0.1:", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:0", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:70000", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:63a9", "not a number from 1 to 65535"},
      {"redis://:6379", "names no host"},
      {"redis://127.0.0.1:6379/", "where a database number"},
      {"redis://127.0.0.1:6379/x", "where a database number"},
      {"redis://127.0.0.1:6379/1/2", "where a database number"},
      {"redis://127.0.0.1:6379?prefix=", "a prefix is one or more"},
      {"redis://127.0.0.1:6379?prefix=a b", "a prefix is one or more"},
      {"redis://127.0.0.1:6379?prefix=a&prefix=b", "gives prefix twice"},
      {"redis://127.0.0.1:6379?db=1", "unknown parameter 'db'"},
      {"redis://user@127.0.0.1:6379", "names a user but no password"},
      {"redis://user:@127.0.0.1:6379", "empty password"},
      {"redis://:%zz@127.0.0.1:6379", "not followed by two hex digits"},
      {"redis://[::1:6379", "'[' without ']'"},
      {"redis://[::1]", "has no port"},
      {"redis://ho st:6379", "in its host"},
      {"http://127.0.0.1:6379", "does not start with redis://"},
  };
  for (const auto& c : cases) {
    auto store = OpenRedisStore(c.uri);
    ASSERT_FALSE(store.ok()) << c.uri;
    EXPECT_THAT(store.error(), HasSubstr(c.problem)) << c.uri;
    EXPECT_THAT(store.error(), HasSubstr("redis://[user:password@]host:port[/db][?prefix=name]"))
        << c.uri;
  }
  auto secret = OpenRedisStore("redis://u:hunter2@host");
  ASSERT_FALSE(secret.ok());
  EXPECT_EQ(secret.error().find("hunter2"), std::string::npos) << secret.error();

  for (const char* good : {"redis://localhost:6379", "redis://[::1]:6379/3?prefix=a:b/c-1",
                           "REDIS://h:1/0", "redis://:p@h:1"}) {
    EXPECT_TRUE(OpenRedisStore(good).ok()) << good;
  }
  auto via_open_store = OpenStore("redis://127.0.0.1:6379/2?prefix=x");
  ASSERT_TRUE(via_open_store.ok()) << via_open_store.error();
  EXPECT_EQ((*via_open_store)->Describe(), "redis://127.0.0.1:6379/2?prefix=x");
}

}  // namespace
}  // namespace serve::checkpointer

// The behaviour every store shares (store_contract.h), on one server with a fresh prefix per
// store.
namespace serve::checkpointer::contract {
namespace {

Result<std::unique_ptr<CheckpointStore>> FreshRedisStore() {
  if (!RedisInstalled()) {
    if (ServersRequired()) ADD_FAILURE() << kNotInstalled << " (SERVE_REQUIRE_TEST_SERVERS=1)";
    return Status::Error(kNotInstalled);
  }
  static RedisServer server;  // killed at exit by its destructor
  static int stores = 0;
  return OpenStore("redis://" + server.address() + "?prefix=contract" + std::to_string(++stores));
}

INSTANTIATE_TEST_SUITE_P(Redis, StoreContractTest,
                         ::testing::Values(StoreFactory(FreshRedisStore)),
                         ContractName);

}  // namespace
}  // namespace serve::checkpointer::contract
