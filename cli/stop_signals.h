#pragma once

#include <signal.h>

namespace serve::cli {

// SIGINT and SIGTERM as a request to stop rather than an end: while a StopSignals exists, the
// two signals no longer kill the process. Their handler only writes a byte to a pipe (the
// self-pipe trick); requested() reads it, and a libuv loop can watch fd(). Commands that stay
// (`serve run`, `serve status --watch`) check it between steps and clean up before they exit.
//
// At most one exists at a time in a process. Not thread-safe: use it from the main thread.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // True once SIGINT or SIGTERM arrived; stays true.
  bool requested();
  // Readable once a signal arrived (and until requested() read it).
  int fd() const { return pipe_[0]; }

 private:
  int pipe_[2] = {-1, -1};
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
  bool received_ = false;
};

}  // namespace serve::cli
