#pragma once

#include <flatbuffers/flatbuffers.h>
#include <flatbuffers/idl.h>

#include <set>
#include <string>
#include <string_view>
#include <type_traits>

#include "base/status.h"
#include "wire/serve_generated.h"

namespace serve::wire {

// Every buffer on the bus carries its table's identifier at bytes 4..8: the table's `wire_id` in
// schemas/serve.fbs ("DPLQ" for a DeployRequest). A message sent to a subject that expects
// another table then fails verification, instead of being read as that table when the two
// happen to share a layout.
//
// The identifier of the table named `fully_qualified_name` ("serve.wire.DeployRequest"). Every
// table of the schema has one (codec_test checks); none is a build defect, and aborts.
const char* IdentifierOf(const char* fully_qualified_name);

template <typename T>
const char* Identifier() {
  static const char* const id = IdentifierOf(T::GetFullyQualifiedName());
  return id;
}

// What every buffer carried before tables had identifiers of their own. Still accepted for the
// tables a checkpoint store holds, so a store written by an earlier version is recovered.
inline constexpr char kLegacyIdentifier[] = "SRV1";
template <typename T>
inline constexpr bool kStoredInCheckpoints =
    std::is_same_v<T, ControllerState> || std::is_same_v<T, StoredCheckpoint>;

// True when bytes 4..8 of `bytes` are the identifier of some table of the schema.
bool HasServeIdentifier(std::string_view bytes);

// Finishes `fbb` with `root` and its table's identifier, and returns the bytes.
template <typename T>
std::string Finish(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<T> root) {
  fbb.Finish(root, Identifier<T>());
  return std::string(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
}

// Serializes an object-API value such as DeployRequestT.
template <typename NativeT>
std::string Pack(const NativeT& value) {
  flatbuffers::FlatBufferBuilder fbb(512);
  return Finish(fbb, NativeT::TableType::Pack(fbb, &value));
}

// Returns the table name for messages: "serve.wire.DeployRequest" -> "DeployRequest".
std::string_view ShortName(const char* fully_qualified_name);

// The error for `size` bytes that are not a verified buffer of `table`; names the identifier
// the table's buffers carry, and the one `bytes` carry when that is another table's.
Status VerifyFailure(const char* table, std::string_view bytes);

// Checks that `bytes` is a well-formed T buffer before any field is read. `bytes` must stay
// alive and unmoved while the returned pointer is used.
template <typename T>
Result<const T*> Verify(std::string_view bytes) {
  auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  flatbuffers::Verifier verifier(data, bytes.size(), /*max_depth=*/64, /*max_tables=*/1000000);
  bool verified = bytes.size() >= 8 && verifier.VerifyBuffer<T>(Identifier<T>());
  if (!verified && kStoredInCheckpoints<T> && bytes.size() >= 8) {
    verified = verifier.VerifyBuffer<T>(kLegacyIdentifier);
  }
  if (!verified) return VerifyFailure(T::GetFullyQualifiedName(), bytes);
  return flatbuffers::GetRoot<T>(data);
}

// Verifies and copies `bytes` into T's object-API type.
template <typename T>
Result<typename T::NativeTableType> Unpack(std::string_view bytes) {
  auto table = Verify<T>(bytes);
  if (!table.ok()) return table.status();
  typename T::NativeTableType value;
  (*table)->UnPackTo(&value);
  return value;
}

// Standard base64 with padding, as JSON replies write `[ubyte]` fields.
std::string Base64Encode(std::string_view bytes);
// Decodes base64 in the standard or the url-safe alphabet, padded or not; the error says what
// is wrong with `text`.
Result<std::string> Base64Decode(std::string_view text);

// Converts between JSON text and FlatBuffers for any table in schemas/serve.fbs, using the
// schema compiled into the binary, so that any NATS client can talk to the control plane.
// `[ubyte]` fields are written in base64 (an array of numbers would triple their size) and are
// read from base64 (standard or url-safe, padded or not) or from an array of numbers.
// Not thread-safe: one per loop.
class JsonCodec {
 public:
  JsonCodec();

  // Parses `json` as table `table` ("serve.wire.DeployRequest"); the error names the
  // offending field and position.
  Result<std::string> FromJson(std::string_view json, const char* table);
  // Prints a verified buffer of table `table` as compact JSON.
  Result<std::string> ToJson(std::string_view bytes, const char* table);

  template <typename T>
  Result<std::string> FromJson(std::string_view json) {
    return FromJson(json, T::GetFullyQualifiedName());
  }
  template <typename NativeT>
  std::string ToJson(const NativeT& value) {
    auto json = ToJson(Pack(value), NativeT::TableType::GetFullyQualifiedName());
    return json.ok() ? *json : std::string();
  }

 private:
  // Whether `table` or a table it holds has a [ubyte] field.
  bool HoldsBytes(const flatbuffers::StructDef* table) const {
    return holding_bytes_.count(table) > 0;
  }

  flatbuffers::Parser printer_;
  std::set<const flatbuffers::StructDef*> holding_bytes_;
};

// True when `bytes` starts (after white space) with '{' and does not carry a table's identifier.
bool LooksLikeJson(std::string_view bytes);

// A request as it arrived on a subject that answers: its value when it decoded, and whether its
// bytes looked like JSON. The latter holds even when decoding failed, so that the error goes back
// in JSON to a client that speaks JSON, not as a FlatBuffer it cannot read.
template <typename NativeT>
class Request {
 public:
  Request(Result<NativeT> value, bool looked_like_json)
      : value_(std::move(value)), looked_like_json_(looked_like_json) {}

  bool ok() const { return value_.ok(); }
  const Status& status() const { return value_.status(); }
  const std::string& error() const { return value_.error(); }
  // Only when ok().
  NativeT& value() { return *value_; }
  const NativeT& value() const { return *value_; }
  NativeT& operator*() { return *value_; }
  const NativeT& operator*() const { return *value_; }
  NativeT* operator->() { return &*value_; }
  const NativeT* operator->() const { return &*value_; }

  // Answer in JSON.
  bool looked_like_json() const { return looked_like_json_; }

 private:
  Result<NativeT> value_;
  bool looked_like_json_;
};

// Decodes a request of table T in either encoding. The error says what was wrong and what the
// subject expects.
template <typename T>
Request<typename T::NativeTableType> DecodeRequest(JsonCodec& codec, std::string_view bytes) {
  using NativeT = typename T::NativeTableType;
  if (LooksLikeJson(bytes)) {
    auto binary = codec.FromJson<T>(bytes);
    if (!binary.ok()) return Request<NativeT>(binary.status(), true);
    return Request<NativeT>(Unpack<T>(*binary), true);
  }
  return Request<NativeT>(Unpack<T>(bytes), false);
}

// Encodes a reply in the encoding its request used (or looked like it used, when it did not
// decode): JSON for JSON, a FlatBuffer otherwise.
template <typename RequestT, typename NativeT>
std::string EncodeReply(JsonCodec& codec, const Request<RequestT>& request, const NativeT& reply) {
  return request.looked_like_json() ? codec.ToJson(reply) : Pack(reply);
}

}  // namespace serve::wire
