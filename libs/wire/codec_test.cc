#include "wire/codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cctype>
#include <nlohmann/json.hpp>
#include <set>

#include "wire/schema_text.h"

namespace serve::wire {
namespace {

using ::testing::HasSubstr;

DeployRequestT SampleDeploy() {
  DeployRequestT request;
  auto spec = std::make_unique<DeploymentSpecT>();
  spec->name = "hello";
  spec->route_prefix = "/hello";
  spec->runtime = "builtin:hello";
  spec->num_replicas = 2;
  spec->user_config = R"({"message":"hi"})";
  spec->resources = std::make_unique<ResourcesT>();
  spec->resources->num_cpus = 0.5;
  request.deployments.push_back(std::move(spec));
  return request;
}

TEST(Codec, PackUnpackRoundTrip) {
  std::string bytes = Pack(SampleDeploy());
  auto decoded = Unpack<DeployRequest>(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.error();
  ASSERT_EQ(decoded->deployments.size(), 1u);
  EXPECT_EQ(*decoded->deployments[0], *SampleDeploy().deployments[0]);
}

TEST(Codec, BuffersCarryTheirTablesIdentifier) {
  EXPECT_EQ(Pack(SampleDeploy()).substr(4, 4), "DPLQ");
  EXPECT_EQ(Pack(DeleteRequestT{}).substr(4, 4), "DELQ");
  JsonCodec codec;
  auto from_json = codec.FromJson<DeployRequest>(R"({"deployments":[{"name":"a"}]})");
  ASSERT_TRUE(from_json.ok()) << from_json.error();
  EXPECT_EQ(from_json->substr(4, 4), "DPLQ");
  EXPECT_TRUE(Unpack<DeployRequest>(*from_json).ok());
}

TEST(Codec, EveryTableHasAnIdentifierOfItsOwn) {
  flatbuffers::Parser parser;
  ASSERT_TRUE(parser.Parse(kSchemaText)) << parser.error_;
  std::set<std::string> seen = {kLegacyIdentifier};
  for (const flatbuffers::StructDef* table : parser.structs_.vec) {
    std::string name = table->defined_namespace->GetFullyQualifiedName(table->name);
    const flatbuffers::Value* id = table->attributes.Lookup("wire_id");
    ASSERT_NE(id, nullptr) << name << " has no wire_id";
    EXPECT_EQ(id->constant.size(), 4u) << name;
    for (char c : id->constant) EXPECT_TRUE(isupper(static_cast<unsigned char>(c))) << name;
    EXPECT_TRUE(seen.insert(id->constant).second) << name << ": " << id->constant << " is taken";
    EXPECT_STREQ(IdentifierOf(name.c_str()), id->constant.c_str());
  }
  EXPECT_GT(seen.size(), 50u);
}

// A StatusRequest's layout reads as a DeleteRequest's: only the identifier tells them apart.
TEST(Codec, AMessageOfAnotherTableIsRefusedAndNamed) {
  StatusRequestT status;
  status.names = {"hello"};
  auto as_delete = Unpack<DeleteRequest>(Pack(status));
  ASSERT_FALSE(as_delete.ok());
  EXPECT_THAT(as_delete.error(),
              HasSubstr("with identifier DELQ nor a JSON object; they are a StatusRequest, sent "
                        "where a DeleteRequest is expected"));
}

// Checkpoints written when every buffer carried SRV1 are still read; messages are not.
TEST(Codec, LegacyIdentifierIsReadOnlyForStoredTables) {
  flatbuffers::FlatBufferBuilder fbb;
  StoredCheckpointT record;
  record.key = "controller/state";
  fbb.Finish(StoredCheckpoint::Pack(fbb, &record), kLegacyIdentifier);
  std::string bytes(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
  auto stored = Unpack<StoredCheckpoint>(bytes);
  ASSERT_TRUE(stored.ok()) << stored.error();
  EXPECT_EQ(stored->key, "controller/state");

  flatbuffers::FlatBufferBuilder message;
  DeleteRequestT request;
  message.Finish(DeleteRequest::Pack(message, &request), kLegacyIdentifier);
  EXPECT_FALSE(Unpack<DeleteRequest>(
                   std::string_view(reinterpret_cast<const char*>(message.GetBufferPointer()),
                                    message.GetSize()))
                   .ok());
}

TEST(Codec, GarbageFailsVerification) {
  auto decoded = Unpack<DeployRequest>("\x01\x02garbage bytes that are not a flatbuffer");
  ASSERT_FALSE(decoded.ok());
  EXPECT_THAT(decoded.error(), HasSubstr("not a valid DeployRequest"));
}

TEST(Codec, EmptyAndTinyInputsFailVerification) {
  EXPECT_FALSE(Unpack<DeployRequest>("").ok());
  EXPECT_FALSE(Unpack<DeployRequest>("abc").ok());
}

TEST(Codec, EveryTruncationFailsVerificationWithoutCrashing) {
  std::string bytes = Pack(SampleDeploy());
  for (size_t size = 0; size < bytes.size(); ++size) {
    std::string truncated = bytes.substr(0, size);
    auto decoded = Unpack<DeployRequest>(truncated);
    if (decoded.ok()) {
      // A prefix that verifies must still be a readable message.
      EXPECT_LE(decoded->deployments.size(), 1u);
    }
  }
  auto whole = Unpack<DeployRequest>(bytes);
  EXPECT_TRUE(whole.ok());
}

TEST(Codec, FlippedBytesNeverCrash) {
  std::string bytes = Pack(SampleDeploy());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string corrupt = bytes;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0xff);
    auto decoded = Unpack<DeployRequest>(corrupt);
    (void)decoded;  // verification either refuses or yields a readable value
  }
}

TEST(Codec, JsonRoundTrip) {
  JsonCodec codec;
  auto binary = codec.FromJson<DeployRequest>(
      R"({"deployments":[{"name":"hello","route_prefix":"/hello","runtime":"builtin:hello",
          "num_replicas":3,"user_config":"{\"message\":\"hi\"}"}]})");
  ASSERT_TRUE(binary.ok()) << binary.error();
  auto decoded = Unpack<DeployRequest>(*binary);
  ASSERT_TRUE(decoded.ok()) << decoded.error();
  ASSERT_EQ(decoded->deployments.size(), 1u);
  EXPECT_EQ(decoded->deployments[0]->name, "hello");
  EXPECT_EQ(decoded->deployments[0]->num_replicas, 3);
  EXPECT_EQ(decoded->deployments[0]->max_concurrent_queries, 100);  // schema default
  EXPECT_EQ(decoded->deployments[0]->user_config, R"({"message":"hi"})");

  std::string json = codec.ToJson(*decoded);
  EXPECT_THAT(json, HasSubstr(R"("name": "hello")"));
  EXPECT_THAT(json, HasSubstr(R"("num_replicas": 3)"));
}

TEST(Codec, JsonPrintsEnumsByName) {
  JsonCodec codec;
  StatusReplyT reply;
  auto deployment = std::make_unique<DeploymentStatusT>();
  deployment->name = "hello";
  deployment->status = DeploymentState::HEALTHY;
  reply.deployments.push_back(std::move(deployment));
  EXPECT_THAT(codec.ToJson(reply), HasSubstr(R"("status": "HEALTHY")"));
}

TEST(Codec, JsonUnknownFieldIsNamed) {
  JsonCodec codec;
  auto binary = codec.FromJson<DeployRequest>(R"({"deployments":[{"nme":"x"}]})");
  ASSERT_FALSE(binary.ok());
  EXPECT_THAT(binary.error(), HasSubstr("nme"));
  EXPECT_THAT(binary.error(), HasSubstr("DeployRequest"));
}

TEST(Codec, JsonWrongTypeIsAnError) {
  JsonCodec codec;
  auto binary = codec.FromJson<DeployRequest>(R"({"deployments":[{"num_replicas":"two"}]})");
  ASSERT_FALSE(binary.ok());
  EXPECT_THAT(binary.error(), HasSubstr("num_replicas"));
}

TEST(Codec, MalformedJsonIsAnError) {
  JsonCodec codec;
  EXPECT_FALSE(codec.FromJson<DeployRequest>("{\"deployments\": [").ok());
  EXPECT_FALSE(codec.FromJson<DeployRequest>("{").ok());
}

TEST(Codec, DecodeRequestAcceptsBothEncodings) {
  JsonCodec codec;
  auto from_binary = DecodeRequest<DeleteRequest>(codec, Pack([] { DeleteRequestT r; r.names = {"a", "b"}; return r; }()));
  ASSERT_TRUE(from_binary.ok()) << from_binary.error();
  EXPECT_FALSE(from_binary.looked_like_json());
  EXPECT_EQ(from_binary->names.size(), 2u);

  auto from_json = DecodeRequest<DeleteRequest>(codec, R"(  {"names":["a"]})");
  ASSERT_TRUE(from_json.ok()) << from_json.error();
  EXPECT_TRUE(from_json.looked_like_json());
  EXPECT_EQ(from_json->names, std::vector<std::string>{"a"});

  auto empty_json = DecodeRequest<StatusRequest>(codec, "{}");
  EXPECT_TRUE(empty_json.ok()) << empty_json.error();

  EXPECT_FALSE(DecodeRequest<StatusRequest>(codec, "hello").ok());
  EXPECT_FALSE(DecodeRequest<StatusRequest>(codec, "").ok());
}

TEST(Codec, ARequestThatLooksLikeJsonButDoesNotDecodeIsAnsweredInJson) {
  JsonCodec codec;
  auto malformed = DecodeRequest<DeleteRequest>(codec, R"({"names": [)");
  ASSERT_FALSE(malformed.ok());
  EXPECT_TRUE(malformed.looked_like_json());
  EXPECT_THAT(malformed.error(), HasSubstr("DeleteRequest"));
  DeleteReplyT reply;
  reply.error = malformed.error();
  std::string answer = EncodeReply(codec, malformed, reply);
  auto parsed = nlohmann::json::parse(answer, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(parsed.is_object()) << answer;
  EXPECT_EQ(parsed["error"], malformed.error());

  auto unknown_field = DecodeRequest<DeleteRequest>(codec, R"({"nmes": ["a"]})");
  ASSERT_FALSE(unknown_field.ok());
  EXPECT_TRUE(unknown_field.looked_like_json());
  EXPECT_THAT(unknown_field.error(), HasSubstr("nmes"));

  // Bytes that are neither: the error goes back as a FlatBuffer.
  auto garbage = DecodeRequest<DeleteRequest>(codec, "hello");
  ASSERT_FALSE(garbage.ok());
  EXPECT_FALSE(garbage.looked_like_json());
  auto binary = Unpack<DeleteReply>(EncodeReply(codec, garbage, reply));
  EXPECT_TRUE(binary.ok()) << binary.error();
}

TEST(Codec, Base64BothWays) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t size : {0u, 1u, 2u, 3u, 4u, 5u, 255u, 256u}) {
    std::string bytes = all.substr(0, size);
    std::string text = Base64Encode(bytes);
    EXPECT_EQ(text.size() % 4, 0u);
    auto back = Base64Decode(text);
    ASSERT_TRUE(back.ok()) << back.error();
    EXPECT_EQ(*back, bytes) << size;
  }
  EXPECT_EQ(Base64Encode("hello"), "aGVsbG8=");
  EXPECT_EQ(*Base64Decode("aGVsbG8="), "hello");
  EXPECT_EQ(*Base64Decode("aGVsbG8"), "hello");  // unpadded
  EXPECT_EQ(*Base64Decode("+/8="), std::string("\xfb\xff"));
  EXPECT_EQ(*Base64Decode("-_8"), std::string("\xfb\xff"));  // url-safe, unpadded
  EXPECT_EQ(*Base64Decode(""), "");
  EXPECT_THAT(Base64Decode("aGV*").error(), HasSubstr("character 3"));
  EXPECT_FALSE(Base64Decode("aGVsb").ok());      // 5 characters encode no whole bytes
  EXPECT_FALSE(Base64Decode("aG=Vs").ok());      // padding in the middle
  EXPECT_FALSE(Base64Decode("aGVsbG8==").ok());  // one '=' too many
}

TEST(Codec, BytesFieldsAreBase64InJson) {
  JsonCodec codec;
  BlobPutT put;
  put.digest = "sha256:00";
  put.data = {'h', 'e', 'l', 'l', 'o', 0, 255};
  auto json = codec.ToJson(Pack(put), BlobPut::GetFullyQualifiedName());
  ASSERT_TRUE(json.ok()) << json.error();
  auto parsed = nlohmann::json::parse(*json);
  EXPECT_EQ(parsed["data"], "aGVsbG8A/w==") << *json;
  EXPECT_EQ(parsed["digest"], "sha256:00");

  for (const char* data :
       {R"("aGVsbG8A/w==")", R"("aGVsbG8A_w")", R"([104,101,108,108,111,0,255])"}) {
    std::string text = std::string(R"({"digest": "sha256:00", "data": )") + data + "}";
    auto back = DecodeRequest<BlobPut>(codec, text);
    ASSERT_TRUE(back.ok()) << data << ": " << back.error();
    EXPECT_EQ(back->data, put.data) << data;
    EXPECT_EQ(back->digest, put.digest);
  }

  // Nested: an HttpResponse's body, and a table held in a vector of tables.
  HttpResponseT response;
  response.status = 200;
  response.body = {'o', 'k'};
  auto printed = codec.ToJson(Pack(response), HttpResponse::GetFullyQualifiedName());
  ASSERT_TRUE(printed.ok()) << printed.error();
  EXPECT_EQ(nlohmann::json::parse(*printed)["body"], "b2s=");
}

TEST(Codec, BadBase64IsRefusedNamingTheField) {
  JsonCodec codec;
  auto bad = DecodeRequest<BlobPut>(codec, R"({"digest": "sha256:00", "data": "not base64!"})");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(bad.looked_like_json());
  EXPECT_THAT(bad.error(), HasSubstr("field data"));
  EXPECT_THAT(bad.error(), HasSubstr("base64"));

  auto request = DecodeRequest<HttpRequest>(codec, R"({"method": "GET", "body": "a"})");
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.error(), HasSubstr("field body"));
}

TEST(Codec, DeeplyNestedJsonIsRefusedWithoutCrashing) {
  JsonCodec codec;
  std::string deep =
      R"({"digest": "x", "data": )" + std::string(200000, '[') + std::string(200000, ']') + "}";
  auto refused = DecodeRequest<BlobPut>(codec, deep);
  EXPECT_FALSE(refused.ok());
  EXPECT_TRUE(refused.looked_like_json());
}

TEST(Codec, LooksLikeJson) {
  EXPECT_TRUE(LooksLikeJson("{}"));
  EXPECT_TRUE(LooksLikeJson("\n  {\"a\":1}"));
  EXPECT_FALSE(LooksLikeJson("[1]"));
  EXPECT_FALSE(LooksLikeJson(""));
  EXPECT_FALSE(LooksLikeJson(Pack(PingRequestT{})));
}

}  // namespace
}  // namespace serve::wire
