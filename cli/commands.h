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
};

struct StartOptions {
  std::string checkpoint_path;  // empty: file://<run dir>/checkpoint
  std::string http_host = "127.0.0.1";
  int http_port = 8000;
  double num_cpus = 0;  // 0: all of this machine's
  double timeout_s = 30;
};

struct DeployOptions {
  std::string file;
  bool wait = true;
  double timeout_s = 120;
};

struct StatusOptions {
  std::vector<std::string> names;
  bool json = false;
};

// Each returns the process exit code, having printed what a person needs: progress on stdout,
// errors (with the fix, where known) on stderr.
int StartInstance(const GlobalOptions& global, const StartOptions& options);
int DeployFile(const GlobalOptions& global, const DeployOptions& options);
int DeleteDeployments(const GlobalOptions& global, const std::vector<std::string>& names);
int ShowStatus(const GlobalOptions& global, const StatusOptions& options);
int ShutdownInstance(const GlobalOptions& global);

}  // namespace serve::cli
