#include "checkpointer/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>

namespace serve::checkpointer::sigv4 {
namespace {

constexpr char kAlgorithm[] = "AWS4-HMAC-SHA256";

std::string Hex(const unsigned char* bytes, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 15];
  }
  return out;
}

std::string HmacSha256(std::string_view key, std::string_view message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &size);
  return std::string(reinterpret_cast<const char*>(out), size);
}

std::string Lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Header values are signed trimmed, with runs of spaces collapsed to one.
std::string CanonicalValue(std::string_view value) {
  std::string out;
  bool in_space = false;
  for (char c : value) {
    if (c == ' ' || c == '\t') {
      in_space = true;
      continue;
    }
    if (in_space && !out.empty()) out += ' ';
    in_space = false;
    out += c;
  }
  return out;
}

bool HasHeader(const HeaderList& headers, std::string_view lower_name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& header) { return Lower(header.first) == lower_name; });
}

}  // namespace

std::string UriEncode(std::string_view text, bool keep_slash) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
        (keep_slash && c == '/')) {
      out += ch;
    } else {
      out += '%';
      out += kDigits[c >> 4];
      out += kDigits[c & 15];
    }
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return Hex(digest, sizeof(digest));
}

std::string AmzDate(std::chrono::system_clock::time_point time) {
  std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y%m%dT%H%M%SZ", &utc);
  return text;
}

Signed Sign(const Request& request, const Credentials& credentials, const std::string& region,
            const std::string& service, std::chrono::system_clock::time_point now) {
  Signed result;
  const std::string amz_date = AmzDate(now);
  const std::string date = amz_date.substr(0, 8);

  if (!HasHeader(request.headers, "x-amz-date"))
    result.headers.emplace_back("x-amz-date", amz_date);
  if (service == "s3" && !HasHeader(request.headers, "x-amz-content-sha256")) {
    result.headers.emplace_back("x-amz-content-sha256", request.payload_hash);
  }
  if (!credentials.session_token.empty() && !HasHeader(request.headers, "x-amz-security-token")) {
    result.headers.emplace_back("x-amz-security-token", credentials.session_token);
  }

  // Canonical headers: lower-case names, sorted; repeated names joined with ','.
  std::map<std::string, std::string> canonical_headers;
  auto add = [&](const std::string& name, const std::string& value) {
    std::string& slot = canonical_headers[Lower(name)];
    if (!slot.empty()) slot += ',';
    slot += CanonicalValue(value);
  };
  if (!HasHeader(request.headers, "host")) add("host", request.host);
  for (const auto& [name, value] : request.headers) add(name, value);
  for (const auto& [name, value] : result.headers) add(name, value);

  // Canonical query: encoded names and values, sorted by name then value.
  std::vector<std::pair<std::string, std::string>> query;
  for (const auto& [name, value] : request.query) {
    query.emplace_back(UriEncode(name, false), UriEncode(value, false));
  }
  std::sort(query.begin(), query.end());

  std::string canonical = request.method + "\n";
  canonical += UriEncode(request.path.empty() ? "/" : request.path, /*keep_slash=*/true) + "\n";
  for (size_t i = 0; i < query.size(); ++i) {
    if (i > 0) canonical += '&';
    canonical += query[i].first + "=" + query[i].second;
  }
  canonical += "\n";
  for (const auto& [name, value] : canonical_headers) {
    canonical += name + ":" + value + "\n";
    if (!result.signed_headers.empty()) result.signed_headers += ';';
    result.signed_headers += name;
  }
  canonical += "\n" + result.signed_headers + "\n" + request.payload_hash;
  result.canonical_request = canonical;

  const std::string scope = date + "/" + region + "/" + service + "/aws4_request";
  result.string_to_sign =
      std::string(kAlgorithm) + "\n" + amz_date + "\n" + scope + "\n" + Sha256Hex(canonical);

  std::string key = HmacSha256("AWS4" + credentials.secret_access_key, date);
  key = HmacSha256(key, region);
  key = HmacSha256(key, service);
  key = HmacSha256(key, "aws4_request");
  std::string signature = HmacSha256(key, result.string_to_sign);
  result.signature =
      Hex(reinterpret_cast<const unsigned char*>(signature.data()), signature.size());

  result.authorization = std::string(kAlgorithm) + " Credential=" + credentials.access_key_id +
                         "/" + scope + ", SignedHeaders=" + result.signed_headers +
                         ", Signature=" + result.signature;
  return result;
}

}  // namespace serve::checkpointer::sigv4
