// Every table of schemas/serve.fbs through the decoders the services run on what arrives from
// the bus (libs/wire/codec.h): DecodeRequest (a verified FlatBuffer, or JSON through
// JsonCodec::FromJson), Verify + Unpack, and ToJson of what verified, as replies and logs print
// it; plus ReplicaLogsAnswer and StatusJson, which read a node's and the controller's answers.
//
// Input: the first byte selects the table (modulo their number), the rest is the message.
// fuzz/corpus/wire_decoders/ holds a FlatBuffer and a JSON example for several tables.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "wire/codec.h"
#include "wire/replica_logs.h"
#include "wire/status_json.h"

namespace wire = serve::wire;

namespace {

template <typename... Tables>
struct TableList {
  static constexpr size_t kCount = sizeof...(Tables);
};

using AllTables = TableList<
    wire::CustomResource, wire::Resources, wire::DeploymentSpec, wire::DeployRequest,
    wire::DeployReply, wire::DeleteRequest, wire::DeleteReply, wire::ReplicaStatus,
    wire::DeploymentStatus, wire::NodeStatus, wire::ProxyStatus, wire::ConfigRequest,
    wire::ConfigReply, wire::StatusRequest, wire::StatusReply, wire::PingRequest, wire::PingReply,
    wire::Event, wire::ShutdownRequest, wire::ShutdownReply, wire::ShutdownNotice,
    wire::ReplicaHeartbeat, wire::ReplicaMetrics, wire::NodeReplica, wire::NodeHeartbeat,
    wire::ProxyHeartbeat, wire::RouteReplica, wire::Route, wire::RouteTableRequest,
    wire::RouteTable, wire::StartReplica, wire::StartReplicaReply, wire::StopReplica,
    wire::StopReplicaReply, wire::ReplicaExited, wire::ReplicaLogsRequest, wire::ReplicaLogsReply,
    wire::Header, wire::HttpRequest, wire::HttpResponse, wire::Reconfigure, wire::ReconfigureReply,
    wire::CheckpointPut, wire::CheckpointPutReply, wire::CheckpointGet, wire::CheckpointGetReply,
    wire::BlobStat, wire::BlobStatReply, wire::BlobPut, wire::BlobPutReply, wire::BlobGet,
    wire::BlobGetReply, wire::ControllerState, wire::StoredCheckpoint, wire::SupervisedService,
    wire::SupervisorHeartbeat, wire::SupervisorStatus>;

wire::JsonCodec& Codec() {
  static wire::JsonCodec codec;
  return codec;
}

// What a table's values go through once decoded, beyond the codec.
template <typename T>
void UseDecoded(const typename T::NativeTableType& /*value*/) {}

template <>
void UseDecoded<wire::StatusReply>(const wire::StatusReplyT& status) {
  // As `serve status --json` and the REST API print it.
  (void)wire::StatusJson(status).dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

template <typename T>
void Decode(std::string_view bytes) {
  wire::JsonCodec& codec = Codec();
  auto decoded = wire::DecodeRequest<T>(codec, bytes);
  if (decoded.ok()) {
    UseDecoded<T>(decoded.value());
    // The reply path: the same value encoded back in the request's encoding.
    std::string reply = wire::EncodeReply(codec, decoded, decoded.value());
    if (!decoded.looked_like_json() && !wire::Verify<T>(reply).ok())
      abort();  // Pack must make valid bytes
  } else {
    if (decoded.error().empty()) abort();  // an error must say what was wrong
    // An error reply goes out in the request's encoding too.
    (void)wire::EncodeReply(codec, decoded, wire::DeployReplyT{});
  }
  // A verified buffer is printable as JSON (logs and JSON replies do this).
  if (wire::Verify<T>(bytes).ok()) {
    (void)codec.ToJson(bytes, T::GetFullyQualifiedName());
  }
  if constexpr (std::is_same_v<T, wire::ReplicaLogsReply>) {
    (void)wire::ReplicaLogsAnswer("r-1", bytes);
  }
}

template <typename... Tables>
void DecodeAs(size_t index, std::string_view bytes, TableList<Tables...> /*tables*/) {
  size_t i = 0;
  // Calls Decode<T> for the index-th table.
  ((i++ == index ? Decode<Tables>(bytes) : void()), ...);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  // Copied, so the buffer is aligned as a message from the bus is (the verifier checks
  // alignment) and ASan sees reads past its end.
  std::string message(bytes);
  DecodeAs(data[0] % AllTables::kCount, message, AllTables{});
  return 0;
}
