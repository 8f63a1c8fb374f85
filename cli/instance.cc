#include "cli/instance.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include "service/descriptors.h"

namespace serve::cli {
namespace {

namespace fs = std::filesystem;

int ConnectTcp(const std::string& host, int port, int timeout_ms) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &result) != 0) return -1;
  int fd = -1;
  for (addrinfo* ai = result; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(result);
  return fd;
}

}  // namespace

RunDir::RunDir(std::string path) : path_(std::move(path)) {}

std::string RunDir::DefaultPath(const std::string& ns) {
  // Root's workers run as an unprivileged user (--worker-user), which cannot reach into root's
  // home: root keeps its instances where a system service does.
  if (geteuid() == 0) return "/var/lib/serve/" + ns;
  const char* home = getenv("HOME");
  if (home != nullptr && *home != '\0') return std::string(home) + "/.serve/" + ns;
  return "/tmp/serve-" + std::to_string(getuid()) + "/" + ns;
}

Status RunDir::Create() const {
  std::error_code ec;
  fs::create_directories(fs::path(path_) / "logs", ec);
  if (!ec) fs::create_directories(fs::path(path_) / "pids", ec);
  if (ec) {
    return Status::Error("cannot create the run directory " + path_ + ": " + ec.message() +
                         " (choose another with --run-dir)");
  }
  return Status::Ok();
}

std::string RunDir::LogPath(const std::string& process) const {
  return path_ + "/logs/" + process + ".log";
}

std::string RunDir::PidPath(const std::string& process) const {
  return path_ + "/pids/" + process + ".pid";
}

void RunDir::WritePid(const std::string& process, pid_t pid) const {
  std::ofstream out(PidPath(process), std::ios::trunc);
  out << pid << "\n";
}

std::optional<pid_t> RunDir::LivePid(const std::string& process) const {
  std::ifstream in(PidPath(process));
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  if (!ProcessAlive(pid)) return std::nullopt;
  return pid;
}

void RunDir::RemovePid(const std::string& process) const {
  std::error_code ec;
  fs::remove(PidPath(process), ec);
}

std::vector<std::string> RunDir::RecordedProcesses() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(path_) / "pids", ec)) {
    if (entry.path().extension() == ".pid") names.push_back(entry.path().stem().string());
  }
  return names;
}

std::string RunDir::LogTail(const std::string& process, int lines) const {
  std::ifstream in(LogPath(process));
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (static_cast<int>(tail.size()) > lines) tail.pop_front();
  }
  std::string text;
  for (const auto& l : tail) text += "    " + l + "\n";
  return text;
}

Result<pid_t> SpawnDetached(const std::vector<std::string>& argv, const std::string& log_path,
                            const std::map<std::string, std::string>& env) {
  // The previous instance's log becomes <name>.log.1: one earlier run stays for reading, and
  // an error shown from this log is this run's.
  std::error_code ec;
  if (std::filesystem::exists(log_path, ec)) {
    std::filesystem::rename(log_path, log_path + ".1", ec);
  }
  // A pipe reports exec failures: it closes on a successful exec (CLOEXEC), or carries errno.
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return Status::Error("pipe: " + std::string(strerror(errno)));
  pid_t pid = fork();
  if (pid < 0) return Status::Error("fork: " + std::string(strerror(errno)));
  if (pid == 0) {
    close(report[0]);
    setsid();
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd >= 0) dup2(null_fd, 0);
    int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    }
    // A service outlives this command: descriptors of the CLI, or of the shell that ran it (a
    // pipe someone waits on to end, say), must not stay open in it. dup2 cleared the flag on 0-2.
    service::MarkDescriptorsCloseOnExec();
    for (const auto& [key, value] : env) setenv(key.c_str(), value.c_str(), 1);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (auto& arg : copy) args.push_back(arg.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    int error = errno;
    (void)!write(report[1], &error, sizeof(error));
    _exit(127);
  }
  close(report[1]);
  int error = 0;
  ssize_t n = read(report[0], &error, sizeof(error));
  close(report[0]);
  if (n == sizeof(error)) {
    waitpid(pid, nullptr, 0);
    return Status::Error("cannot run " + argv[0] + ": " + strerror(error));
  }
  return pid;
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  // Reap it if it is our own exited child, so it does not linger as a zombie.
  waitpid(pid, nullptr, WNOHANG);
  if (kill(pid, 0) != 0) return errno == EPERM;
  // A zombie that is not ours still answers kill(0): check its state.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string content;
  std::getline(stat, content);
  size_t paren = content.rfind(')');
  return !(paren != std::string::npos && paren + 2 < content.size() && content[paren + 2] == 'Z');
}

bool TerminateProcess(pid_t pid, double timeout_s) {
  if (!ProcessAlive(pid)) return true;
  kill(pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!ProcessAlive(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  return false;
}

std::string ServiceExecutable(const std::string& name) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path candidate = self.parent_path() / name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return name;
}

bool TcpReachable(const std::string& host, int port) {
  int fd = ConnectTcp(host, port, 500);
  if (fd < 0) return false;
  close(fd);
  return true;
}

int HttpGetStatus(const std::string& host, int port, const std::string& path) {
  int fd = ConnectTcp(host == "0.0.0.0" ? "127.0.0.1" : host, port, 1000);
  if (fd < 0) return 0;
  std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + host +
                        "\r\nConnection: close\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    close(fd);
    return 0;
  }
  char buffer[64] = {0};
  ssize_t n = recv(fd, buffer, sizeof(buffer) - 1, 0);
  close(fd);
  if (n < 12 || strncmp(buffer, "HTTP/1.", 7) != 0) return 0;
  return atoi(buffer + 9);
}

std::optional<HostPort> ParseNatsUrl(const std::string& url) {
  if (url.find(',') != std::string::npos) return std::nullopt;
  std::string rest = url;
  const std::string scheme = "nats://";
  if (rest.rfind(scheme, 0) == 0) {
    rest = rest.substr(scheme.size());
  } else if (rest.find("://") != std::string::npos) {
    return std::nullopt;
  }
  size_t at = rest.rfind('@');
  if (at != std::string::npos) rest = rest.substr(at + 1);
  HostPort hp;
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) {
    hp.host = rest;
    hp.port = 4222;
  } else {
    hp.host = rest.substr(0, colon);
    try {
      hp.port = std::stoi(rest.substr(colon + 1));
    } catch (...) {
      return std::nullopt;
    }
  }
  if (hp.host.size() > 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  }
  if (hp.host.empty() || hp.port <= 0 || hp.port > 65535) return std::nullopt;
  return hp;
}

bool IsLocalHost(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host == "0.0.0.0";
}

}  // namespace serve::cli
