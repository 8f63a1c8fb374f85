#pragma once

#include <string>

#include "cli/commands.h"

namespace serve::cli {

// `serve logs DEPLOYMENT|REPLICA_ID [--follow] [--tail N]`.
struct LogsOptions {
  std::string target;  // a deployment's name or a replica's id
  bool follow = false;
  int tail = 100;       // lines of each replica's log to start with
  double poll_s = 0.5;  // how often --follow asks for more
};

// Prints the log of one replica, or of every replica of a deployment (each line prefixed with
// its replica's id), from whichever node holds it: node agents answer on <ns>.logs. A replica
// that was replaced can still be read for a while (its node keeps its log). With --follow it
// goes on printing new lines, and picks up the deployment's new replicas, until SIGINT or
// SIGTERM. Needs no controller for a replica id.
int ShowLogs(const GlobalOptions& global, const LogsOptions& options);

}  // namespace serve::cli
