#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace serve::cli {

// The files of one local instance: a run directory per namespace holding a pid file and a log
// file per process that `serve start` launched.
class RunDir {
 public:
  explicit RunDir(std::string path);

  // ~/.serve/<namespace> (or /tmp/serve-<uid>/<namespace> without a home).
  static std::string DefaultPath(const std::string& ns);

  Status Create() const;
  const std::string& path() const { return path_; }
  std::string LogPath(const std::string& process) const;
  std::string PidPath(const std::string& process) const;

  void WritePid(const std::string& process, pid_t pid) const;
  // The recorded pid, if the file exists and that process is still alive.
  std::optional<pid_t> LivePid(const std::string& process) const;
  void RemovePid(const std::string& process) const;
  // Every process with a pid file, alive or not.
  std::vector<std::string> RecordedProcesses() const;
  // The last `lines` lines of a process's log, for error messages.
  std::string LogTail(const std::string& process, int lines = 15) const;

 private:
  std::string path_;
};

// Starts `argv` in the background in a session of its own, with stdout and stderr appended to
// `log_path` and `env` added to the environment. Returns the pid.
Result<pid_t> SpawnDetached(const std::vector<std::string>& argv, const std::string& log_path,
                            const std::map<std::string, std::string>& env = {});

bool ProcessAlive(pid_t pid);

// Sends SIGTERM, waits up to `timeout_s`, then SIGKILL. True if it ended before SIGKILL.
bool TerminateProcess(pid_t pid, double timeout_s);

// The path of a Serve executable: next to this `serve` binary if there, else the bare name for
// a PATH lookup.
std::string ServiceExecutable(const std::string& name);

// True if something accepts TCP connections at host:port.
bool TcpReachable(const std::string& host, int port);

// A blocking GET, for health checks. Returns the status code, 0 if nothing answered.
int HttpGetStatus(const std::string& host, int port, const std::string& path);

// host and port of a single nats:// URL; nullopt for lists, TLS URLs or unparsable ones.
struct HostPort {
  std::string host;
  int port = 0;
};
std::optional<HostPort> ParseNatsUrl(const std::string& url);
bool IsLocalHost(const std::string& host);

}  // namespace serve::cli
