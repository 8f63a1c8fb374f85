#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "checkpointer/sigv4.h"
#include "checkpointer/store.h"

namespace serve::checkpointer {

// `s3://bucket/prefix` and `gs://bucket/prefix`: a CheckpointStore in an object store spoken to
// over HTTP with AWS Signature V4 (S3, S3-compatible servers, and Google Cloud Storage's XML API
// with HMAC keys).
//
// Layout, under the prefix (which may be empty):
//   key "controller/state"  -> object <prefix>/controller/state.ckpt, the same StoredCheckpoint
//                              FlatBuffer the file store writes
//   blob "sha256:<hex>"     -> object <prefix>/blobs/sha256/<hex>
//
// Fencing. A put reads the current object and notes its ETag, refuses when the stored generation
// is higher, and writes with `If-Match: <etag>` (`If-None-Match: *` when there was none), so a
// writer that slipped in between gets 412 and the put reads and checks again (a few times). On
// gs:// the same is done with x-goog-if-generation-match. AWS S3 and GCS honour these
// preconditions, which makes check-and-write one atomic step per key. Servers that ignore them
// (s3rver, older MinIO) degrade to read-check-write: two controllers racing within one round
// trip could both succeed, the later write winning.
//
// An object that does not verify is an error naming it, and is never overwritten: it may be the
// only copy of a cluster's state.
//
// Blobs are written once: a put of a digest that exists is a no-op; up to multipart_threshold
// bytes go in one streamed PUT whose x-amz-content-sha256 is the digest, so the server checks
// the bytes; larger ones in a multipart upload of part_size parts, aborted on failure.
//
// An unreachable endpoint does not fail the open (the service must start and retry later); each
// call fails with the endpoint and curl's error. Calls are safe from several threads.

// Where and how to reach the bucket, resolved from the URI, the environment and ~/.aws.
struct S3StoreConfig {
  std::string uri;     // as given, for Describe()
  std::string scheme;  // "s3" or "gs"
  std::string bucket;
  std::string prefix;       // without leading or trailing '/'; may be empty
  std::string endpoint;     // "https://s3.us-east-1.amazonaws.com", without a trailing '/'
  std::string region;       // "us-east-1"; "auto" for gs
  bool path_style = false;  // http://endpoint/bucket/key rather than http://bucket.endpoint/key
  uint64_t multipart_threshold = 16ull << 20;
  uint64_t part_size = 8ull << 20;
  // Keys per page when listing blobs (ListObjectsV2 max-keys; S3's own limit is 1000).
  int list_page_keys = 1000;
  sigv4::Credentials credentials;
  // Where the credentials came from, for errors: "environment (AWS_ACCESS_KEY_ID)" or
  // "/home/x/.aws/credentials [default]".
  std::string credentials_source;
  // Read for every signature; tests replace it to sign at a fixed time.
  std::function<std::chrono::system_clock::time_point()> clock = [] {
    return std::chrono::system_clock::now();
  };
};

// Parses the URI:
//
//   s3://bucket[/prefix][?param=value&...]   gs://bucket[/prefix][?param=value&...]
//
// Parameters: endpoint=http://127.0.0.1:9000 (else $AWS_ENDPOINT_URL, else
// https://s3.<region>.amazonaws.com or https://storage.googleapis.com); region= (else
// $AWS_REGION, $AWS_DEFAULT_REGION, `region` of the profile in ~/.aws/config, else us-east-1; gs
// uses "auto"); addressing=path|virtual (default: virtual on AWS, path when the endpoint is
// overridden, for gs, and for bucket names with dots); multipart_threshold= and part_size= in
// bytes (defaults 16 MiB and 8 MiB; S3 wants parts of at least 5 MiB, smaller ones are accepted
// only when asked for explicitly); list_page_keys= (1 to 1000, default 1000) keys per page when
// the checkpointer lists blobs to garbage-collect them.
//
// Credentials: $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY and $AWS_SESSION_TOKEN, else the
// profile $AWS_PROFILE (default "default") of ~/.aws/credentials ($AWS_SHARED_CREDENTIALS_FILE);
// for gs, $GS_ACCESS_KEY_ID and $GS_SECRET_ACCESS_KEY come first.
//
// Errors say what is wrong with the URI, or which credentials are missing and where they were
// looked for.
Result<S3StoreConfig> ResolveS3StoreConfig(const std::string& uri);

// Opens a store with a resolved configuration. Does not contact the server.
std::unique_ptr<CheckpointStore> OpenS3Store(S3StoreConfig config);

// `s3://bucket/prefix` and `gs://bucket/prefix`: objects over HTTP with AWS Signature V4.
// `uri` is the whole --checkpoint-path; errors say what is wrong with it or what is missing.
Result<std::unique_ptr<CheckpointStore>> OpenS3Store(const std::string& uri);

}  // namespace serve::checkpointer
