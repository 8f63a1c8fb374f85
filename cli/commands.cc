#include "cli/commands.h"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "bus/roles.h"
#include "cli/client.h"
#include "cli/deployments.h"
#include "cli/events.h"
#include "cli/instance.h"
#include "cli/lifecycle.h"
#include "cli/stop_signals.h"
#include "cli/supervisor.h"
#include "config/deployment_config.h"
#include "config/spec.h"
#include "log/log.h"
#include "service/service.h"
#include "wire/status_json.h"

namespace serve::cli {
namespace {

int Fail(const std::string& message) {
  std::cerr << "error: " << message << std::endl;
  return 1;
}


// "12.5s", "3m 20s", "2h 5m", for how long a service has been in its state.
std::string Duration(double seconds) {
  char text[32];
  if (seconds < 60) {
    snprintf(text, sizeof(text), "%.1fs", std::max(0.0, seconds));
  } else if (seconds < 3600) {
    snprintf(text, sizeof(text), "%dm %02ds", static_cast<int>(seconds) / 60,
             static_cast<int>(seconds) % 60);
  } else {
    snprintf(text, sizeof(text), "%dh %02dm", static_cast<int>(seconds) / 3600,
             static_cast<int>(seconds) % 3600 / 60);
  }
  return text;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (widths.size() <= i) widths.push_back(0);
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

// A traffic figure: three significant digits at most, so columns stay narrow.
std::string Figure(double value, const char* unit) {
  char text[32];
  snprintf(text, sizeof(text), value >= 100 ? "%.0f%s" : value >= 10 ? "%.1f%s" : "%.2f%s",
           value, unit);
  return text;
}

std::string Age(double seconds) {
  char text[32];
  snprintf(text, sizeof(text), "%.1fs ago", seconds);
  return text;
}

// `serve status` as a table, or as JSON (on one line for a watch, whose events follow as lines).
void PrintStatus(const wire::StatusReplyT& status, bool json, bool one_line) {
  if (json) {
    std::cout << wire::StatusJson(status).dump(one_line ? -1 : 2, ' ', false,
                                         nlohmann::json::error_handler_t::replace)
              << std::endl;
    return;
  }
  std::cout << "Namespace " << status.namespace_ << "\n\n";
  if (!status.checkpoint_warning.empty()) {
    std::cout << "WARNING: " << status.checkpoint_warning << "\n\n";
  }
  if (status.deployments.empty()) {
    std::cout << "No deployments. Deploy with `serve deploy FILE.yaml`.\n";
  } else {
    std::vector<std::vector<std::string>> rows = {{"DEPLOYMENT", "STATUS", "REPLICAS", "VERSION",
                                                   "ROUTE", "REQ/S", "ERRORS", "P99", "MESSAGE"}};
    for (const auto& d : status.deployments) {
      int running = 0;
      for (const auto& r : d->replicas) running += r->state == wire::ReplicaState::RUNNING;
      rows.push_back({d->name, wire::EnumNameDeploymentState(d->status),
                      std::to_string(running) + "/" + std::to_string(d->num_replicas), d->version,
                      d->route_prefix, Figure(d->requests_per_s, ""),
                      d->requests_per_s > 0 ? Figure(d->error_rate * 100, "%") : "-",
                      d->requests_per_s > 0 ? Figure(d->p99_ms, " ms") : "-", d->message});
    }
    PrintTable(rows);
    std::cout << "\n";
    rows = {{"REPLICA", "DEPLOYMENT", "STATE", "NODE", "VERSION", "MESSAGE"}};
    for (const auto& d : status.deployments) {
      for (const auto& r : d->replicas) {
        rows.push_back({r->id, d->name, wire::EnumNameReplicaState(r->state), r->node, r->version,
                        r->message});
      }
    }
    if (rows.size() > 1) {
      PrintTable(rows);
      std::cout << "\n";
    }
  }
  std::vector<std::vector<std::string>> rows = {
      {"NODE", "STATE", "HOST", "CPUS", "GPUS", "REPLICAS", "LAST SEEN"}};
  for (const auto& n : status.nodes) {
    char cpus[32], gpus[32];
    snprintf(cpus, sizeof(cpus), "%g", n->num_cpus);
    snprintf(gpus, sizeof(gpus), "%g", n->num_gpus);
    rows.push_back({n->id, wire::EnumNameMemberState(n->state), n->host, cpus, gpus,
                    std::to_string(n->replicas), Age(n->last_seen_s)});
  }
  PrintTable(rows);
  std::cout << "\n";
  rows = {{"PROXY", "STATE", "ADDRESS", "LAST SEEN"}};
  for (const auto& p : status.proxies) {
    rows.push_back({p->id, wire::EnumNameMemberState(p->state), p->address, Age(p->last_seen_s)});
  }
  PrintTable(rows);
  // The processes of local instances, as their supervisors last reported them.
  int64_t now_ms = service::UnixMillis();
  for (const auto& supervisor : status.supervisors) {
    if (supervisor == nullptr || supervisor->heartbeat == nullptr) continue;
    const wire::SupervisorHeartbeatT& hb = *supervisor->heartbeat;
    std::cout << "\nServices of " << hb.supervisor_id << " (pid " << hb.pid << " on " << hb.host
              << ", " << wire::EnumNameMemberState(supervisor->state) << ", last seen "
              << Age(supervisor->last_seen_s) << ")\n";
    rows = {{"SERVICE", "STATE", "PID", "RESTARTS", "FOR", "LAST EXIT"}};
    for (const auto& service : hb.services) {
      if (service == nullptr) continue;
      rows.push_back({service->name, wire::EnumNameSupervisedState(service->state),
                      service->pid > 0 ? std::to_string(service->pid) : "-",
                      std::to_string(service->restarts),
                      Duration(static_cast<double>(now_ms - service->since_ms) / 1000),
                      service->last_exit.empty() ? "-" : service->last_exit});
    }
    PrintTable(rows);
  }
  std::cout.flush();
}

// The deployments of `names` that exist, deleted, and their routes gone.
Status DeleteIfPresent(Client& client, const std::vector<std::string>& names) {
  wire::StatusRequestT request;
  request.names = names;
  auto status =
      client.CallFor<wire::StatusReply>(client.subjects().ctl_status, wire::Pack(request), 5);
  if (!status.ok()) return status.status();
  std::vector<std::string> present;
  for (const auto& d : status->deployments) present.push_back(d->name);
  if (present.empty()) return Status::Ok();
  Status deleted = RequestDelete(client, present);
  if (!deleted.ok()) return deleted;
  return WaitUntilUnrouted(client, present, 10);
}

// `serve start --foreground`: what a service manager runs. The instance lives as long as this
// process: a stop signal stops it, and a supervisor that ends by itself (killed, or every
// restart failed) ends this process with an error, so that the manager restarts the whole.
int StartInForeground(const GlobalOptions& global, const StartOptions& options) {
  StopSignals stop;
  auto instance = StartOrFindInstance(global, options, &stop);
  if (!instance.ok()) {
    if (!stop.requested()) return Fail(instance.error());
    std::cout << "Stopped: " << instance.error() << std::endl;
    return 0;
  }
  if (!instance->started()) {
    // Watching an instance someone else started would stop it on our signal, and a manager
    // restarting this command would find it again and again.
    return Fail("Serve already runs in namespace '" + global.ns + "' (" +
                *instance->already_running +
                "); --foreground runs an instance of its own. Stop that one with `serve "
                "shutdown`, or give this one another --namespace.");
  }
  PrintStartedInstance(global, options, *instance);
  std::cout << "Running in the foreground; SIGTERM or Ctrl-C stops it." << std::endl;
  // The bus client is not needed while waiting; holding it would keep a connection nobody reads.
  instance->client.reset();
  while (!stop.requested() && ProcessAlive(instance->supervisor)) {
    pollfd signal_fd{stop.fd(), POLLIN, 0};
    (void)poll(&signal_fd, 1, 200);
  }
  if (!stop.requested()) {
    RunDir run(RunDirPath(global));
    StopInstance(global);  // whatever the supervisor left behind
    return Fail("serve supervise (pid " + std::to_string(instance->supervisor) +
                ") ended by itself; its log is " + run.LogPath("supervisor"));
  }
  std::cout << "Stopping." << std::endl;
  StopInstance(global);
  std::cout << "Stopped the Serve instance in namespace '" << global.ns << "'." << std::endl;
  return 0;
}

}  // namespace

int StartInstance(const GlobalOptions& global, const StartOptions& options) {
  if (options.foreground) return StartInForeground(global, options);
  auto instance = StartOrFindInstance(global, options);
  if (!instance.ok()) return Fail(instance.error());
  if (!instance->started()) {
    std::cout << "Serve is already running in namespace '" << global.ns << "' ("
              << *instance->already_running << ") on " << bus::RedactUrl(global.bus.url)
              << ".\nNothing was started. Stop it with `serve shutdown`.\n";
    return 0;
  }
  PrintStartedInstance(global, options, *instance);
  std::cout << "Deploy with `serve deploy examples/hello/serve.yaml`; stop with `serve shutdown`.\n";
  return 0;
}

int DeployFile(const GlobalOptions& global, const DeployOptions& options) {
  auto config = config::LoadConfigFile(options.file);
  if (!config.ok()) return Fail(config.error());
  // Before connecting: code that cannot run is refused whether or not Serve is up.
  if (Status code = CheckLocalCode(*config, options.file); !code.ok()) return Fail(code.message());
  if (Status read = ApplyDecoratorOptions(*config, options.file); !read.ok()) {
    return Fail(read.message());
  }
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  Status status = UploadCode(**client, *config, options.file);
  if (!status.ok()) return Fail(status.message());
  auto submitted = SubmitDeployments(**client, *config);
  if (!submitted.ok()) return Fail(submitted.error());
  if (options.wait) {
    status = WaitUntilHealthy(**client, *config, std::move(*submitted), options.timeout_s);
  }
  return status.ok() ? 0 : Fail(status.message());
}

int DeleteDeployments(const GlobalOptions& global, const std::vector<std::string>& names) {
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  Status deleted = RequestDelete(**client, names);
  return deleted.ok() ? 0 : Fail(deleted.message());
}

int ShowStatus(const GlobalOptions& global, const StatusOptions& options) {
  std::optional<StopSignals> stop;
  if (options.watch) stop.emplace();
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  std::unique_ptr<EventWatch> watch;
  if (options.watch) {
    // Subscribed before the table is asked for, so nothing that happens after it is missed.
    auto started = EventWatch::Start(**client, WatchOptions{options.names, options.json});
    if (!started.ok()) return Fail(started.error());
    watch = std::move(*started);
  }
  wire::StatusRequestT request;
  request.names = options.names;
  auto status =
      (*client)->CallFor<wire::StatusReply>((*client)->subjects().ctl_status, wire::Pack(request));
  if (!status.ok()) return Fail(status.error());
  if (!status->error.empty()) return Fail(status->error);
  PrintStatus(*status, options.json, /*one_line=*/options.watch);
  if (watch == nullptr) return 0;
  if (!options.json) std::cout << "\nFollowing events (Ctrl-C to stop)..." << std::endl;
  return watch->Run(*stop) == WatchEnd::kLost ? 1 : 0;
}

int ShowConfig(const GlobalOptions& global, bool json) {
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  auto reply = (*client)->CallFor<wire::ConfigReply>((*client)->subjects().ctl_config,
                                                      wire::Pack(wire::ConfigRequestT{}));
  if (!reply.ok()) return Fail(reply.error());
  if (!reply->error.empty()) return Fail(reply->error);
  config::ConfigFile file;
  for (const auto& spec : reply->deployments) {
    if (spec != nullptr) file.deployments.push_back(config::FromSpec(*spec));
  }
  std::cout << (json ? config::ConfigToJson(file, 2) + "\n" : config::ConfigToYaml(file));
  return 0;
}

int ShutdownInstance(const GlobalOptions& global) {
  if (!StopInstance(global)) {
    std::cout << "Nothing to stop: no controller answered in namespace '" << global.ns
              << "' and no process is recorded in " << RunDirPath(global) << ".\n";
    return 0;
  }
  std::cout << "Serve stopped (namespace '" << global.ns << "').\n";
  return 0;
}

int Supervise(const GlobalOptions& global, const SuperviseOptions& options) {
  // Its stderr is logs/supervisor.log: log what it does, not only warnings.
  log::Options log_options;
  log_options.component = "supervisor";
  (void)log::Init(log_options, log::Context{service::HostName(), "", ""});
  auto supervised = LocalInstanceProcesses(global, options);
  if (!supervised.ok()) {
    spdlog::error("{}", supervised.error());
    return 1;
  }
  std::string run_dir = supervised->run_dir;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bus::Options bus_options = global.bus;
  bus_options.name = "serve-supervisor";
  bus_options.inbox_prefix = bus::InboxPrefix(global.ns, bus::Role::kAdmin);
  // The nats-server it starts itself is not up yet: connect whenever it is.
  bus_options.retry_initial_connect = true;
  auto bus = bus::Bus::Connect(&loop, bus_options);
  if (!bus.ok()) {
    spdlog::error("{}", bus.error());
    return 1;
  }
  bus::Subjects subjects(global.ns);
  auto supervisor = std::make_unique<Supervisor>(&loop, **bus, subjects, std::move(*supervised));
  service::SignalWatcher signals(
      &loop, [&](int signal) { supervisor->Stop(signal == SIGINT ? "SIGINT" : "SIGTERM"); });
  supervisor->SetStoppedHandler([&] {
    signals.Close();
    (*bus)->Close();
  });
  Status started = supervisor->Start();
  if (!started.ok()) spdlog::error("{}", started.message());
  uv_run(&loop, UV_RUN_DEFAULT);
  // The supervisor's timers close with it; the loop runs their close callbacks.
  supervisor.reset();
  bus->reset();
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  RunDir run(run_dir);
  if (run.LivePid("supervisor") == getpid()) run.RemovePid("supervisor");
  spdlog::info("supervisor exits");
  return started.ok() ? 0 : 1;
}

int RunForeground(const GlobalOptions& global, const RunOptions& options) {
  // The file first: a broken one starts nothing.
  auto config = config::LoadConfigFile(options.deploy.file);
  if (!config.ok()) return Fail(config.error());
  if (config->deployments.empty()) {
    return Fail(options.deploy.file + " lists no deployments; add them under `deployments:`");
  }
  if (Status code = CheckLocalCode(*config, options.deploy.file); !code.ok()) {
    return Fail(code.message());
  }
  if (Status read = ApplyDecoratorOptions(*config, options.deploy.file); !read.ok()) {
    return Fail(read.message());
  }
  std::vector<std::string> names = DeploymentNames(*config);

  // From here on SIGINT and SIGTERM lead through the clean-up below.
  StopSignals stop;
  auto instance = StartOrFindInstance(global, options.instance, &stop);
  if (!instance.ok()) {
    if (!stop.requested()) return Fail(instance.error());
    std::cout << "Stopped: " << instance.error() << std::endl;
    return 0;
  }
  if (instance->started()) {
    PrintStartedInstance(global, options.instance, *instance);
  } else {
    std::cout << "Using the Serve instance already running in namespace '" << global.ns << "' ("
              << *instance->already_running << "); it keeps running after this command."
              << std::endl;
  }

  Client& client = *instance->client;
  Status outcome = stop.requested() ? Status::Error("interrupted before the deploy")
                                    : UploadCode(client, *config, options.deploy.file);
  bool submitted = false;
  if (outcome.ok()) {
    auto accepted = SubmitDeployments(client, *config);
    outcome = accepted.status();
    submitted = accepted.ok();
    if (submitted) {
      outcome = WaitUntilHealthy(client, *config, std::move(*accepted), options.deploy.timeout_s,
                                 &stop);
    }
  }
  WatchEnd end = WatchEnd::kStopSignal;
  if (outcome.ok()) {
    auto watch = EventWatch::Start(client, WatchOptions{names, false});
    if (watch.ok()) {
      std::cout << "Serving. Press Ctrl-C to stop." << std::endl;
      end = (*watch)->Run(stop);
    } else {
      outcome = watch.status();
    }
  }

  int exit_code = 0;
  if (!outcome.ok() && !stop.requested()) {
    exit_code = Fail(outcome.message());
  } else if (end != WatchEnd::kStopSignal) {
    exit_code = 1;  // the instance went away under us; the watch said how
  }
  std::cout << "Stopping." << std::endl;
  bool controller_left = end == WatchEnd::kInstanceShutDown || end == WatchEnd::kLost;
  if (submitted && !controller_left) {
    Status deleted = DeleteIfPresent(client, names);
    if (!deleted.ok()) {
      std::string all;
      for (const auto& name : names) all += " " + name;
      exit_code = Fail("could not delete what this command deployed: " + deleted.message() +
                       "\nDelete it with `serve delete" + all + "`.");
    }
  }
  instance->client.reset();
  if (instance->started()) {
    StopInstance(global);
    std::cout << "Stopped the Serve instance this command started (namespace '" << global.ns
              << "')." << std::endl;
  } else if (!controller_left) {
    std::cout << "The Serve instance in namespace '" << global.ns
              << "' keeps running; stop it with `serve shutdown`." << std::endl;
  }
  return exit_code;
}

}  // namespace serve::cli
