#pragma once

#include <memory>
#include <optional>
#include <string>

#include "base/status.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/stop_signals.h"
#include "cli/supervisor.h"

namespace serve::cli {

// Starting and stopping the local instance of a namespace: what `serve start`,
// `serve shutdown` and `serve run` share.

// The run directory of `global`'s namespace: --run-dir, or RunDir::DefaultPath.
std::string RunDirPath(const GlobalOptions& global);

// The instance StartOrFindInstance found or started.
struct LocalInstance {
  std::unique_ptr<Client> client;  // connected to its bus
  // Set when an instance already runs in the namespace (a controller answered, or the run
  // directory's supervisor runs): who runs it, for messages. Then nothing was started.
  std::optional<std::string> already_running;
  bool started_nats = false;
  std::string checkpoint;  // the recovery store of a started instance
  pid_t supervisor = 0;    // the `serve supervise` of a started instance

  bool started() const { return !already_running.has_value(); }
};

// Finds the instance running in the namespace, or starts one: `serve supervise` in the
// background, which runs nats-server (when none answers at a local --address) and the four
// services with pid and log files in the run directory and restarts any that exits; then waits
// until the controller answers, a node registered and the proxy answers /-/healthz. Never a
// second controller, nor a second supervisor for one run directory. When the start fails, or
// `stop` (if given) is requested before it is ready, whatever it started is stopped again.
Result<LocalInstance> StartOrFindInstance(const GlobalOptions& global, const StartOptions& options,
                                          StopSignals* stop = nullptr);

// What `serve supervise` runs: nats-server (when options.nats_port is set), then the four
// services, bus credentials in their environment, the node agent and the proxy with ids that
// stay the same across their restarts, and the proxy on a listening socket opened here, which
// the supervisor keeps open while the proxy restarts. An error when the HTTP port cannot be had.
Result<SupervisorOptions> LocalInstanceProcesses(const GlobalOptions& global,
                                                 const SuperviseOptions& options);

// Prints where a started instance serves, and where its bus, checkpoint and logs are.
void PrintStartedInstance(const GlobalOptions& global, const StartOptions& options,
                          const LocalInstance& instance);

// Asks the controller to shut the namespace down (it tells every service), then stops the run
// directory's supervisor, which restarts nothing more and ends what it runs, nats-server last;
// works without the bus too. Processes recorded in the run directory that still run after that
// are ended. Returns false when there was nothing to stop.
bool StopInstance(const GlobalOptions& global);

}  // namespace serve::cli
