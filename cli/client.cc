#include "cli/client.h"

#include <chrono>
#include <thread>

#include "bus/roles.h"

namespace serve::cli {

using Clock = std::chrono::steady_clock;

Client::Client(const std::string& ns) : subjects_(ns) { uv_loop_init(&loop_); }

Result<std::unique_ptr<Client>> Client::Connect(const GlobalOptions& global,
                                                double connect_timeout_s) {
  auto client = std::unique_ptr<Client>(new Client(global.ns));
  bus::Options options = global.bus;
  options.name = "serve-cli";
  options.inbox_prefix = bus::InboxPrefix(global.ns, bus::Role::kAdmin);
  options.retry_initial_connect = false;
  options.connect_timeout_s = connect_timeout_s;
  auto bus = bus::Bus::Connect(&client->loop_, options);
  if (!bus.ok()) return bus.status();
  client->bus_ = std::move(*bus);
  return client;
}

Client::~Client() {
  if (bus_ != nullptr) bus_->Close();
  bus_.reset();
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

Result<std::string> Client::Call(const std::string& subject, const std::string& bytes,
                                 double timeout_s, bool patient) {
  auto reply = bus::RequestAndWait(&loop_, *bus_, subject, bytes, timeout_s);
  // A controller that is reconnecting after a NATS restart is back within a second or two:
  // do not call it missing before then.
  auto deadline = Clock::now() + std::chrono::seconds(patient ? 2 : 0);
  while (!reply.ok() && reply.error().rfind("nothing listens", 0) == 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    reply = bus::RequestAndWait(&loop_, *bus_, subject, bytes, timeout_s);
  }
  if (!reply.ok()) {
    if (reply.error().rfind("nothing listens", 0) == 0) {
      return Status::Error("no Serve controller is running in namespace '" + subjects_.ns +
                           "' at " + bus::RedactUrl(bus_->url()) +
                           "; start one with `serve start`");
    }
    return reply.status();
  }
  return std::move(reply->data);
}

Result<std::unique_ptr<Client>> ConnectOrExplain(const GlobalOptions& global) {
  auto client = Client::Connect(global);
  if (!client.ok()) {
    return Status::Error("no Serve instance is reachable: " + client.error() +
                         "\nStart one with `serve start`, or pass the bus with --address.");
  }
  return client;
}

std::optional<wire::PingReplyT> PingController(Client& client, double timeout_s) {
  auto reply = client.CallFor<wire::PingReply>(
      client.subjects().ctl_ping, wire::Pack(wire::PingRequestT{}), timeout_s, /*patient=*/false);
  if (!reply.ok()) return std::nullopt;
  return *reply;
}

std::string DescribeController(const wire::PingReplyT& ping) {
  return "controller " + ping.controller_id + ", pid " + std::to_string(ping.pid) + " on " +
         ping.host;
}

}  // namespace serve::cli
