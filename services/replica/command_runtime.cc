#include "replica/command_runtime.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include "base/shared_library.h"
#include "bus/bus.h"
#include "http/ascii.h"

extern char** environ;

namespace serve::replica {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kTailLines = 20;            // lines of output kept for error messages
constexpr size_t kTailLineBytes = 500;       // a kept line is cut after this many bytes
constexpr size_t kMaxLineBytes = 16 * 1024;  // a longer line is forwarded in pieces
constexpr milliseconds kProbeInterval(50);
// The command's own SIGTERM handling: by the time Stop() runs the worker has drained its
// requests (up to graceful_shutdown_timeout_s), so the process gets a few seconds more, which
// fit in the node agent's margin before it kills the worker.
constexpr double kMaxGracefulStopS = 5;
// How long an error waits for the last output of a command that exited.
constexpr milliseconds kOutputSettle(1000);

using http::internal::EqualsIgnoreCase;

// libcurl is opened when a command runtime is made, not linked (see base/shared_library.h):
// most workers run native code, and libcurl with what it pulls in would be the largest share
// of every worker's start.
#define SERVE_LIBCURL_FUNCTIONS(X) \
  X(curl_easy_cleanup) \
  X(curl_easy_getinfo) \
  X(curl_easy_init) \
  X(curl_easy_perform) \
  X(curl_easy_reset) \
  X(curl_easy_setopt) \
  X(curl_easy_strerror) \
  X(curl_global_init) \
  X(curl_slist_append) \
  X(curl_slist_free_all)

struct LibCurl {
  SERVE_LIBCURL_FUNCTIONS(SERVE_LIBRARY_FUNCTION)
};

Result<LibCurl> LoadLibCurl() {
  SERVE_LOAD_LIBRARY(LibCurl, "libcurl.so.4", "libcurl4", SERVE_LIBCURL_FUNCTIONS);
}

const Result<LibCurl>& LoadedLibCurl() {
  static const Result<LibCurl> library = LoadLibCurl();
  return library;
}

// Only after LoadedLibCurl() succeeded (MakeCommandRuntime checks).
const LibCurl& Curl() { return *LoadedLibCurl(); }


std::string ErrnoText(int error) { return std::strerror(error); }

std::string Join(const std::vector<std::string>& words) {
  std::string joined;
  for (const auto& word : words) {
    if (!joined.empty()) joined += ' ';
    joined += word;
  }
  return joined;
}

// Headers that describe one connection rather than the message, so they are not forwarded
// either way. Content-Length is recomputed by whoever writes the message next.
bool IsHopByHop(std::string_view name) {
  static constexpr std::string_view kNames[] = {"Connection", "Keep-Alive",     "Transfer-Encoding",
                                                "TE",         "Trailer",        "Upgrade",
                                                "Host",       "Content-Length", "Proxy-Connection"};
  for (std::string_view hop : kNames) {
    if (EqualsIgnoreCase(name, hop)) return true;
  }
  return name.size() >= 6 && EqualsIgnoreCase(name.substr(0, 6), "Proxy-");
}

// A port on 127.0.0.1 that was free a moment ago. Another process may take it before the
// command binds it; the command then fails to start and the error says so.
Result<int> PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Error("cannot create a socket: " + ErrnoText(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    int error = errno;
    close(fd);
    return Status::Error("cannot pick a free port on 127.0.0.1: " + ErrnoText(error));
  }
  close(fd);
  return static_cast<int>(ntohs(address.sin_port));
}

bool TcpConnects(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  bool connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return connected;
}

// How a process ended, from waitid.
struct ExitInfo {
  bool killed = false;  // by a signal; otherwise it exited
  int code = 0;         // exit code or signal number

  std::string Describe() const {
    if (!killed) return "exited with code " + std::to_string(code);
    const char* name = sigabbrev_np(code);
    return "was killed by signal " + std::to_string(code) +
           (name != nullptr ? std::string(" (SIG") + name + ")" : "");
  }
};

// Forwards a child's stdout and stderr, line by line, to this process's log with a prefix,
// and keeps the last lines for error messages. One thread reads both pipes.
class OutputPump {
 public:
  OutputPump(std::string prefix, int stdout_fd, int stderr_fd) : prefix_(std::move(prefix)) {
    fds_[0] = stdout_fd;
    fds_[1] = stderr_fd;
    if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
    for (int fd : fds_) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    thread_ = std::thread([this] { Run(); });
  }

  ~OutputPump() {
    Finish();
    for (int fd : wake_) {
      if (fd >= 0) close(fd);
    }
  }

  OutputPump(const OutputPump&) = delete;
  OutputPump& operator=(const OutputPump&) = delete;

  // The last lines the command printed (stdout and stderr as they came), oldest first.
  std::string Tail() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string text;
    for (const auto& line : tail_) {
      text += "  " + line + "\n";
    }
    return text;
  }

  // Waits until both pipes are closed (the command and whatever inherited them ended), at most
  // `timeout`.
  void WaitForEnd(milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    ended_cv_.wait_for(lock, timeout, [this] { return ended_; });
  }

  // Reads what is already in the pipes and ends the thread, even when something outside the
  // command's process group still holds them open.
  void Finish() {
    if (!thread_.joinable()) return;
    if (wake_[1] >= 0) {
      char byte = 1;
      (void)!write(wake_[1], &byte, 1);
    }
    thread_.join();
  }

 private:
  void Run() {
    char buffer[8192];
    bool finishing = false;
    while (fds_[0] >= 0 || fds_[1] >= 0) {
      pollfd polled[3] = {{fds_[0], POLLIN, 0}, {fds_[1], POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (!finishing && poll(polled, 3, -1) < 0 && errno != EINTR) break;
      if (polled[2].revents != 0) finishing = true;
      for (int i = 0; i < 2; ++i) {
        if (fds_[i] < 0) continue;
        if (!finishing && polled[i].revents == 0) continue;
        while (true) {
          ssize_t n = read(fds_[i], buffer, sizeof(buffer));
          if (n > 0) {
            Consume(i, std::string_view(buffer, static_cast<size_t>(n)));
            continue;
          }
          if (n < 0 && errno == EINTR) continue;
          if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            // End of file: a last line without a newline still counts.
            if (!partial_[i].empty()) Emit(partial_[i]);
            partial_[i].clear();
            close(fds_[i]);
            fds_[i] = -1;
          }
          break;
        }
      }
      if (finishing) break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds_[i] < 0) continue;
      if (!partial_[i].empty()) Emit(partial_[i]);
      close(fds_[i]);
      fds_[i] = -1;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ended_ = true;
    ended_cv_.notify_all();
  }

  void Consume(int stream, std::string_view bytes) {
    std::string& partial = partial_[stream];
    while (!bytes.empty()) {
      size_t newline = bytes.find('\n');
      if (newline == std::string_view::npos) {
        partial.append(bytes);
        if (partial.size() >= kMaxLineBytes) {
          Emit(partial);
          partial.clear();
        }
        return;
      }
      partial.append(bytes.substr(0, newline));
      Emit(partial);
      partial.clear();
      bytes.remove_prefix(newline + 1);
    }
  }

  void Emit(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    // Through the worker's log: the line gets its fields (node, deployment, replica) and goes
    // where the worker's lines go, rotated with them.
    spdlog::info("{}{}", prefix_, line);
    std::lock_guard<std::mutex> lock(mutex_);
    tail_.emplace_back(line.substr(0, kTailLineBytes));
    if (tail_.size() > kTailLines) tail_.pop_front();
  }

  const std::string prefix_;
  int fds_[2];              // stdout, stderr; -1 once closed. Only the thread touches them.
  int wake_[2];             // Finish writes a byte here
  std::string partial_[2];  // an unfinished line per stream; only the thread touches them

  mutable std::mutex mutex_;
  std::deque<std::string> tail_;  // guarded by mutex_
  bool ended_ = false;            // guarded by mutex_
  std::condition_variable ended_cv_;

  std::thread thread_;
};

// What one HTTP exchange with the command's server brought back.
struct Exchange {
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  char error[CURL_ERROR_SIZE] = {0};
};

size_t CollectBody(char* data, size_t size, size_t count, void* exchange) {
  static_cast<Exchange*>(exchange)->body.append(data, size * count);
  return size * count;
}

size_t CollectHeader(char* data, size_t size, size_t count, void* user) {
  auto* exchange = static_cast<Exchange*>(user);
  std::string_view line(data, size * count);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.starts_with("HTTP/")) {
    // A new status line (after a 1xx answer): only the final answer's headers count.
    exchange->headers.clear();
    return size * count;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * count;
  std::string_view name = line.substr(0, colon);
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  if (!IsHopByHop(name)) exchange->headers.emplace_back(name, value);
  return size * count;
}

// Sets the options every exchange with the command's server shares. The handle keeps its
// connection to the server across calls (curl_easy_reset does not close it).
void PrepareHandle(CURL* curl, const std::string& url, Exchange* exchange, long timeout_ms) {
  Curl().curl_easy_reset(curl);
  Curl().curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  Curl().curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  Curl().curl_easy_setopt(curl, CURLOPT_PROXY, "");  // http_proxy in the environment is not for us
  Curl().curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);
  Curl().curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  Curl().curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  if (timeout_ms > 0) Curl().curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
  Curl().curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, exchange->error);
  Curl().curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CollectBody);
  Curl().curl_easy_setopt(curl, CURLOPT_WRITEDATA, exchange);
  Curl().curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, CollectHeader);
  Curl().curl_easy_setopt(curl, CURLOPT_HEADERDATA, exchange);
}

std::string CurlErrorText(CURLcode code, const Exchange& exchange) {
  return exchange.error[0] != '\0' ? std::string(exchange.error) : Curl().curl_easy_strerror(code);
}

struct ChildProcess {
  pid_t pid = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
};

// Starts `argv` in `dir` with `env`, in a process group of its own, killed when this thread
// ends. An error says why exec (or chdir) failed: the child reports errno through a pipe that
// exec closes.
Result<ChildProcess> Spawn(const std::vector<std::string>& argv, const std::string& dir,
                           const std::vector<std::string>& env, const std::string& shown) {
  // Everything the child needs is built before fork: between fork and exec only
  // async-signal-safe calls are allowed (other threads may hold malloc's locks).
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& entry : env) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  int out[2] = {-1, -1}, err[2] = {-1, -1}, report[2] = {-1, -1};
  auto close_all = [&] {
    for (int* pair : {out, err, report}) {
      for (int i = 0; i < 2; ++i) {
        if (pair[i] >= 0) close(pair[i]);
        pair[i] = -1;
      }
    }
  };
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || pipe2(report, O_CLOEXEC) != 0) {
    int error = errno;
    close_all();
    return Status::Error("cannot create pipes for `" + shown + "`: " + ErrnoText(error));
  }
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int error = errno;
    close_all();
    if (null_fd >= 0) close(null_fd);
    return Status::Error("cannot fork to run `" + shown + "`: " + ErrnoText(error));
  }
  if (pid == 0) {
    // The child. A failure is reported as {stage, errno}: stage 0 setup, 1 chdir, 2 exec.
    auto fail = [&](int stage) {
      int message[2] = {stage, errno};
      (void)!write(report[1], message, sizeof(message));
      _exit(127);
    };
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(0);
    if (getppid() != parent) _exit(127);  // the worker died before prctl took effect
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    if (dup2(out[1], STDOUT_FILENO) < 0 || dup2(err[1], STDERR_FILENO) < 0) fail(0);
    // Signals the worker ignores or blocks would stay ignored or blocked across exec.
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    for (int signal = 1; signal < NSIG; ++signal) sigaction(signal, &default_action, nullptr);
    // Descriptors the worker opened without O_CLOEXEC (sockets, say) are not the command's.
    close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    if (chdir(dir.c_str()) != 0) fail(1);
    execvpe(args[0], args.data(), envp.data());
    fail(2);
  }
  // Also from the parent, so that the group exists before anyone signals it.
  setpgid(pid, pid);
  if (null_fd >= 0) close(null_fd);
  close(out[1]);
  close(err[1]);
  close(report[1]);
  int message[2] = {0, 0};
  ssize_t n;
  do {
    n = read(report[0], message, sizeof(message));
  } while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n == static_cast<ssize_t>(sizeof(message))) {
    waitpid(pid, nullptr, 0);
    close(out[0]);
    close(err[0]);
    std::string why = ErrnoText(message[1]);
    if (message[0] == 1) why = "cannot change into the directory: " + why;
    if (message[0] == 0) why = "cannot set up the process: " + why;
    return Status::Error("cannot run `" + shown + "` in " + dir + ": " + why);
  }
  return ChildProcess{pid, out[0], err[0]};
}

// The environment of the command: this process's, plus what tells the command who it is.
std::vector<std::string> CommandEnvironment(const RuntimeContext& context, int port) {
  std::vector<std::pair<std::string, std::string>> ours = {
      {"PORT", std::to_string(port)},
      {"SERVE_REPLICA_ID", context.identity.replica_id},
      {"SERVE_DEPLOYMENT", context.spec.name},
      {"SERVE_USER_CONFIG", context.spec.user_config},
  };
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    std::string_view name = text.substr(0, text.find('='));
    bool replaced =
        std::any_of(ours.begin(), ours.end(), [&](const auto& pair) { return pair.first == name; });
    // The worker drops its bus credentials before it starts user code; this makes sure.
    if (!replaced && !bus::IsSecretVariable(name)) env.emplace_back(text);
  }
  for (const auto& [name, value] : ours) env.push_back(name + "=" + value);
  return env;
}

class CommandRuntime : public Runtime {
 public:
  CommandRuntime(const RuntimeContext& context, ChildProcess child, int port)
      : spec_(context.spec),
        identity_(context.identity),
        error_file_(context.error_file),
        shown_(Join(context.spec.command)),
        pid_(child.pid),
        port_(port),
        base_url_("http://127.0.0.1:" + std::to_string(port)),
        pump_("[" + context.spec.name + " " + context.identity.replica_id + "] ", child.stdout_fd,
              child.stderr_fd) {
    watcher_ = std::thread([this] { Watch(); });
  }

  ~CommandRuntime() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    KillAndReap();
    for (CURL* curl : idle_handles_) Curl().curl_easy_cleanup(curl);
    if (probe_handle_ != nullptr) Curl().curl_easy_cleanup(probe_handle_);
  }

  CommandRuntime(const CommandRuntime&) = delete;
  CommandRuntime& operator=(const CommandRuntime&) = delete;

  pid_t pid() const { return pid_; }

  // Polls until the command answers, exits, or startup_timeout_s passes.
  Status WaitUntilAnswering() {
    double timeout_s = spec_.startup_timeout_s > 0 ? spec_.startup_timeout_s : 60;
    auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(timeout_s));
    while (true) {
      if (auto exit = Exited()) {
        pump_.WaitForEnd(kOutputSettle);
        return Status::Error("command `" + shown_ + "` " + exit->Describe() +
                             " before it answered on port " + std::to_string(port_) + LastLines());
      }
      auto now = Clock::now();
      if (now >= deadline) {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          stopping_ = true;
        }
        KillAndReap();
        char seconds[32];
        snprintf(seconds, sizeof(seconds), "%g", timeout_s);
        return Status::Error("command `" + shown_ + "` did not answer on port " +
                             std::to_string(port_) + " within startup_timeout_s (" + seconds +
                             " s)" + LastLines());
      }
      auto remaining = std::chrono::duration_cast<milliseconds>(deadline - now);
      if (Answers(std::max<long>(remaining.count(), 1))) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!exit_) {
          ready_ = true;
          return Status::Ok();
        }
        continue;  // it answered and exited right after: report the exit
      }
      std::unique_lock<std::mutex> lock(mutex_);
      exited_cv_.wait_for(lock, kProbeInterval, [this] { return exit_.has_value(); });
    }
  }

  int Concurrency() const override { return std::max(1, spec_.max_concurrent_queries); }
  bool ScalesWithLimit() const override { return true; }

  HandlerResponse Handle(const RequestView& request) override {
    std::string url = base_url_;
    url.append(request.path);
    if (!request.query.empty()) {
      url += '?';
      url.append(request.query);
    }
    Exchange exchange;
    CURL* curl = AcquireHandle();
    if (curl == nullptr) return Failed(request, "cannot create a curl handle");
    PrepareHandle(curl, url, &exchange, 0);

    // curl adds Accept, Expect: 100-continue and (for bodies) a form Content-Type on its own;
    // an empty "Name:" line turns each off unless the client sent its own.
    curl_slist* headers = nullptr;
    bool has_accept = false, has_content_type = false;
    bool printable_id = std::all_of(request.request_id.begin(), request.request_id.end(),
                                    [](char c) { return c >= 0x20 && c < 0x7F; });
    bool send_id = !request.request_id.empty() && printable_id;
    for (const auto& [name, value] : request.headers) {
      if (IsHopByHop(name) || EqualsIgnoreCase(name, "Expect")) continue;
      if (send_id && EqualsIgnoreCase(name, "X-Request-ID")) continue;  // sent below
      has_accept = has_accept || EqualsIgnoreCase(name, "Accept");
      has_content_type = has_content_type || EqualsIgnoreCase(name, "Content-Type");
      std::string line(name);
      if (value.empty()) {
        line += ';';  // curl's way of sending a header with an empty value
      } else {
        line += ": ";
        line.append(value);
      }
      headers = Curl().curl_slist_append(headers, line.c_str());
    }
    if (send_id) {
      // The command's own log lines can carry the id the proxy's and the worker's lines do.
      std::string line = "X-Request-ID: ";
      line.append(request.request_id);
      headers = Curl().curl_slist_append(headers, line.c_str());
    }
    if (!has_accept) headers = Curl().curl_slist_append(headers, "Accept:");
    if (!has_content_type) headers = Curl().curl_slist_append(headers, "Content-Type:");
    headers = Curl().curl_slist_append(headers, "Expect:");
    Curl().curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);

    std::string method(request.method);
    if (method == "HEAD") {
      Curl().curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (method == "GET" && request.body.empty()) {
      Curl().curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    } else {
      Curl().curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(request.body.size()));
      Curl().curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.empty() ? "" : request.body.data());
      if (method != "POST") Curl().curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
    }

    CURLcode code = Curl().curl_easy_perform(curl);
    long status = 0;
    Curl().curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    Curl().curl_slist_free_all(headers);
    ReleaseHandle(curl);
    if (code != CURLE_OK || status == 0) return Failed(request, CurlErrorText(code, exchange));
    return HandlerResponse{static_cast<int>(status), std::move(exchange.headers),
                           std::move(exchange.body)};
  }

  Status CheckHealth() override {
    if (auto exit = Exited()) return Status::Error("command `" + shown_ + "` " + exit->Describe());
    if (spec_.health_path.empty()) {
      if (TcpConnects(port_)) return Status::Ok();
      return Status::Error("nothing accepts connections on port " + std::to_string(port_));
    }
    long timeout_ms = static_cast<long>(spec_.health_check_timeout_s * 1000);
    return Probe(std::max(timeout_ms, 1L));
  }

  // A command's process reads its user_config once, from SERVE_USER_CONFIG at start; there is
  // no hook to hand it a new one while it runs, and restarting it here would drop requests.
  // So a user_config change is accepted and reaches the command when its replica next starts
  // (a new version, a replacement, a scale-up). Commands that must react at once read their
  // configuration from somewhere they watch themselves.
  Status Reconfigure(const std::string&) override {
    spdlog::info(
        "replica {}: command runtimes read user_config from SERVE_USER_CONFIG at start; "
        "`{}` keeps the one it started with until the replica restarts",
        identity_.replica_id, shown_);
    return Status::Ok();
  }

  void Stop() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      stopping_ = true;
    }
    double grace = std::clamp(spec_.graceful_shutdown_timeout_s, 0.0, kMaxGracefulStopS);
    if (!Exited()) {
      kill(-pid_, SIGTERM);
      std::unique_lock<std::mutex> lock(mutex_);
      bool ended = exited_cv_.wait_for(lock, std::chrono::duration<double>(grace),
                                       [this] { return exit_.has_value(); });
      if (!ended) {
        spdlog::warn("replica {}: `{}` still runs {} s after SIGTERM; killing it",
                     identity_.replica_id, shown_, grace);
      }
    }
    KillAndReap();
  }

 private:
  std::optional<ExitInfo> Exited() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return exit_;
  }

  std::string LastLines() const {
    std::string tail = pump_.Tail();
    if (tail.empty()) return "; it printed nothing";
    return "; last lines of its output:\n" + tail;
  }

  // The one thread that waits for the command. It leaves the process a zombie (WNOWAIT), so
  // that its pid, which is also its process group's id, cannot be reused before
  // KillAndReap has signalled the group.
  void Watch() {
    siginfo_t info{};
    int rc;
    do {
      rc = waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT);
    } while (rc != 0 && errno == EINTR);
    ExitInfo exit;
    if (rc == 0) {
      exit.killed = info.si_code != CLD_EXITED;
      exit.code = info.si_status;
    }
    bool serving;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      exit_ = exit;
      serving = ready_ && !stopping_;
    }
    exited_cv_.notify_all();
    if (serving) EndWorker(exit);
  }

  // The command exited on its own while the replica served: a replica without its server is
  // useless, and ending the worker lets the node agent report it at once, so the controller
  // starts a replacement.
  [[noreturn]] void EndWorker(const ExitInfo& exit) {
    pump_.WaitForEnd(kOutputSettle);
    std::string message =
        "command `" + shown_ + "` " + exit.Describe() + " while serving" + LastLines();
    while (!message.empty() && message.back() == '\n') message.pop_back();
    if (!error_file_.empty()) {
      std::ofstream out(error_file_, std::ios::trunc);
      out << message << "\n";
    }
    spdlog::error("replica {}: {}", identity_.replica_id, message);
    spdlog::default_logger()->flush();
    _exit(4);
  }

  // Kills whatever is left of the command's process group, reaps the command and ends the
  // threads. Idempotent.
  void KillAndReap() {
    if (reaped_) return;
    kill(-pid_, SIGKILL);
    if (watcher_.joinable()) watcher_.join();
    waitpid(pid_, nullptr, 0);
    pump_.Finish();
    reaped_ = true;
  }

  // True when GET health_path answers 2xx (or, without one, something accepts connections).
  bool Answers(long timeout_ms) {
    if (spec_.health_path.empty()) return TcpConnects(port_);
    return Probe(timeout_ms).ok();
  }

  Status Probe(long timeout_ms) {
    std::lock_guard<std::mutex> lock(probe_mutex_);
    if (probe_handle_ == nullptr) probe_handle_ = Curl().curl_easy_init();
    if (probe_handle_ == nullptr) return Status::Error("cannot create a curl handle");
    Exchange exchange;
    PrepareHandle(probe_handle_, base_url_ + spec_.health_path, &exchange, timeout_ms);
    curl_slist* headers = Curl().curl_slist_append(nullptr, "Accept:");
    Curl().curl_easy_setopt(probe_handle_, CURLOPT_HTTPHEADER, headers);
    CURLcode code = Curl().curl_easy_perform(probe_handle_);
    long status = 0;
    Curl().curl_easy_getinfo(probe_handle_, CURLINFO_RESPONSE_CODE, &status);
    Curl().curl_slist_free_all(headers);
    if (code != CURLE_OK) {
      return Status::Error("GET " + spec_.health_path + " on port " + std::to_string(port_) +
                           " failed: " + CurlErrorText(code, exchange));
    }
    if (status >= 200 && status < 300) return Status::Ok();
    return Status::Error("GET " + spec_.health_path + " answered " + std::to_string(status) + ": " +
                         exchange.body.substr(0, 200));
  }

  CURL* AcquireHandle() {
    {
      std::lock_guard<std::mutex> lock(pool_mutex_);
      if (!idle_handles_.empty()) {
        CURL* curl = idle_handles_.back();
        idle_handles_.pop_back();
        return curl;
      }
    }
    return Curl().curl_easy_init();
  }

  void ReleaseHandle(CURL* curl) {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    idle_handles_.push_back(curl);
  }

  HandlerResponse Failed(const RequestView& request, const std::string& why) {
    std::string body = "the server of command `" + shown_ + "` on port " + std::to_string(port_) +
                       " failed to answer " + std::string(request.method) + " " +
                       std::string(request.path) + ": " + why;
    if (auto exit = Exited()) body += " (the command " + exit->Describe() + ")";
    return HandlerResponse{502, {{"Content-Type", "text/plain; charset=utf-8"}}, body + "\n"};
  }

  const wire::DeploymentSpecT spec_;
  const ReplicaIdentity identity_;
  const std::string error_file_;
  const std::string shown_;  // the command as people read it in messages
  const pid_t pid_;          // also the id of its process group
  const int port_;
  const std::string base_url_;
  OutputPump pump_;

  mutable std::mutex mutex_;
  std::condition_variable exited_cv_;  // notified when exit_ is set
  std::optional<ExitInfo> exit_;       // guarded by mutex_
  bool ready_ = false;                 // guarded by mutex_; it answered once
  bool stopping_ = false;              // guarded by mutex_; Stop or the destructor began
  std::thread watcher_;
  bool reaped_ = false;  // only Stop, startup and the destructor touch it, never at once

  // Easy handles not in use; each keeps its keep-alive connection to the command's server.
  std::mutex pool_mutex_;
  std::vector<CURL*> idle_handles_;  // guarded by pool_mutex_

  std::mutex probe_mutex_;
  CURL* probe_handle_ = nullptr;  // guarded by probe_mutex_
};

}  // namespace

Result<std::unique_ptr<Runtime>> StartCommandRuntime(const RuntimeContext& context) {
  const wire::DeploymentSpecT& spec = context.spec;
  if (spec.command.empty()) {
    return Status::Error("deployment '" + spec.name +
                         "' has runtime: command but no `command` to run");
  }
  if (!LoadedLibCurl().ok()) {
    return LoadedLibCurl().status().WithContext("runtime: command talks HTTP to its server");
  }
  static std::once_flag curl_initialized;
  std::call_once(curl_initialized, [] { Curl().curl_global_init(CURL_GLOBAL_DEFAULT); });

  std::string dir = !context.artifact_path.empty() ? context.artifact_path
                    : !context.scratch_dir.empty() ? context.scratch_dir
                                                   : ".";
  std::string shown = Join(spec.command);
  auto port = PickFreePort();
  if (!port.ok()) return port.status();
  auto child = Spawn(spec.command, dir, CommandEnvironment(context, *port), shown);
  if (!child.ok()) return child.status();
  spdlog::info("replica {}: started `{}` in {} (pid {}); waiting for it to answer on port {}",
               context.identity.replica_id, shown, dir, child->pid, *port);
  auto runtime = std::make_unique<CommandRuntime>(context, *child, *port);
  Status answering = runtime->WaitUntilAnswering();
  if (!answering.ok()) return answering;  // the runtime's destructor kills what is left
  spdlog::info("replica {}: `{}` answers on port {}", context.identity.replica_id, shown, *port);
  return std::unique_ptr<Runtime>(std::move(runtime));
}

pid_t CommandRuntimePidForTest(const Runtime& runtime) {
  const auto* command = dynamic_cast<const CommandRuntime*>(&runtime);
  return command != nullptr ? command->pid() : -1;
}

}  // namespace serve::replica
