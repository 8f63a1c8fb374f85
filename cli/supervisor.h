#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/subjects.h"
#include "cli/instance.h"
#include "service/service.h"
#include "wire/codec.h"

namespace serve::cli {

// One process a Supervisor keeps running.
struct SupervisedProcess {
  // Names its pid and log files in the run directory: "proxy" -> pids/proxy.pid, logs/proxy.log.
  std::string name;
  // In events, log lines and `serve status`: "serve-proxy".
  std::string display_name;
  std::vector<std::string> argv;
  // A listening socket handed to every start of the process as fd 3, so connections made while
  // it restarts wait in the socket's backlog; -1: none.
  int listen_fd = -1;
  // Started before the others and stopped after them: the services need it (nats-server) to
  // hear of a shutdown and to say goodbye.
  bool infrastructure = false;
  // Environment of this process only, over SupervisorOptions::env (its bus credentials).
  std::map<std::string, std::string> env = {};
};

struct RestartPolicy {
  double initial_backoff_s = 0.1;
  double max_backoff_s = 30;
  // A process that stayed up this long is restarted after initial_backoff_s again.
  double stable_after_s = 30;
  // A clean exit (code 0) is what a service does when told to shut down, and the notice that
  // says so may still be on its way to the supervisor: such a restart waits at least this long.
  double clean_exit_delay_s = 1;
};

// The delays between the restarts of one process: initial_backoff_s, doubling up to
// max_backoff_s, and back to initial_backoff_s after a run of stable_after_s or more.
class RestartBackoff {
 public:
  explicit RestartBackoff(RestartPolicy policy);
  // The process ended after running `uptime_s`: how long to wait before starting it again.
  double NextDelay(double uptime_s);

 private:
  RestartPolicy policy_;
  double next_s_;
};

struct SupervisorOptions {
  std::string supervisor_id;
  // The run directory whose pids/ and logs/ the supervisor keeps (see RunDir).
  std::string run_dir;
  // In start order.
  std::vector<SupervisedProcess> processes;
  // Added to the environment of every process.
  std::map<std::string, std::string> env;
  RestartPolicy restart;
  double heartbeat_period_s = 1;
  // After a shutdown notice on the bus, how long the services may take to exit by themselves
  // before they are sent SIGTERM.
  double shutdown_grace_s = 25;
  // From SIGTERM to SIGKILL. The node agent lets its workers drain first, so this is long.
  double kill_timeout_s = 30;
};

// Keeps the processes of a local instance running: starts them, restarts one that exits with
// capped exponential backoff (RestartBackoff), and on a shutdown (the bus's <ns>.shutdown, or
// Stop()) restarts nothing and waits for all to end. Every exit is logged with the exit code or
// signal and the last lines of the process's log, and published on <ns>.events (kind "service",
// state EXITED, then RESTARTED); a SupervisorHeartbeat on <ns>.hb.supervisor carries the state
// of every process each heartbeat_period_s and after every change, for `serve status`.
//
// Processes run in sessions of their own, so they outlive a supervisor that dies. Everything
// runs on the loop; the loop must run until the stopped handler was called.
class Supervisor {
 public:
  Supervisor(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
             SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Called once every process has ended after a shutdown or Stop().
  void SetStoppedHandler(std::function<void()> on_stopped) { on_stopped_ = std::move(on_stopped); }

  // Starts every process and the heartbeat, and follows <ns>.shutdown. A process that cannot be
  // started at all (its executable is missing, say) is an error; the others are then stopped.
  Status Start();
  // Restarts nothing more; sends SIGTERM to the services and, once they ended, to the
  // infrastructure, and SIGKILL to any still running kill_timeout_s later.
  void Stop(const std::string& why);

  // Every process as the heartbeat reports it.
  std::vector<std::unique_ptr<wire::SupervisedServiceT>> Report() const;
  bool stopping() const { return stopping_; }

 private:
  struct Child;

  Status Spawn(Child& child);
  void OnExit(Child& child, int64_t exit_status, int term_signal);
  void Restart(Child& child);
  void OnShutdownNotice();
  // After each exit during a stop: the next step, or the end.
  void ContinueStopping();
  void Terminate(bool infrastructure);
  void SendHeartbeat();
  void PublishEvent(const Child& child, const std::string& state, const std::string& message);

  uv_loop_t* loop_;
  bus::Bus& bus_;
  const bus::Subjects& subjects_;
  SupervisorOptions options_;
  RunDir run_;
  std::string host_;
  std::vector<std::unique_ptr<Child>> children_;
  std::unique_ptr<service::RepeatingTimer> heartbeat_;
  std::unique_ptr<service::OneShotTimer> grace_timer_;  // shutdown notice -> SIGTERM
  std::unique_ptr<service::OneShotTimer> kill_timer_;   // SIGTERM -> SIGKILL
  std::function<void()> on_stopped_;
  bool stopping_ = false;
  bool stopped_ = false;
};

}  // namespace serve::cli
