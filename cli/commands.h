#pragma once

#include <string>
#include <vector>

#include "bus/bus.h"

namespace serve::cli {

// What every command takes.
struct GlobalOptions {
  bus::Options bus;
  std::string ns = "serve";
  std::string run_dir;  // empty: RunDir::DefaultPath(ns)
  // The bus credentials are the admin's from the run directory (bus_credentials.h), not
  // given by flags or environment.
  bool bus_credentials_from_run_dir = false;
};

struct StartOptions {
  std::string checkpoint_path;  // empty: file://<run dir>/checkpoint
  std::string http_host = "127.0.0.1";
  int http_port = 8000;
  // The controller's REST API and dashboard; port 0: none.
  std::string dashboard_host = "127.0.0.1";
  int dashboard_port = 8265;
  // The node agent's Prometheus metrics (its replicas' figures); port 0: none.
  int node_metrics_port = 8266;
  // The checkpointer's Prometheus metrics (its store's latency and errors); port 0: none.
  int checkpointer_metrics_port = 8267;
  double num_cpus = 0;  // 0: all of this machine's
  double timeout_s = 30;
  // Run the nats-server it starts without users: anyone who reaches it may do anything.
  bool insecure_bus = false;
  // Stay in the foreground until told to stop (SIGTERM, SIGINT), then stop the instance; exit
  // with an error when its supervisor ends by itself. For service managers such as systemd.
  bool foreground = false;
  // How the nats-server it starts tells users apart: "operator" (JWTs, a user per role and one
  // per worker) or "password" (a password per role).
  std::string bus_auth = "operator";
  // nats-server's monitoring port (/connz, /varz), on the NATS host; 0: none.
  int nats_monitor_port = 0;
};

struct DeployOptions {
  std::string file;
  bool wait = true;
  double timeout_s = 120;
};

struct StatusOptions {
  std::vector<std::string> names;
  bool json = false;
  bool watch = false;  // then follow <ns>.events until SIGINT or SIGTERM
};

// `serve supervise`, which `serve start` runs in the background: the instance's processes.
struct SuperviseOptions {
  StartOptions instance;  // checkpoint_path is set
  // Where to run nats-server; empty: NATS runs elsewhere.
  std::string nats_host;
  int nats_port = 0;
};

// `serve run`: the instance options apply only when it has to start one.
struct RunOptions {
  StartOptions instance;
  DeployOptions deploy;  // always waits
};

// Each returns the process exit code, having printed what a person needs: progress on stdout,
// errors (with the fix, where known) on stderr.
int StartInstance(const GlobalOptions& global, const StartOptions& options);
int DeployFile(const GlobalOptions& global, const DeployOptions& options);
int DeleteDeployments(const GlobalOptions& global, const std::vector<std::string>& names);
int ShowStatus(const GlobalOptions& global, const StatusOptions& options);
// Prints the live desired deployments as a config file `serve deploy` takes back unchanged.
int ShowConfig(const GlobalOptions& global, bool json);
int ShutdownInstance(const GlobalOptions& global);
// Runs the processes of a local instance under a Supervisor until a shutdown (on the bus, or
// SIGTERM); its log is the run directory's logs/supervisor.log.
int Supervise(const GlobalOptions& global, const SuperviseOptions& options);
// In the foreground until SIGINT or SIGTERM: starts an instance if none runs, deploys the file,
// follows its events, and on the way out deletes what it deployed and stops what it started.
int RunForeground(const GlobalOptions& global, const RunOptions& options);

}  // namespace serve::cli
