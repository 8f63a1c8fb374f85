#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "metrics/metrics.h"

namespace serve::checkpointer {

// The checkpointer's figures:
//   checkpointer_requests_total{operation,outcome}      every request answered
//       operation: put, get, blob_stat, blob_put, blob_get
//       outcome:   ok, not_found (a get of nothing), fenced (a put older than the stored
//                  generation), refused (undecodable, another store, shutting down, a chunk out
//                  of order), error (the store or the staging disk failed)
//   checkpointer_store_call_duration_seconds{call}      (histogram) time inside the store
//       call: put, get, blob_size, put_blob, read_blob, list_blobs, delete_blob
//   checkpointer_store_errors_total{call}               store calls that failed
//   checkpointer_store_healthy                          1 when the last store call succeeded
//   checkpointer_bytes_written_total / _read_total      checkpoint and artifact bytes
//   checkpointer_uploads_in_progress                    artifact uploads being assembled
//   checkpointer_blobs_removed_total                    unused artifacts garbage-collected
// The store is the checkpointer's one dependency: its errors and latency are what an operator
// alerts on (every request waits behind a slow store call).
class CheckpointerMetrics {
 public:
  explicit CheckpointerMetrics(metrics::Registry& registry);

  void Answered(const std::string& operation, const std::string& outcome);
  // One call into the store that took `seconds`; `ok` false when the store failed (a fenced put
  // is not a failure).
  void StoreCall(const std::string& call, bool ok, double seconds);
  void Written(uint64_t bytes) { written_->Increment(static_cast<double>(bytes)); }
  void Read(uint64_t bytes) { read_->Increment(static_cast<double>(bytes)); }
  void SetUploads(size_t count) { uploads_->Set(static_cast<double>(count)); }
  void BlobRemoved() { blobs_removed_->Increment(); }

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Counter>& store_errors_;
  prometheus::Gauge* store_healthy_;
  prometheus::Counter* written_;
  prometheus::Counter* read_;
  prometheus::Gauge* uploads_;
  prometheus::Counter* blobs_removed_;
  // The label sets are fixed and few; found by name, built once.
  std::map<std::string, prometheus::Counter*> request_series_;
  struct CallSeries {
    prometheus::Histogram* duration = nullptr;
    prometheus::Counter* errors = nullptr;
  };
  std::map<std::string, CallSeries> call_series_;
};

}  // namespace serve::checkpointer
