#include "proxy/proxy.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "wire/codec.h"

namespace serve::proxy {
namespace {

// After the bus comes back, replicas reconnect on their own schedule (each client retries
// every 0.25 s plus jitter), so for a moment a replica in the table may not be subscribed yet.
// A request that finds nobody listening then is asked again instead of failing.
constexpr uint64_t kReconnectGraceMs = 2000;

http::Response TextResponse(int status, std::string body) {
  http::Response response;
  response.status = status;
  response.headers.push_back({"Content-Type", "text/plain; charset=utf-8"});
  response.body = std::move(body);
  response.body += "\n";
  return response;
}

std::string EncodeRequest(const http::Request& request, const std::string& request_id) {
  flatbuffers::FlatBufferBuilder fbb(request.body.size() + request.target.size() + 512);
  std::vector<flatbuffers::Offset<wire::Header>> headers;
  headers.reserve(request.headers.size());
  for (const auto& header : request.headers) {
    headers.push_back(
        wire::CreateHeader(fbb, fbb.CreateString(header.name), fbb.CreateString(header.value)));
  }
  auto id = fbb.CreateString(request_id);
  auto method = fbb.CreateString(request.method);
  auto path = fbb.CreateString(request.path);
  auto query = fbb.CreateString(request.query);
  auto header_vector = fbb.CreateVector(headers);
  auto body = fbb.CreateVector(reinterpret_cast<const uint8_t*>(request.body.data()),
                               request.body.size());
  wire::HttpRequestBuilder builder(fbb);
  builder.add_request_id(id);
  builder.add_method(method);
  builder.add_path(path);
  builder.add_query(query);
  builder.add_headers(header_vector);
  builder.add_body(body);
  return wire::Finish(fbb, builder.Finish());
}

}  // namespace

Result<uint64_t> RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return Status::Error(std::string("cannot read the open file limit: ") + strerror(errno));
  }
  if (limit.rlim_cur != limit.rlim_max) {
    rlim_t wanted = limit.rlim_max;
    limit.rlim_cur = wanted;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      return Status::Error(
          fmt::format("cannot raise the open file limit to {}: {}", wanted, strerror(errno)));
    }
  }
  return static_cast<uint64_t>(limit.rlim_cur);
}

// One HTTP request on its way through the proxy.
struct Proxy::Call {
  http::Responder responder;
  std::string request_id;
  std::string deployment;
  std::string route_prefix;
  std::string path;
  std::string method;
  std::string replica;      // the last one tried
  uint64_t started_ns = 0;  // uv_hrtime() on arrival, for the latency histogram and access log
  std::string encoded;  // the HttpRequest FlatBuffer, built once, sent to each replica tried
  std::set<std::string> tried;
  int attempts = 0;
  bool head = false;
  uint64_t queued_at_ms = 0;   // when it started waiting for a free replica
  uint64_t held_since_ms = 0;  // when it started waiting for the bus
  bool finished = false;       // answered; later replies for it are ignored
};

Proxy::Proxy(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects, ProxyOptions options)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      options_(std::move(options)),
      router_(subjects.ns),
      request_id_prefix_(service::RandomHex(8)),
      metrics_registry_(options_.metrics_name_prefix) {
  if (options_.metrics) {
    metrics_ = std::make_unique<ProxyMetrics>(metrics_registry_);
    metrics_registry_.AddCollector([this] { return CollectQueues(); });
  }
  if (options_.access_log) access_log_ = std::make_unique<log::RequestLog>(256);
}

Proxy::~Proxy() = default;

Status Proxy::Start() {
  server_ = std::make_unique<http::Server>(
      loop_, options_.http,
      [this](http::Request&& request, http::Responder responder) {
        OnHttp(std::move(request), std::move(responder));
      });
  if (options_.http.listen_fd >= 0) {
    int listening = 0;
    socklen_t length = sizeof(listening);
    sockaddr_storage address{};
    socklen_t address_length = sizeof(address);
    if (getsockopt(options_.http.listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 ||
        listening == 0 ||
        getsockname(options_.http.listen_fd, reinterpret_cast<sockaddr*>(&address),
                    &address_length) != 0) {
      return Status::Error("--http-listen-fd " + std::to_string(options_.http.listen_fd) +
                           " is not a listening socket; omit it to bind --http-host and "
                           "--http-port");
    }
    inherited_port_ =
        ntohs(address.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&address)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&address)->sin_port);
    accept_deadline_ = std::make_unique<service::OneShotTimer>(loop_);
    accept_deadline_->Start(options_.first_routes_wait_s, [this] {
      spdlog::warn("no route table after {} s; accepting connections anyway",
                   options_.first_routes_wait_s);
      StartAccepting();
    });
  } else {
    Status listening = server_->Listen();
    if (!listening.ok()) {
      return Status::Error(listening.message() +
                           "; the proxy's address is set with --http-host "
                           "and --http-port");
    }
    accepting_ = true;
  }
  Status subscribed = bus_.Subscribe(subjects_.routes, [this](bus::Message& m) {
    OnRouteTable(m.data);
  });
  if (!subscribed.ok()) return subscribed;
  subscribed = bus_.Subscribe(subjects_.node_exited, [this](bus::Message& m) {
    OnReplicaExited(m.data);
  });
  if (!subscribed.ok()) return subscribed;
  bus_.SetConnectionListener([this](bool connected) {
    bus_down_noticed_ = !connected;
    if (!connected) return;
    uv_update_time(loop_);
    connected_at_ms_ = uv_now(loop_);
    // The controller may have published while this proxy was away; until its answer comes,
    // the table held serves.
    RequestRoutes();
    ReleaseHeld();
  });
  routes_retry_ = std::make_unique<service::OneShotTimer>(loop_);
  RequestRoutes();
  SendHeartbeat();
  heartbeat_ = std::make_unique<service::RepeatingTimer>(loop_, options_.heartbeat_period_s,
                                                         [this] { SendHeartbeat(); });
  queue_sweeper_ = std::make_unique<service::RepeatingTimer>(loop_, 0.1, [this] {
    ExpireWaiting();
    FailCallsOfExitedReplicas();
    ReleaseHeld();
  });
  spdlog::info("proxy {} {} http://{}:{}", options_.proxy_id,
               accepting_ ? "listening on" : "took over the socket of", options_.http.host, port());
  return Status::Ok();
}

void Proxy::StartAccepting() {
  if (accepting_ || server_ == nullptr) return;
  accepting_ = true;
  accept_deadline_.reset();
  Status listening = server_->Listen();
  if (!listening.ok()) {
    // The socket was checked in Start(). A proxy that cannot accept is of no use, and only
    // its end tells the supervisor so.
    spdlog::critical("cannot accept on the handed-over socket: {}", listening.message());
    spdlog::shutdown();
    _exit(2);
  }
}

void Proxy::Stop(std::function<void()> on_closed) {
  accept_deadline_.reset();
  accepting_ = true;  // a route table that still arrives must not open the closed server
  heartbeat_.reset();
  routes_retry_.reset();
  queue_sweeper_.reset();
  for (auto& [deployment, queue] : waiting_) {
    for (auto& call : queue) Finish(call, TextResponse(503, "the proxy is shutting down"));
  }
  waiting_.clear();
  for (auto& call : held_) Finish(call, TextResponse(503, "the proxy is shutting down"));
  held_.clear();
  if (server_ != nullptr) {
    server_->Close(std::move(on_closed));
  } else if (on_closed) {
    on_closed();
  }
}

void Proxy::RequestRoutes() {
  // A FlatBuffer request, so that the table comes back as one (a JSON request gets JSON).
  static const std::string kRequest = wire::Pack(wire::RouteTableRequestT{});
  bus_.Request(subjects_.ctl_routes, kRequest, 2.0, [this](Result<bus::Message> reply) {
    if (reply.ok()) {
      OnRouteTable(reply->data);
      return;
    }
    spdlog::log(have_routes_ ? spdlog::level::debug : spdlog::level::warn,
                "cannot get the route table yet ({}); retrying", reply.error());
    if (routes_retry_ != nullptr) routes_retry_->Start(1.0, [this] { RequestRoutes(); });
  });
}

void Proxy::OnRouteTable(const std::string& bytes) {
  auto table = wire::Verify<wire::RouteTable>(bytes);
  if (!table.ok()) {
    spdlog::warn("ignored a route table: {}", table.error());
    return;
  }
  if ((*table)->error() != nullptr && (*table)->error()->size() > 0) {
    spdlog::warn("the controller refused the route request: {}", (*table)->error()->str());
    return;
  }
  // Replica ids become the subjects requests are published on: a table with one that is not a
  // plain token is refused whole, never turned into a publish on a wildcard or another subject.
  if ((*table)->routes() != nullptr) {
    for (const wire::Route* route : *(*table)->routes()) {
      if (route->replicas() == nullptr) continue;
      for (const wire::RouteReplica* replica : *route->replicas()) {
        std::string_view id = replica->id() != nullptr ? replica->id()->string_view() : "";
        if (Status valid = bus::ValidateId(id, "replica id"); !valid.ok()) {
          spdlog::warn("ignored a route table: {}", valid.message());
          return;
        }
      }
    }
  }
  if (router_.Update(**table)) {
    have_routes_ = true;
    StartAccepting();
    spdlog::info("routes (generation {}): {}", router_.generation(), router_.RoutesJson());
    SendHeartbeat();  // tells the controller, and so `serve deploy`, that traffic switched
    std::vector<std::string> deployments;
    for (const auto& [deployment, queue] : waiting_) deployments.push_back(deployment);
    for (const auto& deployment : deployments) DispatchWaiting(deployment);
    ReleaseHeld();
  }
}

void Proxy::SendHeartbeat() {
  if (access_log_ != nullptr) access_log_->Flush();
  wire::ProxyHeartbeatT heartbeat;
  heartbeat.proxy_id = options_.proxy_id;
  heartbeat.address = options_.http.host + ":" + std::to_string(port());
  heartbeat.pid = getpid();
  heartbeat.period_s = options_.heartbeat_period_s;
  heartbeat.route_generation = router_.generation();
  heartbeat.route_controller_id = router_.controller_id();
  (void)bus_.Publish(subjects_.hb_proxy, wire::Pack(heartbeat));
}

void Proxy::OnHttp(http::Request&& request, http::Responder responder) {
  if (request.path == "/-/healthz") {
    responder.Send(Health());
    return;
  }
  if (request.path == "/-/metrics" && metrics_ != nullptr) {
    responder.Send(metrics_registry_.Response());
    return;
  }
  if (request.path == "/-/routes") {
    http::Response response;
    response.headers.push_back({"Content-Type", "application/json"});
    response.body = router_.RoutesJson();
    responder.Send(std::move(response));
    return;
  }
  auto call = std::make_shared<Call>();
  const std::string* given_id = request.FindHeader("X-Request-ID");
  if (given_id != nullptr && !given_id->empty() && given_id->size() <= 128) {
    call->request_id = *given_id;
  } else {
    call->request_id = request_id_prefix_ + "-" + std::to_string(++request_counter_);
  }
  call->responder = std::move(responder);
  call->path = request.path;
  if (metrics_ != nullptr) metrics_->Started();
  if (metrics_ != nullptr || access_log_ != nullptr) {
    call->method = request.method;
    call->started_ns = uv_hrtime();
  }
  call->head = request.method == "HEAD";
  call->encoded = EncodeRequest(request, call->request_id);
  Dispatch(call);
}

void Proxy::Dispatch(const std::shared_ptr<Call>& call) {
  const Route* route = router_.Lookup(call->path);
  if (route == nullptr) {
    if (!have_routes_ && !bus_.connected()) {
      HoldForBus(call);  // the route table comes with the bus
      return;
    }
    Finish(call, TextResponse(404, "no route for " + call->path +
                                       "; GET /-/routes lists the routes this proxy serves"));
    return;
  }
  call->deployment = route->deployment;
  call->route_prefix = route->prefix;
  Attempt(call);
}

void Proxy::Attempt(const std::shared_ptr<Call>& call) {
  const Route* route = router_.Lookup(call->route_prefix);
  if (route == nullptr || route->deployment != call->deployment) {
    Finish(call, TextResponse(503, "deployment " + call->deployment + " was removed"));
    return;
  }
  if (route->replicas.empty()) {
    Finish(call, TextResponse(503, "deployment " + call->deployment +
                                       " has no running replica right now (starting, updating "
                                       "or scaled to zero); `serve status` tells which"));
    return;
  }
  if (!bus_.connected()) {
    HoldForBus(call);
    return;
  }
  bool all_full = false;
  const ReplicaTarget* target = router_.Pick(*route, call->tried, &all_full);
  if (target == nullptr && all_full) {
    auto& queue = waiting_[call->deployment];
    if (queue.size() >= options_.max_queued_per_deployment) {
      Finish(call, TextResponse(503, "every replica of " + call->deployment +
                                         " is at max_concurrent_queries and " +
                                         std::to_string(queue.size()) +
                                         " requests already wait; retry later or add replicas"));
      return;
    }
    if (call->queued_at_ms == 0) {
      uv_update_time(loop_);
      call->queued_at_ms = uv_now(loop_);
    }
    queue.push_back(call);
    return;
  }
  if (target == nullptr) {
    Finish(call, TextResponse(502, "no replica of " + call->deployment +
                                       " could take the request"));
    return;
  }
  if (uint64_t limit = bus_.max_payload(); limit > 0 && call->encoded.size() > limit) {
    Finish(call, TextResponse(413, "the request (" + std::to_string(call->encoded.size()) +
                                       " bytes with its headers) is larger than the bus carries "
                                       "(NATS max_payload: " + std::to_string(limit) +
                                       " bytes); send less, or raise max_payload in the "
                                       "nats-server configuration"));
    return;
  }
  ++call->attempts;
  call->tried.insert(target->id);
  std::string replica_id = target->id;
  router_.Acquire(replica_id);
  running_[replica_id].insert(call);
  call->replica = replica_id;
  bus_.Request(
      target->subject, call->encoded, options_.request_timeout_s,
      [this, call, replica_id](Result<bus::Message> reply) {
        router_.Release(replica_id);
        if (auto running = running_.find(replica_id); running != running_.end()) {
          running->second.erase(call);
          if (running->second.empty()) running_.erase(running);
        }
        DispatchWaiting(call->deployment);
        if (call->finished) return;  // answered when its replica exited
        if (!reply.ok()) {
          bool gone = reply.error().rfind("nothing listens", 0) == 0;
          if (gone && InReconnectGrace()) {
            log::Scope scope({call->deployment, replica_id, call->request_id});
            spdlog::debug("the replica has no subscriber yet after a reconnect; asking again");
            call->tried.erase(replica_id);
            --call->attempts;
            uv_update_time(loop_);
            call->held_since_ms = uv_now(loop_);
            held_.push_back(call);  // sent again by the next sweep
            return;
          }
          if (gone && call->attempts < options_.max_attempts) {
            log::Scope scope({call->deployment, replica_id, call->request_id});
            spdlog::debug("the replica is gone; trying another");
            Attempt(call);
            return;
          }
          if (gone) {
            Finish(call, TextResponse(502, "replica " + replica_id + " of " + call->deployment +
                                               " is gone and no other could take the request"));
          } else if (reply.error().find("in time") != std::string::npos) {
            Finish(call, TextResponse(504, "replica " + replica_id + " of " + call->deployment +
                                               " did not answer within " +
                                               std::to_string(static_cast<int>(
                                                   options_.request_timeout_s)) +
                                               " s"));
          } else {
            Finish(call, TextResponse(502, "request to replica " + replica_id + " failed: " +
                                               reply.error()));
          }
          return;
        }
        auto answer = wire::Verify<wire::HttpResponse>(reply->data);
        if (!answer.ok()) {
          Finish(call, TextResponse(502, "replica " + replica_id +
                                             " sent an unreadable answer: " + answer.error()));
          return;
        }
        const wire::HttpResponse& r = **answer;
        if (r.overloaded()) {
          // Full with other proxies' requests: another replica may have room. When none is
          // left to try, the answer is the replica's own 503, which a client may retry.
          const Route* route = router_.Lookup(call->route_prefix);
          bool all_full = false;
          bool another = route != nullptr && route->deployment == call->deployment &&
                         router_.Pick(*route, call->tried, &all_full) != nullptr;
          if (another && call->attempts < options_.max_attempts) {
            log::Scope scope({call->deployment, replica_id, call->request_id});
            spdlog::debug("the replica is full; trying another");
            Attempt(call);
            return;
          }
          Finish(call, TextResponse(503, (r.error() != nullptr ? r.error()->str() : "") +
                                             "; every replica tried is full: retry later or "
                                             "add replicas"));
          return;
        }
        if (r.error() != nullptr && r.error()->size() > 0) {
          log::Scope scope({call->deployment, replica_id, call->request_id});
          spdlog::warn("the replica failed the request: {}", r.error()->str());
          Finish(call, TextResponse(r.status() >= 500 && r.status() <= 599 ? r.status() : 502,
                                    r.error()->str()));
          return;
        }
        if (r.status() < 200 || r.status() > 599) {
          // User code chose it: a 1xx cannot end a request, and the rest are no HTTP status.
          log::Scope scope({call->deployment, replica_id, call->request_id});
          Finish(call, TextResponse(502, "replica " + replica_id + " of " + call->deployment +
                                             " answered with status " + std::to_string(r.status()) +
                                             ", which is not a final HTTP status (200-599)"));
          return;
        }
        http::Response response;
        response.status = r.status();
        if (r.headers() != nullptr) {
          response.headers.reserve(r.headers()->size() + 1);
          for (const auto* h : *r.headers()) {
            if (h == nullptr || h->name() == nullptr) continue;
            response.headers.push_back(
                {h->name()->str(), h->value() == nullptr ? "" : h->value()->str()});
          }
        }
        if (r.body() != nullptr && !call->head) {
          response.body.assign(reinterpret_cast<const char*>(r.body()->data()), r.body()->size());
        }
        Finish(call, std::move(response));
      });
}

void Proxy::DispatchWaiting(const std::string& deployment) {
  auto it = waiting_.find(deployment);
  if (it == waiting_.end()) return;
  auto& queue = it->second;
  while (!queue.empty()) {
    std::shared_ptr<Call> call = queue.front();
    if (!call->responder.client_connected()) {
      queue.pop_front();
      continue;
    }
    const Route* route = router_.Lookup(call->route_prefix);
    if (route != nullptr && route->deployment == deployment) {
      bool all_full = false;
      if (router_.Pick(*route, call->tried, &all_full) == nullptr && all_full) break;
    }
    queue.pop_front();
    Attempt(call);  // sends it, or answers why it cannot be sent
  }
  if (queue.empty()) waiting_.erase(deployment);
}

void Proxy::ExpireWaiting() {
  if (waiting_.empty()) return;
  uv_update_time(loop_);
  uint64_t now = uv_now(loop_);
  auto limit = static_cast<uint64_t>(options_.request_timeout_s * 1000);
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    auto& queue = it->second;
    while (!queue.empty() && now - queue.front()->queued_at_ms >= limit) {
      Finish(queue.front(), TextResponse(503, "waited " +
                                                  std::to_string(static_cast<int>(
                                                      options_.request_timeout_s)) +
                                                  " s for a replica of " + it->first +
                                                  " with room; retry later or add replicas"));
      queue.pop_front();
    }
    it = queue.empty() ? waiting_.erase(it) : std::next(it);
  }
}

void Proxy::HoldForBus(const std::shared_ptr<Call>& call) {
  if (options_.bus_wait_s <= 0) {
    Finish(call, BusUnavailable());
    return;
  }
  // A call held again (the bus dropped right after it came back) keeps its first time, so no
  // call waits longer than bus_wait_s in all.
  if (call->held_since_ms == 0) {
    uv_update_time(loop_);
    call->held_since_ms = uv_now(loop_);
  }
  held_.push_back(call);
}

void Proxy::ReleaseHeld() {
  if (held_.empty()) return;
  uv_update_time(loop_);
  uint64_t now = uv_now(loop_);
  auto wait_ms = static_cast<uint64_t>(options_.bus_wait_s * 1000);
  std::deque<std::shared_ptr<Call>> calls;
  calls.swap(held_);
  bool connected = bus_.connected();
  for (auto& call : calls) {
    if (!call->responder.client_connected()) continue;
    bool expired = now - call->held_since_ms >= wait_ms;
    if (!connected) {
      if (expired) {
        Finish(call, BusUnavailable());
      } else {
        held_.push_back(call);
      }
    } else if (call->deployment.empty()) {
      // Held before this proxy ever had a route table: the table follows the connection.
      if (!have_routes_ && !expired) {
        held_.push_back(call);
      } else {
        Dispatch(call);
      }
    } else {
      Attempt(call);  // sends it, or answers why it cannot be sent
    }
  }
}

bool Proxy::InReconnectGrace() {
  // The bus reports the connection back as soon as nats.c has it, before the notice reaches
  // this loop: a call sent in between is in the grace too.
  if (bus_down_noticed_) return true;
  if (connected_at_ms_ == 0) return false;
  uv_update_time(loop_);
  return uv_now(loop_) - connected_at_ms_ < kReconnectGraceMs;
}

http::Response Proxy::BusUnavailable() const {
  http::Response response =
      TextResponse(503, fmt::format("the bus is unavailable: serve-proxy has no connection to "
                                    "NATS at {} (waited {:g} s for it); it keeps reconnecting, "
                                    "retry shortly",
                                    bus::RedactUrl(bus_.url()), options_.bus_wait_s));
  // Any client or load balancer that honours it comes back when the bus likely has.
  response.headers.push_back({"Retry-After", "1"});
  return response;
}

// Liveness: 200 whether or not the bus is connected. The process is fine and restarting it
// would not bring NATS back; the body says what the proxy can do right now.
http::Response Proxy::Health() {
  std::string url = bus::RedactUrl(bus_.url());
  if (bus_.connected()) return TextResponse(200, "success\nbus: connected to NATS at " + url);
  return TextResponse(200, fmt::format("success\nbus: no connection to NATS at {}, reconnecting; "
                                       "requests wait up to {:g} s for it, then get 503 ({} "
                                       "waiting now)",
                                       url, options_.bus_wait_s, held_.size()));
}

std::vector<prometheus::MetricFamily> Proxy::CollectQueues() const {
  auto family = metrics::Family(metrics_registry_.Name("deployment_queued_queries"),
                                "The number of requests for this deployment waiting to be "
                                "assigned to a replica.",
                                prometheus::MetricType::Gauge);
  for (const auto& [deployment, queue] : waiting_) {
    family.metric.push_back(metrics::Sample(metrics::DeploymentLabels(deployment),
                                            static_cast<double>(queue.size()),
                                            prometheus::MetricType::Gauge));
  }
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(family));
  if (server_ != nullptr) {
    auto buffered = metrics::Family(
        metrics_registry_.Name("proxy_connection_buffered_bytes"),
        "Bytes the proxy holds for its client connections: answers not yet read by the client, "
        "requests not yet answered (each connection is bounded by "
        "--max-connection-buffer-bytes).",
        prometheus::MetricType::Gauge);
    buffered.metric.push_back(metrics::Sample({}, static_cast<double>(server_->buffered_bytes()),
                                              prometheus::MetricType::Gauge));
    families.push_back(std::move(buffered));
    auto paused = metrics::Family(
        metrics_registry_.Name("proxy_paused_connections"),
        "Client connections the proxy stopped reading from until the client reads its answers.",
        prometheus::MetricType::Gauge);
    paused.metric.push_back(metrics::Sample({},
                                            static_cast<double>(server_->paused_connection_count()),
                                            prometheus::MetricType::Gauge));
    families.push_back(std::move(paused));
  }
  return families;
}

void Proxy::OnReplicaExited(const std::string& bytes) {
  auto exited = wire::Unpack<wire::ReplicaExited>(bytes);
  if (!exited.ok()) {
    spdlog::warn("ignoring a malformed message on {}: {}", subjects_.node_exited, exited.error());
    return;
  }
  if (running_.count(exited->replica_id) == 0) return;
  // The exit report and the worker's last answers travel on different connections, so the
  // report can overtake answers the worker sent just before it ended. Give those a moment; a
  // worker that stopped cleanly answered everything it took, so its answers get longer.
  bool clean = exited->exit_code == 0 && exited->term_signal == 0;
  uv_update_time(loop_);
  exited_[exited->replica_id] = ExitedReplica{uv_now(loop_) + (clean ? 2000 : 250),
                                              exited->message};
}

void Proxy::FailCallsOfExitedReplicas() {
  if (exited_.empty()) return;
  uv_update_time(loop_);
  uint64_t now = uv_now(loop_);
  for (auto it = exited_.begin(); it != exited_.end();) {
    if (now < it->second.fail_at_ms) {
      ++it;
      continue;
    }
    if (auto running = running_.find(it->first); running != running_.end()) {
      std::set<std::shared_ptr<Call>> calls = std::move(running->second);
      running_.erase(running);
      for (const auto& call : calls) {
        Finish(call, TextResponse(502, "replica " + it->first + " of " + call->deployment +
                                           " ended while it ran this request (" +
                                           it->second.why +
                                           "); the request may or may not have taken effect"));
      }
    }
    it = exited_.erase(it);
  }
}

void Proxy::Finish(const std::shared_ptr<Call>& call, http::Response response) {
  if (call->finished) return;
  call->finished = true;
  response.headers.push_back({"X-Request-ID", call->request_id});
  double latency_ms = static_cast<double>(uv_hrtime() - call->started_ns) / 1e6;
  if (metrics_ != nullptr) {
    metrics_->Finished(call->route_prefix, call->deployment, call->method, response.status,
                       latency_ms);
  }
  if (access_log_ != nullptr) {
    access_log_->Write({call->method, call->path, response.status, latency_ms, call->deployment,
                        call->replica, call->request_id});
  }
  if (response.status >= 500) {
    log::Scope scope({call->deployment, call->replica, call->request_id});
    spdlog::warn("{} {}: {}", call->deployment, response.status,
                 response.body.substr(0, response.body.find('\n')));
  }
  call->responder.Send(std::move(response));
}

}  // namespace serve::proxy
