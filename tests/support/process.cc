#include "support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

namespace serve::testing {

namespace fs = std::filesystem;

bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

namespace {

// Test processes run side by side (ctest -j): a port one of them was handed, but has not bound
// yet, may be handed to another, whose clients then talk to the wrong server (and are refused
// as strangers by its nats-server). A file per port claims it across processes; a claim older
// than the longest test is stale.
// Claims end with the process that made them (FreePort holds its mutex when it adds one).
std::vector<std::string>& Claims() {
  static auto* claims = new std::vector<std::string>;
  return *claims;
}

void ReleaseClaims() {
  for (const auto& path : Claims()) unlink(path.c_str());
}

bool ClaimAcrossProcesses(int port) {
  static const std::string dir = "/tmp/serve-test-ports";
  mkdir(dir.c_str(), 01777);
  std::string path = dir + "/" + std::to_string(port);
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
    if (fd >= 0) {
      close(fd);
      if (Claims().empty()) atexit(ReleaseClaims);
      Claims().push_back(path);
      return true;
    }
    struct stat st {};
    if (errno != EEXIST || stat(path.c_str(), &st) != 0) return true;  // cannot tell: take it
    if (time(nullptr) - st.st_mtime < 30 * 60) return false;
    unlink(path.c_str());
  }
  return false;
}

}  // namespace

// A port the kernel calls free may be handed out again by the next call, before anything bound
// it (a cluster asking for its proxy's and its controller's port in a row): a port is handed to
// one caller of this process only, and to one test process at a time.
int FreePort() {
  static std::mutex mutex;
  static std::set<int> handed_out;
  std::lock_guard<std::mutex> lock(mutex);
  for (int attempt = 0; attempt < 100; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd);
      throw std::runtime_error("cannot bind a free port");
    }
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    int port = ntohs(addr.sin_port);
    if (handed_out.insert(port).second && ClaimAcrossProcesses(port)) return port;
  }
  throw std::runtime_error("no free port that was not handed out already");
}

static int ConnectTo(int port, std::chrono::milliseconds timeout) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{};
  tv.tv_sec = timeout.count() / 1000;
  tv.tv_usec = (timeout.count() % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool PortOpen(int port) {
  int fd = ConnectTo(port, std::chrono::milliseconds(500));
  if (fd < 0) return false;
  // A connection to a closed port in the ephemeral range can be given that same port as its
  // source and connect to itself (TCP simultaneous open): nothing listens there.
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  bool self = getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
              ntohs(local.sin_port) == port;
  close(fd);
  return !self;
}

Process::Process(std::vector<std::string> argv, std::string log_path,
                 std::map<std::string, std::string> env) {
  pid_t parent = getpid();
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    // Dies with the test, even when the test is killed.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    setpgid(0, 0);
    if (!log_path.empty()) {
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
    }
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    for (auto& [key, value] : env) setenv(key.c_str(), value.c_str(), 1);
    std::vector<char*> args;
    for (auto& arg : argv) args.push_back(arg.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    fprintf(stderr, "cannot run %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
}

Process::~Process() { Kill(); }

Process::Process(Process&& other) noexcept : pid_(other.pid_), status_(other.status_) {
  other.pid_ = -1;
}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    Kill();
    pid_ = other.pid_;
    status_ = other.status_;
    other.pid_ = -1;
  }
  return *this;
}

bool Process::Running() {
  if (pid_ <= 0) return false;
  pid_t r = waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

void Process::Signal(int signal) {
  if (pid_ > 0) kill(pid_, signal);
}

int Process::Stop(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return status_;
  kill(pid_, SIGTERM);
  if (!WaitUntil([this] { return !Running(); }, timeout, std::chrono::milliseconds(5))) {
    Kill();
  }
  return status_;
}

void Process::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  pid_ = -1;
}

std::string BinDir() {
  if (const char* dir = getenv("SERVE_BIN_DIR")) return dir;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  // Tests live in build/tests/, executables in build/bin/.
  return (self.parent_path().parent_path() / "bin").string();
}

TempDir::TempDir() {
  std::string pattern = (fs::temp_directory_path() / "serve-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  // Searchable, like the directories a node's work directory is made under in production:
  // a root node agent's workers run as nobody, and must reach their code in here.
  chmod(pattern.c_str(), 0755);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

NatsServer::NatsServer(std::vector<std::string> extra_args, std::map<std::string, std::string> env)
    : port_(FreePort()), extra_args_(std::move(extra_args)), env_(std::move(env)) {
  Start();
}

void NatsServer::Start() {
  std::vector<std::string> argv = {"nats-server", "-a", "127.0.0.1", "-p",
                                   std::to_string(port_)};
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  process_ = Process(argv, dir_.path() + "/nats.log", env_);
  if (!WaitUntil([this] { return PortOpen(port_); })) {
    throw std::runtime_error("nats-server did not start: " + ReadFile(dir_.path() + "/nats.log"));
  }
}

void NatsServer::Start(std::vector<std::string> extra_args) {
  extra_args_ = std::move(extra_args);
  Start();
}

void NatsServer::Stop() { process_.Kill(); }

std::string NatsServer::Log() const { return ReadFile(dir_.path() + "/nats.log"); }

HttpResult HttpRequest(int port, const std::string& method, const std::string& target,
                       const std::string& body, std::chrono::milliseconds timeout,
                       const std::map<std::string, std::string>& headers) {
  HttpResult result;
  int fd = ConnectTo(port, timeout);
  if (fd < 0) {
    result.error = "connect failed: " + std::string(strerror(errno));
    return result;
  }
  std::string request = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const auto& [name, value] : headers)
    request.append(name).append(": ").append(value + "\r\n");
  request +=
      "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    result.error = "send failed";
    close(fd);
    return result;
  }
  std::string raw;
  char buffer[16384];
  while (true) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    raw.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  size_t header_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || header_end == std::string::npos) {
    result.error = "no HTTP response (got " + std::to_string(raw.size()) + " bytes)";
    return result;
  }
  result.status = std::atoi(raw.c_str() + 9);
  std::istringstream head(raw.substr(0, header_end));
  std::string line;
  std::getline(head, line);
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    size_t value_start = line.find_first_not_of(' ', colon + 1);
    result.headers[name] = value_start == std::string::npos ? "" : line.substr(value_start);
  }
  result.body = raw.substr(header_end + 4);
  return result;
}

std::map<std::string, pid_t> RecordedPids(const std::string& run_dir) {
  std::map<std::string, pid_t> pids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(run_dir + "/pids", ec)) {
    std::ifstream in(entry.path());
    pid_t pid = 0;
    if (in >> pid) pids[entry.path().stem().string()] = pid;
  }
  return pids;
}

std::vector<pid_t> RecordedPidList(const std::string& run_dir) {
  std::vector<pid_t> pids;
  for (const auto& [name, pid] : RecordedPids(run_dir)) pids.push_back(pid);
  return pids;
}

std::string InstanceLogTails(const std::string& run_dir) {
  constexpr size_t kTailBytes = 4000;
  std::string tails;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(run_dir + "/logs", ec)) {
    std::string log = ReadFile(entry.path().string());
    if (log.size() > kTailBytes) log = log.substr(log.size() - kTailBytes);
    tails += "\n--- " + entry.path().filename().string() + " ends with:\n" + log;
  }
  return tails;
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env,
                         std::chrono::milliseconds timeout) {
  CommandResult result;
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return result;
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(pipe_fds[1], 1);
    dup2(pipe_fds[1], 2);
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    for (auto& [key, value] : env) setenv(key.c_str(), value.c_str(), 1);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (auto& arg : copy) args.push_back(arg.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    fprintf(stderr, "cannot run %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  close(pipe_fds[1]);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[4096];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(pid, SIGKILL);
      result.output += "\n[timed out]";
      break;
    }
    pollfd pfd{pipe_fds[0], POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    ssize_t n = read(pipe_fds[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    result.output.append(buffer, static_cast<size_t>(n));
  }
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

InheritablePipe::InheritablePipe() {
  if (pipe(fds_) != 0) throw std::runtime_error("pipe failed");
}

InheritablePipe::~InheritablePipe() {
  for (int fd : fds_) {
    if (fd >= 0) close(fd);
  }
}

void InheritablePipe::CloseWriteEnd() {
  if (fds_[1] >= 0) close(fds_[1]);
  fds_[1] = -1;
}

bool InheritablePipe::Ended() {
  pollfd poll_fd{fds_[0], POLLIN, 0};
  if (poll(&poll_fd, 1, 0) != 1) return false;  // nothing to read, and some writer remains
  char byte;
  return read(fds_[0], &byte, 1) == 0;
}

std::map<int, std::string> OpenDescriptors(pid_t pid) {
  std::map<int, std::string> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    int fd = std::atoi(entry.path().filename().c_str());
    if (fd <= 2) continue;
    fs::path target = fs::read_symlink(entry.path(), ec);
    if (!ec) out[fd] = target.string();  // else closed meanwhile
  }
  return out;
}

std::vector<std::string> SharedDescriptors(pid_t child, pid_t other) {
  std::map<int, std::string> theirs = OpenDescriptors(other);
  for (int fd = 0; fd <= 2; ++fd) {
    std::error_code ec;
    fs::path target =
        fs::read_symlink("/proc/" + std::to_string(other) + "/fd/" + std::to_string(fd), ec);
    if (!ec) theirs[fd] = target.string();
  }
  std::vector<std::string> shared;
  for (const auto& [fd, target] : OpenDescriptors(child)) {
    for (const auto& [other_fd, other_target] : theirs) {
      long same = syscall(SYS_kcmp, child, other, KCMP_FILE, fd, other_fd);
      bool unique_inode = target.rfind("socket:", 0) == 0 || target.rfind("pipe:", 0) == 0;
      if (same == 0 || (same < 0 && unique_inode && target == other_target)) {
        shared.push_back("fd " + std::to_string(fd) + " (" + target + ")");
        break;
      }
    }
  }
  return shared;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

size_t CountOccurrences(const std::string& text, const std::string& what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

bool ProcessAlive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string content;
  std::getline(stat, content);
  size_t paren = content.rfind(')');
  return !(paren != std::string::npos && paren + 2 < content.size() && content[paren + 2] == 'Z');
}

}  // namespace serve::testing
