#include "cli/stop_signals.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>

namespace serve::cli {
namespace {

// A signal handler can reach nothing but globals: the write end of the one StopSignals' pipe.
std::atomic<int> signal_pipe_write{-1};

void OnStopSignal(int) {
  int saved = errno;
  int fd = signal_pipe_write.load();
  char byte = 1;
  if (fd >= 0) (void)!write(fd, &byte, 1);
  errno = saved;
}

}  // namespace

StopSignals::StopSignals() {
  if (signal_pipe_write.load() >= 0 || pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    // Only a programming error (two at once) or an exhausted fd table lands here.
    abort();
  }
  signal_pipe_write.store(pipe_[1]);
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, &previous_int_);
  sigaction(SIGTERM, &action, &previous_term_);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &previous_int_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
  signal_pipe_write.store(-1);
  close(pipe_[0]);
  close(pipe_[1]);
}

bool StopSignals::requested() {
  char buffer[64];
  while (read(pipe_[0], buffer, sizeof(buffer)) > 0) received_ = true;
  return received_;
}

}  // namespace serve::cli
