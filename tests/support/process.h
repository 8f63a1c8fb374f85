#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace serve::testing {

// Polls `condition` until it holds or `timeout` passes. Tests wait with this, never with fixed
// sleeps: the deadline is generous, the usual wait is a few milliseconds.
bool WaitUntil(const std::function<bool()>& condition,
               std::chrono::milliseconds timeout = std::chrono::seconds(20),
               std::chrono::milliseconds interval = std::chrono::milliseconds(10));

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();

// True when something accepts TCP connections on 127.0.0.1:port.
bool PortOpen(int port);

// A child process that is killed (SIGKILL) and reaped when the object goes away, so a failing
// test leaves nothing behind. Output goes to `log_path` when given.
class Process {
 public:
  Process() = default;
  Process(std::vector<std::string> argv, std::string log_path = "",
          std::map<std::string, std::string> env = {});
  ~Process();
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int signal);
  // Sends SIGTERM and waits up to `timeout`, then SIGKILL. Returns the wait status.
  int Stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void Kill();
  // The wait status once Running() returned false (see WIFEXITED and friends).
  int wait_status() const { return status_; }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
};

// Directory of the built executables (build/bin), from SERVE_BIN_DIR or next to the test.
std::string BinDir();

// A fresh directory under /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A real nats-server on a free port.
class NatsServer {
 public:
  explicit NatsServer(std::vector<std::string> extra_args = {},
                      std::map<std::string, std::string> env = {});
  int port() const { return port_; }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
  void Stop();
  void Start();  // again, on the same port
  // Again on the same port, with other arguments (other credentials, say).
  void Start(std::vector<std::string> extra_args);
  std::string Log() const;

 private:
  int port_;
  std::vector<std::string> extra_args_;
  std::map<std::string, std::string> env_;
  TempDir dir_;
  Process process_;
};

struct HttpResult {
  int status = 0;  // 0: no HTTP answer at all
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string error;
};

// A blocking HTTP/1.1 request on a new connection to 127.0.0.1:port.
HttpResult HttpRequest(int port, const std::string& method, const std::string& target,
                       const std::string& body = "",
                       std::chrono::milliseconds timeout = std::chrono::seconds(10),
                       const std::map<std::string, std::string>& headers = {});
inline HttpResult HttpGet(int port, const std::string& target) {
  return HttpRequest(port, "GET", target);
}

// Runs a command, returns its exit status and combined output.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
// The pids of a `serve start` instance's run directory, by pid file name (pids/<name>.pid).
std::map<std::string, pid_t> RecordedPids(const std::string& run_dir);
// The same pids, without their names.
std::vector<pid_t> RecordedPidList(const std::string& run_dir);
// The end (last 4,000 bytes) of every log of a `serve start` instance's run directory, services
// and nats-server, each under a header naming it: for a failed test to show before its
// directory is removed.
std::string InstanceLogTails(const std::string& run_dir);

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(60));

// A pipe opened without O_CLOEXEC, as a careless library or a shell leaves one: every process
// started after it inherits both ends unless the spawn site keeps them out. Closed when it goes.
class InheritablePipe {
 public:
  InheritablePipe();
  ~InheritablePipe();
  InheritablePipe(const InheritablePipe&) = delete;
  InheritablePipe& operator=(const InheritablePipe&) = delete;
  // Closes this process's write end; reading then sees the end of the pipe at once unless some
  // other process still holds a write end.
  void CloseWriteEnd();
  // True when the read end reports the end of the pipe (without blocking).
  bool Ended();

 private:
  int fds_[2] = {-1, -1};
};

// Descriptors above stderr that process `pid` has open, with what each points at
// ("socket:[1234]", "pipe:[99]", a path), from /proc/<pid>/fd.
std::map<int, std::string> OpenDescriptors(pid_t pid);

// The descriptors above stderr of `child` that are the same open file as one of `other`'s: what
// `child` inherited from it (nothing else shares an open file between processes here). Compared
// with kcmp(2), which sees every kind of descriptor; where the kernel refuses kcmp, sockets and
// pipes are compared by inode, which is unique to each. Each entry reads "fd 5 (socket:[1234])".
std::vector<std::string> SharedDescriptors(pid_t child, pid_t other);

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& content);
// True while process `pid` exists and is not a zombie.
bool ProcessAlive(pid_t pid);
// How often `what` occurs in `text` (in logs, say).
size_t CountOccurrences(const std::string& text, const std::string& what);

}  // namespace serve::testing
