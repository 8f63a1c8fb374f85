#include "replica/runtime.h"

#include <nlohmann/json.hpp>

namespace serve::replica {
namespace {

std::string_view AsView(const flatbuffers::String* s) {
  return s == nullptr ? std::string_view() : std::string_view(s->data(), s->size());
}

// builtin:hello answers user_config.message, or "hello world" when it is not set.
Result<std::string> HelloMessage(const std::string& user_config);

class HelloRuntime : public Runtime {
 public:
  explicit HelloRuntime(std::string message) : message_(std::move(message)) {}
  HandlerResponse Handle(const wire::HttpRequest&) override {
    return HandlerResponse{200, {{"Content-Type", "text/plain; charset=utf-8"}}, message_};
  }
  Status Reconfigure(const std::string& user_config) override {
    auto message = HelloMessage(user_config);
    if (!message.ok()) return message.status();
    message_ = std::move(*message);
    return Status::Ok();
  }

 private:
  std::string message_;
};

// builtin:echo answers what it received and who answered, as JSON.
class EchoRuntime : public Runtime {
 public:
  explicit EchoRuntime(ReplicaIdentity identity) : identity_(std::move(identity)) {}
  Status Reconfigure(const std::string&) override { return Status::Ok(); }
  HandlerResponse Handle(const wire::HttpRequest& request) override {
    std::string body;
    if (request.body() != nullptr) {
      body.assign(reinterpret_cast<const char*>(request.body()->data()), request.body()->size());
    }
    nlohmann::json answer = {
        {"method", AsView(request.method())},
        {"path", AsView(request.path())},
        {"query", AsView(request.query())},
        {"body", body},
        {"replica", identity_.replica_id},
        {"version", identity_.version},
    };
    // Bodies need not be UTF-8; replace what JSON cannot carry rather than failing.
    return HandlerResponse{200,
                           {{"Content-Type", "application/json"}},
                           answer.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  }

 private:
  ReplicaIdentity identity_;
};

Result<std::string> HelloMessage(const std::string& user_config) {
  if (user_config.empty()) return std::string("hello world");
  auto config = nlohmann::json::parse(user_config, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) {
    return Status::Error("user_config is not valid JSON: " + user_config);
  }
  if (!config.is_object() || !config.contains("message")) return std::string("hello world");
  const auto& message = config["message"];
  return message.is_string() ? message.get<std::string>() : message.dump();
}

}  // namespace

Result<std::unique_ptr<Runtime>> MakeRuntime(const wire::DeploymentSpecT& spec,
                                             const ReplicaIdentity& identity) {
  if (spec.runtime == "builtin:hello") {
    auto message = HelloMessage(spec.user_config);
    if (!message.ok()) return message.status();
    return std::unique_ptr<Runtime>(new HelloRuntime(*message));
  }
  if (spec.runtime == "builtin:echo") {
    return std::unique_ptr<Runtime>(new EchoRuntime(identity));
  }
  return Status::Error("runtime '" + spec.runtime +
                       "' is not known to this serve-replica; known: builtin:hello, builtin:echo");
}

}  // namespace serve::replica
