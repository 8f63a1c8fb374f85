#include "checkpointer/s3_store.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "artifact/artifact.h"
#include "checkpointer/s3_answers.h"
#include "checkpointer/store_contract.h"
#include "support/process.h"
#include "wire/codec.h"

// The s3:// and gs:// stores against a real S3 server: s3rver (npm, version 3), which `./dev
// test` installs into .tools/. s3rver checks that the access key exists (S3RVER) but not V4
// signatures, and ignores If-Match / If-None-Match on PUT, so it exercises the request flow,
// the layout, multipart uploads and the read-check-write fencing, not the conditional write;
// the signer itself is checked against AWS's published examples in sigv4_test.cc.

namespace serve::checkpointer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

constexpr char kBucket[] = "serve-test";

// Sets or unsets environment variables and puts the old values back when it goes away.
class ScopedEnv {
 public:
  ScopedEnv() = default;
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        ::setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        ::unsetenv(it->first.c_str());
      }
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

  void Set(const std::string& name, const std::string& value) {
    Save(name);
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  void Unset(const std::string& name) {
    Save(name);
    ::unsetenv(name.c_str());
  }
  // Clears everything the store reads, so the developer's own AWS setup cannot leak in.
  void UnsetAll() {
    for (const char* name :
         {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
          "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE",
          "AWS_CONFIG_FILE", "GS_ACCESS_KEY_ID", "GS_SECRET_ACCESS_KEY"}) {
      Unset(name);
    }
  }

 private:
  void Save(const std::string& name) {
    const char* old = std::getenv(name.c_str());
    saved_.emplace_back(name, old != nullptr ? std::optional<std::string>(old) : std::nullopt);
  }
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

bool ServersRequired() {
  const char* value = std::getenv("SERVE_REQUIRE_TEST_SERVERS");
  return value != nullptr && std::string(value) == "1";
}

// $SERVE_S3RVER, else .tools/ of the source tree (ctest's working directory, or found from this
// file's path when the binary is run by hand).
std::string S3rverPath() {
  if (const char* env = std::getenv("SERVE_S3RVER"); env != nullptr && *env != '\0') {
    return ::access(env, X_OK) == 0 ? env : "";
  }
  const std::string relative = ".tools/node_modules/.bin/s3rver";
  if (::access(relative.c_str(), X_OK) == 0) return fs::absolute(relative).string();
  fs::path source_root = fs::path(__FILE__).parent_path().parent_path().parent_path();
  std::string beside_source = (source_root / relative).string();
  if (::access(beside_source.c_str(), X_OK) == 0) return beside_source;
  return "";
}

// One s3rver per test process (ctest runs each test in its own process), started on first use
// with the bucket kBucket, and killed when the process ends.
class S3rver {
 public:
  // The running server, or nullptr with `why` saying what is missing.
  static S3rver* Get(std::string* why) {
    static std::string failure;
    static std::unique_ptr<S3rver> server = [] {
      std::string path = S3rverPath();
      if (path.empty()) {
        failure =
            "s3rver is not installed (looked at $SERVE_S3RVER and "
            ".tools/node_modules/.bin/s3rver); `./dev test` installs it";
        return std::unique_ptr<S3rver>();
      }
      auto started = std::unique_ptr<S3rver>(new S3rver(path));
      bool up = testing::WaitUntil(
          [&] { return testing::PortOpen(started->port_) || !started->process_.Running(); });
      if (!up || !started->process_.Running()) {
        failure = "s3rver did not open port " + std::to_string(started->port_) +
                  "; its output: " + testing::ReadFile(started->log_);
        return std::unique_ptr<S3rver>();
      }
      return started;
    }();
    if (server == nullptr && why != nullptr) *why = failure;
    return server.get();
  }

  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // A URI for a fresh, empty store in the test bucket.
  std::string FreshUri(const std::string& scheme = "s3", const std::string& extra = "") {
    return scheme + "://" + kBucket + "/t" + std::to_string(::getpid()) + "-" +
           std::to_string(++stores_) + "?endpoint=" + endpoint() + extra;
  }

 private:
  explicit S3rver(const std::string& path)
      : port_(testing::FreePort()), log_(dir_.path() + "/s3rver.log") {
    fs::create_directories(dir_.path() + "/data");
    process_ = testing::Process(
        {path, "--directory", dir_.path() + "/data", "--port", std::to_string(port_), "--address",
         "127.0.0.1", "--silent", "--configure-bucket", kBucket},
        log_,
        // Its ListObjectsV2 continuation tokens are made with DES, which OpenSSL 3 keeps in its
        // legacy provider: without it a listing of more than one page fails with a 500.
        {{"NODE_OPTIONS", "--openssl-legacy-provider"}});
  }

  testing::TempDir dir_;
  int port_;
  std::string log_;
  testing::Process process_;
  int stores_ = 0;
};

// The credentials s3rver knows; it does not check V4 signatures, only that the key exists.
void UseS3rverCredentials() {
  ::setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
  ::unsetenv("AWS_SESSION_TOKEN");
  ::unsetenv("AWS_ENDPOINT_URL");
}

// Skips the test when s3rver is missing, or fails it under SERVE_REQUIRE_TEST_SERVERS=1.
#define REQUIRE_S3RVER(server)                       \
  std::string s3rver_missing;                        \
  S3rver* server = S3rver::Get(&s3rver_missing);     \
  if (server == nullptr) {                           \
    if (ServersRequired()) FAIL() << s3rver_missing; \
    GTEST_SKIP() << s3rver_missing;                  \
  }                                                  \
  UseS3rverCredentials()

std::unique_ptr<CheckpointStore> MustOpen(const std::string& uri) {
  auto store = OpenStore(uri);
  EXPECT_TRUE(store.ok()) << store.error();
  return store.ok() ? std::move(*store) : nullptr;
}

// "t123-4" of "s3://serve-test/t123-4?endpoint=...".
std::string PrefixOf(const std::string& uri) {
  std::string rest = uri.substr(uri.find("://") + 3 + sizeof(kBucket));
  return rest.substr(0, rest.find('?'));
}

// The path s3rver serves `object` of the test bucket at, without signatures.
std::string RawTarget(const std::string& object) {
  std::string target = "/";
  target.append(kBucket).append("/").append(object);
  return target;
}

std::string WriteTemp(const testing::TempDir& dir, const std::string& name,
                      const std::string& bytes) {
  std::string path = dir.path() + "/" + name;
  testing::WriteFile(path, bytes);
  return path;
}

// ---------------------------------------------------------------------------------------------
// Against s3rver

TEST(S3Store, DescribeIsTheUri) {
  REQUIRE_S3RVER(server);
  std::string uri = server->FreshUri();
  auto store = MustOpen(uri);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Describe(), uri);
}

TEST(S3Store, RecordsAndBlobsLiveAtTheDocumentedObjects) {
  REQUIRE_S3RVER(server);
  std::string uri = server->FreshUri();
  std::string prefix = PrefixOf(uri);
  auto store = MustOpen(uri);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put("controller/state", 2, "two").ok());
  testing::HttpResult record =
      testing::HttpGet(server->port(), RawTarget(prefix + "/controller/state.ckpt"));
  ASSERT_EQ(record.status, 200) << record.body;
  auto parsed = wire::Unpack<wire::StoredCheckpoint>(record.body);
  ASSERT_TRUE(parsed.ok()) << "the object is a StoredCheckpoint FlatBuffer";
  EXPECT_EQ(parsed->key, "controller/state");
  EXPECT_EQ(parsed->generation, 2u);

  testing::TempDir dir;
  std::string digest = artifact::DigestOf("blob bytes");
  ASSERT_TRUE(store->PutBlob(digest, WriteTemp(dir, "blob", "blob bytes")).ok());
  testing::HttpResult blob =
      testing::HttpGet(server->port(), RawTarget(prefix + "/blobs/sha256/" + digest.substr(7)));
  EXPECT_EQ(blob.status, 200);
  EXPECT_EQ(blob.body, "blob bytes");
}

TEST(S3Store, GsSaveAndLoadWithHmacKeys) {
  REQUIRE_S3RVER(server);
  ScopedEnv env;
  env.Unset("AWS_ACCESS_KEY_ID");
  env.Unset("AWS_SECRET_ACCESS_KEY");
  env.Set("GS_ACCESS_KEY_ID", "S3RVER");
  env.Set("GS_SECRET_ACCESS_KEY", "S3RVER");
  std::string uri = server->FreshUri("gs");
  auto config = ResolveS3StoreConfig(uri);
  ASSERT_TRUE(config.ok()) << config.error();
  EXPECT_EQ(config->region, "auto");
  EXPECT_TRUE(config->path_style);
  EXPECT_THAT(config->credentials_source, HasSubstr("GS_ACCESS_KEY_ID"));

  auto store = MustOpen(uri);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put("controller/state", 7, "gs state").ok());
  auto record = store->Get("controller/state");
  ASSERT_TRUE(record.ok() && record->has_value()) << record.error();
  EXPECT_EQ((*record)->generation, 7u);
  EXPECT_EQ((*record)->data, "gs state");
  EXPECT_FALSE(store->Put("controller/state", 6, "older").ok());

  testing::TempDir dir;
  std::string digest = artifact::DigestOf("gs blob");
  ASSERT_TRUE(store->PutBlob(digest, WriteTemp(dir, "blob", "gs blob")).ok());
  auto read = store->ReadBlob(digest, 3, 100);
  ASSERT_TRUE(read.ok()) << read.error();
  EXPECT_EQ(*read, "blob");
}

TEST(S3Store, LargeBlobsGoInAMultipartUpload) {
  REQUIRE_S3RVER(server);
  // Parts far below S3's 5 MiB minimum: allowed because they are asked for explicitly, and
  // s3rver does not enforce the minimum.
  auto store = MustOpen(server->FreshUri("s3", "&multipart_threshold=4096&part_size=1024"));
  ASSERT_NE(store, nullptr);
  std::string bytes(5000, '\0');  // four full parts and a short one
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 13 % 251);
  std::string digest = artifact::DigestOf(bytes);
  testing::TempDir dir;
  ASSERT_TRUE(store->PutBlob(digest, WriteTemp(dir, "big", bytes)).ok());

  auto size = store->BlobSize(digest);
  ASSERT_TRUE(size.ok() && size->has_value()) << size.error();
  EXPECT_EQ(**size, bytes.size());
  auto whole = store->ReadBlob(digest, 0, bytes.size());
  ASSERT_TRUE(whole.ok()) << whole.error();
  EXPECT_EQ(*whole, bytes) << "parts assembled in order";
  auto across = store->ReadBlob(digest, 1000, 100);  // spans parts 1 and 2
  ASSERT_TRUE(across.ok()) << across.error();
  EXPECT_EQ(*across, bytes.substr(1000, 100));
  EXPECT_TRUE(store->PutBlob(digest, WriteTemp(dir, "again", bytes)).ok()) << "a no-op";
}

TEST(S3Store, BlobsAreListedAcrossPages) {
  REQUIRE_S3RVER(server);
  auto store = MustOpen(server->FreshUri("s3", "&list_page_keys=2"));
  ASSERT_NE(store, nullptr);
  testing::TempDir dir;
  std::vector<std::string> digests;
  for (int i = 0; i < 5; ++i) {
    std::string bytes = "blob " + std::to_string(i);
    digests.push_back(artifact::DigestOf(bytes));
    ASSERT_TRUE(
        store->PutBlob(digests.back(), WriteTemp(dir, "b" + std::to_string(i), bytes)).ok());
  }
  auto listed = store->ListBlobs();
  ASSERT_TRUE(listed.ok()) << listed.error();
  std::sort(listed->begin(), listed->end());
  std::sort(digests.begin(), digests.end());
  EXPECT_EQ(*listed, digests) << "three pages of two keys, the last one short";
}

TEST(S3Store, BlobAtTheThresholdGoesInOnePut) {
  REQUIRE_S3RVER(server);
  auto store = MustOpen(server->FreshUri("s3", "&multipart_threshold=4096&part_size=1024"));
  ASSERT_NE(store, nullptr);
  std::string bytes(4096, 'x');
  std::string digest = artifact::DigestOf(bytes);
  testing::TempDir dir;
  ASSERT_TRUE(store->PutBlob(digest, WriteTemp(dir, "blob", bytes)).ok());
  EXPECT_EQ(*store->ReadBlob(digest, 0, 5000), bytes);
}

TEST(S3Store, OlderGenerationFromAnotherControllerIsRefused) {
  REQUIRE_S3RVER(server);
  std::string uri = server->FreshUri();
  auto newer = MustOpen(uri);
  auto older = MustOpen(uri);
  ASSERT_NE(newer, nullptr);
  ASSERT_NE(older, nullptr);
  ASSERT_TRUE(newer->Put("k", 5, "five").ok());
  Status refused = older->Put("k", 4, "four");
  EXPECT_EQ(refused.message(),
            "refused: generation 4 is older than the stored generation 5 for key 'k' (another "
            "controller wrote a newer state)");
  EXPECT_EQ((*older->Get("k"))->data, "five");
}

TEST(S3Store, CorruptObjectIsAnErrorAndLeftUntouched) {
  REQUIRE_S3RVER(server);
  std::string uri = server->FreshUri();
  std::string prefix = PrefixOf(uri);
  std::string target = RawTarget(prefix + "/controller/state.ckpt");
  // An unsigned PUT: s3rver accepts anonymous writes.
  ASSERT_EQ(testing::HttpRequest(server->port(), "PUT", target, "not a flatbuffer").status, 200);

  auto store = MustOpen(uri);
  ASSERT_NE(store, nullptr);
  auto record = store->Get("controller/state");
  ASSERT_FALSE(record.ok());
  EXPECT_THAT(record.error(), HasSubstr("s3://serve-test/" + prefix + "/controller/state.ckpt"));
  EXPECT_THAT(record.error(), HasSubstr("corrupt"));
  Status put = store->Put("controller/state", 9, "new state");
  ASSERT_FALSE(put.ok());
  EXPECT_THAT(put.message(), HasSubstr("refused"));
  EXPECT_THAT(put.message(), HasSubstr("left untouched"));
  EXPECT_EQ(testing::HttpGet(server->port(), target).body, "not a flatbuffer");
}

TEST(S3Store, RecordOfAnotherKeyIsRefused) {
  REQUIRE_S3RVER(server);
  std::string uri = server->FreshUri();
  std::string prefix = PrefixOf(uri);
  auto store = MustOpen(uri);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put("a", 1, "of a").ok());
  std::string base = RawTarget(prefix + "/");
  std::string bytes = testing::HttpGet(server->port(), base + "a.ckpt").body;
  ASSERT_EQ(testing::HttpRequest(server->port(), "PUT", base + "b.ckpt", bytes).status, 200);
  auto record = store->Get("b");
  ASSERT_FALSE(record.ok());
  EXPECT_THAT(record.error(), HasSubstr("holds the record of key 'a'"));
}

TEST(S3Store, MissingBucketIsAnErrorNotAnEmptyStore) {
  REQUIRE_S3RVER(server);
  auto store = MustOpen("s3://no-such-bucket/p?endpoint=" + server->endpoint());
  ASSERT_NE(store, nullptr);
  auto record = store->Get("k");
  ASSERT_FALSE(record.ok());
  EXPECT_THAT(record.error(), HasSubstr("NoSuchBucket"));
}

// ---------------------------------------------------------------------------------------------
// Reading the server's answers (s3_answers.h), on their own.

// Found by fuzz/s3_xml.cc: a Content-Length over 64 bits made std::stoull throw, which ended the
// checkpointer.
TEST(S3Answers, ContentLengthOver64BitsIsAnErrorNotAThrow) {
  EXPECT_EQ(*s3::ParseContentLength("0"), 0u);
  EXPECT_EQ(*s3::ParseContentLength("18446744073709551615"), 18446744073709551615ull);
  EXPECT_THAT(s3::ParseContentLength("18446744073709551616").error(),
              HasSubstr("a Content-Length too large for 64 bits: '18446744073709551616'"));
  EXPECT_THAT(s3::ParseContentLength(std::string(400, '9')).error(),
              HasSubstr("too large for 64 bits"));
  EXPECT_THAT(s3::ParseContentLength("").error(), HasSubstr("no Content-Length"));
  EXPECT_THAT(s3::ParseContentLength("12a").error(), HasSubstr("not a number: '12a'"));
  EXPECT_THAT(s3::ParseContentLength("-1").error(), HasSubstr("not a number"));
  EXPECT_THAT(s3::ParseContentLength(" 1").error(), HasSubstr("not a number"));
}

TEST(S3Answers, HeaderLines) {
  std::map<std::string, std::string> headers;
  s3::AddHeaderLine("HTTP/1.1 100 Continue\r\n", &headers);
  s3::AddHeaderLine("X-Old: 1\r\n", &headers);
  s3::AddHeaderLine("HTTP/1.1 200 OK\r\n", &headers);  // a new response: forget the old one
  s3::AddHeaderLine("Content-Length:\t 12 \r\n", &headers);
  s3::AddHeaderLine("ETag: \"a:b\"\r\n", &headers);
  s3::AddHeaderLine("no colon\r\n", &headers);
  s3::AddHeaderLine("\r\n", &headers);
  EXPECT_EQ(headers,
            (std::map<std::string, std::string>{{"content-length", "12"}, {"etag", "\"a:b\""}}));
}

TEST(S3Answers, ListObjectsPage) {
  s3::ListObjectsPage page = s3::ParseListObjectsPage(
      "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>a&amp;lt;b</Key>"
      "</Contents><Contents><Key>c&lt;&gt;&quot;&apos;&amp;</Key></Contents><Key>unclosed"
      "<NextContinuationToken>t/1=</NextContinuationToken></ListBucketResult>");
  EXPECT_THAT(page.keys, ElementsAre("a&lt;b", "c<>\"'&"));
  EXPECT_TRUE(page.truncated);
  EXPECT_EQ(page.next_token, "t/1=");
  page = s3::ParseListObjectsPage("<IsTruncated>false</IsTruncated><Key>x");
  EXPECT_TRUE(page.keys.empty());
  EXPECT_FALSE(page.truncated);
  EXPECT_EQ(s3::XmlText("<Error><Code>NoSuchBucket</Code>", "Code"), "NoSuchBucket");
  EXPECT_EQ(s3::XmlText("<Code>unclosed", "Code"), "");
}

// ---------------------------------------------------------------------------------------------
// Against a scripted fake, for what s3rver cannot show: the conditional writes and their retry,
// and the abort of a failed multipart upload.

struct FakeReply {
  int status;
  std::string body;
  std::string headers;  // extra header lines, each ending in "\r\n"
};

struct SeenRequest {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // lower-case names
};

// Answers each connection's one request with the next scripted reply, and records the requests.
class FakeS3 {
 public:
  explicit FakeS3(std::vector<FakeReply> replies) : replies_(replies.begin(), replies.end()) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof(addr);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), size) != 0 ||
        ::listen(listener_, 16) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &size) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1";
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeS3() {
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    thread_.join();
  }

  std::string Uri(const std::string& extra = "") const {
    return "s3://bucket/p?endpoint=http://127.0.0.1:" + std::to_string(port_) + extra;
  }
  std::vector<SeenRequest> seen() {
    std::lock_guard<std::mutex> lock(mutex_);
    return seen_;
  }

 private:
  void Serve() {
    while (true) {
      int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      std::string data;
      char buffer[65536];
      size_t header_end = std::string::npos;
      while (header_end == std::string::npos) {
        ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        data.append(buffer, static_cast<size_t>(n));
        header_end = data.find("\r\n\r\n");
      }
      SeenRequest request;
      std::string head = data.substr(0, header_end);
      request.method = head.substr(0, head.find(' '));
      request.target = head.substr(head.find(' ') + 1);
      request.target = request.target.substr(0, request.target.find(' '));
      for (size_t at = head.find("\r\n"); at != std::string::npos;) {
        size_t next = head.find("\r\n", at + 2);
        std::string line = head.substr(at + 2, next == std::string::npos ? next : next - at - 2);
        size_t colon = line.find(':');
        if (colon != std::string::npos) {
          std::string name = line.substr(0, colon);
          for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          request.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
        }
        at = next;
      }
      size_t length = request.headers.count("content-length")
                          ? std::stoul(request.headers["content-length"])
                          : 0;
      while (header_end != std::string::npos && data.size() < header_end + 4 + length) {
        ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        data.append(buffer, static_cast<size_t>(n));
      }
      FakeReply reply{500, "<Error><Code>OutOfScript</Code></Error>", ""};
      {
        std::lock_guard<std::mutex> lock(mutex_);
        seen_.push_back(request);
        if (!replies_.empty()) {
          reply = replies_.front();
          replies_.pop_front();
        }
      }
      std::string response =
          "HTTP/1.1 " + std::to_string(reply.status) + " Scripted\r\n" + reply.headers +
          "Content-Length: " + std::to_string(request.method == "HEAD" ? 0 : reply.body.size()) +
          "\r\nConnection: close\r\n\r\n" + (request.method == "HEAD" ? "" : reply.body);
      (void)::send(fd, response.data(), response.size(), MSG_NOSIGNAL);
      ::close(fd);
    }
  }

  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::mutex mutex_;
  std::deque<FakeReply> replies_;  // guarded by mutex_
  std::vector<SeenRequest> seen_;  // guarded by mutex_
};

std::string StoredRecord(const std::string& key, uint64_t generation) {
  wire::StoredCheckpointT record;
  record.key = key;
  record.generation = generation;
  record.written_ms = 1;
  return wire::Pack(record);
}

const FakeReply kNoSuchKey{404, "<Error><Code>NoSuchKey</Code></Error>", ""};

TEST(S3StoreFencing, ConditionalWriteIsRetriedAfterAConflict) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  FakeS3 fake({kNoSuchKey,
               {412, "<Error><Code>PreconditionFailed</Code></Error>", ""},
               {200, StoredRecord("k", 3), "ETag: \"e1\"\r\n"},
               {200, "", "ETag: \"e2\"\r\n"}});
  auto store = MustOpen(fake.Uri());
  ASSERT_NE(store, nullptr);
  Status put = store->Put("k", 3, "x");
  ASSERT_TRUE(put.ok()) << put.message();
  auto seen = fake.seen();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].target, "/bucket/p/k.ckpt");
  EXPECT_EQ(seen[1].method, "PUT");
  EXPECT_EQ(seen[1].headers["if-none-match"], "*") << "created only if still absent";
  EXPECT_EQ(seen[2].method, "GET") << "412: read and check again";
  EXPECT_EQ(seen[3].headers["if-match"], "\"e1\"") << "replaced only if unchanged";
  EXPECT_EQ(seen[3].headers.count("if-none-match"), 0u);
  EXPECT_THAT(seen[3].headers["authorization"], HasSubstr("if-match"));
}

TEST(S3StoreFencing, NewerWriterWinningTheRaceRefusesThePut) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  FakeS3 fake({{200, StoredRecord("k", 3), "ETag: \"e1\"\r\n"},
               {412, "<Error><Code>PreconditionFailed</Code></Error>", ""},
               {200, StoredRecord("k", 9), "ETag: \"e2\"\r\n"}});
  auto store = MustOpen(fake.Uri());
  ASSERT_NE(store, nullptr);
  Status put = store->Put("k", 4, "x");
  EXPECT_EQ(put.message(),
            "refused: generation 4 is older than the stored generation 9 for key 'k' (another "
            "controller wrote a newer state)");
  EXPECT_EQ(fake.seen().size(), 3u);
}

TEST(S3StoreSigning, RequestsAreSignedWithTheInjectedClock) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  env.Set("AWS_SESSION_TOKEN", "session");
  FakeS3 fake({kNoSuchKey});
  auto config = ResolveS3StoreConfig(fake.Uri("&region=eu-west-1"));
  ASSERT_TRUE(config.ok()) << config.error();
  config->clock = [] {
    return std::chrono::system_clock::time_point(std::chrono::seconds(1440938160));
  };
  auto store = OpenS3Store(*config);
  auto record = store->Get("k");
  ASSERT_TRUE(record.ok()) << record.error();
  EXPECT_FALSE(record->has_value());
  auto seen = fake.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].headers["x-amz-date"], "20150830T123600Z");
  EXPECT_EQ(seen[0].headers["x-amz-content-sha256"], sigv4::kEmptyPayloadHash);
  EXPECT_EQ(seen[0].headers["x-amz-security-token"], "session");
  EXPECT_THAT(seen[0].headers["authorization"],
              HasSubstr("Credential=AKID/20150830/eu-west-1/s3/aws4_request, "
                        "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"));
}

TEST(S3StoreMultipart, FailedUploadIsAborted) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  FakeS3 fake({{404, "", ""},
               {200,
                "<InitiateMultipartUploadResult><UploadId>up&amp;1</UploadId>"
                "</InitiateMultipartUploadResult>",
                ""},
               {200, "", "ETag: \"p1\"\r\n"},
               {500, "<Error><Code>InternalError</Code><Message>disk full</Message></Error>", ""},
               {204, "", ""}});
  auto store = MustOpen(fake.Uri("&multipart_threshold=10&part_size=16"));
  ASSERT_NE(store, nullptr);
  std::string bytes(40, 'b');
  testing::TempDir dir;
  Status put = store->PutBlob(artifact::DigestOf(bytes), WriteTemp(dir, "blob", bytes));
  ASSERT_FALSE(put.ok());
  EXPECT_THAT(put.message(), HasSubstr("InternalError: disk full"));
  auto seen = fake.seen();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0].method, "HEAD");
  EXPECT_EQ(seen[1].method, "POST");
  EXPECT_THAT(seen[1].target, HasSubstr("?uploads="));
  EXPECT_EQ(seen[2].method, "PUT");
  EXPECT_THAT(seen[2].target, HasSubstr("partNumber=1&uploadId=up%261"));
  EXPECT_EQ(seen[2].headers["content-length"], "16");
  EXPECT_THAT(seen[3].target, HasSubstr("partNumber=2"));
  EXPECT_EQ(seen[4].method, "DELETE");
  EXPECT_THAT(seen[4].target, HasSubstr("uploadId=up%261"));
}

// ---------------------------------------------------------------------------------------------
// Without a server

TEST(S3Store, UnreachableEndpointFailsEachCallNotTheOpen) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  std::string endpoint = "http://127.0.0.1:" + std::to_string(testing::FreePort());
  auto store = OpenStore("s3://bucket/prefix?endpoint=" + endpoint);
  ASSERT_TRUE(store.ok()) << "the service must start and retry later: " << store.error();

  Status put = (*store)->Put("k", 1, "x");
  ASSERT_FALSE(put.ok());
  EXPECT_THAT(put.message(), HasSubstr(endpoint));
  EXPECT_THAT(put.message(), HasSubstr("curl error 7"));
  auto get = (*store)->Get("k");
  ASSERT_FALSE(get.ok());
  EXPECT_THAT(get.error(), HasSubstr(endpoint));
  EXPECT_THAT(get.error(), HasSubstr("s3://bucket/prefix/k.ckpt"));
  EXPECT_FALSE((*store)->BlobSize(artifact::DigestOf("x")).ok());
}

TEST(S3StoreUri, MalformedUrisAreClearErrors) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"s3://", "names no bucket"},
      {"s3:///prefix", "names no bucket"},
      {"gs://?endpoint=http://x", "names no bucket"},
      {"s3://Bad_Bucket/p", "bucket name 'Bad_Bucket'"},
      {"s3://ab/p", "bucket name 'ab'"},
      {"s3://bucket/a//b", "empty, '.' or '..' part"},
      {"s3://bucket/a/../b", "empty, '.' or '..' part"},
      {"s3://bucket/a b", "character ' '"},
      {"s3://bucket/p?colour=blue", "unknown parameter 'colour'; known: endpoint, region"},
      {"s3://bucket/p?endpoint=", "no value for the parameter 'endpoint'"},
      {"s3://bucket/p?region", "no value for the parameter 'region'"},
      {"s3://bucket/p?endpoint=ftp://host", "not an http:// or https:// URL"},
      {"s3://bucket/p?endpoint=localhost:9000", "has no scheme"},
      {"s3://bucket/p?endpoint=http://host:99999", "port that is not a number"},
      {"s3://bucket/p?endpoint=http://host/path", "no path"},
      {"s3://bucket/p?endpoint=http://", "names no host"},
      {"s3://bucket/p?addressing=sideways", "use addressing=path or addressing=virtual"},
      {"s3://bucket/p?multipart_threshold=16MB", "not a number of bytes"},
      {"s3://bucket/p?part_size=0", "part_size=0"},
      {"s3://bucket/p?list_page_keys=1001", "list_page_keys=1001; use 1 to 1000"},
      {"s3://bucket/p?list_page_keys=0", "list_page_keys=0"},
      {"s3://bucket/p?region=us-east-1&region=eu-west-1", "parameter 'region' twice"},
      {"s3://bucket/p?region=us%2", "'%' that is not followed by two hex digits"},
      {"s3://bucket/p#frag", "must not contain '#'"},
  };
  for (const auto& [uri, expected] : cases) {
    auto store = OpenStore(uri);
    ASSERT_FALSE(store.ok()) << uri;
    EXPECT_THAT(store.error(), HasSubstr(expected)) << uri;
  }
}

TEST(S3StoreUri, BadEndpointFromTheEnvironmentNamesTheVariable) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  env.Set("AWS_ENDPOINT_URL", "minio:9000");
  auto store = OpenStore("s3://bucket/p");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.error(), HasSubstr("AWS_ENDPOINT_URL"));
}

TEST(S3StoreUri, MissingCredentialsSayWhereTheyWereLookedFor) {
  testing::TempDir home;
  ScopedEnv env;
  env.UnsetAll();
  env.Set("HOME", home.path());
  auto s3 = OpenStore("s3://bucket/prefix");
  ASSERT_FALSE(s3.ok());
  EXPECT_THAT(s3.error(), HasSubstr("no credentials for s3://bucket/prefix"));
  EXPECT_THAT(s3.error(), HasSubstr("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"));
  EXPECT_THAT(s3.error(), HasSubstr("profile [default] of " + home.path() + "/.aws/credentials"));
  EXPECT_THAT(s3.error(), HasSubstr("does not exist"));

  auto gs = OpenStore("gs://bucket/prefix");
  ASSERT_FALSE(gs.ok());
  EXPECT_THAT(gs.error(), HasSubstr("GS_ACCESS_KEY_ID and GS_SECRET_ACCESS_KEY"));

  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  auto half = OpenStore("s3://bucket/prefix");
  ASSERT_FALSE(half.ok());
  EXPECT_THAT(half.error(), HasSubstr("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"));

  env.Unset("AWS_ACCESS_KEY_ID");
  fs::create_directories(home.path() + "/.aws");
  testing::WriteFile(home.path() + "/.aws/credentials", "[default]\naws_access_key_id = AKID\n");
  auto partial = OpenStore("s3://bucket/prefix");
  ASSERT_FALSE(partial.ok());
  EXPECT_THAT(partial.error(), HasSubstr("profile [default] lacks aws_secret_access_key"));

  env.Set("AWS_PROFILE", "absent");
  auto absent = OpenStore("s3://bucket/prefix");
  ASSERT_FALSE(absent.ok());
  EXPECT_THAT(absent.error(), HasSubstr("has no profile [absent]"));
}

TEST(S3StoreUri, CredentialsAndRegionFromTheAwsFiles) {
  testing::TempDir home;
  ScopedEnv env;
  env.UnsetAll();
  env.Set("HOME", home.path());
  env.Set("AWS_PROFILE", "work");
  fs::create_directories(home.path() + "/.aws");
  testing::WriteFile(home.path() + "/.aws/credentials",
                     "# keys\n[default]\naws_access_key_id=DEFAULT\naws_secret_access_key=d\n\n"
                     "[work]\n  aws_access_key_id = WORKKEY  \naws_secret_access_key = w/s+x\n"
                     "aws_session_token = tok\n");
  testing::WriteFile(home.path() + "/.aws/config",
                     "[default]\nregion = us-west-1\n; comment\n[profile work]\n"
                     "region = eu-west-2\n");
  auto config = ResolveS3StoreConfig("s3://my-bucket/serve/prod/");
  ASSERT_TRUE(config.ok()) << config.error();
  EXPECT_EQ(config->bucket, "my-bucket");
  EXPECT_EQ(config->prefix, "serve/prod");
  EXPECT_EQ(config->credentials.access_key_id, "WORKKEY");
  EXPECT_EQ(config->credentials.secret_access_key, "w/s+x");
  EXPECT_EQ(config->credentials.session_token, "tok");
  EXPECT_EQ(config->credentials_source, home.path() + "/.aws/credentials [work]");
  EXPECT_EQ(config->region, "eu-west-2");
  EXPECT_EQ(config->endpoint, "https://s3.eu-west-2.amazonaws.com");
  EXPECT_FALSE(config->path_style) << "virtual-hosted on AWS";
  EXPECT_EQ(config->multipart_threshold, 16u << 20);
  EXPECT_EQ(config->part_size, 8u << 20);

  env.Set("AWS_REGION", "ap-south-1");
  EXPECT_EQ(ResolveS3StoreConfig("s3://my-bucket")->region, "ap-south-1");
  EXPECT_EQ(ResolveS3StoreConfig("s3://my-bucket?region=sa-east-1")->region, "sa-east-1");
}

TEST(S3StoreUri, DefaultsAndOverrides) {
  ScopedEnv env;
  env.UnsetAll();
  env.Set("AWS_ACCESS_KEY_ID", "AKID");
  env.Set("AWS_SECRET_ACCESS_KEY", "secret");
  testing::TempDir home;
  env.Set("HOME", home.path());

  auto plain = ResolveS3StoreConfig("s3://bucket");
  ASSERT_TRUE(plain.ok()) << plain.error();
  EXPECT_EQ(plain->region, "us-east-1");
  EXPECT_EQ(plain->prefix, "");
  EXPECT_EQ(plain->endpoint, "https://s3.us-east-1.amazonaws.com");
  EXPECT_FALSE(plain->path_style);
  EXPECT_EQ(plain->credentials_source, "environment (AWS_ACCESS_KEY_ID)");

  EXPECT_TRUE(ResolveS3StoreConfig("s3://dotted.bucket")->path_style)
      << "TLS certificates do not cover dotted virtual-hosted names";
  EXPECT_FALSE(ResolveS3StoreConfig("s3://dotted.bucket?addressing=virtual")->path_style);

  auto gs = ResolveS3StoreConfig("gs://bucket/p");
  ASSERT_TRUE(gs.ok()) << gs.error();
  EXPECT_EQ(gs->endpoint, "https://storage.googleapis.com");
  EXPECT_EQ(gs->region, "auto");
  EXPECT_TRUE(gs->path_style);
  EXPECT_EQ(gs->credentials.access_key_id, "AKID") << "falls back to the AWS keys";

  auto custom = ResolveS3StoreConfig(
      "s3://bucket/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000%2F&part_size=100&"
      "multipart_threshold=1000");
  ASSERT_TRUE(custom.ok()) << custom.error();
  EXPECT_EQ(custom->endpoint, "http://127.0.0.1:9000");
  EXPECT_TRUE(custom->path_style) << "path style when the endpoint is overridden";
  EXPECT_EQ(custom->part_size, 100u);
  EXPECT_EQ(custom->multipart_threshold, 1000u);

  env.Set("AWS_ENDPOINT_URL", "https://minio.internal:9000");
  auto from_env = ResolveS3StoreConfig("s3://bucket/p");
  ASSERT_TRUE(from_env.ok()) << from_env.error();
  EXPECT_EQ(from_env->endpoint, "https://minio.internal:9000");
  EXPECT_TRUE(from_env->path_style);

  env.Set("GS_ACCESS_KEY_ID", "GOOGKEY");
  env.Set("GS_SECRET_ACCESS_KEY", "googsecret");
  EXPECT_EQ(ResolveS3StoreConfig("gs://bucket")->credentials.access_key_id, "GOOGKEY");
  EXPECT_EQ(ResolveS3StoreConfig("s3://bucket")->credentials.access_key_id, "AKID");
}

}  // namespace
}  // namespace serve::checkpointer

// The behaviour every store shares (store_contract.h), on a fresh prefix in s3rver per test.
namespace serve::checkpointer::contract {
namespace {
INSTANTIATE_TEST_SUITE_P(
    S3, StoreContractTest,
    ::testing::Values(StoreFactory([]() -> Result<std::unique_ptr<CheckpointStore>> {
      std::string missing;
      S3rver* server = S3rver::Get(&missing);
      if (server == nullptr) {
        if (ServersRequired()) ADD_FAILURE() << missing;
        return Status::Error(missing);
      }
      UseS3rverCredentials();
      return OpenStore(server->FreshUri());
    })),
                         ContractName);
}  // namespace
}  // namespace serve::checkpointer::contract
