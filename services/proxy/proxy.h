#pragma once

#include <uv.h>

#include <deque>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "http/server.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "proxy/proxy_metrics.h"
#include "proxy/router.h"
#include "service/service.h"

namespace serve::proxy {

struct ProxyOptions {
  std::string proxy_id;
  http::ServerOptions http;
  // How long a replica may take to answer before the client gets 504.
  double request_timeout_s = 60;
  // Tries on other replicas when the chosen one is gone before it took the request.
  int max_attempts = 3;
  // Requests that wait, per deployment, while every replica is at max_concurrent_queries;
  // beyond this they get 503 at once. They wait at most request_timeout_s.
  size_t max_queued_per_deployment = 1000;
  // How long a request waits for a lost NATS connection to come back before it gets 503 with
  // Retry-After. Short: a client that retries elsewhere does better than one left hanging.
  double bus_wait_s = 0.5;
  double heartbeat_period_s = 1;
  // With a listening socket handed over by a supervisor (http.listen_fd), connections are
  // accepted only once the first route table arrived, or after this long without one: until
  // then they wait in the socket's backlog rather than get 404 from a proxy that knows no
  // routes yet.
  double first_routes_wait_s = 5;
  // Counts requests for GET /-/metrics (proxy_metrics.h). Off: /-/metrics answers 404 and the
  // request path counts nothing (for measuring what counting costs).
  bool metrics = true;
  std::string metrics_name_prefix = "serve_";
  // One line per request in the log (method, path, status, latency, replica, request id),
  // written by a background thread.
  bool access_log = true;
};

// Raises this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit: every
// client connection takes a descriptor, and the usual soft limit (1024) is far below what one
// proxy serves. Returns the limit now in force.
Result<uint64_t> RaiseOpenFileLimit();

// HTTP ingress: routes each request by longest prefix to a replica of the matched deployment,
// over the bus, and writes the replica's answer back.
//
// Without a NATS connection a request waits up to bus_wait_s for it to come back, then gets 503
// with Retry-After; the route table held is kept meanwhile, so requests go out as soon as the
// connection returns.
class Proxy {
 public:
  Proxy(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects, ProxyOptions options);
  ~Proxy();

  // Listens, asks the controller for the route table and follows its updates.
  Status Start();
  void Stop(std::function<void()> on_closed);

  int port() const {
    return server_ != nullptr && server_->port() != 0 ? server_->port() : inherited_port_;
  }
  const Router& router() const { return router_; }
  // What the client connections hold now (http::Server::buffered_bytes).
  size_t buffered_bytes() const { return server_ != nullptr ? server_->buffered_bytes() : 0; }
  size_t paused_connection_count() const {
    return server_ != nullptr ? server_->paused_connection_count() : 0;
  }

 private:
  struct Call;

  void OnHttp(http::Request&& request, http::Responder responder);
  // Finds the call's route and sends it.
  void Dispatch(const std::shared_ptr<Call>& call);
  void Attempt(const std::shared_ptr<Call>& call);
  void Finish(const std::shared_ptr<Call>& call, http::Response response);
  // Sends waiting requests of `deployment` to replicas that have room.
  void DispatchWaiting(const std::string& deployment);
  void ExpireWaiting();
  // Keeps `call` until the bus is connected again, for at most bus_wait_s.
  void HoldForBus(const std::shared_ptr<Call>& call);
  // Sends the held calls once the bus is back; answers 503 to those held too long.
  void ReleaseHeld();
  // True shortly after the bus (re)connected, while replicas may still be reconnecting.
  bool InReconnectGrace();
  http::Response BusUnavailable() const;
  http::Response Health();
  // What /-/metrics adds to the request figures: the requests waiting for a replica, and what
  // client connections hold.
  std::vector<prometheus::MetricFamily> CollectQueues() const;
  void OnRouteTable(const std::string& bytes);
  // A worker process ended: what it was running will never be answered.
  void OnReplicaExited(const std::string& bytes);
  // Answers 502 for what replicas that exited were still running, once their grace is over.
  void FailCallsOfExitedReplicas();
  void RequestRoutes();
  void SendHeartbeat();
  // Starts accepting on the handed-over socket (see ProxyOptions::first_routes_wait_s).
  void StartAccepting();

  uv_loop_t* loop_;
  bus::Bus& bus_;
  const bus::Subjects& subjects_;
  ProxyOptions options_;
  Router router_;
  std::unique_ptr<http::Server> server_;
  std::unique_ptr<service::RepeatingTimer> heartbeat_;
  std::unique_ptr<service::OneShotTimer> routes_retry_;
  std::unique_ptr<service::RepeatingTimer> queue_sweeper_;
  std::unordered_map<std::string, std::deque<std::shared_ptr<Call>>> waiting_;  // by deployment
  // Calls sent and not yet answered, by replica id.
  std::unordered_map<std::string, std::set<std::shared_ptr<Call>>> running_;
  // Replicas reported exited whose calls are failed at fail_at_ms (loop time).
  struct ExitedReplica {
    uint64_t fail_at_ms = 0;
    std::string why;
  };
  std::unordered_map<std::string, ExitedReplica> exited_;
  // Calls that wait for the bus, oldest first.
  std::deque<std::shared_ptr<Call>> held_;
  uint64_t connected_at_ms_ = 0;  // loop time of the last (re)connection
  bool bus_down_noticed_ = false;  // a drop was noticed and the reconnection not yet
  bool have_routes_ = false;
  bool accepting_ = false;
  int inherited_port_ = 0;  // the port of a handed-over socket
  std::unique_ptr<service::OneShotTimer> accept_deadline_;
  uint64_t request_counter_ = 0;
  std::string request_id_prefix_;
  metrics::Registry metrics_registry_;
  std::unique_ptr<ProxyMetrics> metrics_;  // null with ProxyOptions::metrics off
  std::unique_ptr<log::RequestLog> access_log_;  // null with ProxyOptions::access_log off
};

}  // namespace serve::proxy
