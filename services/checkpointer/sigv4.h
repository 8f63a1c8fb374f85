#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace serve::checkpointer::sigv4 {

// AWS Signature Version 4 for requests signed in the Authorization header, with the payload sent
// in one chunk (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
// S3 and Google Cloud Storage's XML API (with HMAC keys) both accept it.

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // temporary credentials only; sent as x-amz-security-token
};

// One request before signing. Every header given here is signed, so the caller must send them
// exactly as given; "host" is always signed and need not be listed.
struct Request {
  std::string method;        // "GET"
  std::string host;          // the Host header: "examplebucket.s3.amazonaws.com", "127.0.0.1:9000"
  std::string path;          // not yet encoded: "/test$file.text"
  HeaderList query;          // not yet encoded; order does not matter
  HeaderList headers;        // e.g. {"Range", "bytes=0-9"}
  std::string payload_hash;  // lower-case hex SHA-256 of the body, or "UNSIGNED-PAYLOAD"
};

struct Signed {
  std::string authorization;  // the Authorization header value
  // Headers the caller must add to the request, besides Authorization: x-amz-date, and
  // x-amz-content-sha256 (service "s3") and x-amz-security-token (session credentials), unless
  // Request::headers already holds them.
  HeaderList headers;
  // The intermediate steps, for tests and for debugging a SignatureDoesNotMatch.
  std::string canonical_request;
  std::string string_to_sign;
  std::string signed_headers;  // "host;range;x-amz-content-sha256;x-amz-date"
  std::string signature;       // lower-case hex
};

// Signs `request` for `region` and `service` ("s3") at time `now`; the caller passes the clock's
// reading, so tests can sign at the published examples' times.
Signed Sign(const Request& request, const Credentials& credentials, const std::string& region,
            const std::string& service, std::chrono::system_clock::time_point now);

// "20130524T000000Z", the x-amz-date form of `time` (UTC).
std::string AmzDate(std::chrono::system_clock::time_point time);

// RFC 3986 percent-encoding: everything but A-Z a-z 0-9 - . _ ~ is encoded as %XX (upper-case
// hex); with `keep_slash`, '/' is left alone too. S3 encodes the path this way once per segment
// (it does not double-encode, unlike the other services).
std::string UriEncode(std::string_view text, bool keep_slash);

// Lower-case hex SHA-256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);

// SHA-256 of the empty string, the payload hash of a request without a body.
inline constexpr char kEmptyPayloadHash[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

}  // namespace serve::checkpointer::sigv4
