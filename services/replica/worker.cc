#include "replica/worker.h"

#include <spdlog/spdlog.h>

#include "wire/codec.h"

namespace serve::replica {
namespace {

std::string ErrorResponse(const std::string& error) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto text = fbb.CreateString(error);
  wire::HttpResponseBuilder response(fbb);
  response.add_error(text);
  response.add_status(500);
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

}  // namespace

ReplicaWorker::ReplicaWorker(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                             WorkerOptions options, std::unique_ptr<Runtime> runtime)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      options_(std::move(options)),
      runtime_(std::move(runtime)),
      subject_(subjects.Replica(options_.replica_id)),
      control_subject_(subjects.ReplicaControl(options_.replica_id)) {}

Status ReplicaWorker::Start() {
  Status status = bus_.Subscribe(subject_, [this](bus::Message& m) { OnRequest(m); });
  if (!status.ok()) return status;
  status = bus_.Subscribe(control_subject_, [this](bus::Message& m) { OnReconfigure(m); });
  if (!status.ok()) return status;
  SendHeartbeat();
  StartHeartbeats();
  spdlog::info("replica {} of {} (version {}) ready on {}", options_.replica_id,
               options_.spec.name, options_.version, subject_);
  return Status::Ok();
}

void ReplicaWorker::OnRequest(bus::Message& message) {
  if (message.reply.empty()) return;  // nobody to answer
  auto request = wire::Verify<wire::HttpRequest>(message.data);
  if (!request.ok()) {
    spdlog::warn("replica {}: dropped a malformed request: {}", options_.replica_id,
                 request.error());
    (void)bus_.Respond(message, ErrorResponse("replica " + options_.replica_id +
                                              " could not read the request: " + request.error()));
    return;
  }
  ++in_flight_;
  HandlerResponse answer = runtime_->Handle(**request);
  --in_flight_;
  ++completed_;
  (void)bus_.Respond(message, EncodeResponse(answer));
}

void ReplicaWorker::StartHeartbeats() {
  heartbeat_ = std::make_unique<service::RepeatingTimer>(
      loop_, options_.spec.health_check_period_s, [this] { SendHeartbeat(); });
}

void ReplicaWorker::OnReconfigure(bus::Message& message) {
  auto order = wire::Unpack<wire::Reconfigure>(message.data);
  wire::ReconfigureReplyT reply;
  if (!order.ok()) {
    reply.error = order.error();
  } else if (order->replica_id != options_.replica_id) {
    reply.error = "reconfigure for " + order->replica_id + " reached replica " +
                  options_.replica_id;
  } else {
    Status applied = runtime_->Reconfigure(order->user_config);
    if (applied.ok()) {
      options_.spec.user_config = order->user_config;
      if (order->health_check_period_s > 0 &&
          order->health_check_period_s != options_.spec.health_check_period_s) {
        options_.spec.health_check_period_s = order->health_check_period_s;
        if (!draining_) StartHeartbeats();
      }
      spdlog::info("replica {} reconfigured", options_.replica_id);
    } else {
      reply.error = "reconfigure failed: " + applied.message();
      spdlog::warn("replica {}: {}", options_.replica_id, reply.error);
    }
  }
  (void)bus_.Respond(message, wire::Pack(reply));
}

void ReplicaWorker::SendHeartbeat() {
  wire::ReplicaHeartbeatT heartbeat;
  heartbeat.replica_id = options_.replica_id;
  heartbeat.deployment = options_.spec.name;
  heartbeat.version = options_.version;
  heartbeat.node_id = options_.node_id;
  heartbeat.healthy = !draining_;
  heartbeat.health_message = draining_ ? "draining" : "";
  heartbeat.in_flight = in_flight_;
  heartbeat.completed = completed_;
  (void)bus_.Publish(subjects_.hb_replica, wire::Pack(heartbeat));
}

void ReplicaWorker::Drain(std::function<void()> done) {
  if (draining_) return;
  draining_ = true;
  heartbeat_.reset();
  SendHeartbeat();
  bus_.Unsubscribe(control_subject_);
  // Requests the server routed here before it saw the unsubscribe are still answered; anything
  // later finds no listener, and the proxy sends it to another replica.
  bus_.Drain(subject_, options_.spec.graceful_shutdown_timeout_s, [this, done = std::move(done)] {
    // Built-in handlers answer on the loop, so nothing is in flight once the queue is empty;
    // runtimes that answer asynchronously wait here for in_flight_ to reach zero.
    spdlog::info("replica {} drained after {} requests", options_.replica_id, completed_);
    done();
  });
}

}  // namespace serve::replica
