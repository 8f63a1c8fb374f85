#include "bus/bus.h"

#include <nats/nats.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <variant>

#include "bus/jwt.h"
#include "bus/loop_io.h"
#include "bus/nats_signature.h"
#include "bus/nkeys.h"

namespace serve::bus {
namespace {

uint64_t NowMs(uv_loop_t* loop) {
  uv_update_time(loop);
  return uv_now(loop);
}

std::string NatsError(natsStatus status) {
  const char* last = nats_GetLastError(nullptr);
  std::string text = natsStatus_GetText(status);
  if (last != nullptr && *last != '\0' && text != last) text += " (" + std::string(last) + ")";
  return text;
}

}  // namespace

namespace detail {

// State shared with nats.c threads. It outlives the Bus while any subscription can still call
// back: each subscription holds a reference until nats.c reports it complete.
struct BusShared {
  struct DestroyNatsMessage {
    void operator()(natsMsg* msg) const { natsMsg_Destroy(msg); }
  };
  struct Delivery {
    size_t handler = 0;
    Message message;
    // The message as nats.c delivered it. nats.c hands every message destroyed to a
    // garbage-collector thread of its own, and wakes it whenever it is idle: under load, about
    // once per message. Destroyed on the loop with the rest of its batch, they wake it once
    // per batch.
    std::unique_ptr<natsMsg, DestroyNatsMessage> delivered;
  };
  struct ConnectionChange {
    bool connected = false;
  };
  // nats.c closed a connection that the Bus had not closed: it gave up on it.
  struct ConnectionGivenUp {
    uint64_t connection = 0;  // Bus::connections_opened() when it was opened
    std::string why;
  };
  // A subscription delivered its last message (after a drain or unsubscribe).
  struct SubscriptionDone {
    size_t handler = 0;
  };
  using Item = std::variant<Delivery, ConnectionChange, ConnectionGivenUp, SubscriptionDone>;

  std::mutex mutex;
  std::deque<Item> queue;        // guarded by mutex
  uv_async_t* wakeup = nullptr;  // guarded by mutex; null once the bus is closing

  void Push(Item item) {
    std::lock_guard<std::mutex> lock(mutex);
    if (wakeup == nullptr) return;
    queue.push_back(std::move(item));
    uv_async_send(wakeup);
  }
};

// The closure of one nats.c subscription.
struct BusSubscription {
  std::shared_ptr<BusShared> shared;
  size_t handler;
};

}  // namespace detail

using detail::BusShared;
using detail::BusSubscription;

namespace {

// The handler's private copy of `msg` (std::string's storage is aligned for FlatBuffers).
Message CopyMessage(natsMsg* msg) {
  Message message;
  message.subject = natsMsg_GetSubject(msg);
  const char* reply = natsMsg_GetReply(msg);
  if (reply != nullptr) message.reply = reply;
  message.data.assign(natsMsg_GetData(msg), static_cast<size_t>(natsMsg_GetDataLength(msg)));
  return message;
}

void OnNatsMessage(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  auto* subscription = static_cast<BusSubscription*>(closure);
  Message message = CopyMessage(msg);
  message.no_responders = natsMsg_IsNoResponders(msg);
  subscription->shared->Push(
      BusShared::Delivery{subscription->handler, std::move(message),
                          std::unique_ptr<natsMsg, BusShared::DestroyNatsMessage>(msg)});
}

void OnSubscriptionComplete(void* closure) {
  auto* subscription = static_cast<BusSubscription*>(closure);
  // Queued behind every message this subscription delivered, so the loop sees them first.
  subscription->shared->Push(BusShared::SubscriptionDone{subscription->handler});
  delete subscription;
}

// The closure of the connection callbacks. nats.c runs them on its own thread, possibly after
// the Bus is gone (Close posts "disconnected" and then "closed"); the closure keeps the shared
// state alive until "closed", the last callback of a connection.
struct ConnectionClosure {
  std::shared_ptr<BusShared> shared;
  uint64_t connection = 0;  // which of the Bus's connections
  // The user's JWT and nkey: from memory (a worker's), or read from a .creds file at each
  // connect, so a file rewritten with new credentials takes effect at the next reconnect.
  std::string creds_file;
  std::mutex credentials_mutex;  // nats.c calls back on its own threads
  std::string user_jwt;
  std::optional<Nkey> user_key;
};

// Serve reads .creds files and signs the server's nonce itself rather than leave it to nats.c:
// the same ed25519 code for every user, and errors that name the file and the fix.
Status ReadCredsFile(ConnectionClosure* credentials) {
  std::ifstream in(credentials->creds_file);
  if (!in) {
    return Status::Error("cannot read the NATS creds file " + credentials->creds_file + ": " +
                         strerror(errno));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto creds = ParseCreds(text);
  Result<Nkey> key = creds.ok() ? Nkey::FromSeed(creds->seed, NkeyType::kUser) : creds.status();
  if (!key.ok()) {
    return Status::Error("the NATS creds file " + credentials->creds_file +
                         " is malformed: " + key.error() +
                         " (write it anew: `serve start` does, or `nsc generate creds`)");
  }
  std::lock_guard<std::mutex> lock(credentials->credentials_mutex);
  credentials->user_jwt = creds->jwt;
  credentials->user_key = std::move(*key);
  return Status::Ok();
}

// nats.c asks for the user's JWT and a signature of the server's nonce at every (re)connect.
natsStatus UserJwtCallback(char** user_jwt, char** error_text, void* closure) {
  auto* credentials = static_cast<ConnectionClosure*>(closure);
  if (!credentials->creds_file.empty()) {
    Status read = ReadCredsFile(credentials);
    if (!read.ok()) {
      *error_text = strdup(read.message().c_str());
      return NATS_ERR;
    }
  }
  std::lock_guard<std::mutex> lock(credentials->credentials_mutex);
  *user_jwt = strdup(credentials->user_jwt.c_str());
  return *user_jwt == nullptr ? NATS_NO_MEMORY : NATS_OK;
}

natsStatus SignNonceCallback(char** error_text, unsigned char** signature, int* signature_length,
                             const char* nonce, void* closure) {
  auto* credentials = static_cast<ConnectionClosure*>(closure);
  std::lock_guard<std::mutex> lock(credentials->credentials_mutex);
  if (!credentials->user_key.has_value()) {
    *error_text = strdup("no NATS user key");
    return NATS_ERR;
  }
  return SignNonceForNats(*credentials->user_key, nonce, error_text, signature, signature_length);
}

void OnDisconnected(natsConnection*, void* closure) {
  static_cast<ConnectionClosure*>(closure)->shared->Push(BusShared::ConnectionChange{false});
}

void OnConnected(natsConnection*, void* closure) {
  static_cast<ConnectionClosure*>(closure)->shared->Push(BusShared::ConnectionChange{true});
}

// The last callback of a connection. One the Bus closed no longer has a queue to report to.
void OnClosed(natsConnection* connection, void* closure) {
  auto* connection_closure = static_cast<ConnectionClosure*>(closure);
  const char* text = nullptr;
  natsStatus status = natsConnection_GetLastError(connection, &text);
  std::string why = text != nullptr && *text != '\0' ? text : natsStatus_GetText(status);
  connection_closure->shared->Push(
      BusShared::ConnectionGivenUp{connection_closure->connection, std::move(why)});
  delete connection_closure;
}

void OnAsyncError(natsConnection* connection, natsSubscription*, natsStatus status, void*) {
  // Slow consumers and permission violations land here; they are worth a line, not a crash.
  // The server's own words say which subject was refused.
  const char* text = nullptr;
  natsConnection_GetLastError(connection, &text);
  if (text != nullptr && *text != '\0') {
    spdlog::warn("NATS: {}: {}", NatsError(status), text);
  } else {
    spdlog::warn("NATS: {}", NatsError(status));
  }
}

}  // namespace

Bus::Bus(uv_loop_t* loop, Options options)
    : loop_(loop), options_(std::move(options)), shared_(std::make_shared<BusShared>()) {}

Result<std::unique_ptr<Bus>> Bus::Connect(uv_loop_t* loop, const Options& options) {
  std::unique_ptr<Bus> bus(new Bus(loop, options));
  Status status = bus->Open();
  if (!status.ok()) return status;
  return bus;
}

Status Bus::Open() {
  wakeup_ = new uv_async_t;
  uv_async_init(loop_, wakeup_,
                [](uv_async_t* handle) { static_cast<Bus*>(handle->data)->DrainQueue(); });
  wakeup_->data = this;
  timer_ = new uv_timer_t;
  uv_timer_init(loop_, timer_);
  timer_->data = this;
  drain_timer_ = new uv_timer_t;
  uv_timer_init(loop_, drain_timer_);
  drain_timer_->data = this;
  reopen_timer_ = new uv_timer_t;
  uv_timer_init(loop_, reopen_timer_);
  reopen_timer_->data = this;
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->wakeup = wakeup_;
  }
  if (options_.io_on_loop) loop_io_ = new detail::LoopIo(loop_, [this] { PullSubscriptions(); });
  return OpenConnection();
}

Status Bus::OpenConnection() {
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  // Freed by OnClosed once a connection exists, here otherwise.
  auto* closure = new ConnectionClosure{shared_, connections_opened_ + 1, {}, {}, {}, std::nullopt};
  auto fail = [&](const std::string& what) {
    natsOptions_Destroy(opts);
    delete closure;
    return Status::Error(what + ": " + NatsError(s));
  };
  if (s != NATS_OK) return fail("cannot create NATS options");
  std::string safe_url = RedactUrl(options_.url);
  s = natsOptions_SetURL(opts, options_.url.c_str());
  if (s != NATS_OK) return fail("invalid NATS address '" + safe_url + "'");
  if (!options_.name.empty()) natsOptions_SetName(opts, options_.name.c_str());
  if (options_.inbox_prefix != "_INBOX") {
    s = natsOptions_SetCustomInboxPrefix(opts, options_.inbox_prefix.c_str());
    if (s != NATS_OK) return fail("invalid inbox prefix '" + options_.inbox_prefix + "'");
  }
  // Without SendAsap every publish waits for nats.c's flusher, about 1 ms per hop.
  natsOptions_SetSendAsap(opts, true);
  natsOptions_SetTimeout(opts, static_cast<int64_t>(options_.connect_timeout_s * 1000));
  natsOptions_SetMaxReconnect(opts, -1);
  natsOptions_SetReconnectWait(opts, static_cast<int64_t>(options_.reconnect_wait_s * 1000));
  natsOptions_SetReconnectJitter(opts, 100, 1000);
  natsOptions_SetPingInterval(opts, 5000);
  natsOptions_SetMaxPingsOut(opts, 3);
  natsOptions_SetReconnectBufSize(opts, 32 * 1024 * 1024);
  natsOptions_SetDisconnectedCB(opts, OnDisconnected, closure);
  natsOptions_SetReconnectedCB(opts, OnConnected, closure);
  natsOptions_SetClosedCB(opts, OnClosed, closure);
  natsOptions_SetErrorHandler(opts, OnAsyncError, nullptr);
  if (options_.io_on_loop) {
    s = natsOptions_SetEventLoop(opts, loop_io_, detail::LoopIo::Attach, detail::LoopIo::Read,
                                 detail::LoopIo::Write, detail::LoopIo::Detach);
    if (s != NATS_OK) return fail("cannot run the NATS connection on the service's loop");
  }
  if (options_.retry_initial_connect) {
    natsOptions_SetRetryOnFailedConnect(opts, true, OnConnected, closure);
  }
  if (!options_.user.empty() || !options_.password.empty()) {
    s = natsOptions_SetUserInfo(opts, options_.user.c_str(), options_.password.c_str());
    if (s != NATS_OK) return fail("cannot use the NATS user/password");
  }
  if (!options_.token.empty()) {
    s = natsOptions_SetToken(opts, options_.token.c_str());
    if (s != NATS_OK) return fail("cannot use the NATS token");
  }
  if (!options_.user_jwt.empty()) {
    auto key = Nkey::FromSeed(options_.user_seed, NkeyType::kUser);
    if (!key.ok()) {
      s = NATS_INVALID_ARG;
      return fail("cannot use the NATS user credentials given: " + key.error());
    }
    closure->user_jwt = options_.user_jwt;
    closure->user_key = std::move(*key);
  } else if (!options_.creds_file.empty()) {
    closure->creds_file = options_.creds_file;
    Status read = ReadCredsFile(closure);
    if (!read.ok()) {
      s = NATS_INVALID_ARG;
      return fail(read.message());
    }
  }
  if (!options_.user_jwt.empty() || !options_.creds_file.empty()) {
    s = natsOptions_SetUserCredentialsCallbacks(opts, UserJwtCallback, closure, SignNonceCallback,
                                                closure);
    if (s != NATS_OK) return fail("cannot use the NATS user credentials");
  }
  bool tls = options_.url.rfind("tls://", 0) == 0 || !options_.tls_ca.empty() ||
             !options_.tls_cert.empty();
  if (tls) {
    s = natsOptions_SetSecure(opts, true);
    if (s != NATS_OK) return fail("this NATS client was built without TLS");
  }
  if (!options_.tls_ca.empty()) {
    s = natsOptions_LoadCATrustedCertificates(opts, options_.tls_ca.c_str());
    if (s != NATS_OK) return fail("cannot load the NATS TLS CA file " + options_.tls_ca);
  }
  if (!options_.tls_cert.empty() || !options_.tls_key.empty()) {
    s = natsOptions_LoadCertificatesChain(opts, options_.tls_cert.c_str(),
                                          options_.tls_key.c_str());
    if (s != NATS_OK) {
      return fail("cannot load the NATS TLS certificate " + options_.tls_cert + " / key " +
                  options_.tls_key);
    }
  }

  s = ConnectNats(&connection_, opts);
  natsOptions_Destroy(opts);
  if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED) ++connections_opened_;
  if (s == NATS_NOT_YET_CONNECTED) {
    spdlog::warn("NATS at {} does not take this connection yet; retrying in the background",
                 safe_url);
    return Status::Ok();
  }
  if (s != NATS_OK) {
    connection_ = nullptr;
    delete closure;  // a failed connect runs no callbacks
    std::string hint = s == NATS_NO_SERVER
                           ? " (is a NATS server running there? `serve start` starts one)"
                           : "";
    return Status::Error("cannot connect to NATS at " + safe_url + ": " + NatsError(s) + hint);
  }
  return Status::Ok();
}

Bus::~Bus() { Close(0.2); }

void Bus::Close(double flush_timeout_s) {
  if (closed_) return;
  closed_ = true;
  FailAllRequests("the bus connection was closed");
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->wakeup = nullptr;
    shared_->queue.clear();
  }
  if (connection_ != nullptr) {
    if (options_.io_on_loop) {
      // The server's PONG would be read by this very loop: write, do not wait for it.
      if (connected()) WriteOutBuffered();
    } else if (flush_timeout_s > 0 && connected()) {
      natsConnection_FlushTimeout(connection_, static_cast<int64_t>(flush_timeout_s * 1000));
    }
    // Subscriptions are closed with the connection; each frees its closure when nats.c says
    // it is complete, so a late callback never sees freed memory.
    natsConnection_Close(connection_);
    DestroyConnection();  // the drains in progress end unreported, with the bus
    subscriptions_.clear();
  }
  if (loop_io_ != nullptr) loop_io_->Close();  // nats.c is done with it
  loop_io_ = nullptr;
  auto close_handle = [](uv_handle_t* handle) {
    if (handle->type == UV_ASYNC) {
      delete reinterpret_cast<uv_async_t*>(handle);
    } else {
      delete reinterpret_cast<uv_timer_t*>(handle);
    }
  };
  if (wakeup_ != nullptr) uv_close(reinterpret_cast<uv_handle_t*>(wakeup_), close_handle);
  if (timer_ != nullptr) uv_close(reinterpret_cast<uv_handle_t*>(timer_), close_handle);
  for (uv_timer_t* timer : {drain_timer_, reopen_timer_}) {
    if (timer != nullptr) uv_close(reinterpret_cast<uv_handle_t*>(timer), close_handle);
  }
  wakeup_ = nullptr;
  timer_ = nullptr;
  drain_timer_ = nullptr;
  reopen_timer_ = nullptr;
}

bool Bus::connected() const {
  return connection_ != nullptr && natsConnection_Status(connection_) == NATS_CONN_STATUS_CONNECTED;
}

uint64_t Bus::max_payload() const {
  if (connection_ == nullptr || !connected()) return 0;
  int64_t limit = natsConnection_GetMaxPayload(connection_);
  return limit > 0 ? static_cast<uint64_t>(limit) : 0;
}

bool Bus::WriteOutBuffered() {
  // Each call writes what the socket takes without blocking; a full socket buffer stops it.
  for (int attempt = 0; attempt < 64; ++attempt) {
    int buffered = natsConnection_Buffered(connection_);
    if (buffered <= 0) return true;
    natsConnection_ProcessWriteEvent(connection_);
    if (natsConnection_Buffered(connection_) == buffered) break;  // no progress
  }
  return natsConnection_Buffered(connection_) <= 0;
}

Status Bus::Flush(double timeout_s) {
  if (connection_ == nullptr) return NoConnection();
  if (options_.io_on_loop) {
    if (!connected()) return Status::Error("cannot flush to NATS: not connected");
    if (!WriteOutBuffered()) return Status::Error("cannot flush to NATS: the socket is full");
    return Status::Ok();
  }
  natsStatus s = natsConnection_FlushTimeout(connection_, static_cast<int64_t>(timeout_s * 1000));
  if (s != NATS_OK) return Status::Error("cannot flush to NATS: " + NatsError(s));
  return Status::Ok();
}

void Bus::SetConnectionListener(ConnectionListener listener) {
  connection_listener_ = std::move(listener);
}

Status Bus::Subscribe(const std::string& subject, Handler handler) {
  return SubscribeAs(subject, std::move(handler), options_.io_on_loop);
}

Status Bus::SubscribeAs(const std::string& subject, Handler handler, bool read_on_loop) {
  if (closed_ || (connection_ == nullptr && !options_.retry_initial_connect)) {
    return Status::Error("bus is closed");
  }
  handlers_.push_back(std::move(handler));
  natsSubscription* sub = nullptr;
  auto s = static_cast<natsStatus>(
      SubscribeOnConnection(subject, handlers_.size() - 1, read_on_loop, &sub));
  if (s == NATS_CONNECTION_CLOSED && options_.retry_initial_connect) {
    // nats.c gave this connection up, and the Bus opens another, which subscribes it.
    subscriptions_.push_back(
        SubscriptionEntry{subject, nullptr, handlers_.size() - 1, read_on_loop});
    return Status::Ok();
  }
  if (s != NATS_OK) {
    std::string why = NatsError(s);
    // A closed connection says why it was closed (an authorization violation, say) only when
    // asked; the subscribe status alone reads "Connection Closed".
    const char* closed_because = nullptr;
    if (s == NATS_CONNECTION_CLOSED &&
        natsConnection_GetLastError(connection_, &closed_because) != NATS_OK &&
        closed_because != nullptr && *closed_because != '\0') {
      why += "; NATS closed the connection: " + std::string(closed_because);
    }
    return Status::Error("cannot subscribe to " + subject + ": " + why);
  }
  subscriptions_.push_back(SubscriptionEntry{subject, sub, handlers_.size() - 1, read_on_loop});
  return Status::Ok();
}

int Bus::SubscribeOnConnection(const std::string& subject, size_t handler, bool read_on_loop,
                               natsSubscription** sub) {
  *sub = nullptr;
  if (connection_ == nullptr) return NATS_CONNECTION_CLOSED;  // a new one is being opened
  BusSubscription* closure = nullptr;
  natsStatus s;
  if (read_on_loop) {
    s = natsConnection_SubscribeSync(sub, connection_, subject.c_str());
  } else {
    closure = new BusSubscription{shared_, handler};
    s = natsConnection_Subscribe(sub, connection_, subject.c_str(), OnNatsMessage, closure);
  }
  if (s != NATS_OK) {
    delete closure;
    return s;
  }
  if (closure != nullptr) natsSubscription_SetOnCompleteCB(*sub, OnSubscriptionComplete, closure);
  // Control messages are small; a generous limit keeps a burst from being dropped as a slow
  // consumer while the loop is busy.
  natsSubscription_SetPendingLimits(*sub, 1 << 20, 1 << 30);
  return NATS_OK;
}

void Bus::Unsubscribe(const std::string& subject) {
  for (auto it = subscriptions_.begin(); it != subscriptions_.end();) {
    if (it->subject == subject) {
      if (it->sub != nullptr) {
        natsSubscription_Unsubscribe(it->sub);
        natsSubscription_Destroy(it->sub);
      }
      it = subscriptions_.erase(it);
    } else {
      ++it;
    }
  }
}

Status Bus::NoConnection() const {
  if (closed_) return Status::Error("bus is closed");
  return Status::Error("not connected to NATS at " + RedactUrl(options_.url) +
                       ": a new connection is being opened");
}

Status Bus::Publish(const std::string& subject, std::string_view data, const std::string& reply) {
  if (connection_ == nullptr) return NoConnection();
  int size = static_cast<int>(data.size());
  natsStatus s = reply.empty()
                     ? natsConnection_Publish(connection_, subject.c_str(), data.data(), size)
                     : natsConnection_PublishRequest(connection_, subject.c_str(), reply.c_str(),
                                                     data.data(), size);
  // On the loop, nats.c only buffers: LoopIo writes every publish of this turn of the loop at
  // its end, in one send.
  if (s != NATS_OK) return Status::Error("cannot publish to " + subject + ": " + NatsError(s));
  return Status::Ok();
}

Status Bus::Respond(const Message& request, std::string_view data) {
  if (request.reply.empty()) return Status::Ok();
  return Publish(request.reply, data);
}

void Bus::Drain(const std::string& subject, double timeout_s, std::function<void()> done) {
  auto it = std::find_if(subscriptions_.begin(), subscriptions_.end(),
                         [&](const SubscriptionEntry& e) { return e.subject == subject; });
  if (it == subscriptions_.end() || it->sub == nullptr) {
    // Without a subscription (nats.c gave its connection up) nothing more can arrive.
    if (it != subscriptions_.end()) subscriptions_.erase(it);
    done();
    return;
  }
  natsSubscription* sub = it->sub;
  if (it->read_on_loop) {
    // The loop goes on reading it; nats.c says when the drain is complete (the flush after the
    // unsubscribe came back, and the loop took the last message), which drain_timer_ checks.
    uint64_t deadline = NowMs(loop_) + static_cast<uint64_t>(timeout_s * 1000) + 1000;
    if (natsSubscription_DrainTimeout(sub, static_cast<int64_t>(timeout_s * 1000)) != NATS_OK) {
      deadline = 0;  // not connected, say: nothing more can arrive anyway
    }
    draining_on_loop_[it->handler] = LoopDrain{sub, deadline, std::move(done)};
    subscriptions_.erase(it);
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(drain_timer_))) {
      uv_timer_start(
          drain_timer_, [](uv_timer_t* t) { static_cast<Bus*>(t->data)->CheckLoopDrains(); }, 0,
          10);
    }
    return;
  }
  // Destroying a subscription that still drains would unsubscribe it at once and drop what it
  // holds: it is destroyed when the drain is done.
  drained_[it->handler] = [this, sub, done = std::move(done)] {
    natsSubscription_Destroy(sub);
    std::erase(draining_, sub);
    done();
  };
  draining_.push_back(sub);
  subscriptions_.erase(it);
  natsStatus s = natsSubscription_DrainTimeout(sub, static_cast<int64_t>(timeout_s * 1000));
  if (s != NATS_OK) {
    // Not connected, say: nothing more can arrive anyway.
    natsSubscription_Unsubscribe(sub);
  }
}

Status Bus::EnsureReplySubscription() {
  if (!reply_prefix_.empty()) return Status::Ok();
  natsInbox* inbox = nullptr;
  natsStatus s = natsInbox_Create(&inbox);
  if (s != NATS_OK) return Status::Error("cannot create a reply inbox: " + NatsError(s));
  // "_INBOX.<unique>", moved below this connection's own prefix.
  std::string unique(inbox);
  natsInbox_Destroy(inbox);
  unique.erase(0, unique.find('.') + 1);
  std::string prefix = options_.inbox_prefix + "." + unique + ".";
  // Always through nats.c's delivery thread: a synchronous subscription drops the "no
  // responders" answer that says a request's subject had no subscriber, and with it which
  // request it was.
  Status status = SubscribeAs(
      prefix + "*", [this](Message& message) { OnReply(message); }, /*read_on_loop=*/false);
  if (!status.ok()) return status;
  reply_prefix_ = prefix;
  return Status::Ok();
}

void Bus::Request(const std::string& subject, std::string_view data, double timeout_s,
                  ReplyCallback callback) {
  Status status = connection_ == nullptr ? NoConnection() : EnsureReplySubscription();
  if (!status.ok()) {
    callback(status);
    return;
  }
  uint64_t id = next_request_id_++;
  std::string reply = reply_prefix_ + std::to_string(id);
  status = Publish(subject, data, reply);
  if (!status.ok()) {
    callback(status);
    return;
  }
  uint64_t deadline = NowMs(loop_) + static_cast<uint64_t>(timeout_s * 1000);
  pending_.emplace(id, PendingRequest{subject, std::move(callback), deadline});
  bool earliest = deadlines_.empty() || deadline < deadlines_.begin()->first;
  deadlines_.emplace(deadline, id);
  if (earliest) ArmTimer();
}

void Bus::OnReply(Message& message) {
  std::string_view token(message.subject);
  token.remove_prefix(std::min(token.size(), reply_prefix_.size()));
  uint64_t id = 0;
  auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), id);
  if (ec != std::errc() || end != token.data() + token.size()) return;
  auto it = pending_.find(id);
  if (it == pending_.end()) return;  // already timed out
  PendingRequest request = std::move(it->second);
  pending_.erase(it);
  deadlines_.erase({request.deadline_ms, id});
  if (message.no_responders) {
    request.callback(Status::Error("nothing listens on " + request.subject));
    return;
  }
  request.callback(std::move(message));
}

void Bus::ArmTimer() {
  if (timer_ == nullptr || deadlines_.empty()) return;
  uint64_t now = NowMs(loop_);
  uint64_t first = deadlines_.begin()->first;
  uv_timer_start(
      timer_, [](uv_timer_t* handle) { static_cast<Bus*>(handle->data)->ExpireRequests(); },
      first > now ? first - now : 0, 0);
}

void Bus::ExpireRequests() {
  uint64_t now = NowMs(loop_);
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    uint64_t id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = pending_.find(id);
    if (it == pending_.end()) continue;
    PendingRequest request = std::move(it->second);
    pending_.erase(it);
    std::string why = connected() ? "no reply from " + request.subject + " in time"
                                  : "no reply from " + request.subject +
                                        " in time: not connected to NATS at " +
                                        RedactUrl(options_.url);
    request.callback(Status::Error(why));
  }
  ArmTimer();
}

void Bus::FailAllRequests(const std::string& why) {
  auto pending = std::move(pending_);
  pending_.clear();
  deadlines_.clear();
  for (auto& [id, request] : pending) request.callback(Status::Error(why));
}

void Bus::PullSubscriptions() {
  if (closed_) return;
  // At most kBatch messages per call, like DrainQueue: the rest wait for the next turn.
  constexpr size_t kBatch = 64;
  std::vector<std::pair<size_t, natsMsg*>> pulled;
  bool more = false;
  auto pull = [&](natsSubscription* sub, size_t handler) {
    uint64_t queued = 0;
    // Asking first spares NextMsg's "timeout", which nats.c records as an error each time.
    while (natsSubscription_QueuedMsgs(sub, &queued) == NATS_OK && queued > 0) {
      if (pulled.size() == kBatch) {
        more = true;
        return;
      }
      natsMsg* msg = nullptr;
      natsStatus s = natsSubscription_NextMsg(&msg, sub, 0);
      if (s == NATS_SLOW_CONSUMER) {
        spdlog::warn(
            "NATS dropped messages for a subscription the loop did not empty in time "
            "(more than its pending limit waited)");
        continue;
      }
      if (s != NATS_OK) return;
      pulled.emplace_back(handler, msg);
    }
  };
  for (const auto& entry : subscriptions_) {
    if (entry.read_on_loop && entry.sub != nullptr) pull(entry.sub, entry.handler);
  }
  for (const auto& [handler, drain] : draining_on_loop_) pull(drain.sub, handler);
  for (auto& [handler, msg] : pulled) {
    if (!closed_) {
      Message message = CopyMessage(msg);
      handlers_[handler](message);
    }
  }
  // All at once: nats.c's garbage collector wakes once for them (see BusShared::Delivery).
  for (auto& [handler, msg] : pulled) natsMsg_Destroy(msg);
  if (more && wakeup_ != nullptr) uv_async_send(wakeup_);  // DrainQueue pulls the rest
}

void Bus::CheckLoopDrains() {
  PullSubscriptions();
  uint64_t now = NowMs(loop_);
  for (auto it = draining_on_loop_.begin(); it != draining_on_loop_.end();) {
    bool complete = natsSubscription_DrainCompletionStatus(it->second.sub) != NATS_ILLEGAL_STATE;
    if (!complete && now < it->second.deadline_ms) {
      ++it;
      continue;
    }
    natsSubscription_Destroy(it->second.sub);
    auto done = std::move(it->second.done);
    it = draining_on_loop_.erase(it);
    done();
    if (closed_) return;
  }
  if (draining_on_loop_.empty()) uv_timer_stop(drain_timer_);
}

void Bus::DrainQueue() {
  // At most kBatch messages per turn of the loop: a flood (a thousand stop orders, garbage from
  // a hostile client) must not starve the loop's timers, which send this service's heartbeats.
  constexpr size_t kBatch = 64;
  std::deque<BusShared::Item> items;
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    if (shared_->queue.size() <= kBatch) {
      items.swap(shared_->queue);
    } else {
      auto end = shared_->queue.begin() + kBatch;
      items.insert(items.end(), std::make_move_iterator(shared_->queue.begin()),
                   std::make_move_iterator(end));
      shared_->queue.erase(shared_->queue.begin(), end);
      if (shared_->wakeup != nullptr) uv_async_send(shared_->wakeup);  // the rest next turn
    }
  }
  for (auto& item : items) {
    if (closed_) return;
    if (auto* delivery = std::get_if<BusShared::Delivery>(&item)) {
      handlers_[delivery->handler](delivery->message);
    } else if (auto* done = std::get_if<BusShared::SubscriptionDone>(&item)) {
      auto it = drained_.find(done->handler);
      if (it != drained_.end()) {
        auto callback = std::move(it->second);
        drained_.erase(it);
        callback();
      }
    } else if (auto* given_up = std::get_if<BusShared::ConnectionGivenUp>(&item)) {
      OnConnectionGivenUp(given_up->connection, given_up->why);
    } else {
      bool connected = std::get<BusShared::ConnectionChange>(item).connected;
      if (connected) {
        reopen_delay_s_ = 0;
        spdlog::info("connected to NATS at {}", RedactUrl(options_.url));
      } else {
        spdlog::warn("lost the connection to NATS at {}; reconnecting", RedactUrl(options_.url));
        // Replies to what was sent before the drop are lost with the connection: fail those
        // requests now instead of letting each wait out its timeout.
        FailAllRequests("the connection to NATS was lost before the reply came");
      }
      if (connection_listener_) connection_listener_(connected);
    }
  }
  if (options_.io_on_loop && !closed_) PullSubscriptions();
}

void Bus::OnConnectionGivenUp(uint64_t connection, const std::string& why) {
  // Only a service's bus opens another: the CLI's commands report the error.
  if (closed_ || connection != connections_opened_ || !options_.retry_initial_connect) return;
  // nats.c 3.4 gives a connection up for good when the server refused its credentials twice in
  // a row, and when the first connect got a socket but no handshake (nats.c 3.12 fixed that:
  // a server still starting, or one signature withheld by SignNonceForNats). Nothing would
  // ever connect it again.
  constexpr double kMaxReopenDelayS = 5;
  reopen_delay_s_ = reopen_delay_s_ == 0 ? std::max(options_.reconnect_wait_s, 0.05)
                                         : std::min(reopen_delay_s_ * 2, kMaxReopenDelayS);
  // What nats.c says of a first connect whose handshake failed.
  std::string cause = why == natsStatus_GetText(NATS_NO_SERVER)
                          ? why + " (the server was not listening yet, did not answer within " +
                                fmt::format("{:g}", options_.connect_timeout_s) +
                                " s, or refused this user)"
                          : why;
  spdlog::error("NATS gave up the connection to {}: {}; opening a new one in {:g} s",
                RedactUrl(options_.url), cause, reopen_delay_s_);
  FailAllRequests("the connection to NATS was closed (" + why + ") before the reply came");
  uv_timer_start(
      reopen_timer_, [](uv_timer_t* handle) { static_cast<Bus*>(handle->data)->Reopen(); },
      static_cast<uint64_t>(reopen_delay_s_ * 1000), 0);
}

std::vector<std::function<void()>> Bus::DestroyConnection() {
  std::vector<std::function<void()>> drains_done;
  for (auto& entry : subscriptions_) {
    if (entry.sub != nullptr) natsSubscription_Destroy(entry.sub);
    entry.sub = nullptr;
  }
  for (natsSubscription* sub : draining_) natsSubscription_Destroy(sub);
  draining_.clear();
  for (auto& [handler, done] : drained_) drains_done.push_back(std::move(done));
  drained_.clear();
  for (auto& [handler, drain] : draining_on_loop_) {
    natsSubscription_Destroy(drain.sub);
    drains_done.push_back(std::move(drain.done));
  }
  draining_on_loop_.clear();
  natsConnection_Destroy(connection_);
  connection_ = nullptr;
  return drains_done;
}

void Bus::Reopen() {
  if (closed_) return;
  // Every subscription of the old connection is gone with it: drains are over, since nothing
  // more can arrive, and the rest are made again on the new connection.
  std::vector<std::function<void()>> drains_done = DestroyConnection();
  Status opened = OpenConnection();
  if (opened.ok()) {
    for (auto& entry : subscriptions_) {
      // A handler index of its own: what the old subscription still delivers stays its own.
      handlers_.push_back(handlers_[entry.handler]);
      entry.handler = handlers_.size() - 1;
      auto s = static_cast<natsStatus>(
          SubscribeOnConnection(entry.subject, entry.handler, entry.read_on_loop, &entry.sub));
      // A connection closed again says so with its own ConnectionGivenUp, and the next one
      // subscribes what this one could not.
      if (s != NATS_OK && s != NATS_CONNECTION_CLOSED) {
        spdlog::error("cannot subscribe to {} again: {}", entry.subject, NatsError(s));
      }
    }
  }
  for (auto& done : drains_done) done();
  if (closed_) return;
  if (!opened.ok()) {
    // Refused at once (a creds file that went missing, say): the same again, later.
    OnConnectionGivenUp(connections_opened_, opened.message());
  }
}

std::string RedactUrl(const std::string& url) {
  std::string out;
  size_t start = 0;
  while (start <= url.size()) {
    size_t comma = url.find(',', start);
    std::string one = url.substr(start, comma == std::string::npos ? std::string::npos
                                                                   : comma - start);
    size_t scheme = one.find("://");
    size_t at = one.find('@');
    if (scheme != std::string::npos && at != std::string::npos && at > scheme) {
      one = one.substr(0, scheme + 3) + "***@" + one.substr(at + 1);
    }
    out += (out.empty() ? "" : ",") + one;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::map<std::string, std::string> EnvironmentFor(const Options& options) {
  std::map<std::string, std::string> env = {{"SERVE_ADDRESS", options.url}};
  auto add = [&env](const char* name, const std::string& value) {
    if (!value.empty()) env[name] = value;
  };
  add("SERVE_NATS_USER", options.user);
  add("SERVE_NATS_PASSWORD", options.password);
  add("SERVE_NATS_TOKEN", options.token);
  add("SERVE_NATS_CREDS", options.creds_file);
  add("SERVE_NATS_TLS_CA", options.tls_ca);
  add("SERVE_NATS_TLS_CERT", options.tls_cert);
  add("SERVE_NATS_TLS_KEY", options.tls_key);
  return env;
}

namespace {

bool HasUserInfo(const std::string& url) { return RedactUrl(url) != url; }

}  // namespace

bool IsSecretVariable(std::string_view name) {
  return name == "SERVE_NATS_PASSWORD" || name == "SERVE_NATS_TOKEN" || name == "SERVE_NATS_USER" ||
         name == "SERVE_WORKER_NATS_USER" || name == "SERVE_WORKER_NATS_PASSWORD" ||
         name == "SERVE_WORKER_SIGNING_KEY_FILE" || name == "SERVE_NATS_CREDS" ||
         name.rfind("SERVE_NATS_PASSWORD_", 0) == 0;
}

std::map<std::string, std::string> PublicEnvironmentFor(const Options& options) {
  std::map<std::string, std::string> env = EnvironmentFor(options);
  for (auto it = env.begin(); it != env.end();) {
    bool secret =
        IsSecretVariable(it->first) || (it->first == "SERVE_ADDRESS" && HasUserInfo(it->second));
    it = secret ? env.erase(it) : std::next(it);
  }
  return env;
}

Result<std::string> SecretText(const Options& options) {
  std::string text;
  auto add = [&text](const char* name, const std::string& value) -> Status {
    if (value.empty()) return Status::Ok();
    if (value.find_first_of("\r\n") != std::string::npos) {
      return Status::Error(std::string("the NATS ") + name + " holds a line break");
    }
    text.append(name).append("=").append(value).append("\n");
    return Status::Ok();
  };
  Status status = add("user", options.user);
  if (status.ok()) status = add("password", options.password);
  if (status.ok()) status = add("token", options.token);
  if (status.ok()) status = add("creds", options.creds_file);
  if (status.ok()) status = add("jwt", options.user_jwt);
  if (status.ok()) status = add("seed", options.user_seed);
  if (status.ok() && HasUserInfo(options.url)) status = add("address", options.url);
  if (!status.ok()) return status;
  return text;
}

Status ApplySecretText(std::string_view text, Options* options) {
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (line.empty()) continue;
    size_t equals = line.find('=');
    std::string name(line.substr(0, equals));
    std::string value(equals == std::string_view::npos ? "" : line.substr(equals + 1));
    if (name == "user") {
      options->user = value;
    } else if (name == "password") {
      options->password = value;
    } else if (name == "token") {
      options->token = value;
    } else if (name == "creds") {
      options->creds_file = value;
    } else if (name == "jwt") {
      options->user_jwt = value;
    } else if (name == "seed") {
      options->user_seed = value;
    } else if (name == "address") {
      options->url = value;
    } else {
      return Status::Error("unknown bus secret '" + name.substr(0, 32) +
                           "' (expected user, password, token, creds, jwt, seed or address)");
    }
  }
  return Status::Ok();
}

Result<Message> RequestAndWait(uv_loop_t* loop, Bus& bus, const std::string& subject,
                               std::string_view data, double timeout_s) {
  std::optional<Result<Message>> result;
  bus.Request(subject, data, timeout_s, [&](Result<Message> reply) { result = std::move(reply); });
  while (!result.has_value()) uv_run(loop, UV_RUN_ONCE);
  return std::move(*result);
}

}  // namespace serve::bus
