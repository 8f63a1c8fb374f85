#include "checkpointer/checkpointer_metrics.h"

namespace serve::checkpointer {
namespace {

// From half a millisecond (a local file) to 30 s (an object store timing out).
const std::vector<double>& StoreBucketsSeconds() {
  static const std::vector<double> buckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25,   0.5,   1,      2.5,   5,    10,    30};
  return buckets;
}

}  // namespace

CheckpointerMetrics::CheckpointerMetrics(metrics::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name(registry.Name("checkpointer_requests_total"))
                    .Help("Requests the checkpointer answered, by operation and outcome.")
                    .Register(registry.registry())),
      duration_(prometheus::BuildHistogram()
                    .Name(registry.Name("checkpointer_store_call_duration_seconds"))
                    .Help("Time spent in each call into the recovery store.")
                    .Register(registry.registry())),
      store_errors_(prometheus::BuildCounter()
                        .Name(registry.Name("checkpointer_store_errors_total"))
                        .Help("Calls into the recovery store that failed.")
                        .Register(registry.registry())),
      store_healthy_(&prometheus::BuildGauge()
                          .Name(registry.Name("checkpointer_store_healthy"))
                          .Help("1 when the last call into the recovery store succeeded, 0 "
                                "when it failed.")
                          .Register(registry.registry())
                          .Add({})),
      written_(&prometheus::BuildCounter()
                    .Name(registry.Name("checkpointer_bytes_written_total"))
                    .Help("Checkpoint and artifact bytes written to the recovery store.")
                    .Register(registry.registry())
                    .Add({})),
      read_(&prometheus::BuildCounter()
                 .Name(registry.Name("checkpointer_bytes_read_total"))
                 .Help("Checkpoint and artifact bytes read from the recovery store.")
                 .Register(registry.registry())
                 .Add({})),
      uploads_(&prometheus::BuildGauge()
                    .Name(registry.Name("checkpointer_uploads_in_progress"))
                    .Help("Artifact uploads being assembled.")
                    .Register(registry.registry())
                    .Add({})),
      blobs_removed_(&prometheus::BuildCounter()
                          .Name(registry.Name("checkpointer_blobs_removed_total"))
                          .Help("Artifacts removed from the recovery store because no "
                                "deployment had used them for --blob-keep-s.")
                          .Register(registry.registry())
                          .Add({})) {
  // Healthy until a call says otherwise: a checkpointer starts only once its store opened.
  store_healthy_->Set(1);
}

void CheckpointerMetrics::Answered(const std::string& operation, const std::string& outcome) {
  std::string key = operation + '/' + outcome;
  auto it = request_series_.find(key);
  if (it == request_series_.end()) {
    prometheus::Counter* counter = &requests_.Add({{"operation", operation}, {"outcome", outcome}});
    it = request_series_.emplace(key, counter).first;
  }
  it->second->Increment();
}

void CheckpointerMetrics::StoreCall(const std::string& call, bool ok, double seconds) {
  auto it = call_series_.find(call);
  if (it == call_series_.end()) {
    CallSeries series;
    series.duration = &duration_.Add({{"call", call}}, StoreBucketsSeconds());
    series.errors = &store_errors_.Add({{"call", call}});
    it = call_series_.emplace(call, series).first;
  }
  it->second.duration->Observe(seconds);
  if (!ok) it->second.errors->Increment();
  store_healthy_->Set(ok ? 1 : 0);
}

}  // namespace serve::checkpointer
