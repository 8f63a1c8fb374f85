#pragma once

#include <sys/wait.h>

#include <chrono>
#include <string>
#include <vector>

#include "support/process.h"

namespace serve::testing {

// A command left running in the background (`serve run`, `serve status --watch`), its stdout
// and stderr in a file that a test polls. Killed when the object goes away.
class LoggedProcess {
 public:
  LoggedProcess(std::vector<std::string> argv, std::string log_path)
      : log_path_(std::move(log_path)), process_(std::move(argv), log_path_) {}

  std::string Output() const { return ReadFile(log_path_); }

  // Polls the output until it contains `text`, or the command ended, or `timeout` passed.
  bool WaitForOutput(const std::string& text,
                     std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    bool found = false;
    WaitUntil(
        [&] {
          found = Output().find(text) != std::string::npos;
          return found || !process_.Running();
        },
        timeout);
    return found || Output().find(text) != std::string::npos;
  }

  bool Running() { return process_.Running(); }

  // Sends SIGTERM and waits for the end: the exit code, or 128 + the signal that ended it
  // (SIGKILL after `timeout`).
  int Terminate(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    int status = process_.Stop(timeout);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  std::string log_path_;
  Process process_;
};

}  // namespace serve::testing
