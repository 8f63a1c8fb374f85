#include "checkpointer/redis_store.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <strings.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "config/deployment_config.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

constexpr char kForm[] = "redis://[user:password@]host:port[/db][?prefix=name]";
constexpr char kDefaultPrefix[] = "serve";
constexpr timeval kTimeout = {2, 0};  // connect and each command
constexpr size_t kUploadChunk = 1 << 20;
// An upload abandoned by a crash expires; each appended chunk pushes the deadline out again.
constexpr char kUploadTtlSeconds[] = "600";

// The fenced put, atomic in Redis. KEYS[1] is the record, KEYS[2] its generation; ARGV[1] the
// new generation (decimal, no leading zeros), ARGV[2] the new record. Generations are compared
// as decimal strings because Lua numbers are doubles and would round 64-bit generations.
// Answers {"ok"}, {"older", stored generation} or {"corrupt", what is wrong}.
constexpr char kPutScript[] = R"lua(
local stored = redis.call('GET', KEYS[2])
if stored then
  if not string.match(stored, '^%d+$') then
    return {'corrupt', 'its generation key ' .. KEYS[2] .. ' holds "' ..
            string.sub(stored, 1, 40) .. '", not a generation number'}
  end
  stored = (string.gsub(stored, '^0+(%d)', '%1'))
  if #stored > #ARGV[1] or (#stored == #ARGV[1] and stored > ARGV[1]) then
    return {'older', stored}
  end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return {'corrupt', 'the record has no generation key ' .. KEYS[2] .. ' beside it'}
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return {'ok'}
)lua";

// Moves a finished upload into place and drops the expiry it carried while incomplete.
constexpr char kCommitUploadScript[] = R"lua(
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
return 1
)lua";

struct RedisUri {
  std::string user;      // empty: the default user
  std::string password;  // empty: no AUTH
  std::string host;
  int port = 0;
  int db = 0;
  std::string prefix = kDefaultPrefix;
};

// The URI with its password replaced by "***", for error messages.
std::string Redacted(const std::string& uri) {
  size_t start = uri.find("://");
  start = start == std::string::npos ? 0 : start + 3;
  size_t end = uri.find_first_of("/?", start);
  size_t at = uri.rfind('@', end == std::string::npos ? std::string::npos : end);
  if (at == std::string::npos || at < start) return uri;
  size_t colon = uri.find(':', start);
  if (colon == std::string::npos || colon > at) return uri;
  return uri.substr(0, colon + 1) + "***" + uri.substr(at);
}

Status UriError(const std::string& uri, const std::string& problem) {
  return Status::Error("checkpoint path '" + Redacted(uri) + "' " + problem + "; the form is " +
                       kForm);
}

bool IsDigits(std::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
}

Result<RedisUri> ParseRedisUri(const std::string& uri) {
  constexpr std::string_view kScheme = "redis://";
  if (uri.size() < kScheme.size() ||
      strncasecmp(uri.c_str(), kScheme.data(), kScheme.size()) != 0) {
    return UriError(uri, "does not start with redis://");
  }
  std::string_view rest(uri);
  rest.remove_prefix(kScheme.size());
  RedisUri parsed;

  std::string_view query;
  if (size_t question = rest.find('?'); question != std::string_view::npos) {
    query = rest.substr(question + 1);
    rest = rest.substr(0, question);
  }
  std::string_view path;
  bool has_path = false;
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    path = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    has_path = true;
  }
  std::string_view authority = rest;

  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    authority = authority.substr(at + 1);
    size_t colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      return UriError(uri,
                      "names a user but no password: write user:password@ (a Redis 6 ACL "
                      "user) or :password@ (requirepass)");
    }
    auto user = PercentDecode(userinfo.substr(0, colon));
    auto password = PercentDecode(userinfo.substr(colon + 1));
    if (!user.ok()) return UriError(uri, "user " + user.error());
    if (!password.ok()) return UriError(uri, "password " + password.error());
    if (password->empty()) return UriError(uri, "has an empty password");
    parsed.user = *user;
    parsed.password = *password;
  }

  if (authority.empty()) return UriError(uri, "names no host");
  std::string_view port;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return UriError(uri, "has a '[' without ']'");
    parsed.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (after.empty() || after.front() != ':') {
      return UriError(uri, "has no port after the host: write host:port, e.g. [::1]:6379");
    }
    port = after.substr(1);
  } else {
    size_t colon = authority.rfind(':');
    if (colon == std::string_view::npos) {
      return UriError(uri, "has no port after the host: write host:port, e.g. 127.0.0.1:6379");
    }
    parsed.host = std::string(authority.substr(0, colon));
    port = authority.substr(colon + 1);
    auto bad = parsed.host.find_first_not_of(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_");
    if (bad != std::string::npos) {
      return UriError(uri, "has the character '" + std::string(1, parsed.host[bad]) +
                               "' in its host (an IPv6 address goes in brackets: [::1]:6379)");
    }
  }
  if (parsed.host.empty()) return UriError(uri, "names no host");
  if (!IsDigits(port) || port.size() > 5 || std::stoi(std::string(port)) < 1 ||
      std::stoi(std::string(port)) > 65535) {
    return UriError(uri, "has the port '" + std::string(port) + "', not a number from 1 to 65535");
  }
  parsed.port = std::stoi(std::string(port));

  if (has_path) {
    if (!IsDigits(path) || path.size() > 9) {
      return UriError(uri, "has '/" + std::string(path) +
                               "' after the port where a database number (0, 1, ...) belongs");
    }
    parsed.db = std::stoi(std::string(path));
  }

  bool prefix_seen = false;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    size_t equals = param.find('=');
    std::string_view name = param.substr(0, equals);
    if (name != "prefix") {
      return UriError(
          uri, "has the unknown parameter '" + std::string(name) + "' (the only one is prefix)");
    }
    if (prefix_seen) return UriError(uri, "gives prefix twice");
    prefix_seen = true;
    std::string_view value =
        equals == std::string_view::npos ? std::string_view() : param.substr(equals + 1);
    if (value.empty() ||
        value.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789._:/-") != std::string_view::npos) {
      return UriError(uri, "has the prefix '" + std::string(value) +
                               "'; a prefix is one or more of [A-Za-z0-9._:/-]");
    }
    parsed.prefix = std::string(value);
  }
  return parsed;
}

std::string Sha1Hex(std::string_view text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha1(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

std::string RandomHex() {
  std::random_device device;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (int i = 0; i < 4; ++i) {
    uint32_t word = device();
    for (int j = 0; j < 4; ++j) {
      hex += kHex[(word >> (j * 8 + 4)) & 15];
      hex += kHex[(word >> (j * 8)) & 15];
    }
  }
  return hex;
}

Status BadDigest(const std::string& digest) {
  return Status::Error("'" + digest + "' is not an artifact digest (sha256:<64 hex digits>)");
}

// Keeps a write to a connection the server has reset from killing the process with SIGPIPE
// (hiredis uses plain write(2), and the services do not ignore the signal): blocks it in this
// thread for the duration of a command and swallows one raised meanwhile, so the write fails
// with EPIPE instead.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe, &saved_);
  }
  ~SigpipeGuard() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      timespec zero{};
      while (sigtimedwait(&pipe, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t saved_;
  bool was_pending_ = false;
};

struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

std::string_view Text(const redisReply& reply) { return std::string_view(reply.str, reply.len); }

class RedisStore : public CheckpointStore {
 public:
  explicit RedisStore(RedisUri uri) : uri_(std::move(uri)), put_script_sha_(Sha1Hex(kPutScript)) {}
  ~RedisStore() override { Disconnect(); }
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  Status Put(const std::string& key, uint64_t generation, std::string_view data) override;
  Result<std::optional<Record>> Get(const std::string& key) override;
  std::string Describe() const override;
  Result<std::optional<uint64_t>> BlobSize(const std::string& digest) override;
  Status PutBlob(const std::string& digest, const std::string& path) override;
  Result<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                               uint64_t length) override;
  Result<std::vector<std::string>> ListBlobs() override;
  Status DeleteBlob(const std::string& digest) override;

 private:
  // host:port as a person would type it.
  std::string Where() const;
  std::string RecordKey(const std::string& key) const { return uri_.prefix + ":ckpt:" + key; }
  std::string GenerationKey(const std::string& key) const { return uri_.prefix + ":gen:" + key; }
  std::string BlobKey(const std::string& digest) const { return uri_.prefix + ":blob:" + digest; }
  std::string Untouched(const std::string& key) const;

  Status Connect();
  void Disconnect();
  // Sends one command on the open connection. A transport failure drops the connection (the
  // next call reconnects); an error reply becomes an error naming the server.
  Result<Reply> Run(const std::vector<std::string_view>& args);
  // Run, connecting first when there is no connection.
  Result<Reply> Call(const std::vector<std::string_view>& args);
  // Whether `key` exists.
  Result<bool> Exists(const std::string& key);

  const RedisUri uri_;
  const std::string put_script_sha_;
  redisContext* context_ = nullptr;  // null while disconnected
};

std::string RedisStore::Where() const {
  std::string host = uri_.host.find(':') != std::string::npos ? "[" + uri_.host + "]" : uri_.host;
  return host + ":" + std::to_string(uri_.port);
}

std::string RedisStore::Describe() const {
  // The password stays out: Describe() is logged.
  return "redis://" + (uri_.user.empty() ? "" : uri_.user + "@") + Where() + "/" +
         std::to_string(uri_.db) + "?prefix=" + uri_.prefix;
}

std::string RedisStore::Untouched(const std::string& key) const {
  return "; it is left untouched for inspection: delete " + RecordKey(key) + " and " +
         GenerationKey(key) + " (redis-cli DEL) to let key '" + key + "' be written again";
}

void RedisStore::Disconnect() {
  if (context_ != nullptr) redisFree(context_);
  context_ = nullptr;
}

Status RedisStore::Connect() {
  redisContext* context = redisConnectWithTimeout(uri_.host.c_str(), uri_.port, kTimeout);
  if (context == nullptr) return Status::Error("cannot reach redis at " + Where() + ": no memory");
  if (context->err != 0) {
    std::string cause = context->errstr;
    redisFree(context);
    return Status::Error("cannot reach redis at " + Where() + ": " + cause +
                         "; is redis-server running?");
  }
  redisSetTimeout(context, kTimeout);
  redisEnableKeepAlive(context);
  context_ = context;

  if (!uri_.password.empty()) {
    std::vector<std::string_view> auth = {"AUTH"};
    if (!uri_.user.empty()) auth.push_back(uri_.user);
    auth.push_back(uri_.password);
    auto reply = Run(auth);
    if (!reply.ok()) {
      Disconnect();
      std::string who = uri_.user.empty() ? "the password" : "the user '" + uri_.user + "'";
      return Status::Error("redis at " + Where() + " refused " + who +
                           " from the checkpoint path: " + reply.error());
    }
  }
  if (uri_.db != 0) {
    std::string db = std::to_string(uri_.db);
    auto reply = Run({"SELECT", db});
    if (!reply.ok()) {
      Disconnect();
      return Status::Error("cannot select database " + db + " of redis at " + Where() + ": " +
                           reply.error());
    }
  }
  return Status::Ok();
}

Result<Reply> RedisStore::Run(const std::vector<std::string_view>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (auto arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  Reply reply;
  {
    SigpipeGuard guard;
    reply.reset(static_cast<redisReply*>(
        redisCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), lengths.data())));
  }
  if (reply == nullptr) {
    std::string cause = context_->errstr;
    if (context_->err == REDIS_ERR_IO && (cause == std::strerror(EAGAIN))) {
      cause = "no answer within " + std::to_string(kTimeout.tv_sec) + " s";
    }
    Disconnect();
    return Status::Error("lost the connection to redis at " + Where() + ": " + cause +
                         " (the next call reconnects)");
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    std::string text(Text(*reply));
    if (text.rfind("NOAUTH", 0) == 0) {
      return Status::Error("redis at " + Where() + " requires a password (" + text +
                           "); put it in the checkpoint path: redis://:password@" + Where() +
                           " or redis://user:password@" + Where());
    }
    return Status::Error("redis at " + Where() + " answered: " + text);
  }
  return reply;
}

Result<Reply> RedisStore::Call(const std::vector<std::string_view>& args) {
  if (context_ == nullptr) {
    Status connected = Connect();
    if (!connected.ok()) return connected;
  }
  return Run(args);
}

Result<bool> RedisStore::Exists(const std::string& key) {
  auto reply = Call({"EXISTS", key});
  if (!reply.ok()) return reply.status();
  return (*reply)->type == REDIS_REPLY_INTEGER && (*reply)->integer == 1;
}

Result<std::optional<Record>> RedisStore::Get(const std::string& key) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  std::string redis_key = RecordKey(key);
  auto reply = Call({"GET", redis_key});
  if (!reply.ok()) return reply.status().WithContext("cannot read key '" + key + "'");
  if ((*reply)->type == REDIS_REPLY_NIL) return std::optional<Record>();
  std::string_view bytes = Text(**reply);
  auto record = DecodeRecord(key, bytes,
                             "the checkpoint record " + redis_key + " in redis at " + Where(),
                             Untouched(key));
  if (!record.ok()) return record.status();
  return std::optional<Record>(std::move(*record));
}

Status RedisStore::Put(const std::string& key, uint64_t generation, std::string_view data) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  // The script fences on the generation key alone; reading the record first keeps a corrupt
  // one from being replaced by a put that would otherwise pass.
  auto current = Get(key);
  if (!current.ok()) return Status::Error("refused: " + current.error());

  std::string bytes = EncodeRecord(key, generation, data);
  std::string record_key = RecordKey(key);
  std::string generation_key = GenerationKey(key);
  std::string generation_text = std::to_string(generation);

  auto reply =
      Call({"EVALSHA", put_script_sha_, "2", record_key, generation_key, generation_text, bytes});
  if (!reply.ok() && reply.error().find("NOSCRIPT") != std::string::npos) {
    reply = Call({"EVAL", kPutScript, "2", record_key, generation_key, generation_text, bytes});
  }
  if (!reply.ok()) return reply.status().WithContext("cannot store key '" + key + "'");
  const redisReply& answer = **reply;
  if (answer.type != REDIS_REPLY_ARRAY || answer.elements == 0 ||
      answer.element[0]->type != REDIS_REPLY_STRING) {
    return Status::Error("cannot store key '" + key + "': unexpected answer from redis at " +
                         Where());
  }
  std::string_view outcome = Text(*answer.element[0]);
  std::string detail = answer.elements > 1 && answer.element[1]->type == REDIS_REPLY_STRING
                           ? std::string(Text(*answer.element[1]))
                           : "";
  if (outcome == "older") {
    return OlderGenerationRefused(key, generation, std::strtoull(detail.c_str(), nullptr, 10));
  }
  if (outcome == "corrupt") {
    return Status::Error("refused: the checkpoint record " + record_key + " in redis at " +
                         Where() + " for key '" + key + "' is inconsistent: " + detail +
                         Untouched(key));
  }
  return Status::Ok();
}

Result<std::optional<uint64_t>> RedisStore::BlobSize(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  auto reply = Call({"STRLEN", BlobKey(digest)});
  if (!reply.ok()) return reply.status().WithContext("cannot look up " + digest);
  auto size = static_cast<uint64_t>((*reply)->integer);
  if (size == 0) {
    // STRLEN answers 0 for a missing key as well as for the empty blob.
    auto exists = Exists(BlobKey(digest));
    if (!exists.ok()) return exists.status().WithContext("cannot look up " + digest);
    if (!*exists) return std::optional<uint64_t>();
  }
  return std::optional<uint64_t>(size);
}

Status RedisStore::PutBlob(const std::string& digest, const std::string& path) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  const std::string context = "cannot store " + digest + " in " + Describe();
  std::string blob_key = BlobKey(digest);
  auto exists = Exists(blob_key);
  if (!exists.ok()) return exists.status().WithContext(context);
  if (*exists) return Status::Ok();  // same digest, same bytes

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Error(context + ": cannot read " + path + ": " + strerror(errno));
  std::string upload_key =
      uri_.prefix + ":upload:" + digest.substr(digest.find(':') + 1) + ":" + RandomHex();
  auto fail = [&](const Status& status) {
    ::close(fd);
    if (context_ != nullptr) (void)Run({"DEL", upload_key});
    return status.WithContext(context);
  };
  auto started = Call({"SET", upload_key, "", "EX", kUploadTtlSeconds});
  if (!started.ok()) return fail(started.status());
  std::string chunk(kUploadChunk, '\0');
  long long total = 0;
  while (true) {
    ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(Status::Error("cannot read " + path + ": " + strerror(errno)));
    }
    auto appended = Run({"APPEND", upload_key, std::string_view(chunk.data(), n)});
    if (!appended.ok()) return fail(appended.status());
    total += n;
    if ((*appended)->integer != total) {
      return fail(Status::Error("the upload key " + upload_key + " holds " +
                                std::to_string((*appended)->integer) + " bytes after " +
                                std::to_string(total) +
                                " were sent; was it written by another "
                                "client?"));
    }
    auto extended = Run({"EXPIRE", upload_key, kUploadTtlSeconds});
    if (!extended.ok()) return fail(extended.status());
  }
  auto committed = Run({"EVAL", kCommitUploadScript, "2", upload_key, blob_key});
  if (!committed.ok()) return fail(committed.status());
  ::close(fd);
  return Status::Ok();
}

Result<std::string> RedisStore::ReadBlob(const std::string& digest, uint64_t offset,
                                         uint64_t length) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  std::string blob_key = BlobKey(digest);
  constexpr uint64_t kMax = std::numeric_limits<int64_t>::max();
  std::string bytes;
  if (length > 0 && offset < kMax) {
    uint64_t last = length - 1 > kMax - offset ? kMax : offset + length - 1;
    std::string start = std::to_string(offset);
    std::string end = std::to_string(last);
    auto reply = Call({"GETRANGE", blob_key, start, end});
    if (!reply.ok()) return reply.status().WithContext("cannot read " + digest);
    bytes.assign(Text(**reply));
  }
  if (bytes.empty()) {
    // GETRANGE answers "" for a missing key too.
    auto exists = Exists(blob_key);
    if (!exists.ok()) return exists.status().WithContext("cannot read " + digest);
    if (!*exists) return Status::Error(digest + " is not stored in " + Describe());
  }
  return bytes;
}

// `text` as a SCAN MATCH pattern that matches only itself.
std::string GlobEscaped(const std::string& text) {
  std::string escaped;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') escaped.push_back('\\');
    escaped.push_back(c);
  }
  return escaped;
}

Result<std::vector<std::string>> RedisStore::ListBlobs() {
  const std::string folder = BlobKey("sha256:");
  const std::string pattern = GlobEscaped(folder) + "*";
  std::vector<std::string> digests;
  // SCAN, not KEYS: it walks the keyspace in steps and never blocks the server for long.
  std::string cursor = "0";
  do {
    auto reply = Call({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
    if (!reply.ok()) return reply.status().WithContext("cannot list the blobs of " + Describe());
    const redisReply& r = **reply;
    if (r.type != REDIS_REPLY_ARRAY || r.elements != 2 ||
        r.element[0]->type != REDIS_REPLY_STRING || r.element[1]->type != REDIS_REPLY_ARRAY) {
      return Status::Error("SCAN at " + Where() +
                           " answered something other than a cursor and "
                           "a list of keys");
    }
    cursor.assign(Text(*r.element[0]));
    for (size_t i = 0; i < r.element[1]->elements; ++i) {
      const redisReply* key = r.element[1]->element[i];
      if (key->type != REDIS_REPLY_STRING) continue;
      std::string_view name = Text(*key);
      if (name.size() <= folder.size()) continue;
      // SCAN may return a key twice; a set of digests is what the caller wants.
      std::string digest = "sha256:" + std::string(name.substr(folder.size()));
      if (config::IsArtifactDigest(digest)) digests.push_back(std::move(digest));
    }
  } while (cursor != "0");
  std::sort(digests.begin(), digests.end());
  digests.erase(std::unique(digests.begin(), digests.end()), digests.end());
  return digests;
}

Status RedisStore::DeleteBlob(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  auto reply = Call({"DEL", BlobKey(digest)});
  if (!reply.ok()) return reply.status().WithContext("cannot remove " + digest);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<CheckpointStore>> OpenRedisStore(const std::string& uri) {
  auto parsed = ParseRedisUri(uri);
  if (!parsed.ok()) return parsed.status();
  // No connection yet: a server that is down now fails the calls, not the start.
  return std::unique_ptr<CheckpointStore>(new RedisStore(std::move(*parsed)));
}

}  // namespace serve::checkpointer
