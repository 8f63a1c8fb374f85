#include "replica/node_agent.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "bus/bus.h"
#include "replica/artifact_cache.h"
#include "service/descriptors.h"
#include "wire/codec.h"

extern char** environ;

namespace serve::replica {
namespace {

namespace fs = std::filesystem;

// The end of a file a worker wrote: never more than 2000 bytes of it, however large it grew.
std::string ReadSmallFile(const std::string& path) {
  constexpr std::streamoff kTail = 2000;
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  std::streamoff size = in.tellg();
  if (size <= 0) return "";
  in.seekg(size > kTail ? size - kTail : 0);
  std::string text(static_cast<size_t>(std::min(size, kTail)), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  if (size > kTail) text.insert(0, "...");
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// Creates (or replaces) `path` with `mode`, whatever the umask, and writes `bytes`.
Status WritePrivateFile(const std::string& path, const std::string& bytes, mode_t mode) {
  unlink(path.c_str());
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return Status::Error("cannot write " + path + ": " + strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      return Status::Error("cannot write " + path + ": " + strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  fchmod(fd, mode);
  close(fd);
  return Status::Ok();
}

}  // namespace

NodeAgent::NodeAgent(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                     NodeAgentOptions options)
    : loop_(loop),
      bus_(bus),
      subjects_(subjects),
      options_(std::move(options)),
      host_(service::HostName()),
      incarnation_(static_cast<uint64_t>(service::UnixMillis())),
      logs_(ReplicaLogs::Options{(fs::path(options_.work_dir) / "logs").string(),
                                 options_.keep_replica_logs_s, options_.keep_replica_logs}),
      metrics_registry_(options_.metrics_name_prefix),
      metrics_(metrics_registry_),
      metrics_endpoint_(loop_, metrics_registry_, "the node agent") {
  metrics_registry_.AddCollector([this] { return CollectMetrics(); });
}

NodeAgent::~NodeAgent() {
  // Workers die with their agent (PR_SET_PDEATHSIG); make it explicit for an orderly exit.
  for (auto& [id, worker] : workers_) {
    if (worker->pid > 0) kill(worker->pid, SIGKILL);
  }
}

Status NodeAgent::Start() {
  if (options_.worker_user.has_value()) {
    Status reachable = CheckWorkerCanReach(*options_.worker_user, options_.work_dir);
    if (!reachable.ok()) return reachable;
  }
  std::error_code ec;
  fs::create_directories(fs::path(options_.work_dir) / "replicas", ec);
  if (ec) {
    return Status::Error("cannot create the node's work directory " + options_.work_dir + ": " +
                         ec.message());
  }
  if (options_.worker_user.has_value()) {
    // Workers of another user reach their own files by name; they list nobody's.
    fs::permissions(fs::path(options_.work_dir) / "replicas", fs::perms(0711), ec);
  }
  Status status = bus_.Subscribe(subjects_.NodeStart(options_.node_id),
                                 [this](bus::Message& m) { OnStart(m); });
  if (!status.ok()) return status;
  status = bus_.Subscribe(subjects_.NodeStop(options_.node_id),
                          [this](bus::Message& m) { OnStop(m); });
  if (!status.ok()) return status;
  status = bus_.Subscribe(subjects_.NodeMetrics(options_.node_id),
                          [this](bus::Message& m) { OnWorkerMetrics(m); });
  if (!status.ok()) return status;
  status = logs_.Prepare();
  if (!status.ok()) return status;
  status = bus_.Subscribe(subjects_.logs, [this](bus::Message& m) { OnLogs(m); });
  if (!status.ok()) return status;
  auto prune = [this] {
    size_t removed = logs_.Prune([this](const std::string& id) { return workers_.count(id) > 0; });
    if (removed > 0) spdlog::info("removed {} log files of replicas that exited", removed);
    if (options_.artifact_cache_keep_s > 0) {
      auto in_use = [this](const std::string& hex) {
        std::string digest = "sha256:";
        digest.append(hex);
        return std::any_of(workers_.begin(), workers_.end(),
                           [&](const auto& entry) { return entry.second->artifact == digest; });
      };
      size_t pruned = PruneArtifactCache((fs::path(options_.work_dir) / "artifacts").string(),
                                         in_use, options_.artifact_cache_keep_s);
      if (pruned > 0) {
        spdlog::info("removed {} artifacts unused for {} s from the node's cache", pruned,
                     options_.artifact_cache_keep_s);
      }
    }
  };
  prune();
  prune_logs_ = std::make_unique<service::RepeatingTimer>(loop_, 60, prune);
  // The agent rotates its workers' logs: a worker cannot rename files in the logs directory
  // when it runs as another user, and its user code's stdout would follow a renamed file.
  rotate_logs_ = std::make_unique<service::RepeatingTimer>(loop_, 1, [this] {
    auto max_bytes = static_cast<uint64_t>(options_.replica_log_max_mb * 1024 * 1024);
    for (const auto& entry : workers_) {
      logs_.RotateIfOver(entry.first, max_bytes, options_.replica_log_files);
    }
  });
  if (options_.metrics_port != 0) {
    metrics_endpoint_.Listen(options_.metrics_host, options_.metrics_port, "--metrics-port");
  }
  SendHeartbeat();
  heartbeat_ = std::make_unique<service::RepeatingTimer>(loop_, options_.heartbeat_period_s,
                                                         [this] { SendHeartbeat(); });
  spdlog::info("node {} ready: {} CPUs, {} GPUs, work dir {}", options_.node_id,
               options_.num_cpus, options_.num_gpus, options_.work_dir);
  return Status::Ok();
}

void NodeAgent::OnStart(bus::Message& message) {
  auto order = wire::DecodeRequest<wire::StartReplica>(codec_, message.data);
  wire::StartReplicaReplyT reply;
  if (!order.ok()) {
    reply.error = order.error();
  } else if (shutdown_done_) {
    reply.error = "node " + options_.node_id + " is shutting down";
  } else if (Status id = bus::ValidateId(order->replica_id, "the start order's replica id");
             !id.ok()) {
    reply.error = id.message();
  } else if (order->spec == nullptr) {
    reply.error = "the start order has no spec";
  } else if (auto it = workers_.find(order->replica_id); it != workers_.end()) {
    reply.pid = it->second->pid;  // already running: starting is idempotent
    reply.heartbeat_seq = heartbeat_seq_ + 1;
  } else {
    auto pid = Spawn(*order);
    if (pid.ok()) {
      reply.pid = *pid;
      reply.heartbeat_seq = heartbeat_seq_ + 1;  // the next heartbeat lists it
    } else {
      reply.error = pid.error();
    }
  }
  reply.incarnation = incarnation_;
  if (!reply.error.empty()) spdlog::warn("start refused: {}", reply.error);
  (void)bus_.Respond(message, wire::EncodeReply(codec_, order, reply));
}

Result<int> NodeAgent::Spawn(const wire::StartReplicaT& order) {
  const std::string& id = order.replica_id;
  std::string base = (fs::path(options_.work_dir) / "replicas" / id).string();
  std::string spec_path = base + ".spec";
  {
    // Read by the worker before it switches users; its user_config is nobody else's business.
    std::string bytes = wire::Pack(*order.spec);
    Status written = WritePrivateFile(spec_path, bytes, 0600);
    if (!written.ok()) return written;
  }
  std::string scratch_dir = base + ".d";
  std::error_code ec;
  fs::create_directories(scratch_dir, ec);
  if (ec) return Status::Error("cannot create " + scratch_dir + ": " + ec.message());
  std::string error_file = base + ".error";
  fs::remove(error_file, ec);
  if (options_.worker_user.has_value()) {
    // The one directory and the one file the worker writes once it is the worker user.
    const WorkerUser& user = *options_.worker_user;
    if (chown(scratch_dir.c_str(), user.uid, user.gid) != 0 ||
        chmod(scratch_dir.c_str(), 0700) != 0) {
      return Status::Error("cannot hand " + scratch_dir + " to user " + user.name + ": " +
                           strerror(errno));
    }
    Status made = WritePrivateFile(error_file, "", 0600);
    if (made.ok() && chown(error_file.c_str(), user.uid, user.gid) != 0) {
      made = Status::Error("cannot hand " + error_file + " to user " + user.name + ": " +
                           strerror(errno));
    }
    if (!made.ok()) return made;
  }
  auto worker = std::make_unique<Worker>();
  worker->scratch_dir = scratch_dir;
  worker->agent = this;
  worker->replica_id = id;
  worker->deployment = order.spec->name;
  worker->version = order.spec->version;
  worker->fingerprint = order.fingerprint;
  worker->config_hash = order.config_hash;
  worker->artifact = order.spec->artifact;
  worker->error_file = error_file;
  worker->graceful_timeout_s = order.spec->graceful_shutdown_timeout_s;

  std::vector<std::string> args = {options_.worker_exe, "worker",   "--replica-id",
                                   id,                  "--node-id", options_.node_id,
                                   "--spec",            spec_path,   "--error-file",
                                   worker->error_file,  "--agent-pid", std::to_string(getpid()),
                                   "--cache-dir",
                                   (fs::path(options_.work_dir) / "artifacts").string(),
                                   "--scratch-dir",     scratch_dir,
                                   "--ready-fd",        "3"};
  // Its own log, which also takes whatever its user code prints (below).
  std::string log_path = logs_.PathOf(id);
  // The agent rotates it (rotate_logs_), so the worker's own logger never does.
  args.insert(args.end(),
              {"--log-file", log_path, "--log-max-size-mb", "1000000", "--log-max-files", "1"});
  if (options_.worker_user.has_value()) {
    const WorkerUser& user = *options_.worker_user;
    args.insert(args.end(), {"--run-as-user", user.name, "--run-as-uid", std::to_string(user.uid),
                             "--run-as-gid", std::to_string(user.gid)});
  }
  std::string bus_secrets = options_.worker_bus_secrets;
  if (options_.mint_worker_bus_secrets) {
    auto minted = options_.mint_worker_bus_secrets(id);
    if (!minted.ok())
      return Status::Error("cannot make replica " + id + "'s bus user: " + minted.error());
    bus_secrets = *minted;
  }
  if (!bus_secrets.empty()) args.push_back("--bus-secrets-on-stdin");
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    std::string key = entry.substr(0, entry.find('='));
    // The agent's own credentials stay with the agent; SERVE_ADDRESS may hold some too (the
    // worker gets its address from worker_env, or with its secrets).
    bool secret = bus::IsSecretVariable(key) || key == "SERVE_ADDRESS";
    if (!secret && options_.worker_env.count(key) == 0) env_strings.push_back(entry);
  }
  for (auto& [key, value] : options_.worker_env) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& entry : env_strings) envp.push_back(entry.data());
  envp.push_back(nullptr);

  // Bus credentials go through a pipe on the worker's stdin, written in full before the worker
  // starts (a few hundred bytes; a pipe holds 64 KiB), never through its environment.
  int secrets_fd = -1;
  if (!bus_secrets.empty()) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      return Status::Error(std::string("cannot make a pipe for a worker: ") + strerror(errno));
    }
    ssize_t written = write(fds[1], bus_secrets.data(), bus_secrets.size());
    close(fds[1]);
    if (written != static_cast<ssize_t>(bus_secrets.size())) {
      close(fds[0]);
      return Status::Error("cannot hand a worker its bus credentials");
    }
    secrets_fd = fds[0];
  }

  uv_pipe_init(loop_, &worker->ready_pipe, 0);
  worker->ready_pipe.data = worker.get();
  uv_stdio_container_t stdio[4];
  stdio[0].flags = UV_IGNORE;
  if (secrets_fd >= 0) {
    stdio[0].flags = UV_INHERIT_FD;
    stdio[0].data.fd = secrets_fd;
  }
  // Appending, like the worker's logger, so neither overwrites the other's lines. Without the
  // file the worker keeps the agent's stdout and stderr.
  int log_fd = open(log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd < 0) spdlog::warn("cannot open {}: {}", log_path, strerror(errno));
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = log_fd >= 0 ? log_fd : 1;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = log_fd >= 0 ? log_fd : 2;
  stdio[3].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[3].data.stream = reinterpret_cast<uv_stream_t*>(&worker->ready_pipe);

  uv_process_options_t spawn{};
  spawn.file = options_.worker_exe.c_str();
  spawn.args = argv.data();
  spawn.env = envp.data();
  spawn.stdio = stdio;
  spawn.stdio_count = 4;
  spawn.exit_cb = [](uv_process_t* process, int64_t exit_status, int term_signal) {
    auto* worker = static_cast<Worker*>(process->data);
    worker->agent->OnWorkerExit(worker, exit_status, term_signal);
  };
  worker->process.data = worker.get();
  service::MarkDescriptorsCloseOnExec();  // a worker inherits stdio only; see descriptors.h
  int rc = uv_spawn(loop_, &worker->process, &spawn);
  if (log_fd >= 0) close(log_fd);  // the worker has its own copy
  if (secrets_fd >= 0) close(secrets_fd);
  if (rc != 0) {
    // A failed spawn still initialised the handles; they must be closed before it is freed.
    CloseWorker(worker.release());
    return Status::Error("cannot start a worker process (" + options_.worker_exe +
                         "): " + uv_strerror(rc));
  }
  worker->pid = worker->process.pid;
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&worker->ready_pipe),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        static char byte[16];
        *buf = uv_buf_init(byte, sizeof(byte));
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
        auto* worker = static_cast<Worker*>(stream->data);
        if (nread > 0 && !worker->ready) {
          worker->ready = true;
          worker->agent->SendHeartbeatSoon();
        }
        if (nread < 0) uv_read_stop(stream);
      });
  int pid = worker->pid;
  spdlog::info("started replica {} of {} as pid {}", id, worker->deployment, pid);
  metrics_.OnStarted(worker->deployment);
  workers_[id] = std::move(worker);
  SendHeartbeatSoon();
  return pid;
}

void NodeAgent::OnWorkerMetrics(bus::Message& message) {
  auto report = wire::Unpack<wire::ReplicaMetrics>(message.data);
  if (!report.ok()) {
    spdlog::debug("ignored a malformed figures report: {}", report.error());
    return;
  }
  auto it = workers_.find(report->replica_id);
  if (it == workers_.end()) return;  // a worker that just exited, or not one of ours
  const Worker& worker = *it->second;
  Status taken = metrics_.OnReport({worker.replica_id, worker.deployment, worker.pid, worker.ready},
                                   *report);
  if (!taken.ok()) spdlog::debug("ignored a figures report: {}", taken.message());
}

std::vector<prometheus::MetricFamily> NodeAgent::CollectMetrics() const {
  std::vector<NodeMetrics::Worker> workers;
  workers.reserve(workers_.size());
  for (const auto& [id, worker] : workers_) {
    if (worker->pid > 0) workers.push_back({id, worker->deployment, worker->pid, worker->ready});
  }
  return metrics_.Collect(workers);
}

void NodeAgent::OnLogs(bus::Message& message) {
  auto request = wire::DecodeRequest<wire::ReplicaLogsRequest>(codec_, message.data);
  if (!request.ok()) {
    wire::ReplicaLogsReplyT reply;
    reply.error = "bad logs request: " + request.error();
    (void)bus_.Respond(message, wire::EncodeReply(codec_, request, reply));
    return;
  }
  // Any id that is not one (a path, say) cannot name a log here; the same goes for an id this
  // node never ran: another node may answer for it.
  // Replica ids become file names: refuse anything else outright.
  if (!bus::ValidateId(request->replica_id, "replica id").ok() || !logs_.Has(request->replica_id)) {
    return;
  }
  wire::ReplicaLogsReplyT reply;
  reply.node_id = options_.node_id;
  reply.replica_id = request->replica_id;
  auto worker = workers_.find(request->replica_id);
  reply.running = worker != workers_.end();
  if (reply.running) reply.deployment = worker->second->deployment;
  auto chunk = logs_.Read(request->replica_id, request->offset, request->tail_lines,
                          request->max_bytes > 0 ? static_cast<size_t>(request->max_bytes) : 1);
  if (chunk.ok()) {
    reply.data = std::move(chunk->data);
    reply.next_offset = chunk->next_offset;
    reply.restarted = chunk->restarted;
  } else {
    reply.error = chunk.error();
  }
  (void)bus_.Respond(message, wire::EncodeReply(codec_, request, reply));
}

void NodeAgent::OnStop(bus::Message& message) {
  auto order = wire::DecodeRequest<wire::StopReplica>(codec_, message.data);
  wire::StopReplicaReplyT reply;
  if (!order.ok()) {
    reply.error = order.error();
  } else if (auto it = workers_.find(order->replica_id); it != workers_.end()) {
    StopWorker(*it->second);
  }
  // Stopping a replica this node does not run is not an error: it is already stopped.
  (void)bus_.Respond(message, wire::EncodeReply(codec_, order, reply));
}

void NodeAgent::StopWorker(Worker& worker) {
  if (worker.stopping || worker.pid <= 0) return;
  worker.stopping = true;
  if (signalled_ < std::max(1, options_.max_concurrent_stops)) {
    SignalStop(worker);
    return;
  }
  if (waiting_stops_.empty()) {
    spdlog::info("{} workers are stopping: further stops wait their turn", signalled_);
  }
  waiting_stops_.push_back(worker.replica_id);
}

void NodeAgent::StartWaitingStops() {
  while (!waiting_stops_.empty() && signalled_ < std::max(1, options_.max_concurrent_stops)) {
    auto it = workers_.find(waiting_stops_.front());
    waiting_stops_.pop_front();
    if (it != workers_.end()) SignalStop(*it->second);
  }
}

void NodeAgent::SignalStop(Worker& worker) {
  if (worker.signalled || worker.pid <= 0) return;
  worker.stopping = true;
  worker.signalled = true;
  ++signalled_;
  spdlog::info("stopping replica {} (pid {})", worker.replica_id, worker.pid);
  kill(worker.pid, SIGTERM);
  worker.kill_timer = std::make_unique<service::OneShotTimer>(loop_);
  Worker* target = &worker;
  // The margin covers what follows the drain: stopping a command's process (up to 5 s) and
  // the last heartbeat.
  worker.kill_timer->Start(worker.graceful_timeout_s + 8, [target] {
    if (target->pid > 0) {
      spdlog::warn("replica {} did not stop within its grace period; killing it",
                   target->replica_id);
      kill(target->pid, SIGKILL);
    }
  });
}

void NodeAgent::OnWorkerExit(Worker* worker, int64_t exit_status, int term_signal) {
  wire::ReplicaExitedT exited;
  exited.node_id = options_.node_id;
  exited.replica_id = worker->replica_id;
  exited.exit_code = static_cast<int>(exit_status);
  exited.term_signal = term_signal;
  std::string detail = ReadSmallFile(worker->error_file);
  if (worker->stopping && exit_status == 0) {
    exited.message = "stopped";
  } else if (term_signal != 0) {
    exited.message = "worker killed by signal " + std::to_string(term_signal) + " (" +
                     strsignal(term_signal) + ")";
  } else {
    exited.message = "worker exited with code " + std::to_string(exit_status);
  }
  if (!detail.empty()) exited.message += ": " + detail;
  spdlog::log(worker->stopping ? spdlog::level::info : spdlog::level::warn,
              "replica {} (pid {}): {}", worker->replica_id, worker->pid, exited.message);
  (void)bus_.Publish(subjects_.node_exited, wire::Pack(exited));

  worker->pid = 0;
  worker->kill_timer.reset();
  if (worker->signalled) --signalled_;
  std::error_code ec;
  fs::remove_all(worker->scratch_dir, ec);
  fs::remove(fs::path(worker->error_file).replace_extension(".spec"), ec);
  metrics_.OnExited(worker->replica_id);
  auto it = workers_.find(worker->replica_id);
  Worker* raw = it->second.release();
  workers_.erase(it);
  CloseWorker(raw);
  StartWaitingStops();
  SendHeartbeatSoon();
  MaybeFinishShutdown();
}

void NodeAgent::CloseWorker(Worker* worker) {
  worker->open_handles = 2;
  auto closed = [](uv_handle_t* h) {
    auto* w = static_cast<Worker*>(h->data);
    if (--w->open_handles == 0) delete w;
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&worker->process), closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&worker->ready_pipe), closed);
}

void NodeAgent::SendHeartbeatSoon() {
  // Changes are told at once, but a burst of them (hundreds of starts) in one heartbeat: each
  // lists every worker, so one per change would cost the node and the controller the square.
  if (shutdown_done_) return;  // a node that shuts down says nothing more
  // A burst handled in one turn of the loop (each spawn a fork and an exec) can take longer than
  // the timers may wait: the node must not fall silent while it is busiest.
  auto now = std::chrono::steady_clock::now();
  if (now - last_heartbeat_at_ >= std::chrono::duration<double>(options_.heartbeat_period_s / 2)) {
    SendHeartbeat();
    return;
  }
  if (heartbeat_soon_ == nullptr) heartbeat_soon_ = std::make_unique<service::OneShotTimer>(loop_);
  if (heartbeat_soon_->active()) return;
  heartbeat_soon_->Start(0.05, [this] { SendHeartbeat(); });
}

void NodeAgent::SendHeartbeat() {
  last_heartbeat_at_ = std::chrono::steady_clock::now();
  wire::NodeHeartbeatT heartbeat;
  heartbeat.node_id = options_.node_id;
  heartbeat.host = host_;
  heartbeat.pid = getpid();
  heartbeat.period_s = options_.heartbeat_period_s;
  heartbeat.incarnation = incarnation_;
  heartbeat.seq = ++heartbeat_seq_;
  heartbeat.resources = std::make_unique<wire::ResourcesT>();
  heartbeat.resources->num_cpus = options_.num_cpus;
  heartbeat.resources->num_gpus = options_.num_gpus;
  for (const auto& [name, amount] : options_.custom_resources) {
    auto resource = std::make_unique<wire::CustomResourceT>();
    resource->name = name;
    resource->amount = amount;
    heartbeat.resources->custom.push_back(std::move(resource));
  }
  for (const auto& [id, worker] : workers_) {
    auto replica = std::make_unique<wire::NodeReplicaT>();
    replica->id = id;
    replica->deployment = worker->deployment;
    replica->version = worker->version;
    replica->pid = worker->pid;
    replica->ready = worker->ready;
    replica->fingerprint = worker->fingerprint;
    replica->config_hash = worker->config_hash;
    if (const wire::ReplicaMetricsT* figures = metrics_.Find(id)) {
      replica->requests = figures->requests;
      replica->errors = figures->errors;
      if (figures->requests > 0) replica->latency_counts = figures->latency_counts;
      replica->in_flight = figures->in_flight;
      replica->queued = figures->queued;
    }
    if (!worker->ready) ++heartbeat.starting;
    heartbeat.replicas.push_back(std::move(replica));
  }
  (void)bus_.Publish(subjects_.hb_node, wire::Pack(heartbeat));
}

void NodeAgent::Shutdown(std::function<void()> done) {
  if (shutdown_done_) return;
  metrics_endpoint_.Close();
  shutdown_done_ = std::move(done);
  heartbeat_.reset();
  heartbeat_soon_.reset();
  prune_logs_.reset();
  rotate_logs_.reset();
  double longest_grace = 0;
  for (auto& [id, worker] : workers_) {
    longest_grace = std::max(longest_grace, worker->graceful_timeout_s);
    SignalStop(*worker);  // all at once: the node is leaving, and its deadline covers them all
  }
  waiting_stops_.clear();
  shutdown_deadline_ = std::make_unique<service::OneShotTimer>(loop_);
  shutdown_deadline_->Start(longest_grace + 8, [this] {
    for (auto& [id, worker] : workers_) {
      if (worker->pid > 0) kill(worker->pid, SIGKILL);
    }
  });
  MaybeFinishShutdown();
}

void NodeAgent::MaybeFinishShutdown() {
  if (!shutdown_done_ || !workers_.empty()) return;
  shutdown_deadline_.reset();
  auto done = std::move(shutdown_done_);
  shutdown_done_ = [] {};  // stays set: the agent is shut down
  done();
}

}  // namespace serve::replica
