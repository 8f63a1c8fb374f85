#include "checkpointer/s3_store.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "checkpointer/s3_answers.h"
#include "config/deployment_config.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::checkpointer {
namespace {

constexpr char kRecordSuffix[] = ".ckpt";
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kMinAwsPartSize = 5 * kMiB;
constexpr uint64_t kMaxPartSize = 5ull << 30;
constexpr uint64_t kMaxParts = 10000;
// How often a put re-reads and re-checks after losing a conditional write to another writer.
constexpr int kPutAttempts = 5;

constexpr char kKnownParams[] =
    "endpoint, region, addressing, multipart_threshold, part_size, list_page_keys";

// ---------------------------------------------------------------------------------------------
// Configuration: the URI, the environment, ~/.aws

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

std::string HomeDirectory() {
  std::string home = Env("HOME");
  if (home.empty()) {
    if (const passwd* pw = getpwuid(getuid()); pw != nullptr && pw->pw_dir != nullptr) {
      home = pw->pw_dir;
    }
  }
  return home;
}

std::string Trim(std::string_view text) {
  size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return "";
  size_t end = text.find_last_not_of(" \t\r\n");
  return std::string(text.substr(begin, end - begin + 1));
}

// ~/.aws/config and ~/.aws/credentials are INI files. Debian packages no INI reader worth
// linking for two small files, so this reads, by hand, the subset the AWS tools write:
// "[section]" lines, "key = value" lines, and '#' or ';' comment lines. Nested (indented)
// sub-sections such as s3 = ... are read as plain keys and ignored by the callers.
using IniFile = std::map<std::string, std::map<std::string, std::string>>;

std::optional<IniFile> ReadIni(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  IniFile ini;
  std::string section;
  std::string line;
  while (std::getline(in, line)) {
    std::string text = Trim(line);
    if (text.empty() || text[0] == '#' || text[0] == ';') continue;
    if (text.front() == '[' && text.back() == ']') {
      section = Trim(std::string_view(text).substr(1, text.size() - 2));
      ini[section];
      continue;
    }
    size_t equals = text.find('=');
    if (equals == std::string::npos || section.empty()) continue;
    ini[section][Trim(std::string_view(text).substr(0, equals))] =
        Trim(std::string_view(text).substr(equals + 1));
  }
  return ini;
}

std::string Profile() {
  std::string profile = Env("AWS_PROFILE");
  return profile.empty() ? "default" : profile;
}

std::string CredentialsFile() {
  std::string file = Env("AWS_SHARED_CREDENTIALS_FILE");
  return file.empty() ? HomeDirectory() + "/.aws/credentials" : file;
}

std::string ConfigFile() {
  std::string file = Env("AWS_CONFIG_FILE");
  return file.empty() ? HomeDirectory() + "/.aws/config" : file;
}

// The region of the profile in ~/.aws/config, whose sections are "[default]" and
// "[profile name]".
std::string RegionFromConfigFile() {
  auto ini = ReadIni(ConfigFile());
  if (!ini) return "";
  std::string profile = Profile();
  for (const std::string& section : {"profile " + profile, profile}) {
    if (section == profile && profile != "default") continue;
    auto found = ini->find(section);
    if (found == ini->end()) continue;
    auto region = found->second.find("region");
    if (region != found->second.end() && !region->second.empty()) return region->second;
  }
  return "";
}

Status CredentialsFromEnv(const char* id_var, const char* secret_var, const char* token_var,
                          sigv4::Credentials* out, std::string* source, bool* found) {
  std::string id = Env(id_var);
  std::string secret = Env(secret_var);
  *found = false;
  if (id.empty() && secret.empty()) return Status::Ok();
  if (id.empty() || secret.empty()) {
    return Status::Error(std::string(id.empty() ? secret_var : id_var) + " is set but " +
                         (id.empty() ? id_var : secret_var) +
                         " is not; set both, or neither to use ~/.aws/credentials");
  }
  out->access_key_id = id;
  out->secret_access_key = secret;
  out->session_token = token_var != nullptr ? Env(token_var) : "";
  *source = std::string("environment (") + id_var + ")";
  *found = true;
  return Status::Ok();
}

Status ResolveCredentials(S3StoreConfig* config) {
  bool found = false;
  if (config->scheme == "gs") {
    Status status = CredentialsFromEnv("GS_ACCESS_KEY_ID", "GS_SECRET_ACCESS_KEY", nullptr,
                                       &config->credentials, &config->credentials_source, &found);
    if (!status.ok() || found) return status;
  }
  Status status =
      CredentialsFromEnv("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                         &config->credentials, &config->credentials_source, &found);
  if (!status.ok() || found) return status;

  const std::string file = CredentialsFile();
  const std::string profile = Profile();
  auto ini = ReadIni(file);
  std::string file_problem = "the file does not exist or cannot be read";
  if (ini) {
    auto section = ini->find(profile);
    if (section == ini->end()) {
      file_problem = "it has no profile [" + profile + "]";
    } else {
      const auto& values = section->second;
      auto get = [&](const char* name) {
        auto it = values.find(name);
        return it == values.end() ? std::string() : it->second;
      };
      std::string id = get("aws_access_key_id");
      std::string secret = get("aws_secret_access_key");
      if (!id.empty() && !secret.empty()) {
        config->credentials.access_key_id = id;
        config->credentials.secret_access_key = secret;
        config->credentials.session_token = get("aws_session_token");
        config->credentials_source = file + " [" + profile + "]";
        return Status::Ok();
      }
      file_problem = "its profile [" + profile + "] lacks " +
                     (id.empty() && secret.empty() ? std::string("aws_access_key_id and "
                                                                 "aws_secret_access_key")
                      : id.empty()                 ? std::string("aws_access_key_id")
                                                   : std::string("aws_secret_access_key"));
    }
  }
  std::string variables = config->scheme == "gs"
                              ? "GS_ACCESS_KEY_ID and GS_SECRET_ACCESS_KEY (HMAC keys), or "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
                              : "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                                "AWS_SESSION_TOKEN for temporary credentials)";
  return Status::Error("no credentials for " + config->uri + ": looked for " + variables +
                       " in the environment, and for aws_access_key_id and "
                       "aws_secret_access_key in profile [" +
                       profile + "] of " + file + " (" + file_problem +
                       "); set the variables, or add the profile (AWS_PROFILE picks another "
                       "profile, AWS_SHARED_CREDENTIALS_FILE another file)");
}

// "http://127.0.0.1:9000" or "https://host"; a trailing '/' is dropped, any other path refused.
Result<std::string> ValidateEndpoint(const std::string& endpoint, const std::string& origin) {
  auto bad = [&](const std::string& why) {
    return Status::Error("the endpoint '" + endpoint + "' (" + origin + ") " + why +
                         "; write http://host:port or https://host, e.g. http://127.0.0.1:9000");
  };
  size_t separator = endpoint.find("://");
  if (separator == std::string::npos) return bad("has no scheme");
  std::string scheme = endpoint.substr(0, separator);
  if (scheme != "http" && scheme != "https") return bad("is not an http:// or https:// URL");
  std::string authority = endpoint.substr(separator + 3);
  while (!authority.empty() && authority.back() == '/') authority.pop_back();
  if (authority.empty()) return bad("names no host");
  if (authority.find_first_of("/?#@ ") != std::string::npos) {
    return bad("must be only a scheme, a host and a port (no path, query or user)");
  }
  std::string host = authority;
  std::string port;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos) return bad("has an unterminated IPv6 address");
    host = authority.substr(0, close + 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return bad("has text after the IPv6 address");
      port = authority.substr(close + 2);
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (host.empty()) return bad("names no host");
  }
  if (authority.front() != '[' && !std::all_of(host.begin(), host.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '.' || c == '-' || c == '_';
      })) {
    return bad("has a host name with characters other than letters, digits, '.', '-'");
  }
  if (authority.find(':') != std::string::npos && authority.front() != '[' && port.empty()) {
    return bad("has an empty port");
  }
  if (!port.empty()) {
    if (port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
        std::stoi(port) < 1 || std::stoi(port) > 65535) {
      return bad("has a port that is not a number from 1 to 65535");
    }
  }
  return scheme + "://" + authority;
}

Result<uint64_t> ParseBytes(const std::string& name, const std::string& value) {
  if (value.empty() || value.size() > 19 ||
      !std::all_of(value.begin(), value.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return Status::Error(name + "='" + value + "' is not a number of bytes (digits only, e.g. " +
                         name + "=16777216)");
  }
  return static_cast<uint64_t>(std::stoull(value));
}

bool IsPrefixChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
         c == '/';
}

// The host part of "https://host:port".
std::string AuthorityOf(const std::string& endpoint) {
  return endpoint.substr(endpoint.find("://") + 3);
}

bool IsAwsEndpoint(const std::string& endpoint) {
  std::string host = AuthorityOf(endpoint);
  host = host.substr(0, host.find(':'));
  return host == "amazonaws.com" ||
         (host.size() > 14 && host.compare(host.size() - 14, 14, ".amazonaws.com") == 0);
}

// ---------------------------------------------------------------------------------------------
// HTTP

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

using s3::XmlText;

struct HttpRequest {
  std::string method = {};
  std::string object = {};  // the object key in the bucket, not yet encoded
  sigv4::HeaderList query = {};
  sigv4::HeaderList headers = {};
  // The body: `bytes`, or `length` bytes of file `fd` from `offset`.
  std::string_view bytes = {};
  int fd = -1;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::string payload_hash = {};  // empty: SHA-256 of `bytes`
};

struct HttpResponse {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names

  std::string Header(const std::string& name) const {
    auto found = headers.find(name);
    return found == headers.end() ? "" : found->second;
  }
  std::string ErrorCode() const { return XmlText(body, "Code"); }
};

struct Transfer {
  const HttpRequest* request;
  uint64_t sent = 0;
  HttpResponse* response;
  int read_errno = 0;
};

size_t ReadBody(char* buffer, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const HttpRequest& request = *transfer->request;
  size_t room = size * count;
  if (request.fd < 0) {
    size_t n = std::min<size_t>(room, request.bytes.size() - transfer->sent);
    std::memcpy(buffer, request.bytes.data() + transfer->sent, n);
    transfer->sent += n;
    return n;
  }
  size_t n = static_cast<size_t>(std::min<uint64_t>(room, request.length - transfer->sent));
  if (n == 0) return 0;
  while (true) {
    ssize_t got =
        ::pread(request.fd, buffer, n, static_cast<off_t>(request.offset + transfer->sent));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      // A file that shrank or failed under us: abort rather than send a short body.
      transfer->read_errno = got < 0 ? errno : EIO;
      return CURL_READFUNC_ABORT;
    }
    transfer->sent += static_cast<uint64_t>(got);
    return static_cast<size_t>(got);
  }
}

size_t WriteBody(char* data, size_t size, size_t count, void* user) {
  static_cast<Transfer*>(user)->response->body.append(data, size * count);
  return size * count;
}

size_t ReadHeader(char* data, size_t size, size_t count, void* user) {
  s3::AddHeaderLine(std::string_view(data, size * count),
                    &static_cast<Transfer*>(user)->response->headers);
  return size * count;
}

void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// ---------------------------------------------------------------------------------------------
// The store

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

class S3Store : public CheckpointStore {
 public:
  explicit S3Store(S3StoreConfig config) : config_(std::move(config)) { InitCurlOnce(); }

  Status Put(const std::string& key, uint64_t generation, std::string_view data) override;
  Result<std::optional<Record>> Get(const std::string& key) override;
  std::string Describe() const override { return config_.uri; }
  Result<std::optional<uint64_t>> BlobSize(const std::string& digest) override;
  Status PutBlob(const std::string& digest, const std::string& path) override;
  Result<std::string> ReadBlob(const std::string& digest, uint64_t offset,
                               uint64_t length) override;
  Result<std::vector<std::string>> ListBlobs() override;
  Status DeleteBlob(const std::string& digest) override;

 private:
  std::string RecordObject(const std::string& key) const {
    return (config_.prefix.empty() ? "" : config_.prefix + "/") + key + kRecordSuffix;
  }
  std::string BlobObject(const std::string& digest) const {
    std::string algorithm = digest.substr(0, digest.find(':'));
    std::string hex = digest.substr(digest.find(':') + 1);
    return (config_.prefix.empty() ? "" : config_.prefix + "/") + "blobs/" + algorithm + "/" + hex;
  }
  // "s3://bucket/prefix/k.ckpt", how errors name an object.
  std::string Name(const std::string& object) const {
    return config_.scheme + "://" + config_.bucket + "/" + object;
  }

  Result<HttpResponse> Send(const HttpRequest& request) const;
  // An error for an unexpected answer to `request`.
  Status Unexpected(const HttpRequest& request, const HttpResponse& response) const;
  // The record in `bytes`, read from `object`.
  Result<std::optional<Record>> Parse(const std::string& key, const std::string& object,
                                      const std::string& bytes) const;
  Status PutMultipart(const std::string& object, int fd, uint64_t size) const;

  const S3StoreConfig config_;
};

Result<HttpResponse> S3Store::Send(const HttpRequest& request) const {
  // Path style: endpoint/bucket/key; virtual hosted: bucket.endpoint/key.
  std::string authority = AuthorityOf(config_.endpoint);
  std::string scheme = config_.endpoint.substr(0, config_.endpoint.find("://"));
  std::string path = "/" + request.object;
  if (config_.path_style) {
    path = "/" + config_.bucket + path;
  } else {
    authority = config_.bucket + "." + authority;
  }

  sigv4::Request to_sign;
  to_sign.method = request.method;
  to_sign.host = authority;
  to_sign.path = path;
  to_sign.query = request.query;
  to_sign.headers = request.headers;
  if (!request.payload_hash.empty()) {
    to_sign.payload_hash = request.payload_hash;
  } else {
    to_sign.payload_hash =
        request.bytes.empty() ? sigv4::kEmptyPayloadHash : sigv4::Sha256Hex(request.bytes);
  }
  sigv4::Signed signed_request =
      sigv4::Sign(to_sign, config_.credentials, config_.region, "s3", config_.clock());

  std::string url = scheme + "://" + authority + sigv4::UriEncode(path, /*keep_slash=*/true);
  for (size_t i = 0; i < request.query.size(); ++i) {
    url.append(i == 0 ? "?" : "&")
        .append(sigv4::UriEncode(request.query[i].first, false))
        .append("=")
        .append(sigv4::UriEncode(request.query[i].second, false));
  }

  curl_slist* headers = nullptr;
  auto add_header = [&](const std::string& name, const std::string& value) {
    headers = curl_slist_append(headers, (name + ": " + value).c_str());
  };
  add_header("Host", authority);
  for (const auto& [name, value] : request.headers) add_header(name, value);
  for (const auto& [name, value] : signed_request.headers) add_header(name, value);
  add_header("Authorization", signed_request.authorization);
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip
  headers = curl_slist_append(headers, "Accept:");

  HttpResponse response;
  Transfer transfer{&request, 0, &response};
  char error_text[CURL_ERROR_SIZE] = "";
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    curl_slist_free_all(headers);
    return Status::Error("cannot create an HTTP client (curl_easy_init failed)");
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  // No overall timeout (blobs may be large); give up on a transfer that stalls for a minute.
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WriteBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, ReadHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &transfer);
  const bool has_body = request.method == "PUT" || request.method == "POST";
  if (request.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (has_body) {
    // Streamed from memory or the file, with a Content-Length: S3 refuses chunked uploads.
    curl_off_t size =
        static_cast<curl_off_t>(request.fd >= 0 ? request.length : request.bytes.size());
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, size);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, ReadBody);
    curl_easy_setopt(curl, CURLOPT_READDATA, &transfer);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  } else if (request.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  CURLcode code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  curl_easy_cleanup(curl);
  curl_slist_free_all(headers);

  if (transfer.read_errno != 0) {
    return Status::Error("cannot read the data to upload to " + Name(request.object) + ": " +
                         std::strerror(transfer.read_errno));
  }
  if (code != CURLE_OK) {
    std::string detail = error_text[0] != '\0' ? error_text : curl_easy_strerror(code);
    return Status::Error("cannot reach the object store " + config_.endpoint + " for " +
                         request.method + " " + Name(request.object) + ": " + detail +
                         " (curl error " + std::to_string(static_cast<int>(code)) + ")");
  }
  return response;
}

Status S3Store::Unexpected(const HttpRequest& request, const HttpResponse& response) const {
  std::string what = request.method + " " + Name(request.object);
  std::string code = response.ErrorCode();
  std::string message = XmlText(response.body, "Message");
  std::string detail = "HTTP " + std::to_string(response.status);
  if (!code.empty()) detail += " " + code;
  if (!message.empty()) detail += ": " + message;
  std::string hint;
  if (code == "NoSuchBucket") {
    hint = "; create the bucket " + config_.bucket + " or fix the URI";
  } else if (response.status == 403) {
    hint = "; check the credentials from " + config_.credentials_source +
           " and their permissions on the bucket";
  } else if (code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed") {
    hint = "; the bucket may live in another region than " + config_.region +
           ": add ?region=<its region> to the URI";
  }
  return Status::Error(what + " at " + config_.endpoint + " failed: " + detail + hint);
}

Result<std::optional<Record>> S3Store::Parse(const std::string& key, const std::string& object,
                                             const std::string& bytes) const {
  const std::string untouched =
      "; the object is left untouched for inspection: move or delete it "
      "to let key '" +
      key + "' be written again";
  auto record = DecodeRecord(key, bytes, "the checkpoint object " + Name(object), untouched);
  if (!record.ok()) return record.status();
  return std::optional<Record>(std::move(*record));
}

Result<std::optional<Record>> S3Store::Get(const std::string& key) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  HttpRequest request{.method = "GET", .object = RecordObject(key)};
  auto response = Send(request);
  if (!response.ok()) return response.status();
  if (response->status == 404 && response->ErrorCode() != "NoSuchBucket") {
    return std::optional<Record>();
  }
  if (response->status != 200) return Unexpected(request, *response);
  return Parse(key, request.object, response->body);
}

Status S3Store::Put(const std::string& key, uint64_t generation, std::string_view data) {
  Status valid = ValidateKey(key);
  if (!valid.ok()) return valid;
  const std::string object = RecordObject(key);

  for (int attempt = 1; attempt <= kPutAttempts; ++attempt) {
    HttpRequest read{.method = "GET", .object = object};
    auto current = Send(read);
    if (!current.ok()) return current.status().WithContext("cannot store key '" + key + "'");
    bool exists = false;
    if (current->status == 200) {
      exists = true;
      auto record = Parse(key, object, current->body);
      if (!record.ok()) return Status::Error("refused: " + record.error());
      if ((*record)->generation > generation) {
        return OlderGenerationRefused(key, generation, (*record)->generation);
      }
    } else if (current->status != 404 || current->ErrorCode() == "NoSuchBucket") {
      return Unexpected(read, *current).WithContext("cannot store key '" + key + "'");
    }

    const std::string bytes = EncodeRecord(key, generation, data);

    // Write only if the object is still the one just checked.
    HttpRequest write{.method = "PUT", .object = object, .bytes = bytes};
    write.headers.emplace_back("Content-Type", "application/octet-stream");
    std::string goog_generation = current->Header("x-goog-generation");
    if (config_.scheme == "gs" && (!exists || !goog_generation.empty())) {
      write.headers.emplace_back("x-goog-if-generation-match", exists ? goog_generation : "0");
    } else if (exists && !current->Header("etag").empty()) {
      write.headers.emplace_back("If-Match", current->Header("etag"));
    } else if (!exists) {
      write.headers.emplace_back("If-None-Match", "*");
    }
    auto written = Send(write);
    if (!written.ok()) return written.status().WithContext("cannot store key '" + key + "'");
    if (written->status == 200) return Status::Ok();
    // 412: another writer changed the object since the read; 409: one is writing it right now.
    if (written->status == 412 || written->status == 409) continue;
    return Unexpected(write, *written).WithContext("cannot store key '" + key + "'");
  }
  return Status::Error("cannot store key '" + key + "' in " + Describe() + ": other writers " +
                       "changed " + Name(object) + " between each of " +
                       std::to_string(kPutAttempts) + " reads and writes; try again");
}

Status BadDigest(const std::string& digest) {
  return Status::Error("'" + digest + "' is not an artifact digest (sha256:<64 hex digits>)");
}

Result<std::optional<uint64_t>> S3Store::BlobSize(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  HttpRequest request{.method = "HEAD", .object = BlobObject(digest)};
  auto response = Send(request);
  if (!response.ok()) return response.status();
  if (response->status == 404) return std::optional<uint64_t>();
  if (response->status != 200) return Unexpected(request, *response);
  auto length = s3::ParseContentLength(response->Header("content-length"));
  if (!length.ok()) {
    return Status::Error("HEAD " + Name(request.object) + " at " + config_.endpoint +
                         " answered with " + length.error());
  }
  return std::optional<uint64_t>(*length);
}

Status S3Store::PutBlob(const std::string& digest, const std::string& path) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  auto existing = BlobSize(digest);
  if (!existing.ok()) return existing.status().WithContext("cannot store " + digest);
  if (existing->has_value()) return Status::Ok();  // same digest, same bytes

  FdCloser fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat info {};
  if (fd.get() < 0 || ::fstat(fd.get(), &info) != 0) {
    return Status::Error("cannot read " + path + ": " + std::strerror(errno));
  }
  const auto size = static_cast<uint64_t>(info.st_size);
  const std::string object = BlobObject(digest);
  if (size > config_.multipart_threshold && size > 0) {
    return PutMultipart(object, fd.get(), size).WithContext("cannot store " + digest);
  }
  // The caller checked the file against the digest, so the digest is the payload hash; S3
  // checks it again against the bytes it receives.
  HttpRequest request{.method = "PUT",
                      .object = object,
                      .fd = fd.get(),
                      .length = size,
                      .payload_hash = digest.substr(digest.find(':') + 1)};
  request.headers.emplace_back("Content-Type", "application/octet-stream");
  auto response = Send(request);
  if (!response.ok()) return response.status().WithContext("cannot store " + digest);
  if (response->status != 200) {
    return Unexpected(request, *response).WithContext("cannot store " + digest);
  }
  return Status::Ok();
}

Status S3Store::PutMultipart(const std::string& object, int fd, uint64_t size) const {
  uint64_t part_size = std::max(config_.part_size, (size + kMaxParts - 1) / kMaxParts);

  HttpRequest create{.method = "POST", .object = object, .query = {{"uploads", ""}}};
  create.headers.emplace_back("Content-Type", "application/octet-stream");
  auto created = Send(create);
  if (!created.ok()) return created.status();
  std::string upload_id = XmlText(created->body, "UploadId");
  if (created->status != 200 || upload_id.empty()) return Unexpected(create, *created);

  auto abort = [&](Status error) {
    // Best effort: an upload left behind only costs storage until a lifecycle rule removes it.
    HttpRequest cancel{.method = "DELETE", .object = object, .query = {{"uploadId", upload_id}}};
    (void)Send(cancel);
    return error;
  };

  std::string complete = "<CompleteMultipartUpload>";
  std::string part;
  uint64_t part_number = 0;
  for (uint64_t offset = 0; offset < size; offset += part_size) {
    ++part_number;
    // Each part is read once into memory to hash it for the signature.
    part.resize(static_cast<size_t>(std::min(part_size, size - offset)));
    size_t filled = 0;
    while (filled < part.size()) {
      ssize_t n = ::pread(fd, part.data() + filled, part.size() - filled,
                          static_cast<off_t>(offset + filled));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return abort(Status::Error(std::string("cannot read the file to upload: ") +
                                   (n < 0 ? std::strerror(errno) : "it is shorter than before")));
      }
      filled += static_cast<size_t>(n);
    }
    HttpRequest upload{
        .method = "PUT",
        .object = object,
        .query = {{"partNumber", std::to_string(part_number)}, {"uploadId", upload_id}},
        .bytes = part};
    auto uploaded = Send(upload);
    if (!uploaded.ok()) return abort(uploaded.status());
    std::string etag = uploaded->Header("etag");
    if (uploaded->status != 200 || etag.empty()) return abort(Unexpected(upload, *uploaded));
    complete += "<Part><PartNumber>" + std::to_string(part_number) + "</PartNumber><ETag>" + etag +
                "</ETag></Part>";
  }
  complete += "</CompleteMultipartUpload>";

  HttpRequest finish{
      .method = "POST", .object = object, .query = {{"uploadId", upload_id}}, .bytes = complete};
  finish.headers.emplace_back("Content-Type", "application/xml");
  auto finished = Send(finish);
  if (!finished.ok()) return abort(finished.status());
  // S3 may answer 200 and still report an error in the body.
  if (finished->status != 200 || !finished->ErrorCode().empty()) {
    return abort(Unexpected(finish, *finished));
  }
  return Status::Ok();
}

Result<std::vector<std::string>> S3Store::ListBlobs() {
  const std::string folder = (config_.prefix.empty() ? "" : config_.prefix + "/") + "blobs/sha256/";
  std::vector<std::string> digests;
  std::string token;
  // ListObjectsV2 answers up to 1000 keys a page; a truncated page names the next one.
  for (int page = 0;; ++page) {
    HttpRequest request{
        .method = "GET", .object = "", .query = {{"list-type", "2"}, {"prefix", folder}}};
    if (!token.empty()) request.query.emplace_back("continuation-token", token);
    if (config_.list_page_keys != 1000) {
      request.query.emplace_back("max-keys", std::to_string(config_.list_page_keys));
    }
    auto response = Send(request);
    if (!response.ok())
      return response.status().WithContext("cannot list the blobs of " + Describe());
    if (response->status != 200) {
      return Unexpected(request, *response).WithContext("cannot list the blobs of " + Describe());
    }
    s3::ListObjectsPage listed = s3::ParseListObjectsPage(response->body);
    for (const std::string& key : listed.keys) {
      if (key.size() <= folder.size() || key.compare(0, folder.size(), folder) != 0) continue;
      std::string digest = "sha256:" + key.substr(folder.size());
      if (config::IsArtifactDigest(digest)) digests.push_back(std::move(digest));
    }
    if (!listed.truncated) break;
    token = std::move(listed.next_token);
    if (token.empty() || page >= 100000) {
      return Status::Error("listing the blobs of " + Describe() +
                           ": a truncated page named no next one");
    }
  }
  return digests;
}

Status S3Store::DeleteBlob(const std::string& digest) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  HttpRequest request{.method = "DELETE", .object = BlobObject(digest)};
  auto response = Send(request);
  if (!response.ok()) return response.status().WithContext("cannot remove " + digest);
  // 204 No Content is S3's answer, also for a key that is not there; 404 from others.
  if (response->status != 204 && response->status != 200 && response->status != 404) {
    return Unexpected(request, *response).WithContext("cannot remove " + digest);
  }
  return Status::Ok();
}

Result<std::string> S3Store::ReadBlob(const std::string& digest, uint64_t offset, uint64_t length) {
  if (!config::IsArtifactDigest(digest)) return BadDigest(digest);
  if (length == 0) {
    auto size = BlobSize(digest);
    if (!size.ok()) return size.status();
    if (!size->has_value()) return Status::Error(digest + " is not stored in " + Describe());
    return std::string();
  }
  HttpRequest request{.method = "GET", .object = BlobObject(digest)};
  request.headers.emplace_back(
      "Range", "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1));
  auto response = Send(request);
  if (!response.ok()) return response.status();
  if (response->status == 404 && response->ErrorCode() != "NoSuchBucket") {
    return Status::Error(digest + " is not stored in " + Describe());
  }
  if (response->status == 416) return std::string();  // the blob ends before `offset`
  if (response->status == 206) return std::move(response->body);
  if (response->status == 200) {  // a server that ignores Range sends the whole blob
    if (offset >= response->body.size()) return std::string();
    return response->body.substr(static_cast<size_t>(offset), static_cast<size_t>(length));
  }
  return Unexpected(request, *response);
}

}  // namespace

Result<S3StoreConfig> ResolveS3StoreConfig(const std::string& uri) {
  S3StoreConfig config;
  config.uri = uri;
  size_t separator = uri.find("://");
  if (separator == std::string::npos) {
    return Status::Error("'" + uri + "' is not an s3:// or gs:// URI");
  }
  config.scheme = Lower(uri.substr(0, separator));
  if (config.scheme != "s3" && config.scheme != "gs") {
    return Status::Error("'" + uri + "' is not an s3:// or gs:// URI");
  }
  const std::string example = config.scheme + "://my-bucket/serve/prod";
  auto bad = [&](const std::string& why) {
    return Status::Error("checkpoint path '" + uri + "' " + why);
  };

  std::string rest = uri.substr(separator + 3);
  if (rest.find('#') != std::string::npos) return bad("must not contain '#'");
  std::string query;
  if (size_t question = rest.find('?'); question != std::string::npos) {
    query = rest.substr(question + 1);
    rest = rest.substr(0, question);
  }
  size_t slash = rest.find('/');
  config.bucket = rest.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (config.bucket.empty()) {
    return bad("names no bucket; write " + config.scheme + "://bucket/prefix, e.g. " + example);
  }
  const size_t max_bucket = config.scheme == "gs" ? 222 : 63;
  auto bucket_char = [&](unsigned char c) {
    return std::islower(c) || std::isdigit(c) || c == '.' || c == '-' ||
           (config.scheme == "gs" && c == '_');
  };
  if (config.bucket.size() < 3 || config.bucket.size() > max_bucket ||
      !std::all_of(config.bucket.begin(), config.bucket.end(), bucket_char) ||
      !std::isalnum(static_cast<unsigned char>(config.bucket.front())) ||
      !std::isalnum(static_cast<unsigned char>(config.bucket.back()))) {
    return bad("has the bucket name '" + config.bucket + "', which is not valid: use 3 to " +
               std::to_string(max_bucket) + " lower-case letters, digits, '.' and '-'" +
               (config.scheme == "gs" ? std::string(" (and '_')") : std::string()) +
               ", starting and ending with a letter or digit");
  }
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (!prefix.empty()) {
    if (auto c = std::find_if_not(prefix.begin(), prefix.end(), IsPrefixChar); c != prefix.end()) {
      return bad("has the prefix '" + prefix + "' with the character '" + std::string(1, *c) +
                 "'; prefixes may use only letters, digits, '.', '_', '-' and '/'");
    }
    for (size_t start = 0;;) {
      size_t end = prefix.find('/', start);
      std::string part = prefix.substr(start, end == std::string::npos ? end : end - start);
      if (part.empty() || part == "." || part == "..") {
        return bad("has the prefix '" + prefix + "' with an empty, '.' or '..' part");
      }
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  config.prefix = prefix;

  std::map<std::string, std::string> params;
  if (!query.empty()) {
    size_t start = 0;
    while (start <= query.size()) {
      size_t end = query.find('&', start);
      std::string pair = query.substr(start, end == std::string::npos ? end : end - start);
      start = end == std::string::npos ? query.size() + 1 : end + 1;
      if (pair.empty()) continue;
      size_t equals = pair.find('=');
      std::string name = pair.substr(0, equals);
      if (name != "endpoint" && name != "region" && name != "addressing" &&
          name != "multipart_threshold" && name != "part_size" && name != "list_page_keys") {
        return bad("has the unknown parameter '" + name + "'; known: " + kKnownParams);
      }
      if (equals == std::string::npos || equals + 1 == pair.size()) {
        return bad("gives no value for the parameter '" + name + "'");
      }
      auto value = PercentDecode(pair.substr(equals + 1));
      if (!value.ok()) return bad("has a value for '" + name + "' that " + value.error());
      if (!params.emplace(name, *value).second) {
        return bad("gives the parameter '" + name + "' twice");
      }
    }
  }

  // Region.
  if (auto it = params.find("region"); it != params.end()) {
    config.region = it->second;
  } else if (config.scheme == "gs") {
    config.region = "auto";
  } else {
    for (const char* var : {"AWS_REGION", "AWS_DEFAULT_REGION"}) {
      if (config.region.empty()) config.region = Env(var);
    }
    if (config.region.empty()) config.region = RegionFromConfigFile();
    if (config.region.empty()) config.region = "us-east-1";
  }
  if (!std::all_of(config.region.begin(), config.region.end(),
                   [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '_'; })) {
    return bad("has the region '" + config.region + "', which is not a region name like us-east-1");
  }

  // Endpoint.
  bool endpoint_overridden = true;
  if (auto it = params.find("endpoint"); it != params.end()) {
    auto endpoint = ValidateEndpoint(it->second, "from the URI");
    if (!endpoint.ok()) return bad("is not usable: " + endpoint.error());
    config.endpoint = *endpoint;
  } else if (std::string env = Env("AWS_ENDPOINT_URL"); !env.empty()) {
    auto endpoint = ValidateEndpoint(env, "from AWS_ENDPOINT_URL");
    if (!endpoint.ok()) return bad("is not usable: " + endpoint.error());
    config.endpoint = *endpoint;
  } else {
    endpoint_overridden = false;
    config.endpoint = config.scheme == "gs" ? "https://storage.googleapis.com"
                                            : "https://s3." + config.region + ".amazonaws.com";
  }

  // Addressing. Virtual-hosted names need a DNS name and certificate per bucket, which only AWS
  // provides (and not for bucket names with dots).
  if (auto it = params.find("addressing"); it != params.end()) {
    if (it->second != "path" && it->second != "virtual") {
      return bad("has addressing='" + it->second + "'; use addressing=path or addressing=virtual");
    }
    config.path_style = it->second == "path";
  } else {
    config.path_style = endpoint_overridden || config.scheme == "gs" ||
                        config.bucket.find('.') != std::string::npos ||
                        !IsAwsEndpoint(config.endpoint);
  }

  // Multipart sizes.
  if (auto it = params.find("multipart_threshold"); it != params.end()) {
    auto bytes = ParseBytes("multipart_threshold", it->second);
    if (!bytes.ok()) return bad("is not usable: " + bytes.error());
    config.multipart_threshold = *bytes;
  }
  if (auto it = params.find("part_size"); it != params.end()) {
    // Smaller than S3's 5 MiB minimum only when asked for: tests and servers that allow it.
    auto bytes = ParseBytes("part_size", it->second);
    if (!bytes.ok()) return bad("is not usable: " + bytes.error());
    if (*bytes == 0 || *bytes > kMaxPartSize) {
      return bad("has part_size=" + it->second + "; use 1 byte to 5 GiB (S3 wants at least " +
                 std::to_string(kMinAwsPartSize) + ")");
    }
    config.part_size = *bytes;
  }
  if (auto it = params.find("list_page_keys"); it != params.end()) {
    auto keys = ParseBytes("list_page_keys", it->second);
    if (!keys.ok() || *keys == 0 || *keys > 1000) {
      return bad("has list_page_keys=" + it->second + "; use 1 to 1000 (S3 answers at most 1000)");
    }
    config.list_page_keys = static_cast<int>(*keys);
  }

  Status credentials = ResolveCredentials(&config);
  if (!credentials.ok()) return credentials;
  return config;
}

std::unique_ptr<CheckpointStore> OpenS3Store(S3StoreConfig config) {
  return std::make_unique<S3Store>(std::move(config));
}

Result<std::unique_ptr<CheckpointStore>> OpenS3Store(const std::string& uri) {
  auto config = ResolveS3StoreConfig(uri);
  if (!config.ok()) return config.status();
  return OpenS3Store(std::move(*config));
}

}  // namespace serve::checkpointer
