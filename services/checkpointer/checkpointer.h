#pragma once

#include <spdlog/spdlog.h>
#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/subjects.h"
#include "checkpointer/blob_collector.h"
#include "checkpointer/checkpointer_metrics.h"
#include "checkpointer/store.h"
#include "metrics/metrics.h"
#include "wire/codec.h"

namespace serve::checkpointer {

// The client a request came from, for UploadLimits: its reply subject without the last token.
std::string ClientOf(const std::string& reply_subject);

// Removes the staging directories `<parent>/<prefix><pid>` whose checkpointer process is gone
// (killed before it could clean up), so they do not pile up across restarts. Directories of
// live processes and anything not named so are left alone. Returns how many it removed.
int RemoveDeadStagingDirs(const std::string& parent, const std::string& prefix);

// Serves a CheckpointStore on the bus:
//   <ns>.ckpt.put  CheckpointPut -> CheckpointPutReply (fenced by generation)
//   <ns>.ckpt.get  CheckpointGet -> CheckpointGetReply
//   <ns>.ckpt.blob.stat / .put / .get   code artifacts by digest (BlobStat, BlobPut, BlobGet)
//   <ns>.shutdown  any payload   -> the shutdown handler
// Requests come as FlatBuffers or as JSON of the same table and are answered in kind; a request
// that decodes as neither is answered with an error that says so.
//
// Store calls run on the loop thread, one at a time and in arrival order, so the puts of one
// writer are applied in the order it sent them (a thread pool could reorder them and turn a
// writer's own older put into a spurious fencing refusal). Everything runs on the loop thread.
class Checkpointer {
 public:
  using ShutdownHandler = std::function<void(const std::string& why)>;

  // `bus`, `subjects` and `store` must outlive the Checkpointer.
  // Uploads are assembled in `staging_dir` (created if missing) and checked against their
  // digest before the store gets them. Metric names start with `metrics_prefix`.
  Checkpointer(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
               CheckpointStore& store, std::string staging_dir,
               std::string metrics_prefix = std::string(metrics::kDefaultPrefix));
  // Removes the staging files of uploads still in progress.
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // What one client may make the checkpointer hold for uploads (docs/security.md, "Artifacts").
  // A chunk is at most artifact::kChunkBytes whatever these say.
  struct UploadLimits {
    // The largest artifact (`total_size`) accepted: --max-artifact-bytes.
    uint64_t max_artifact_bytes = uint64_t{2} << 30;
    // Uploads in progress at once per client: --max-uploads-per-client. A client is the reply
    // inbox its requests carry without the last token ("_INBOX.<id>." for a Serve bus
    // connection), the one identity every request has: BlobPut carries none of its own.
    int max_uploads_per_client = 4;
  };
  void SetUploadLimits(UploadLimits limits) { limits_ = limits; }

  // The --checkpoint-path this checkpointer was started with. A put or get naming another
  // store (its `store` field) is refused; one naming none is served.
  void SetStoreUri(std::string uri) { store_uri_ = std::move(uri); }

  // Removes the blobs no deployment of the stored controller state has named for `keep_s`
  // (docs/security.md, "Artifacts"), checking every keep_s / 4 (at most every 10 minutes).
  // 0 keeps every blob. Call before Start().
  void SetBlobCollection(double keep_s) { blob_keep_s_ = keep_s; }

  // Called once on <ns>.shutdown; the process should close its handles and let the loop end.
  void SetShutdownHandler(ShutdownHandler handler) { on_shutdown_ = std::move(handler); }

  // The figures of checkpointer_metrics.h and of this process, for a /metrics endpoint.
  const metrics::Registry& metrics() const { return metrics_registry_; }

  // Removes what earlier runs left in the staging directory, then subscribes to the subjects
  // above.
  Status Start();
  // From now on requests are answered with an error instead of touching the store, until the
  // bus owner closes the bus.
  void Stop();

 private:
  void OnPut(const bus::Message& message);
  void OnGet(const bus::Message& message);
  // A verified ShutdownNotice arrived (service::OnShutdownNotice ignores anything else).
  void OnShutdown(const std::string& reason);
  void OnBlobStat(const bus::Message& message);
  void OnBlobPut(const bus::Message& message);
  void OnBlobGet(const bus::Message& message);
  // Applies one chunk of an upload; the reply says how far the upload got. `failed` is set when
  // the error is the staging disk's or the store's, not the request's.
  // `client` is who sent it (see UploadLimits).
  wire::BlobPutReplyT ReceiveChunk(const wire::BlobPutT& put, const std::string& client,
                                   bool* failed);
  // Why a first chunk from `client` may not start an upload: empty when it may.
  std::string UploadRefusal(const wire::BlobPutT& put, const std::string& client,
                            const std::string& upload_key) const;
  void Reply(const bus::Message& request, const std::string& bytes);
  // Decodes a request of table T. When it does not decode, answers a ReplyT table carrying why (in
  // JSON when the request looked like JSON) and returns nullopt.
  template <typename T, typename ReplyT>
  std::optional<wire::Request<typename T::NativeTableType>> DecodeOrRefuse(
      const char* operation, const bus::Message& message) {
    auto request = wire::DecodeRequest<T>(codec_, message.data);
    if (request.ok()) return request;
    spdlog::warn("bad request on {}: {}", message.subject, request.error());
    metrics_.Answered(operation, "refused");
    typename ReplyT::NativeTableType reply;
    reply.error = request.error();
    Reply(message, wire::EncodeReply(codec_, request, reply));
    return std::nullopt;
  }
  // Empty when `requested` (a request's `store`) is empty or names this checkpointer's store;
  // otherwise the error to answer with.
  std::string WrongStore(const std::string& requested) const;
  // Milliseconds since `start_ms` (loop time), refreshing the loop's clock: a slow disk holds
  // the loop, and every request waits behind it.
  uint64_t ElapsedMs(uint64_t start_ms);
  uint64_t NowMs();
  // Runs `call`, one call into the store named `name`, and counts it. `call` returns a Status or
  // a Result; a failed one marks the store unhealthy in the metrics.
  template <typename Call>
  auto CallStore(const char* name, Call&& call) {
    uint64_t start_ns = uv_hrtime();
    auto result = call();
    metrics_.StoreCall(name, result.ok(), static_cast<double>(uv_hrtime() - start_ns) / 1e9);
    return result;
  }

  uv_loop_t* loop_;
  bus::Bus& bus_;
  const bus::Subjects& subjects_;
  CheckpointStore& store_;
  wire::JsonCodec codec_;
  ShutdownHandler on_shutdown_;
  bool stopped_ = false;

  // Uploads in progress, by digest and upload id: the staged file, how many bytes it holds,
  // and when the last chunk came (loop time), so abandoned ones are dropped.
  struct Upload {
    std::string path;
    std::string client;
    uint64_t received = 0;
    uint64_t total_size = 0;
    uint64_t last_chunk_ms = 0;
  };
  void DropAbandonedUploads();
  // One garbage-collection pass over the store's blobs (BlobCollector).
  void CollectBlobs();
  double blob_keep_s_ = 0;
  std::unique_ptr<BlobCollector> collector_;
  uv_timer_t* collect_timer_ = nullptr;  // closed by Stop()
  std::string staging_dir_;
  std::string store_uri_;
  std::map<std::string, Upload> uploads_;
  UploadLimits limits_;

  metrics::Registry metrics_registry_;
  CheckpointerMetrics metrics_;
};

}  // namespace serve::checkpointer
