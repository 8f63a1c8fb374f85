#pragma once

#include <memory>
#include <optional>
#include <string>

#include "base/status.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/stop_signals.h"

namespace serve::cli {

// Starting and stopping the local instance of a namespace: what `serve start`,
// `serve shutdown` and `serve run` share.

// The run directory of `global`'s namespace: --run-dir, or RunDir::DefaultPath.
std::string RunDirPath(const GlobalOptions& global);

// The instance StartOrFindInstance found or started.
struct LocalInstance {
  std::unique_ptr<Client> client;  // connected to its bus
  // Set when a controller already answered for the namespace: then nothing was started.
  std::optional<wire::PingReplyT> already_running;
  bool started_nats = false;
  std::string checkpoint;  // the recovery store of a started instance

  bool started() const { return !already_running.has_value(); }
};

// Finds the instance running in the namespace, or starts one: nats-server when none answers at
// a local --address, then the four services in the background with pid and log files in the
// run directory, and waits until the controller answers, a node registered and the proxy
// answers /-/healthz. Never a second controller. When the start fails, or `stop` (if given) is
// requested before it is ready, whatever it started is stopped again.
Result<LocalInstance> StartOrFindInstance(const GlobalOptions& global, const StartOptions& options,
                                          StopSignals* stop = nullptr);

// Prints where a started instance serves, and where its bus, checkpoint and logs are.
void PrintStartedInstance(const GlobalOptions& global, const StartOptions& options,
                          const LocalInstance& instance);

// Asks the controller to shut the namespace down (it tells every service), waits for the
// processes recorded in the run directory, ends those that did not listen, and stops the
// nats-server `serve start` started. Returns false when there was nothing to stop.
bool StopInstance(const GlobalOptions& global);

}  // namespace serve::cli
