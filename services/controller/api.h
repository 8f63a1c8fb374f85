#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <vector>

#include "base/status.h"
#include "http/server.h"
#include "service/service.h"
#include "wire/serve_generated.h"

namespace serve::controller {

class Controller;

// The controller's REST API, on --dashboard-host:--dashboard-port (127.0.0.1:8265 by default,
// where Ray users find Ray's dashboard):
//
//   GET    /api/serve/deployments/       the desired deployments, in the shape `serve deploy`
//                                        reads (JSON; YAML is a superset of it)
//   PUT    /api/serve/deployments/       the same shape, JSON or YAML; declarative: deployments
//                                        the body does not list are deleted
//   DELETE /api/serve/deployments/NAME   one deployment
//   GET    /api/serve/status             what `serve status --json` prints
//   GET    /api/serve/events?since=SEQ   the recent events (the last 1,000) after SEQ; with
//                                        "Accept: text/event-stream", Server-Sent Events: those,
//                                        then each event as it happens (EventSource's
//                                        Last-Event-ID resumes)
//   GET    /api/serve/replicas/ID/logs?tail=N&offset=K
//                                        a replica's log from the node that holds it: its last
//                                        N lines (200), or what follows offset K (the
//                                        next_offset of the previous answer)
//
// Answers are JSON; an error is {"error": "..."} naming the field or the cause, with 400 for bad
// input, 404 for an unknown deployment or path, 405 for a method a path does not take, 409 for
// a route_prefix collision and 503 (with Retry-After) while the controller loads its
// checkpoint. Code is referred to by digest, as on the bus: `serve deploy FILE` uploads local
// artifacts and working directories first.
//
// Runs on the controller's loop; every handler but the log's answers at once.
class Api {
 public:
  Api(uv_loop_t* loop, Controller& controller, http::ServerOptions options);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  Status Listen();
  int port() const;
  void Close(std::function<void()> on_closed);

  // The answer to one request; public so tests can ask without a socket.
  http::Response Answer(const http::Request& request);

 private:
  http::Response Deployments(const http::Request& request);
  http::Response DeleteDeployment(const std::string& name);
  http::Response StatusJson();
  http::Response Events(const http::Request& request);
  // Server-Sent Events: what Events() lists, then each new event as it happens.
  void StreamEvents(const http::Request& request, http::Responder responder);
  // GET /api/serve/replicas/ID/logs: answered when the node holding the log has.
  void ReplicaLogs(const http::Request& request, const std::string& replica_id,
                   http::Responder responder);
  void Publish(const wire::EventT& event);

  Controller& controller_;
  std::unique_ptr<http::Server> server_;
  std::vector<http::Stream> streams_;
  // A comment line now and then keeps idle streams (and proxies between) from timing out.
  std::unique_ptr<service::RepeatingTimer> keepalive_;
};

}  // namespace serve::controller
