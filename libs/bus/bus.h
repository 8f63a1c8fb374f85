#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/status.h"

struct __natsConnection;
struct __natsSubscription;

namespace serve::bus {

namespace detail {
struct BusShared;
class LoopIo;
}  // namespace detail

// How to reach NATS. Every service and the CLI take the same flags (see flags.h), each also
// readable from the environment, so `serve start` can hand them to the services it starts.
struct Options {
  // One URL or a comma-separated list: nats://host:4222, tls://host:4222, nats://u:p@host:4222.
  std::string url = "nats://127.0.0.1:4222";
  // Shown by the NATS server's monitoring, e.g. "serve-proxy".
  std::string name;
  std::string user;
  std::string password;
  std::string token;
  std::string creds_file;  // a .creds file (JWT + NKey seed)
  // A user JWT and its nkey seed held in memory: what a node agent hands each worker, which
  // has no file of its own. Taken before `creds_file`.
  std::string user_jwt;
  std::string user_seed;
  std::string tls_ca;      // CA bundle that signs the server's certificate
  std::string tls_cert;    // client certificate, for servers that verify clients
  std::string tls_key;
  // Replies to this connection's requests arrive below it. Each role has its own
  // (bus::InboxPrefix), so a server's permissions can keep one role from reading another's.
  std::string inbox_prefix = "_INBOX";
  // Services keep trying in the background until NATS is up; the CLI wants a quick answer.
  bool retry_initial_connect = true;
  double connect_timeout_s = 2;
  double reconnect_wait_s = 0.25;
  // nats.c reads and writes the socket on the Bus's loop (an event-loop adapter) instead of on
  // threads of its own. Subscriptions are then read on the loop too: their messages reach the
  // handlers in the turn of the loop that read them, with no thread to wake, and what the
  // handlers publish goes out in one write at the end of the turn. Replies to Request() still
  // come through nats.c's delivery thread: only there does nats.c say that nothing listened.
  // Flush and Close write what is buffered without waiting for the server's answer, which
  // only the loop could read.
  bool io_on_loop = false;
};

// A message as a handler sees it. The data is a private copy, aligned for FlatBuffers.
struct Message {
  std::string subject;
  std::string reply;
  std::string data;
  // Set on a reply when the request's subject had no subscriber at all.
  bool no_responders = false;
};

// A NATS connection whose callbacks all run on one libuv loop.
//
// Handlers run on the loop thread and may touch the service's state without locks. Without
// io_on_loop, nats.c delivers messages on its own threads and Bus copies each into a queue and
// wakes the loop with uv_async_send; with it, subscriptions are synchronous ones that the loop
// empties after each read of the socket. Every method must be called on the loop thread.
//
// Request() keeps many requests in flight over one wildcard reply subscription, matching each
// reply to its request by the last token of the reply subject.
class Bus {
 public:
  using Handler = std::function<void(Message& message)>;
  using ReplyCallback = std::function<void(Result<Message> reply)>;
  // Told `true` when the connection is (re-)established and `false` when it drops.
  using ConnectionListener = std::function<void(bool connected)>;

  // Connects to NATS. With `retry_initial_connect`, an unreachable server is not an error: the
  // bus keeps trying in the background and buffers what is published meanwhile.
  static Result<std::unique_ptr<Bus>> Connect(uv_loop_t* loop, const Options& options);
  ~Bus();
  Bus(const Bus&) = delete;
  Bus& operator=(const Bus&) = delete;

  Status Subscribe(const std::string& subject, Handler handler);
  // Stops delivery for every subscription on exactly `subject`.
  void Unsubscribe(const std::string& subject);
  // Unsubscribes from `subject` without losing what is already on its way: messages the server
  // routed here before it saw the unsubscribe are still handed to the handler, then `done` runs
  // (on the loop). For replicas that leave service without dropping a request.
  void Drain(const std::string& subject, double timeout_s, std::function<void()> done);
  Status Publish(const std::string& subject, std::string_view data,
                 const std::string& reply = "");
  // Answers `request` on its reply subject; a message without one is ignored.
  Status Respond(const Message& request, std::string_view data);
  // Sends a request and calls `callback` exactly once, on the loop: with the reply, or with an
  // error when nothing answers within `timeout_s`, nobody listens on `subject`, the connection
  // drops before the reply came, or the bus closes first.
  void Request(const std::string& subject, std::string_view data, double timeout_s,
               ReplyCallback callback);

  // Blocks until the server has processed everything sent so far (subscriptions included), or
  // `timeout_s` passes. For start-up and tests: a subscription made on one connection is only
  // certain to be seen by requests from another connection after this.
  Status Flush(double timeout_s = 2.0);

  void SetConnectionListener(ConnectionListener listener);
  bool connected() const;
  // The largest message the server takes (its max_payload), or 0 while not connected.
  uint64_t max_payload() const;
  const std::string& url() const { return options_.url; }
  size_t pending_requests() const { return pending_.size(); }
  // How many NATS connections this bus opened. nats.c reconnects a connection by itself, but
  // gives one up for good in some cases (see OnConnectionGivenUp); a service's bus then opens
  // another, with the same subscriptions.
  uint64_t connections_opened() const { return connections_opened_; }

  // Flushes what is buffered (up to `timeout_s`), then closes. Pending requests fail.
  void Close(double flush_timeout_s = 1.0);

 private:
  // With io_on_loop: writes what nats.c holds for the socket, as far as the socket takes it.
  // True when nothing is left.
  bool WriteOutBuffered();
  struct PendingRequest {
    std::string subject;
    ReplyCallback callback;
    uint64_t deadline_ms;
  };

  Bus(uv_loop_t* loop, Options options);
  // Sets up the loop's handles, then opens the first connection.
  Status Open();
  // A new nats.c connection, in connection_, with no subscriptions yet.
  Status OpenConnection();
  // nats.c gave up connection number `connection` (1 for the first) for good: a service's bus
  // opens another after a delay that grows with each connection given up in a row.
  void OnConnectionGivenUp(uint64_t connection, const std::string& why);
  // Opens the next connection and makes every subscription again on it.
  void Reopen();
  // Destroys connection_ (closed already) and every nats.c subscription on it; the entries of
  // subscriptions_ stay, without one. Returns the `done` callbacks of the drains in progress.
  std::vector<std::function<void()>> DestroyConnection();
  // What Publish and Request say while there is no connection.
  Status NoConnection() const;
  // Subscribes `subject` on connection_ for handlers_[handler]; a natsStatus (nats.h is not
  // included here), NATS_CONNECTION_CLOSED while there is no connection.
  int SubscribeOnConnection(const std::string& subject, size_t handler, bool read_on_loop,
                            __natsSubscription** sub);
  // With `read_on_loop`, a synchronous subscription that PullSubscriptions() empties; else an
  // asynchronous one, whose messages come through the queue.
  Status SubscribeAs(const std::string& subject, Handler handler, bool read_on_loop);
  // With io_on_loop: hands what nats.c read for the loop's subscriptions to their handlers, at
  // most a batch per call (another call is scheduled for the rest).
  void PullSubscriptions();
  // Finishes the drains of loop subscriptions that nats.c reports complete (or that ran out of
  // time): each handler has had its last message, so `done` runs.
  void CheckLoopDrains();
  Status EnsureReplySubscription();
  void DrainQueue();
  void OnReply(Message& message);
  void ArmTimer();
  void ExpireRequests();
  void FailAllRequests(const std::string& why);

  uv_loop_t* loop_;
  Options options_;
  __natsConnection* connection_ = nullptr;
  std::shared_ptr<detail::BusShared> shared_;  // also held by nats.c callbacks
  uv_async_t* wakeup_ = nullptr;
  uv_timer_t* timer_ = nullptr;
  detail::LoopIo* loop_io_ = nullptr;  // with io_on_loop: the socket's watcher on loop_
  std::deque<Handler> handlers_;  // indexed by subscription; a deque keeps them in place
  std::map<size_t, std::function<void()>> drained_;  // by handler index: Drain()'s callbacks
  struct SubscriptionEntry {
    std::string subject;
    __natsSubscription* sub;
    size_t handler;  // index into handlers_
    bool read_on_loop = false;
  };
  std::vector<SubscriptionEntry> subscriptions_;
  std::vector<__natsSubscription*> draining_;
  // Loop subscriptions that drain, by handler index: still read until nats.c says the drain
  // is complete, which drain_timer_ checks while there are any.
  struct LoopDrain {
    __natsSubscription* sub;
    uint64_t deadline_ms;
    std::function<void()> done;
  };
  std::map<size_t, LoopDrain> draining_on_loop_;
  uv_timer_t* drain_timer_ = nullptr;
  uv_timer_t* reopen_timer_ = nullptr;
  uint64_t connections_opened_ = 0;
  double reopen_delay_s_ = 0;  // 0 until a connection is given up, and again once connected
  ConnectionListener connection_listener_;

  std::string reply_prefix_;  // "_INBOX.<nuid>."
  uint64_t next_request_id_ = 1;
  std::unordered_map<uint64_t, PendingRequest> pending_;
  // (deadline ms, request id): requests sent in one turn of the loop share a deadline, and a
  // reply must find its own entry without walking the others.
  std::set<std::pair<uint64_t, uint64_t>> deadlines_;
  bool closed_ = false;
};

// `url` with any user:password@ replaced by ***@, for log lines and messages.
std::string RedactUrl(const std::string& url);

// The SERVE_* environment variables that hand `options` to a child process (the flags read
// them), so credentials never appear on a command line.
std::map<std::string, std::string> EnvironmentFor(const Options& options);

// The variables of EnvironmentFor() that carry a secret (a password, a token, an address with
// user:password@ in it) or point at one (a .creds file, the worker signing key), and the names
// a node agent keeps from its workers' environment.
bool IsSecretVariable(std::string_view name);
// EnvironmentFor() without the secrets: for a process that gets them another way.
std::map<std::string, std::string> PublicEnvironmentFor(const Options& options);

// The secrets of `options` as "name=value" lines, for a pipe to a child process: a worker reads
// them from its stdin, so they are in no environment its user code can read. Refused when a
// value holds a line break.
Result<std::string> SecretText(const Options& options);
// Applies what SecretText() wrote. Unknown names are refused, naming them.
Status ApplySecretText(std::string_view text, Options* options);

// Runs `loop` until `callback`'s reply arrives: for the CLI and for tests, never for services.
Result<Message> RequestAndWait(uv_loop_t* loop, Bus& bus, const std::string& subject,
                               std::string_view data, double timeout_s);

}  // namespace serve::bus
