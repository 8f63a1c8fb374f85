#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "log/log.h"
#include "replica/runtime.h"
#include "service/service.h"
#include "service/threads.h"
#include "wire/codec.h"
#include "wire/serve_generated.h"

namespace serve::replica {

// The most handler threads a worker runs, whatever max_concurrent_queries allows: requests
// beyond them wait in the pool's queue, in order, and still count against
// max_concurrent_queries. Ten thousand threads would cost their stacks and the scheduler more
// than they bring, and a deploy request alone must not decide how many a node runs.
inline constexpr int kMaxHandlerThreads = 256;

// The handler threads for a runtime that runs `concurrency` (Runtime::Concurrency(), > 0)
// requests at once: at least 1, at most `cap`.
size_t HandlerThreads(int concurrency, int cap = kMaxHandlerThreads);

struct WorkerOptions {
  std::string replica_id;
  std::string node_id;
  wire::DeploymentSpecT spec;
  std::string version;  // the effective version (the spec's, or the one the controller derived)
  // One line per handled request in the replica's log (method, path, status, latency, id).
  bool request_log = true;
};

// One replica of one deployment, in a process of its own: answers data-plane requests on
// <ns>.replica.<id>, takes reconfigure orders on <ns>.replica.<id>.ctl, heartbeats on
// <ns>.hb.replica and reports its request figures to its node agent on
// <ns>.node.<node-id>.metrics.
//
// Threads: the loop thread owns the bus and every counter. Requests run on the loop thread for
// runtimes that never block (Concurrency() == 0), otherwise on a handler pool of
// HandlerThreads(Concurrency()) threads; check_health and reconfigure run on a control thread of
// their own, so a busy or stuck handler never delays them. Results come back to the loop via an
// inbox.
class ReplicaWorker {
 public:
  ReplicaWorker(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                WorkerOptions options, std::unique_ptr<Runtime> runtime);
  ~ReplicaWorker();

  // Subscribes, then heartbeats at once: the first heartbeat tells the controller the replica
  // can take traffic, and the server saw the subscription before it.
  Status Start();
  // Stops taking requests, lets in-flight ones finish (up to graceful_shutdown_timeout_s),
  // sends a last heartbeat, stops the runtime, then calls `done`.
  void Drain(std::function<void()> done);

  uint64_t completed() const { return completed_; }
  // Waits up to `timeout` for user code still running on other threads (a handler, a health
  // check); true when none is. When false, the process should exit without joining it.
  bool WaitForUserCode(std::chrono::milliseconds timeout);

 private:
  void OnRequest(bus::Message& message);
  void OnReconfigure(bus::Message& message);
  // Answers a data-plane request with `response`, an HttpResponse FlatBuffer, printed as JSON
  // when the request came in JSON.
  void Answer(const bus::Message& request, const std::string& response, bool json);
  // Sends `bytes`, or an error saying they are more than the bus carries (in JSON when `json`).
  void Send(const bus::Message& request, const std::string& bytes, bool json);
  void Respond(const bus::Message& request, const std::string& bytes);
  void StartHeartbeats();
  void OnHeartbeatTick();
  void SendHeartbeat();
  // Counts an answered request (worker's figures, see ReplicaMetrics in schemas/serve.fbs).
  // Runs the user's code for `request`, with the request's id on the lines it logs.
  HandlerResponse HandleLogged(const wire::HttpRequest& request);
  void Count(const wire::HttpRequest& request, uint64_t started_ns, int status);
  void SendMetrics();
  // Requests admitted that wait for a handler thread.
  int Queued() const;
  void MaybeFinishDrain();
  // Runs `fn` where the runtime wants its checks and reconfigures (Runtime::ChecksOnLoop): on
  // the loop thread for a built-in (its state is the loop's), else on the control thread.
  void OnControlThread(std::function<void()> fn);
  bool user_code_stuck() const;

  uv_loop_t* loop_;
  bus::Bus& bus_;
  wire::JsonCodec codec_;  // for requests in JSON; used on the loop thread only
  const bus::Subjects& subjects_;
  WorkerOptions options_;
  std::unique_ptr<Runtime> runtime_;
  std::string subject_;
  std::string control_subject_;
  std::string metrics_subject_;
  std::unique_ptr<service::RepeatingTimer> heartbeat_;
  std::unique_ptr<service::RepeatingTimer> metrics_timer_;
  std::unique_ptr<log::RequestLog> request_log_;  // null with WorkerOptions::request_log off
  static constexpr double kMetricsPeriodS = 1;
  service::LoopInbox inbox_;
  std::unique_ptr<service::ThreadPool> handlers_;  // null when requests run on the loop
  service::ThreadPool control_{1};
  int in_flight_ = 0;
  uint64_t completed_ = 0;
  uint64_t errors_ = 0;
  std::vector<uint64_t> latency_counts_;
  double latency_sum_ms_ = 0;
  uint64_t health_check_failures_ = 0;
  uint64_t reported_completed_ = 0;
  // The latest health check's outcome, and when the running one started (0: none runs).
  bool healthy_ = true;
  std::string health_message_;
  uint64_t check_started_ms_ = 0;
  bool draining_ = false;
  bool subscription_drained_ = false;
  std::function<void()> drain_done_;
  std::unique_ptr<service::OneShotTimer> drain_deadline_;
};

}  // namespace serve::replica
