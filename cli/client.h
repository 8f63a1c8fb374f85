#pragma once

#include <uv.h>

#include <memory>
#include <optional>
#include <string>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/subjects.h"
#include "cli/commands.h"
#include "wire/codec.h"

namespace serve::cli {

// A bus connection for one command, on a libuv loop of its own. Every call blocks the command
// until its answer came; nothing here is thread-safe.
class Client {
 public:
  // Connects without retrying: a command wants a quick answer when NATS is not there.
  static Result<std::unique_ptr<Client>> Connect(const GlobalOptions& global,
                                                 double connect_timeout_s = 2);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // A control-plane call; "nothing listens" becomes advice about the missing controller.
  // `patient`: give a controller that is reconnecting a moment before calling it missing.
  Result<std::string> Call(const std::string& subject, const std::string& bytes,
                           double timeout_s = 10, bool patient = true);

  template <typename ReplyTable>
  Result<typename ReplyTable::NativeTableType> CallFor(const std::string& subject,
                                                       const std::string& bytes,
                                                       double timeout_s = 10, bool patient = true) {
    auto data = Call(subject, bytes, timeout_s, patient);
    if (!data.ok()) return data.status();
    return wire::Unpack<ReplyTable>(*data);
  }

  const bus::Subjects& subjects() const { return subjects_; }
  // For commands that stay: subscriptions, connection changes, their own loop handles.
  uv_loop_t* loop() { return &loop_; }
  bus::Bus& bus() { return *bus_; }

 private:
  explicit Client(const std::string& ns);

  uv_loop_t loop_;
  std::unique_ptr<bus::Bus> bus_;
  bus::Subjects subjects_;
};

// Connects, or explains that no instance is reachable and how to start one.
Result<std::unique_ptr<Client>> ConnectOrExplain(const GlobalOptions& global);

// Who runs this namespace: the controller's answer to a ping, or nullopt when none answers.
std::optional<wire::PingReplyT> PingController(Client& client, double timeout_s = 1.0);

// "controller c-1a2b, pid 4242 on host-1".
std::string DescribeController(const wire::PingReplyT& ping);

}  // namespace serve::cli
