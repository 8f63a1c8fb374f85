#include "checkpointer/sigv4.h"

#include <gtest/gtest.h>

#include <chrono>

namespace serve::checkpointer::sigv4 {
namespace {

using std::chrono::system_clock;

system_clock::time_point At(int year, unsigned month, unsigned day, int hour, int minute) {
  auto date = std::chrono::sys_days(std::chrono::year(year) / std::chrono::month(month) /
                                    std::chrono::day(day));
  return date + std::chrono::hours(hour) + std::chrono::minutes(minute);
}

// The S3 examples of "Signature Calculations for the Authorization Header: Transferring Payload
// in a Single Chunk" (Amazon S3 API Reference, sig-v4-header-based-auth.html).
const Credentials kS3Example{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                             ""};
const system_clock::time_point kS3ExampleTime = At(2013, 5, 24, 0, 0);
constexpr char kExampleBucket[] = "examplebucket.s3.amazonaws.com";

std::string HeaderValue(const Signed& signed_request, const std::string& name) {
  for (const auto& [key, value] : signed_request.headers) {
    if (key == name) return value;
  }
  return "<absent>";
}

TEST(SigV4S3Example, GetObjectWithRange) {
  Request request{"GET", kExampleBucket,           "/test.txt",
                  {},    {{"Range", "bytes=0-9"}}, kEmptyPayloadHash};
  Signed result = Sign(request, kS3Example, "us-east-1", "s3", kS3ExampleTime);
  EXPECT_EQ(result.signed_headers, "host;range;x-amz-content-sha256;x-amz-date");
  EXPECT_EQ(result.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
      << result.canonical_request;
  EXPECT_EQ(result.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(HeaderValue(result, "x-amz-date"), "20130524T000000Z");
  EXPECT_EQ(HeaderValue(result, "x-amz-content-sha256"), kEmptyPayloadHash);
  EXPECT_EQ(HeaderValue(result, "x-amz-security-token"), "<absent>");
}

TEST(SigV4S3Example, PutObjectEncodesTheDollarInTheKey) {
  std::string payload_hash = Sha256Hex("Welcome to Amazon S3.");
  ASSERT_EQ(payload_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  Request request{
      "PUT",
      kExampleBucket,
      "/test$file.text",
      {},
      {{"Date", "Fri, 24 May 2013 00:00:00 GMT"}, {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
      payload_hash};
  Signed result = Sign(request, kS3Example, "us-east-1", "s3", kS3ExampleTime);
  EXPECT_NE(result.canonical_request.find("\n/test%24file.text\n"), std::string::npos)
      << result.canonical_request;
  EXPECT_EQ(result.signed_headers, "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class");
  EXPECT_EQ(result.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
      << result.canonical_request;
}

TEST(SigV4S3Example, GetBucketLifecycleSignsAValuelessParameter) {
  Request request{"GET", kExampleBucket, "/", {{"lifecycle", ""}}, {}, kEmptyPayloadHash};
  Signed result = Sign(request, kS3Example, "us-east-1", "s3", kS3ExampleTime);
  EXPECT_NE(result.canonical_request.find("GET\n/\nlifecycle=\n"), std::string::npos)
      << result.canonical_request;
  EXPECT_EQ(result.signature, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
      << result.canonical_request;
}

TEST(SigV4S3Example, ListObjectsSortsTheQuery) {
  // Given in the opposite order to the canonical one.
  Request request{"GET", kExampleBucket,   "/", {{"prefix", "J"}, {"max-keys", "2"}},
                  {},    kEmptyPayloadHash};
  Signed result = Sign(request, kS3Example, "us-east-1", "s3", kS3ExampleTime);
  EXPECT_NE(result.canonical_request.find("GET\n/\nmax-keys=2&prefix=J\n"), std::string::npos)
      << result.canonical_request;
  EXPECT_EQ(result.signature, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
      << result.canonical_request;
}

// Cases of the AWS Signature Version 4 test suite (aws-sig-v4-test-suite), which sign for the
// made-up service "service" and so carry no x-amz-content-sha256.
const Credentials kSuite{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
const system_clock::time_point kSuiteTime = At(2015, 8, 30, 12, 36);
constexpr char kSuiteHost[] = "example.amazonaws.com";

TEST(SigV4TestSuite, GetVanilla) {
  Request request{"GET", kSuiteHost, "/", {}, {}, kEmptyPayloadHash};
  Signed result = Sign(request, kSuite, "us-east-1", "service", kSuiteTime);
  EXPECT_EQ(result.canonical_request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
            "host;x-amz-date\n" +
                std::string(kEmptyPayloadHash));
  EXPECT_EQ(result.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
  EXPECT_EQ(result.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
  EXPECT_EQ(HeaderValue(result, "x-amz-content-sha256"), "<absent>");
}

TEST(SigV4TestSuite, GetVanillaQueryOrderKeyCase) {
  Request request{"GET", kSuiteHost,       "/", {{"Param2", "value2"}, {"Param1", "value1"}},
                  {},    kEmptyPayloadHash};
  Signed result = Sign(request, kSuite, "us-east-1", "service", kSuiteTime);
  EXPECT_EQ(result.signature, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
      << result.canonical_request;
}

TEST(SigV4TestSuite, PostVanilla) {
  Request request{"POST", kSuiteHost, "/", {}, {}, kEmptyPayloadHash};
  Signed result = Sign(request, kSuite, "us-east-1", "service", kSuiteTime);
  EXPECT_EQ(result.signature, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
      << result.canonical_request;
}

TEST(SigV4TestSuite, PostXWwwFormUrlencoded) {
  Request request{"POST",
                  kSuiteHost,
                  "/",
                  {},
                  {{"Content-Type", "application/x-www-form-urlencoded"}},
                  Sha256Hex("Param1=value1")};
  Signed result = Sign(request, kSuite, "us-east-1", "service", kSuiteTime);
  EXPECT_EQ(result.signed_headers, "content-type;host;x-amz-date");
  EXPECT_EQ(result.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281")
      << result.canonical_request;
  EXPECT_EQ(result.signature, "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a");
}

TEST(SigV4, SessionTokenIsSentAndSigned) {
  Credentials credentials = kSuite;
  credentials.session_token = "token/with+chars";
  Request request{"GET", kSuiteHost, "/", {}, {}, kEmptyPayloadHash};
  Signed result = Sign(request, credentials, "us-east-1", "service", kSuiteTime);
  EXPECT_EQ(HeaderValue(result, "x-amz-security-token"), "token/with+chars");
  EXPECT_EQ(result.signed_headers, "host;x-amz-date;x-amz-security-token");
  EXPECT_NE(result.signature, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

TEST(SigV4, HeaderValuesAreTrimmedAndSpacesCollapsed) {
  Request spaced{"GET", kSuiteHost, "/", {}, {{"My-Header1", "  a   b  c "}}, kEmptyPayloadHash};
  Request tight{"GET", kSuiteHost, "/", {}, {{"my-header1", "a b c"}}, kEmptyPayloadHash};
  EXPECT_EQ(Sign(spaced, kSuite, "us-east-1", "service", kSuiteTime).signature,
            Sign(tight, kSuite, "us-east-1", "service", kSuiteTime).signature);
}

TEST(SigV4, UriEncodeFollowsRfc3986) {
  EXPECT_EQ(UriEncode("a b!'()*~._-", false), "a%20b%21%27%28%29%2A~._-");
  EXPECT_EQ(UriEncode("/bucket/a key+x/ü", true), "/bucket/a%20key%2Bx/%C3%BC");
  EXPECT_EQ(UriEncode("a/b", false), "a%2Fb");
  EXPECT_EQ(UriEncode("a%20b", true), "a%2520b") << "the path is encoded exactly once";
}

TEST(SigV4, AmzDateIsUtc) {
  EXPECT_EQ(AmzDate(kSuiteTime), "20150830T123600Z");
  EXPECT_EQ(AmzDate(system_clock::time_point{}), "19700101T000000Z");
}

}  // namespace
}  // namespace serve::checkpointer::sigv4
