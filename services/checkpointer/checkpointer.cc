#include "checkpointer/checkpointer.h"

#include <spdlog/spdlog.h>

namespace serve::checkpointer {
namespace {

// A store call slower than this is worth a warning: gets and puts queue behind it.
constexpr uint64_t kSlowStoreMs = 1000;

constexpr char kStopping[] = "the checkpointer is shutting down; retry against its replacement";

}  // namespace

Checkpointer::Checkpointer(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                           CheckpointStore& store)
    : loop_(loop), bus_(bus), subjects_(subjects), store_(store) {}

Status Checkpointer::Start() {
  struct Route {
    const std::string& subject;
    void (Checkpointer::*handler)(const bus::Message&);
  };
  for (const Route& route : {Route{subjects_.ckpt_put, &Checkpointer::OnPut},
                             Route{subjects_.ckpt_get, &Checkpointer::OnGet},
                             Route{subjects_.shutdown, &Checkpointer::OnShutdown}}) {
    auto handler = route.handler;
    Status status =
        bus_.Subscribe(route.subject, [this, handler](bus::Message& m) { (this->*handler)(m); });
    if (!status.ok()) return status;
  }
  return Status::Ok();
}

void Checkpointer::Stop() { stopped_ = true; }

uint64_t Checkpointer::NowMs() {
  uv_update_time(loop_);
  return uv_now(loop_);
}

uint64_t Checkpointer::ElapsedMs(uint64_t start_ms) { return NowMs() - start_ms; }

void Checkpointer::Reply(const bus::Message& request, const std::string& bytes) {
  if (request.reply.empty()) {
    spdlog::debug("request on {} had no reply subject; nothing to answer", request.subject);
    return;
  }
  Status sent = bus_.Respond(request, bytes);
  if (!sent.ok()) spdlog::warn("cannot answer on {}: {}", request.subject, sent.message());
}

void Checkpointer::OnPut(const bus::Message& message) {
  wire::CheckpointPutReplyT reply;
  auto request = wire::DecodeRequest<wire::CheckpointPut>(codec_, message.data);
  if (!request.ok()) {
    spdlog::warn("bad request on {}: {}", message.subject, request.error());
    reply.error = request.error();
    Reply(message, wire::EncodeReply(codec_, reply, wire::LooksLikeJson(message.data)));
    return;
  }
  const wire::CheckpointPutT& put = request->value;
  if (stopped_) {
    reply.error = kStopping;
    Reply(message, wire::EncodeReply(codec_, reply, request->json));
    return;
  }

  uint64_t start_ms = NowMs();
  std::string_view data(reinterpret_cast<const char*>(put.data.data()), put.data.size());
  Status stored = store_.Put(put.key, put.generation, data);
  uint64_t elapsed_ms = ElapsedMs(start_ms);
  if (stored.ok()) {
    reply.stored_generation = put.generation;
    spdlog::debug("put '{}' generation {} ({} bytes) in {} ms", put.key, put.generation,
                  put.data.size(), elapsed_ms);
  } else {
    reply.error = stored.message();
    // Tell a fenced-off writer which generation won, when the store can say.
    auto current = store_.Get(put.key);
    if (current.ok() && current->has_value()) reply.stored_generation = (*current)->generation;
    spdlog::warn("put '{}' generation {}: {}", put.key, put.generation, stored.message());
  }
  if (elapsed_ms > kSlowStoreMs) {
    spdlog::warn("storing '{}' in {} took {} ms; requests waited behind it", put.key,
                 store_.Describe(), elapsed_ms);
  }
  Reply(message, wire::EncodeReply(codec_, reply, request->json));
}

void Checkpointer::OnGet(const bus::Message& message) {
  wire::CheckpointGetReplyT reply;
  auto request = wire::DecodeRequest<wire::CheckpointGet>(codec_, message.data);
  if (!request.ok()) {
    spdlog::warn("bad request on {}: {}", message.subject, request.error());
    reply.error = request.error();
    Reply(message, wire::EncodeReply(codec_, reply, wire::LooksLikeJson(message.data)));
    return;
  }
  if (message.reply.empty()) {
    spdlog::debug("get on {} had no reply subject; nothing to answer", message.subject);
    return;
  }
  const wire::CheckpointGetT& get = request->value;
  if (stopped_) {
    reply.error = kStopping;
    Reply(message, wire::EncodeReply(codec_, reply, request->json));
    return;
  }

  uint64_t start_ms = NowMs();
  auto record = store_.Get(get.key);
  uint64_t elapsed_ms = ElapsedMs(start_ms);
  if (!record.ok()) {
    reply.error = record.error();
    spdlog::warn("get '{}': {}", get.key, record.error());
  } else if (record->has_value()) {
    const Record& found = **record;
    reply.found = true;
    reply.generation = found.generation;
    reply.data.assign(found.data.begin(), found.data.end());
    spdlog::debug("get '{}': generation {} ({} bytes) in {} ms", get.key, found.generation,
                  found.data.size(), elapsed_ms);
  } else {
    spdlog::debug("get '{}': not found", get.key);
  }
  if (elapsed_ms > kSlowStoreMs) {
    spdlog::warn("reading '{}' from {} took {} ms; requests waited behind it", get.key,
                 store_.Describe(), elapsed_ms);
  }
  Reply(message, wire::EncodeReply(codec_, reply, request->json));
}

void Checkpointer::OnShutdown(const bus::Message& message) {
  if (stopped_) return;
  std::string why = "shutdown requested on " + message.subject;
  if (auto notice = wire::Verify<wire::ShutdownNotice>(message.data);
      notice.ok() && (*notice)->reason() != nullptr && (*notice)->reason()->size() > 0) {
    why += ": " + (*notice)->reason()->str();
  }
  Stop();
  if (on_shutdown_) on_shutdown_(why);
}

}  // namespace serve::checkpointer
