#include "replica/runtime.h"

#include <nlohmann/json.hpp>

#include "http/ascii.h"
#include "replica/command_runtime.h"
#include "replica/native_runtime.h"
#include "replica/python_runtime.h"

namespace serve::replica {
namespace {

// builtin:hello answers user_config.message, or "hello world" when it is not set.
Result<std::string> HelloMessage(const std::string& user_config);

class HelloRuntime : public Runtime {
 public:
  explicit HelloRuntime(std::string message) : message_(std::move(message)) {}
  int Concurrency() const override { return 0; }
  HandlerResponse Handle(const RequestView&) override {
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
  int Concurrency() const override { return 0; }
  Status Reconfigure(const std::string&) override { return Status::Ok(); }
  HandlerResponse Handle(const RequestView& request) override {
    nlohmann::json answer = {
        {"method", request.method},
        {"path", request.path},
        {"query", request.query},
        {"body", request.body},
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

std::string_view RequestView::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (http::internal::EqualsIgnoreCase(key, name)) return value;
  }
  return {};
}

Result<std::unique_ptr<Runtime>> MakeRuntime(const RuntimeContext& context) {
  const wire::DeploymentSpecT& spec = context.spec;
  if (spec.runtime == "builtin:hello") {
    auto message = HelloMessage(spec.user_config);
    if (!message.ok()) return message.status();
    return std::unique_ptr<Runtime>(new HelloRuntime(*message));
  }
  if (spec.runtime == "builtin:echo") {
    return std::unique_ptr<Runtime>(new EchoRuntime(context.identity));
  }
  if (spec.runtime == "native") return LoadNativeRuntime(context);
  if (spec.runtime == "command") return StartCommandRuntime(context);
  if (spec.runtime == "python") return StartPythonRuntime(context);
  return Status::Error("runtime '" + spec.runtime +
                       "' is not known to this serve-replica; known: builtin:hello, "
                       "builtin:echo, native, command, python");
}

}  // namespace serve::replica
