#include "controller/api.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "config/deployment_config.h"
#include "config/spec.h"
#include "controller/controller.h"
#include "controller/kDashboardCss.h"
#include "controller/kDashboardHtml.h"
#include "controller/kDashboardIcon.h"
#include "controller/kDashboardJs.h"
#include "wire/status_json.h"

namespace serve::controller {
namespace {

constexpr char kDeploymentsPath[] = "/api/serve/deployments";
constexpr char kStatusPath[] = "/api/serve/status";
constexpr char kEventsPath[] = "/api/serve/events";
// A config of many deployments is large, but not this large.
constexpr size_t kMaxBodyBytes = 4 * 1024 * 1024;
constexpr double kKeepaliveS = 15;
// Each open dashboard holds one; more than this is a leak or an attack.
constexpr size_t kMaxStreams = 256;

// JSON text of what the bus carried: text that is not UTF-8 is replaced, never a throw.
std::string Dump(const nlohmann::json& value, int indent = -1) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

http::Response Json(int status, std::string body) {
  http::Response response;
  response.status = status;
  response.headers = {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}};
  response.body = std::move(body);
  response.body += '\n';
  return response;
}

http::Response Error(int status, const std::string& message) {
  http::Response response = Json(status, Dump(nlohmann::json{{"error", message}}));
  if (status == 503) response.headers.push_back({"Retry-After", "1"});
  return response;
}

http::Response Error(const serve::Status& status) {
  switch (status.kind()) {
    case ErrorKind::kNotFound:
      return Error(404, status.message());
    case ErrorKind::kConflict:
      return Error(409, status.message());
    case ErrorKind::kUnavailable:
      return Error(503, status.message());
    case ErrorKind::kInvalid:
      break;
  }
  return Error(400, status.message());
}

http::Response MethodNotAllowed(const std::string& method, const std::string& path,
                                const std::string& allowed) {
  http::Response response =
      Error(405, path + " takes " + allowed + ", not " + method.substr(0, 16));
  response.headers.push_back({"Allow", allowed});
  return response;
}

// "/api/serve/deployments/" and "/api/serve/deployments" are the same place.
std::string WithoutTrailingSlash(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

constexpr char kReplicasPath[] = "/api/serve/replicas/";

// The replica id of a /api/serve/replicas/ID/logs path; nullopt for any other path.
std::optional<std::string> LogsReplica(const std::string& path) {
  std::string_view rest(path);
  if (rest.rfind(kReplicasPath, 0) != 0) return std::nullopt;
  rest.remove_prefix(strlen(kReplicasPath));
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  constexpr std::string_view kLogs = "/logs";
  if (rest.size() <= kLogs.size() || rest.substr(rest.size() - kLogs.size()) != kLogs) {
    return std::nullopt;
  }
  return std::string(rest.substr(0, rest.size() - kLogs.size()));
}

// The value of `name` in a query string ("since=5&x=1"); empty when absent.
std::string QueryValue(const std::string& query, const std::string& name) {
  size_t at = 0;
  while (at <= query.size()) {
    size_t end = query.find('&', at);
    if (end == std::string::npos) end = query.size();
    std::string_view pair(query.data() + at, end - at);
    if (pair.size() > name.size() && pair.substr(0, name.size()) == name &&
        pair[name.size()] == '=') {
      return std::string(pair.substr(name.size() + 1));
    }
    at = end + 1;
  }
  return "";
}

nlohmann::json EventJson(const wire::EventT& event) {
  return {{"seq", event.seq},   {"time_ms", event.time_ms}, {"kind", event.kind},
          {"name", event.name}, {"state", event.state},     {"message", event.message}};
}

// One Server-Sent Event: its id is the sequence number, so a reconnecting EventSource resumes.
std::string SseEvent(const wire::EventT& event) {
  return "id: " + std::to_string(event.seq) + "\ndata: " + Dump(EventJson(event)) + "\n\n";
}

bool WantsEventStream(const http::Request& request) {
  if (request.method != "GET" || WithoutTrailingSlash(request.path) != kEventsPath) return false;
  const std::string* accept = request.FindHeader("Accept");
  return accept != nullptr && accept->find("text/event-stream") != std::string::npos;
}

// `text` as an event sequence number; nullopt if it is not one.
std::optional<uint64_t> ParseSeq(const std::string& text) {
  uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Sets `value` from query field `name`, a whole number from `low` to `high`; leaves it when the
// field is absent.
template <typename T>
Status QueryNumber(const std::string& query, const std::string& name, int64_t low, int64_t high,
                   T* value) {
  std::string text = QueryValue(query, name);
  if (text.empty()) return Status::Ok();
  int64_t number = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (error != std::errc() || end != text.data() + text.size() || number < low || number > high) {
    return Status::Error(name + ": a whole number from " + std::to_string(low) + " to " +
                         std::to_string(high) + " (got '" + text.substr(0, 32) + "')");
  }
  *value = static_cast<T>(number);
  return Status::Ok();
}

// The dashboard's files. The page loads nothing from anywhere else, which the policy enforces.
std::optional<http::Response> DashboardFile(const std::string& path) {
  struct File {
    const char* path;
    const char* content_type;
    const char* body;
  };
  static const File kFiles[] = {
      {"/", "text/html; charset=utf-8", kDashboardHtml},
      {"/index.html", "text/html; charset=utf-8", kDashboardHtml},
      {"/dashboard.css", "text/css; charset=utf-8", kDashboardCss},
      {"/dashboard.js", "text/javascript; charset=utf-8", kDashboardJs},
      {"/favicon.svg", "image/svg+xml", kDashboardIcon},
  };
  for (const File& file : kFiles) {
    if (path != file.path) continue;
    http::Response response;
    response.headers = {
        {"Content-Type", file.content_type},
        {"Cache-Control", "no-cache"},
        {"Content-Security-Policy",
         "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
         "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"},
        {"X-Content-Type-Options", "nosniff"},
        {"Referrer-Policy", "no-referrer"}};
    response.body = file.body;
    return response;
  }
  return std::nullopt;
}

std::string Lines(const std::vector<std::string>& lines, const char* key) {
  return Dump(nlohmann::json{{key, lines}});
}

}  // namespace

Api::Api(uv_loop_t* loop, Controller& controller, http::ServerOptions options)
    : controller_(controller) {
  options.max_body_bytes = std::min(options.max_body_bytes, kMaxBodyBytes);
  server_ = std::make_unique<http::Server>(
      loop, std::move(options), [this](http::Request&& request, http::Responder responder) {
        if (WantsEventStream(request)) {
          StreamEvents(request, std::move(responder));
        } else if (auto replica_id = LogsReplica(request.path)) {
          ReplicaLogs(request, *replica_id, std::move(responder));
        } else {
          responder.Send(Answer(request));
        }
      });
  controller_.SetEventListener([this](const wire::EventT& event) { Publish(event); });
  keepalive_ = std::make_unique<service::RepeatingTimer>(loop, kKeepaliveS, [this] {
    std::erase_if(streams_, [](http::Stream& stream) { return !stream.Write(": keepalive\n\n"); });
  });
}

Api::~Api() { controller_.SetEventListener(nullptr); }

Status Api::Listen() { return server_->Listen(); }

int Api::port() const { return server_->port(); }

void Api::Close(std::function<void()> on_closed) {
  keepalive_.reset();
  streams_.clear();
  server_->Close(std::move(on_closed));
}

http::Response Api::Answer(const http::Request& request) {
  if (request.method == "GET" || request.method == "HEAD") {
    if (auto file = DashboardFile(request.path)) return std::move(*file);
  }
  if (request.path == "/metrics" && (request.method == "GET" || request.method == "HEAD")) {
    return controller_.Metrics();
  }
  std::string path = WithoutTrailingSlash(request.path);
  if (path == kDeploymentsPath) return Deployments(request);
  std::string prefix = std::string(kDeploymentsPath) + "/";
  if (path.rfind(prefix, 0) == 0) {
    if (request.method != "DELETE") return MethodNotAllowed(request.method, path, "DELETE");
    return DeleteDeployment(path.substr(prefix.size()));
  }
  if (path == kEventsPath) {
    if (request.method != "GET" && request.method != "HEAD") {
      return MethodNotAllowed(request.method, path, "GET");
    }
    return Events(request);
  }
  if (path == kStatusPath) {
    if (request.method != "GET" && request.method != "HEAD") {
      return MethodNotAllowed(request.method, path, "GET");
    }
    return StatusJson();
  }
  return Error(404, "no such API path: " + path.substr(0, 200) + "; the API is " +
                        kDeploymentsPath + "/ (GET, PUT), " + kDeploymentsPath +
                        "/NAME (DELETE), " + kStatusPath + " (GET), " + kEventsPath +
                        "?since=SEQ (GET) and " + kReplicasPath + "ID/logs (GET)");
}

http::Response Api::Deployments(const http::Request& request) {
  if (request.method == "GET" || request.method == "HEAD") {
    auto desired = controller_.DesiredConfig();
    if (!desired.ok()) return Error(desired.status());
    config::ConfigFile file;
    file.deployments = std::move(*desired);
    return Json(200, config::ConfigToJson(file, 2));
  }
  if (request.method != "PUT") {
    return MethodNotAllowed(request.method, kDeploymentsPath, "GET, PUT");
  }
  // Asked first, so a caller waiting for the controller is told to wait, not that its body is
  // fine or not.
  if (Status available = controller_.Available(); !available.ok()) return Error(available);
  auto parsed = config::ParseConfig(request.body, "request body",
                                    {.allow_empty = true, .limits = controller_.limits()});
  if (!parsed.ok()) return Error(parsed.status());
  std::vector<wire::DeploymentSpecT> specs;
  std::vector<std::string> names;
  for (const config::Deployment& deployment : parsed->deployments) {
    names.push_back(deployment.name);
    Status code = config::ValidateArtifactReference(deployment);
    if (!code.ok()) {
      return Error(400, code.message() +
                            " (the API takes stored code only: `serve deploy FILE` uploads "
                            "local files and fills their digests in)");
    }
    specs.push_back(config::ToSpec(deployment));
  }
  auto applied = controller_.Apply(std::move(specs));
  if (!applied.ok()) return Error(applied.status());
  // What a caller waits for: each deployment HEALTHY at its version, by this run of the
  // controller (a restart before the state was stored may lose it: PUT it again).
  nlohmann::json versions = nlohmann::json::object();
  for (const auto& name : names) versions[name] = controller_.TargetVersion(name);
  return Json(200, Dump(nlohmann::json{
                       {"results", *applied}, {"versions", versions}, {"controller_run", controller_.run()}}));
}

http::Response Api::DeleteDeployment(const std::string& name) {
  auto deleted = controller_.Delete({name});
  if (!deleted.ok()) return Error(deleted.status());
  return Json(200, Lines(*deleted, "deleted"));
}

http::Response Api::Events(const http::Request& request) {
  std::string since_text = QueryValue(request.query, "since");
  std::optional<uint64_t> since = since_text.empty() ? 0 : ParseSeq(since_text);
  if (!since.has_value()) {
    return Error(400, "since must be an event sequence number (a whole number >= 0), got '" +
                          since_text.substr(0, 40) + "'");
  }
  nlohmann::json events = nlohmann::json::array();
  for (const wire::EventT& event : controller_.EventsSince(*since)) {
    events.push_back(EventJson(event));
  }
  nlohmann::json body = {{"events", std::move(events)}, {"last_seq", controller_.last_event_seq()}};
  return Json(200, Dump(body));
}

void Api::StreamEvents(const http::Request& request, http::Responder responder) {
  // EventSource sends the id of the last event it saw when it reconnects.
  const std::string* last_id = request.FindHeader("Last-Event-ID");
  std::string since_text = last_id != nullptr ? *last_id : QueryValue(request.query, "since");
  std::optional<uint64_t> since = since_text.empty() ? 0 : ParseSeq(since_text);
  if (!since.has_value() || *since > controller_.last_event_seq()) {
    since = 0;  // another controller run's numbers: everything kept is new to this client
  }
  if (streams_.size() >= kMaxStreams) {
    responder.Send(Error(503, "too many event streams are open (" + std::to_string(kMaxStreams) +
                                  "); close some dashboards"));
    return;
  }
  http::Response head;
  head.headers = {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-store"}};
  head.body = "retry: 1000\n\n";
  for (const wire::EventT& event : controller_.EventsSince(*since)) head.body += SseEvent(event);
  http::Stream stream = responder.StartStream(std::move(head));
  if (stream.open()) streams_.push_back(std::move(stream));
}

void Api::ReplicaLogs(const http::Request& request, const std::string& replica_id,
                      http::Responder responder) {
  if (request.method != "GET" && request.method != "HEAD") {
    responder.Send(MethodNotAllowed(request.method, request.path, "GET"));
    return;
  }
  bool valid_id = !replica_id.empty() && replica_id.size() <= 128 &&
                  std::all_of(replica_id.begin(), replica_id.end(), [](char c) {
                    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
                  });
  if (!valid_id) {
    responder.Send(Error(400,
                         "replica id: letters, digits, '-' and '_' only (as `serve status` "
                         "lists them)"));
    return;
  }
  wire::ReplicaLogsRequestT ask;
  ask.replica_id = replica_id;
  ask.tail_lines = 200;
  Status tail = QueryNumber(request.query, "tail", 0, 10000, &ask.tail_lines);
  Status offset = QueryNumber(request.query, "offset", -1, int64_t{1} << 50, &ask.offset);
  if (!tail.ok() || !offset.ok()) {
    responder.Send(Error(400, (tail.ok() ? offset : tail).message()));
    return;
  }
  auto shared = std::make_shared<http::Responder>(std::move(responder));
  controller_.AskReplicaLogs(ask, [shared](Result<wire::ReplicaLogsReplyT> answer) {
    if (!answer.ok()) {
      shared->Send(Error(answer.status()));
      return;
    }
    nlohmann::json body = {{"replica", answer->replica_id},
                           {"node", answer->node_id},
                           {"deployment", answer->deployment},
                           {"running", answer->running},
                           {"restarted", answer->restarted},
                           {"next_offset", answer->next_offset},
                           {"data", answer->data}};
    shared->Send(Json(200, Dump(body)));
  });
}

void Api::Publish(const wire::EventT& event) {
  if (streams_.empty()) return;
  std::string text = SseEvent(event);
  std::erase_if(streams_, [&](http::Stream& stream) { return !stream.Write(text); });
}

http::Response Api::StatusJson() {
  auto status = controller_.Report({});
  if (!status.ok()) return Error(status.status());
  return Json(200, Dump(wire::StatusJson(*status), 2));
}

}  // namespace serve::controller
