#pragma once

#include <flatbuffers/flatbuffers.h>
#include <flatbuffers/idl.h>

#include <string>
#include <string_view>

#include "base/status.h"
#include "wire/serve_generated.h"

namespace serve::wire {

// Every buffer on the bus carries this identifier at bytes 4..8 (see schemas/serve.fbs).
inline constexpr char kFileIdentifier[] = "SRV1";

// Finishes `fbb` with `root` and the file identifier, and returns the bytes.
template <typename T>
std::string Finish(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<T> root) {
  fbb.Finish(root, kFileIdentifier);
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

Status VerifyFailure(const char* table, size_t size);

// Checks that `bytes` is a well-formed T buffer before any field is read. `bytes` must stay
// alive and unmoved while the returned pointer is used.
template <typename T>
Result<const T*> Verify(std::string_view bytes) {
  auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  flatbuffers::Verifier verifier(data, bytes.size(), /*max_depth=*/64, /*max_tables=*/1000000);
  if (bytes.size() < 8 || !verifier.VerifyBuffer<T>(kFileIdentifier)) {
    return VerifyFailure(T::GetFullyQualifiedName(), bytes.size());
  }
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

// Converts between JSON text and FlatBuffers for any table in schemas/serve.fbs, using the
// schema compiled into the binary, so that any NATS client can talk to the control plane.
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
  flatbuffers::Parser printer_;
};

// A control-plane request as it arrived: a FlatBuffer or JSON of the same table.
template <typename NativeT>
struct Decoded {
  NativeT value;
  bool json = false;  // answer in JSON too
};

// True when `bytes` starts (after white space) with '{' and does not carry the identifier.
bool LooksLikeJson(std::string_view bytes);

// Decodes a request of table T in either encoding. The error says what was wrong and what the
// subject expects, e.g. "expected a serve.wire.DeployRequest as FlatBuffers or JSON: ...".
template <typename T>
Result<Decoded<typename T::NativeTableType>> DecodeRequest(JsonCodec& codec,
                                                           std::string_view bytes) {
  Decoded<typename T::NativeTableType> decoded;
  if (LooksLikeJson(bytes)) {
    auto binary = codec.FromJson<T>(bytes);
    if (!binary.ok()) return binary.status();
    auto value = Unpack<T>(*binary);
    if (!value.ok()) return value.status();
    decoded.value = std::move(*value);
    decoded.json = true;
    return decoded;
  }
  auto value = Unpack<T>(bytes);
  if (!value.ok()) return value.status();
  decoded.value = std::move(*value);
  return decoded;
}

// Encodes a reply in the encoding its request used.
template <typename NativeT>
std::string EncodeReply(JsonCodec& codec, const NativeT& reply, bool json) {
  return json ? codec.ToJson(reply) : Pack(reply);
}

}  // namespace serve::wire
