#include "cli/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

extern char** environ;

namespace serve::cli {
namespace {

std::string DescribeExit(int64_t exit_status, int term_signal) {
  if (term_signal != 0) {
    return "killed by signal " + std::to_string(term_signal) + " (" + strsignal(term_signal) + ")";
  }
  return "exited with code " + std::to_string(exit_status);
}

// The last `count` non-empty lines of a log, read from its end: logs grow without bound.
std::vector<std::string> LastLogLines(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff start = std::max<std::streamoff>(0, size - 8192);
  in.seekg(start);
  std::string text(static_cast<size_t>(size - start), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<std::string> lines;
  size_t end = text.size();
  while (end > 0 && lines.size() < count) {
    size_t newline = text.rfind('\n', end - 1);
    size_t begin = newline == std::string::npos ? 0 : newline + 1;
    // The first line of a window that starts mid-file may be cut: leave it out.
    if (newline == std::string::npos && start > 0) break;
    std::string line = text.substr(begin, end - begin);
    if (!line.empty()) lines.push_back(std::move(line));
    if (newline == std::string::npos) break;
    end = newline;
  }
  std::reverse(lines.begin(), lines.end());
  return lines;
}

std::string Seconds(double seconds) {
  char text[32];
  snprintf(text, sizeof(text), "%.1f s", seconds);
  return text;
}

}  // namespace

RestartBackoff::RestartBackoff(RestartPolicy policy)
    : policy_(policy), next_s_(policy.initial_backoff_s) {}

double RestartBackoff::NextDelay(double uptime_s) {
  if (uptime_s >= policy_.stable_after_s) next_s_ = policy_.initial_backoff_s;
  double delay = next_s_;
  next_s_ = std::min(policy_.max_backoff_s, next_s_ * 2);
  return delay;
}

struct Supervisor::Child {
  Child(Supervisor* owner, SupervisedProcess spec, RestartPolicy policy, uv_loop_t* loop)
      : owner(owner), spec(std::move(spec)), backoff(policy), restart_timer(loop) {}

  Supervisor* owner;
  SupervisedProcess spec;
  uv_process_t* process = nullptr;  // while it runs; freed by its close callback
  int pid = 0;
  wire::SupervisedState state = wire::SupervisedState::STOPPED;
  int restarts = 0;
  std::string last_exit;
  int64_t since_ms = 0;
  double started_at_s = 0;  // loop time
  bool terminated = false;  // sent SIGTERM during a stop
  RestartBackoff backoff;
  service::OneShotTimer restart_timer;

  bool running() const { return process != nullptr; }
};

Supervisor::Supervisor(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                       SupervisorOptions options)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      options_(std::move(options)),
      run_(options_.run_dir),
      host_(service::HostName()) {
  for (const auto& spec : options_.processes) {
    children_.push_back(std::make_unique<Child>(this, spec, options_.restart, loop_));
  }
}

Supervisor::~Supervisor() {
  // Processes that still run keep running; only the handles go.
  for (auto& child : children_) {
    if (child->process == nullptr) continue;
    child->process->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(child->process),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_process_t*>(handle); });
  }
}

Status Supervisor::Start() {
  Status subscribed = service::OnShutdownNotice(bus_, subjects_, [this](const std::string& reason) {
    spdlog::info("shutdown announced on the bus ({}): restarting nothing from now on", reason);
    OnShutdownNotice();
  });
  if (!subscribed.ok()) return subscribed;
  for (auto& child : children_) {
    // The previous instance's log becomes <name>.log.1, so this run's log holds only its lines.
    std::error_code ec;
    std::string log = run_.LogPath(child->spec.name);
    if (std::filesystem::exists(log, ec)) std::filesystem::rename(log, log + ".1", ec);
    Status spawned = Spawn(*child);
    if (!spawned.ok()) {
      Stop(spawned.message());
      return spawned;
    }
    spdlog::info("started {} (pid {})", child->spec.display_name, child->pid);
  }
  heartbeat_ = std::make_unique<service::RepeatingTimer>(loop_, options_.heartbeat_period_s,
                                                         [this] { SendHeartbeat(); });
  SendHeartbeat();
  return Status::Ok();
}

Status Supervisor::Spawn(Child& child) {
  const SupervisedProcess& spec = child.spec;
  std::string log_path = run_.LogPath(spec.name);
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return Status::Error("cannot open " + log_path + " for " + spec.display_name + ": " +
                         strerror(errno));
  }
  std::vector<std::string> argv = spec.argv;
  std::vector<char*> args;
  for (auto& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  std::map<std::string, std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text = *entry;
    size_t equals = text.find('=');
    if (equals == std::string::npos) continue;
    // The supervisor's own bus credentials are not its children's: each gets what
    // options_.env and its own env give it.
    std::string key = text.substr(0, equals);
    if (!bus::IsSecretVariable(key)) env[key] = text.substr(equals + 1);
  }
  for (const auto& [key, value] : options_.env) env[key] = value;
  for (const auto& [key, value] : spec.env) env[key] = value;
  std::vector<std::string> env_strings;
  for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& entry : env_strings) envp.push_back(entry.data());
  envp.push_back(nullptr);

  uv_stdio_container_t stdio[4];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = log_fd;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = log_fd;
  int stdio_count = 3;
  if (spec.listen_fd >= 0) {
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = spec.listen_fd;
    stdio_count = 4;
  }
  uv_process_options_t options{};
  options.file = args[0];
  options.args = args.data();
  options.env = envp.data();
  // A session of its own: the process outlives the supervisor, and signals meant for the
  // supervisor's process group (a Ctrl-C where it was started) do not reach it.
  options.flags = UV_PROCESS_DETACHED;
  options.stdio = stdio;
  options.stdio_count = stdio_count;
  options.exit_cb = [](uv_process_t* process, int64_t exit_status, int term_signal) {
    auto* child = static_cast<Child*>(process->data);
    if (child != nullptr) child->owner->OnExit(*child, exit_status, term_signal);
  };
  // uv_spawn passes on every descriptor not marked close-on-exec, and nats.c does not mark its
  // sockets: without this a service would hold the supervisor's bus connection open.
  close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
  auto* process = new uv_process_t;
  process->data = &child;
  int rc = uv_spawn(loop_, process, &options);
  close(log_fd);
  if (rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(process),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_process_t*>(handle); });
    return Status::Error("cannot run " + spec.argv[0] + " (" + spec.display_name +
                         "): " + uv_strerror(rc) +
                         "; build the services (./dev build) or put them on PATH");
  }
  child.process = process;
  child.pid = process->pid;
  child.state = wire::SupervisedState::RUNNING;
  child.since_ms = service::UnixMillis();
  child.terminated = false;
  uv_update_time(loop_);
  child.started_at_s = static_cast<double>(uv_now(loop_)) / 1000;
  run_.WritePid(spec.name, child.pid);
  return Status::Ok();
}

void Supervisor::OnExit(Child& child, int64_t exit_status, int term_signal) {
  uv_close(reinterpret_cast<uv_handle_t*>(child.process),
           [](uv_handle_t* handle) { delete reinterpret_cast<uv_process_t*>(handle); });
  child.process = nullptr;
  uv_update_time(loop_);
  double uptime_s = static_cast<double>(uv_now(loop_)) / 1000 - child.started_at_s;
  child.last_exit = DescribeExit(exit_status, term_signal);
  child.since_ms = service::UnixMillis();
  run_.RemovePid(child.spec.name);
  const std::string& name = child.spec.display_name;
  if (stopping_) {
    child.state = wire::SupervisedState::STOPPED;
    spdlog::info("{} (pid {}) {}", name, child.pid, child.last_exit);
    SendHeartbeat();
    ContinueStopping();
    return;
  }
  double delay_s = child.backoff.NextDelay(uptime_s);
  if (exit_status == 0 && term_signal == 0) {
    delay_s = std::max(delay_s, options_.restart.clean_exit_delay_s);
  }
  child.state = wire::SupervisedState::BACKOFF;
  std::string log_path = run_.LogPath(child.spec.name);
  std::vector<std::string> tail = LastLogLines(log_path, 10);
  std::string tail_text;
  for (const auto& line : tail) tail_text += "\n    " + line;
  spdlog::error("{} (pid {}) {} after {}; restarting in {} (restart {}). Its log ({}) ends with:{}",
                name, child.pid, child.last_exit, Seconds(uptime_s), Seconds(delay_s),
                child.restarts + 1, log_path, tail.empty() ? " (nothing)" : tail_text);
  std::string message =
      child.last_exit + " after " + Seconds(uptime_s) + "; restarting in " + Seconds(delay_s);
  if (!tail.empty()) message += "; its last log line: " + tail.back().substr(0, 300);
  PublishEvent(child, "EXITED", message);
  SendHeartbeat();
  child.restart_timer.Start(delay_s, [this, &child] { Restart(child); });
}

void Supervisor::Restart(Child& child) {
  if (stopping_) return;
  ++child.restarts;
  {
    // A mark in the log between one run's lines and the next's.
    std::ofstream log(run_.LogPath(child.spec.name), std::ios::app);
    log << "---- serve supervise: restart " << child.restarts << " of " << child.spec.display_name
        << ", which " << child.last_exit << " ----\n";
  }
  Status spawned = Spawn(child);
  if (!spawned.ok()) {
    double delay_s = child.backoff.NextDelay(0);
    child.last_exit = spawned.message();
    child.since_ms = service::UnixMillis();
    spdlog::error("{}; trying again in {}", spawned.message(), Seconds(delay_s));
    PublishEvent(child, "EXITED", spawned.message() + "; trying again in " + Seconds(delay_s));
    SendHeartbeat();
    child.restart_timer.Start(delay_s, [this, &child] { Restart(child); });
    return;
  }
  spdlog::info("restarted {} (pid {}, restart {})", child.spec.display_name, child.pid,
               child.restarts);
  PublishEvent(child, "RESTARTED",
               "restart " + std::to_string(child.restarts) + ", pid " + std::to_string(child.pid) +
                   "; it had " + child.last_exit);
  SendHeartbeat();
}

void Supervisor::OnShutdownNotice() {
  if (stopping_) return;
  stopping_ = true;
  // The services heard the notice too and end by themselves; any still running after the grace
  // is told again, with a signal.
  for (auto& child : children_) {
    child->restart_timer.Stop();
    if (!child->running()) child->state = wire::SupervisedState::STOPPED;
  }
  grace_timer_ = std::make_unique<service::OneShotTimer>(loop_);
  grace_timer_->Start(options_.shutdown_grace_s, [this] {
    Stop("services still running " + Seconds(options_.shutdown_grace_s) +
         " after the shutdown notice");
  });
  SendHeartbeat();
  ContinueStopping();
}

void Supervisor::Stop(const std::string& why) {
  if (stopped_) return;
  spdlog::info("stopping every process: {}", why);
  stopping_ = true;
  grace_timer_.reset();
  for (auto& child : children_) {
    child->restart_timer.Stop();
    if (!child->running()) child->state = wire::SupervisedState::STOPPED;
  }
  Terminate(/*infrastructure=*/false);
  ContinueStopping();
}

void Supervisor::Terminate(bool infrastructure) {
  bool any = false;
  for (auto& child : children_) {
    if (child->spec.infrastructure != infrastructure || !child->running() || child->terminated) {
      continue;
    }
    child->terminated = true;
    uv_process_kill(child->process, SIGTERM);
    any = true;
  }
  if (!any) return;
  kill_timer_ = std::make_unique<service::OneShotTimer>(loop_);
  kill_timer_->Start(options_.kill_timeout_s, [this] {
    for (auto& child : children_) {
      if (!child->running() || !child->terminated) continue;
      spdlog::warn("{} (pid {}) still runs {} after SIGTERM: killing it", child->spec.display_name,
                   child->pid, Seconds(options_.kill_timeout_s));
      uv_process_kill(child->process, SIGKILL);
    }
  });
}

void Supervisor::ContinueStopping() {
  if (!stopping_ || stopped_) return;
  auto running = [&](bool infrastructure) {
    return std::any_of(children_.begin(), children_.end(), [&](const auto& child) {
      return child->spec.infrastructure == infrastructure && child->running();
    });
  };
  if (running(false)) return;
  if (running(true)) {
    // The services are gone; what they needed can go now.
    grace_timer_.reset();
    Terminate(/*infrastructure=*/true);
    return;
  }
  stopped_ = true;
  heartbeat_.reset();
  grace_timer_.reset();
  kill_timer_.reset();
  spdlog::info("every process has ended");
  if (on_stopped_) on_stopped_();
}

std::vector<std::unique_ptr<wire::SupervisedServiceT>> Supervisor::Report() const {
  std::vector<std::unique_ptr<wire::SupervisedServiceT>> report;
  for (const auto& child : children_) {
    auto service = std::make_unique<wire::SupervisedServiceT>();
    service->name = child->spec.display_name;
    service->pid = child->running() ? child->pid : 0;
    service->state = child->state;
    service->restarts = child->restarts;
    service->last_exit = child->last_exit;
    service->since_ms = child->since_ms;
    report.push_back(std::move(service));
  }
  return report;
}

void Supervisor::SendHeartbeat() {
  wire::SupervisorHeartbeatT heartbeat;
  heartbeat.supervisor_id = options_.supervisor_id;
  heartbeat.host = host_;
  heartbeat.pid = getpid();
  heartbeat.period_s = options_.heartbeat_period_s;
  heartbeat.run_dir = options_.run_dir;
  heartbeat.services = Report();
  (void)bus_.Publish(subjects_.hb_supervisor, wire::Pack(heartbeat));
}

void Supervisor::PublishEvent(const Child& child, const std::string& state,
                              const std::string& message) {
  wire::EventT event;
  event.time_ms = service::UnixMillis();
  event.kind = "service";
  event.name = child.spec.display_name;
  event.state = state;
  event.message = message;
  (void)bus_.Publish(subjects_.events, wire::Pack(event));
}

}  // namespace serve::cli
