#include "replica/worker.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "metrics/metrics.h"
#include "wire/codec.h"

namespace serve::replica {
namespace {

std::string_view AsView(const flatbuffers::String* s) {
  return s == nullptr ? std::string_view() : std::string_view(s->data(), s->size());
}

std::string ErrorResponse(const std::string& error, int status = 500, bool overloaded = false) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto text = fbb.CreateString(error);
  wire::HttpResponseBuilder response(fbb);
  response.add_error(text);
  response.add_status(status);
  response.add_overloaded(overloaded);
  return wire::Finish(fbb, response.Finish());
}

std::string EncodeResponse(const HandlerResponse& answer) {
  flatbuffers::FlatBufferBuilder fbb(answer.body.size() + 256);
  std::vector<flatbuffers::Offset<wire::Header>> headers;
  headers.reserve(answer.headers.size());
  for (const auto& [name, value] : answer.headers) {
    headers.push_back(wire::CreateHeader(fbb, fbb.CreateString(name), fbb.CreateString(value)));
  }
  auto body = fbb.CreateVector(reinterpret_cast<const uint8_t*>(answer.body.data()),
                               answer.body.size());
  auto header_vector = fbb.CreateVector(headers);
  wire::HttpResponseBuilder response(fbb);
  response.add_status(answer.status);
  response.add_headers(header_vector);
  response.add_body(body);
  return wire::Finish(fbb, response.Finish());
}

RequestView ViewOf(const wire::HttpRequest& request) {
  RequestView view;
  view.method = AsView(request.method());
  view.path = AsView(request.path());
  view.query = AsView(request.query());
  view.request_id = AsView(request.request_id());
  if (request.body() != nullptr) {
    view.body = std::string_view(reinterpret_cast<const char*>(request.body()->data()),
                                 request.body()->size());
  }
  if (request.headers() != nullptr) {
    view.headers.reserve(request.headers()->size());
    for (const auto* h : *request.headers()) {
      if (h != nullptr) view.headers.emplace_back(AsView(h->name()), AsView(h->value()));
    }
  }
  return view;
}

std::string Seconds(double s) {
  char text[32];
  snprintf(text, sizeof(text), "%g", s);
  return text;
}

}  // namespace

size_t HandlerThreads(int concurrency, int cap) {
  return static_cast<size_t>(std::clamp(concurrency, 1, std::max(1, cap)));
}

ReplicaWorker::ReplicaWorker(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                             WorkerOptions options, std::unique_ptr<Runtime> runtime)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      options_(std::move(options)),
      runtime_(std::move(runtime)),
      subject_(subjects.Replica(options_.replica_id)),
      control_subject_(subjects.ReplicaControl(options_.replica_id)),
      metrics_subject_(subjects.NodeMetrics(options_.node_id)),
      inbox_(loop),
      latency_counts_(metrics::LatencyBucketsMs().size() + 1, 0) {
  if (runtime_->Concurrency() > 0) {
    handlers_ = std::make_unique<service::ThreadPool>(HandlerThreads(runtime_->Concurrency()));
  }
  // A small queue: a node runs hundreds of workers, each allocating its queue up front.
  if (options_.request_log) request_log_ = std::make_unique<log::RequestLog>(16);
}

bool ReplicaWorker::WaitForUserCode(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        std::max(deadline - std::chrono::steady_clock::now(),
                 std::chrono::steady_clock::duration::zero()));
  };
  bool handlers_idle = handlers_ == nullptr || handlers_->WaitIdle(left());
  return control_.WaitIdle(left()) && handlers_idle;
}

void ReplicaWorker::OnControlThread(std::function<void()> fn) {
  if (runtime_->ChecksOnLoop()) {
    fn();
  } else {
    control_.Post(std::move(fn));
  }
}

ReplicaWorker::~ReplicaWorker() {
  if (user_code_stuck()) {
    // Joining would wait forever on user code; the process is about to exit anyway.
    if (handlers_) handlers_->Abandon();
    control_.Abandon();
    (void)runtime_.release();
  }
}

bool ReplicaWorker::user_code_stuck() const {
  return (handlers_ != nullptr && handlers_->busy() > 0) || control_.busy() > 0;
}

Status ReplicaWorker::Start() {
  Status status = bus_.Subscribe(subject_, [this](bus::Message& m) { OnRequest(m); });
  if (!status.ok()) return status;
  status = bus_.Subscribe(control_subject_, [this](bus::Message& m) { OnReconfigure(m); });
  if (!status.ok()) return status;
  SendHeartbeat();
  StartHeartbeats();
  // Figures between heartbeats (which can be minutes apart), only while requests come.
  metrics_timer_ = std::make_unique<service::RepeatingTimer>(loop_, kMetricsPeriodS, [this] {
    if (request_log_ != nullptr && completed_ != reported_completed_) request_log_->Flush();
    if (completed_ != reported_completed_ || in_flight_ > 0) SendMetrics();
  });
  spdlog::info("replica {} of {} (version {}) ready on {}", options_.replica_id,
               options_.spec.name, options_.version, subject_);
  return Status::Ok();
}

void ReplicaWorker::Answer(const bus::Message& request, const std::string& response, bool json) {
  if (!json) {
    Send(request, response, json);
    return;
  }
  auto printed = codec_.ToJson(response, wire::HttpResponse::GetFullyQualifiedName());
  if (!printed.ok()) {
    printed = codec_.ToJson(
        ErrorResponse(
            "replica " + options_.replica_id + " cannot answer in JSON: " + printed.error(), 502),
        wire::HttpResponse::GetFullyQualifiedName());
  }
  Send(request, printed.ok() ? *printed : std::string(), json);
}

void ReplicaWorker::Send(const bus::Message& request, const std::string& bytes, bool json) {
  if (uint64_t limit = bus_.max_payload(); limit > 0 && bytes.size() > limit) {
    // Dropping it would leave the client waiting for the proxy's timeout: say why instead.
    std::string why = "the response of " + options_.spec.name + " (" +
                      std::to_string(bytes.size()) + " bytes) is larger than the bus carries "
                      "(NATS max_payload: " + std::to_string(limit) +
                      " bytes); answer with less, or raise max_payload in the nats-server "
                      "configuration";
    spdlog::warn("replica {}: {}", options_.replica_id, why);
    std::string error = ErrorResponse(why, 502);
    if (json) {
      auto printed = codec_.ToJson(error, wire::HttpResponse::GetFullyQualifiedName());
      error = printed.ok() ? std::move(*printed) : std::string();
    }
    Respond(request, error);
    return;
  }
  Respond(request, bytes);
}

void ReplicaWorker::Respond(const bus::Message& request, const std::string& bytes) {
  Status sent = bus_.Respond(request, bytes);
  if (!sent.ok()) {
    spdlog::warn("replica {}: cannot answer a request: {}", options_.replica_id, sent.message());
  }
}

void ReplicaWorker::OnRequest(bus::Message& message) {
  if (message.reply.empty()) return;  // nobody to answer
  // A client may ask in JSON (`nats req`): the request is parsed into the FlatBuffer the rest
  // reads, and the answer printed back as JSON.
  const bool json = wire::LooksLikeJson(message.data);
  if (json) {
    auto binary = codec_.FromJson<wire::HttpRequest>(message.data);
    if (!binary.ok()) {
      Answer(message,
             ErrorResponse("replica " + options_.replica_id +
                               " could not read the request: " + binary.error(),
                           400),
             json);
      return;
    }
    message.data = std::move(*binary);
  }
  auto request = wire::Verify<wire::HttpRequest>(message.data);
  if (!request.ok()) {
    spdlog::warn("replica {}: dropped a malformed request: {}", options_.replica_id,
                 request.error());
    Answer(message,
           ErrorResponse("replica " + options_.replica_id +
                         " could not read the request: " + request.error()),
           json);
    return;
  }
  int limit = std::max(1, options_.spec.max_concurrent_queries);
  if (in_flight_ >= limit) {
    // Several proxies each keep within the limit on their own; together they can exceed it.
    Answer(message,
           ErrorResponse("replica " + options_.replica_id + " of " + options_.spec.name +
                             " already runs " + std::to_string(in_flight_) +
                             " requests (max_concurrent_queries)",
                         503, /*overloaded=*/true),
           json);
    return;
  }
  ++in_flight_;
  uint64_t started_ns = uv_hrtime();
  if (handlers_ == nullptr) {
    HandlerResponse answer = HandleLogged(**request);
    --in_flight_;
    Count(**request, started_ns, answer.status);
    Answer(message, EncodeResponse(answer), json);
    return;
  }
  auto owned = std::make_shared<bus::Message>(std::move(message));
  handlers_->Post([this, owned, started_ns, json] {
    // Verified above; the bytes have not changed since.
    const auto* request = flatbuffers::GetRoot<wire::HttpRequest>(owned->data.data());
    HandlerResponse answer = HandleLogged(*request);
    int status = answer.status;
    std::string bytes = EncodeResponse(answer);
    inbox_.Post([this, owned, bytes = std::move(bytes), started_ns, status, json] {
      --in_flight_;
      Count(*flatbuffers::GetRoot<wire::HttpRequest>(owned->data.data()), started_ns, status);
      Answer(*owned, bytes, json);
      MaybeFinishDrain();
    });
  });
}

HandlerResponse ReplicaWorker::HandleLogged(const wire::HttpRequest& request) {
  // What the user's code logs meanwhile, on this thread, names the request.
  log::Scope scope({{}, {}, AsView(request.request_id())});
  return runtime_->Handle(ViewOf(request));
}

void ReplicaWorker::Count(const wire::HttpRequest& request, uint64_t started_ns, int status) {
  ++completed_;
  if (status >= 500) ++errors_;
  double latency_ms = static_cast<double>(uv_hrtime() - started_ns) / 1e6;
  if (request_log_ != nullptr) {
    request_log_->Write({AsView(request.method()), AsView(request.path()), status, latency_ms,
                         options_.spec.name, options_.replica_id, AsView(request.request_id())});
  }
  const auto& bounds = metrics::LatencyBucketsMs();
  size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), latency_ms) - bounds.begin();
  ++latency_counts_[bucket];
  latency_sum_ms_ += latency_ms;
}

int ReplicaWorker::Queued() const {
  // Admitted requests that wait for a handler thread (a serialized runtime runs one at a time).
  if (handlers_ == nullptr) return 0;
  return std::max(0, in_flight_ - static_cast<int>(handlers_->busy()));
}

void ReplicaWorker::SendMetrics() {
  reported_completed_ = completed_;
  wire::ReplicaMetricsT report;
  report.replica_id = options_.replica_id;
  report.deployment = options_.spec.name;
  report.requests = completed_;
  report.errors = errors_;
  report.latency_counts = latency_counts_;
  report.latency_sum_ms = latency_sum_ms_;
  report.in_flight = in_flight_;
  report.queued = Queued();
  report.healthy = !draining_ && healthy_;
  report.health_check_failures = health_check_failures_;
  (void)bus_.Publish(metrics_subject_, wire::Pack(report));
}

void ReplicaWorker::StartHeartbeats() {
  heartbeat_ = std::make_unique<service::RepeatingTimer>(
      loop_, options_.spec.health_check_period_s, [this] { OnHeartbeatTick(); });
}

void ReplicaWorker::OnHeartbeatTick() {
  uv_update_time(loop_);
  uint64_t now = uv_now(loop_);
  if (check_started_ms_ != 0) {
    double running_s = static_cast<double>(now - check_started_ms_) / 1000.0;
    if (running_s >= options_.spec.health_check_timeout_s) {
      healthy_ = false;
      health_message_ = "check_health has not returned after " + Seconds(running_s) +
                        " s (health_check_timeout_s is " +
                        Seconds(options_.spec.health_check_timeout_s) + ")";
    }
  } else {
    check_started_ms_ = now;
    OnControlThread([this] {
      Status health = runtime_->CheckHealth();
      inbox_.Post([this, health] {
        check_started_ms_ = 0;
        healthy_ = health.ok();
        if (!health.ok()) ++health_check_failures_;
        health_message_ = health.ok() ? "" : "check_health failed: " + health.message();
      });
    });
  }
  SendHeartbeat();
}

void ReplicaWorker::OnReconfigure(bus::Message& message) {
  auto order = wire::DecodeRequest<wire::Reconfigure>(codec_, message.data);
  wire::ReconfigureReplyT reply;
  if (!order.ok()) {
    reply.error = order.error();
  } else if (order->replica_id != options_.replica_id) {
    reply.error = "reconfigure for " + order->replica_id + " reached replica " +
                  options_.replica_id;
  }
  if (!reply.error.empty()) {
    Respond(message, wire::EncodeReply(codec_, order, reply));
    return;
  }
  auto request = std::make_shared<bus::Message>(std::move(message));
  auto new_config = std::make_shared<wire::ReconfigureT>(std::move(*order));
  const bool json = order.looked_like_json();
  OnControlThread([this, request, new_config, json] {
    Status applied = runtime_->Reconfigure(new_config->user_config);
    inbox_.Post([this, request, new_config, applied, json] {
      wire::ReconfigureReplyT reply;
      if (applied.ok()) {
        options_.spec.user_config = new_config->user_config;
        if (new_config->health_check_timeout_s > 0) {
          options_.spec.health_check_timeout_s = new_config->health_check_timeout_s;
        }
        if (new_config->max_concurrent_queries > 0) {
          options_.spec.max_concurrent_queries = new_config->max_concurrent_queries;
          if (handlers_ != nullptr && runtime_->ScalesWithLimit()) {
            handlers_->SetMaxThreads(HandlerThreads(new_config->max_concurrent_queries));
          }
        }
        double period = new_config->health_check_period_s;
        if (period > 0 && period != options_.spec.health_check_period_s) {
          options_.spec.health_check_period_s = period;
          if (!draining_) StartHeartbeats();
        }
        spdlog::info("replica {} reconfigured", options_.replica_id);
      } else {
        reply.error = "reconfigure failed: " + applied.message();
        spdlog::warn("replica {}: {}", options_.replica_id, reply.error);
      }
      Respond(*request, json ? codec_.ToJson(reply) : wire::Pack(reply));
    });
  });
}

void ReplicaWorker::SendHeartbeat() {
  wire::ReplicaHeartbeatT heartbeat;
  heartbeat.replica_id = options_.replica_id;
  heartbeat.deployment = options_.spec.name;
  heartbeat.version = options_.version;
  heartbeat.node_id = options_.node_id;
  heartbeat.healthy = !draining_ && healthy_;
  heartbeat.health_message = draining_ ? "draining" : health_message_;
  heartbeat.in_flight = in_flight_;
  heartbeat.queued = Queued();
  heartbeat.completed = completed_;
  (void)bus_.Publish(subjects_.hb_replica, wire::Pack(heartbeat));
  SendMetrics();
}

void ReplicaWorker::Drain(std::function<void()> done) {
  if (draining_) return;
  draining_ = true;
  drain_done_ = std::move(done);
  heartbeat_.reset();
  metrics_timer_.reset();
  SendHeartbeat();
  bus_.Unsubscribe(control_subject_);
  double grace = options_.spec.graceful_shutdown_timeout_s;
  drain_deadline_ = std::make_unique<service::OneShotTimer>(loop_);
  drain_deadline_->Start(grace, [this, grace] {
    spdlog::warn("replica {}: {} requests still running after graceful_shutdown_timeout_s "
                 "({} s); stopping anyway",
                 options_.replica_id, in_flight_, grace);
    in_flight_ = 0;
    subscription_drained_ = true;
    MaybeFinishDrain();
  });
  // Requests the server routed here before it saw the unsubscribe are still answered; anything
  // later finds no listener, and the proxy sends it to another replica.
  bus_.Drain(subject_, grace, [this] {
    subscription_drained_ = true;
    MaybeFinishDrain();
  });
}

void ReplicaWorker::MaybeFinishDrain() {
  if (!draining_ || !subscription_drained_ || in_flight_ > 0 || !drain_done_) return;
  drain_deadline_.reset();
  spdlog::info("replica {} drained after {} requests", options_.replica_id, completed_);
  // Also with user code still running: a command's process group must not outlive the worker,
  // and stopping it ends the calls that wait on it.
  runtime_->Stop();
  inbox_.Close();
  auto done = std::move(drain_done_);
  drain_done_ = nullptr;
  done();
}

}  // namespace serve::replica
