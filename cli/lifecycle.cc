#include "cli/lifecycle.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "bus/roles.h"
#include "cli/bus_credentials.h"
#include "cli/instance.h"
#include "http/server.h"
#include "service/service.h"

namespace serve::cli {
namespace {

using Clock = std::chrono::steady_clock;
using bus::RedactUrl;

const char* kServices[] = {"checkpointer", "controller", "proxy", "replica"};

// A pid file's process, if it still runs the command named `expected` (a pid of a process
// that ended long ago may belong to another program by now).
std::optional<pid_t> LiveProcessRunning(const RunDir& run, const std::string& process,
                                        const std::string& expected) {
  auto pid = run.LivePid(process);
  if (!pid.has_value()) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(*pid) + "/cmdline", std::ios::binary);
  std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
  if (cmdline.find(expected) == std::string::npos) return std::nullopt;
  return pid;
}

std::optional<pid_t> LiveSupervisor(const RunDir& run) {
  return LiveProcessRunning(run, "supervisor", " supervise");
}

// Waits up to `wait_s` for the processes with pid files (but nats-server) to end by
// themselves, ends those that did not, then nats-server. True if any was running.
bool EndRecordedProcesses(const RunDir& run, double wait_s) {
  bool any = false;
  auto deadline = Clock::now() + std::chrono::duration<double>(wait_s);
  for (const auto& name : run.RecordedProcesses()) {
    if (name == "nats" || name == "supervisor") continue;
    if (auto pid = run.LivePid(name); pid.has_value()) {
      any = true;
      while (ProcessAlive(*pid) && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (ProcessAlive(*pid) && !TerminateProcess(*pid, 5)) {
        std::cerr << "warning: serve-" << name << " (pid " << *pid << ") had to be killed\n";
      }
    }
    run.RemovePid(name);
  }
  if (auto nats = run.LivePid("nats"); nats.has_value()) {
    any = true;
    TerminateProcess(*nats, 5);
  }
  run.RemovePid("nats");
  return any;
}

// SIGTERM makes the supervisor restart nothing more, end the services (nats-server last) and
// exit; it gives each process 30 s before SIGKILL, so it gets a little longer itself. Whatever
// a killed supervisor leaves behind is ended here.
void StopSupervisor(const RunDir& run, pid_t supervisor) {
  if (!TerminateProcess(supervisor, 45)) {
    std::cerr << "warning: serve supervise (pid " << supervisor << ") had to be killed\n";
  }
  run.RemovePid("supervisor");
  EndRecordedProcesses(run, 0);
}

std::string Trimmed(std::string text) {
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

// Starts `serve supervise` in the background: it runs nats-server (when `nats` is set) and the
// four services, and restarts whichever exits. Bus credentials travel in its environment.
Result<pid_t> SpawnSupervisor(const GlobalOptions& global, const StartOptions& options,
                              const RunDir& run, const std::string& checkpoint,
                              const std::optional<HostPort>& nats) {
  std::vector<std::string> argv = {ServiceExecutable("serve"),
                                   "--namespace",
                                   global.ns,
                                   "--run-dir",
                                   run.path(),
                                   "supervise",
                                   "--checkpoint-path",
                                   checkpoint,
                                   "--http-host",
                                   options.http_host,
                                   "--http-port",
                                   std::to_string(options.http_port),
                                   "--dashboard-host",
                                   options.dashboard_host,
                                   "--dashboard-port",
                                   std::to_string(options.dashboard_port),
                                   "--node-metrics-port",
                                   std::to_string(options.node_metrics_port),
                                   "--checkpointer-metrics-port",
                                   std::to_string(options.checkpointer_metrics_port)};
  if (options.num_cpus > 0) {
    argv.insert(argv.end(), {"--num-cpus", std::to_string(options.num_cpus)});
  }
  if (options.nats_monitor_port > 0) {
    argv.insert(argv.end(), {"--nats-monitor-port", std::to_string(options.nats_monitor_port)});
  }
  if (nats.has_value()) {
    argv.insert(argv.end(), {"--nats-host", nats->host, "--nats-port", std::to_string(nats->port)});
  }
  auto pid = SpawnDetached(argv, run.LogPath("supervisor"), bus::EnvironmentFor(global.bus));
  if (!pid.ok()) return pid.status();
  run.WritePid("supervisor", *pid);
  return pid;
}

// The error for a supervisor that ended before the instance was ready.
Status SupervisorExited(const RunDir& run) {
  return Status::Error("serve supervise exited during start. Its log (" +
                       run.LogPath("supervisor") + ") ends with:\n" +
                       Trimmed(run.LogTail("supervisor")));
}

// Connects to the nats-server the supervisor starts.
Result<std::unique_ptr<Client>> WaitForNats(const GlobalOptions& global, const RunDir& run,
                                            pid_t supervisor, const HostPort& nats) {
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (true) {
    auto client = Client::Connect(global, 1.0);
    if (client.ok()) return client;
    if (!ProcessAlive(supervisor)) return SupervisorExited(run);
    if (Clock::now() > deadline) {
      return Status::Error("nats-server did not come up on " + nats.host + ":" +
                           std::to_string(nats.port) + ". Its log (" + run.LogPath("nats") +
                           ") ends with:\n" + Trimmed(run.LogTail("nats")) +
                           "\nInstall NATS (`apt-get install nats-server`) or point --address "
                           "at a running NATS server.");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Ready when the controller answers, a node registered and the proxy serves HTTP. A service
// that exits meanwhile fails the start, although its supervisor would restart it: what fails
// at once usually fails again (a port in use, a bad store path), and the log says why.
Status WaitUntilReady(Client& client, const StartOptions& options, const RunDir& run,
                      pid_t supervisor, StopSignals* stop) {
  auto deadline = Clock::now() + std::chrono::duration<double>(options.timeout_s);
  bool controller_up = false, node_up = false, proxy_up = false;
  std::map<std::string, pid_t> first_pids;  // the pid each service was first seen with
  while (!(controller_up && node_up && proxy_up)) {
    if (!ProcessAlive(supervisor)) return SupervisorExited(run);
    for (const char* name : kServices) {
      auto pid = run.LivePid(name);
      auto first = first_pids.find(name);
      if (first == first_pids.end()) {
        if (pid.has_value()) first_pids[name] = *pid;
      } else if (pid != first->second) {
        return Status::Error(std::string("serve-") + name + " exited during start. Its log (" +
                             run.LogPath(name) + ") ends with:\n" + Trimmed(run.LogTail(name)));
      }
    }
    if (stop != nullptr && stop->requested()) {
      return Status::Error("interrupted before Serve was ready");
    }
    if (Clock::now() > deadline) {
      char timeout[32];
      snprintf(timeout, sizeof(timeout), "%g", options.timeout_s);
      return Status::Error(std::string("Serve did not become ready within ") + timeout + " s (" +
                           (controller_up ? "" : "controller ") + (node_up ? "" : "node ") +
                           (proxy_up ? "" : "proxy ") + "not ready); see the logs in " +
                           run.path() + "/logs, or allow more time with --timeout-s");
    }
    if (!controller_up) controller_up = PingController(client, 0.5).has_value();
    if (controller_up && !node_up) {
      auto status = client.CallFor<wire::StatusReply>(client.subjects().ctl_status,
                                                      wire::Pack(wire::StatusRequestT{}), 1);
      node_up = status.ok() && !status->nodes.empty();
    }
    if (!proxy_up) {
      proxy_up = HttpGetStatus(options.http_host, options.http_port, "/-/healthz") == 200;
    }
    if (!(controller_up && node_up && proxy_up)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return Status::Ok();
}

// Before the nats-server of a new local instance starts: fresh credentials for every role (the
// admin's become `global`'s), in operator mode (a JWT user per role, and per worker) or
// password mode; the user's own credentials as given; or none with --insecure-bus.
Status PrepareBusCredentials(GlobalOptions& global, const StartOptions& options,
                             const RunDir& run) {
  std::string path = BusCredentialsPath(run.path());
  auto forget_run_dir_credentials = [&] {
    if (!global.bus_credentials_from_run_dir) return;
    global.bus.user.clear();
    global.bus.password.clear();
    global.bus.creds_file.clear();
    global.bus_credentials_from_run_dir = false;
  };
  if (options.insecure_bus) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    RemoveOperatorCredentials(run.path());
    forget_run_dir_credentials();
    std::cerr << "WARNING: --insecure-bus: nats-server runs without users or permissions. Any "
                 "process that reaches "
              << RedactUrl(global.bus.url)
              << " can deploy and run code, rewrite the recovery state, stop every service "
                 "and read every request. Use it only on a machine you alone use."
              << std::endl;
    return Status::Ok();
  }
  if (HasBusCredentials(global.bus) && !global.bus_credentials_from_run_dir) return Status::Ok();
  forget_run_dir_credentials();
  if (options.bus_auth == "operator") {
    auto setup = bus::GenerateOperatorSetup(global.ns);
    if (!setup.ok()) return setup.status();
    Status written = WriteOperatorCredentials(run.path(), *setup);
    if (!written.ok()) return written;
    global.bus.creds_file = RoleCredsPath(run.path(), bus::Role::kAdmin);
    global.bus_credentials_from_run_dir = true;
    return Status::Ok();
  }
  RemoveOperatorCredentials(run.path());
  auto generated = BusCredentials::Generate(global.ns);
  if (!generated.ok()) return generated.status();
  Status written = WriteBusCredentials(path, *generated);
  if (!written.ok()) return written;
  global.bus.user = generated->Of(bus::Role::kAdmin).user;
  global.bus.password = generated->Of(bus::Role::kAdmin).password;
  global.bus_credentials_from_run_dir = true;
  return Status::Ok();
}

}  // namespace

std::string RunDirPath(const GlobalOptions& global) {
  // Absolute, because the supervisor and the services do not share the caller's directory.
  std::string path = global.run_dir.empty() ? RunDir::DefaultPath(global.ns) : global.run_dir;
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  return ec ? path : absolute.lexically_normal().string();
}

Result<LocalInstance> StartOrFindInstance(const GlobalOptions& global, const StartOptions& options,
                                          StopSignals* stop) {
  RunDir run(RunDirPath(global));
  Status created = run.Create();
  if (!created.ok()) return created;

  LocalInstance instance;
  // A supervisor of this run directory means an instance runs, even while its controller or
  // nats-server is being restarted: never a second one.
  if (auto supervisor = LiveSupervisor(run)) {
    std::string described = "supervisor pid " + std::to_string(*supervisor);
    auto client = Client::Connect(global, 2.0);
    if (!client.ok()) {
      return Status::Error("Serve runs in " + run.path() + " (" + described + "), but NATS at " +
                           RedactUrl(global.bus.url) + " does not answer: " + client.error() +
                           "\nSee " + run.path() + "/logs, or stop it with `serve shutdown`.");
    }
    instance.client = std::move(*client);
    auto ping = PingController(*instance.client);
    instance.already_running = ping.has_value()
                                   ? DescribeController(*ping) + ", " + described
                                   : described + "; its controller does not answer yet";
    return instance;
  }

  std::optional<HostPort> nats;  // where to launch nats-server, when none answers
  auto client = Client::Connect(global, 1.0);
  if (client.ok()) {
    instance.client = std::move(*client);
    // Never a second controller.
    if (auto ping = PingController(*instance.client)) {
      instance.already_running = DescribeController(*ping);
      if (run.LivePid("replica").has_value() || run.LivePid("proxy").has_value()) {
        *instance.already_running +=
            "; its supervisor is not running, so services that exit stay down until "
            "`serve shutdown` and `serve start`";
      }
      return instance;
    }
  } else {
    nats = ParseNatsUrl(global.bus.url);
    if (!nats.has_value() || !IsLocalHost(nats->host)) {
      return Status::Error("cannot reach NATS at " + RedactUrl(global.bus.url) + ": " +
                           client.error() +
                           "\nserve start only launches a NATS server for a local "
                           "nats://host:port address; start NATS there or fix --address.");
    }
  }

  instance.checkpoint = options.checkpoint_path.empty() ? "file://" + run.path() + "/checkpoint"
                                                        : options.checkpoint_path;
  GlobalOptions launch = global;
  if (nats.has_value()) {
    Status secured = PrepareBusCredentials(launch, options, run);
    if (!secured.ok()) return secured;
  }
  auto supervisor = SpawnSupervisor(launch, options, run, instance.checkpoint, nats);
  if (!supervisor.ok()) return supervisor.status();
  instance.supervisor = *supervisor;
  std::cout << "Starting Serve in namespace '" << global.ns << "' (logs in " << run.path()
            << "/logs)..." << std::endl;
  Status ready = Status::Ok();
  if (nats.has_value()) {
    auto connected = WaitForNats(launch, run, *supervisor, *nats);
    if (connected.ok()) {
      instance.client = std::move(*connected);
      instance.started_nats = true;
    } else {
      ready = connected.status();
    }
  }
  if (ready.ok()) ready = WaitUntilReady(*instance.client, options, run, *supervisor, stop);
  if (!ready.ok()) {
    // Leave nothing half-started behind: the supervisor ends what it started, and goes.
    instance.client.reset();
    StopSupervisor(run, *supervisor);
    return Status::Error(ready.message() + "\nStopped what this command had started.");
  }
  return instance;
}

Result<SupervisorOptions> LocalInstanceProcesses(const GlobalOptions& global,
                                                 const SuperviseOptions& options) {
  RunDir run(RunDirPath(global));
  SupervisorOptions out;
  out.supervisor_id = "supervisor-" + service::RandomHex(6);
  out.run_dir = run.path();
  // With the users `serve start` made (it passed the admin's on), every service connects as
  // its role's user and nobody but the admin's holders gets the admin's.
  std::optional<BusCredentials> roles;
  if (global.bus_credentials_from_run_dir || !global.bus.user.empty()) {
    auto stored = ReadBusCredentials(BusCredentialsPath(run.path()));
    if (!stored.ok()) return stored.status();
    if (stored->has_value() && (*stored)->users.size() == std::size(bus::kAllRoles) &&
        (*stored)->Of(bus::Role::kAdmin).user == global.bus.user) {
      roles = std::move(**stored);
    }
  }
  // Operator mode: `serve start` made the operator, the account and a user per role, and passed
  // the admin's .creds file on.
  bool operator_mode = !roles.has_value() && global.bus.user.empty() &&
                       global.bus.creds_file == RoleCredsPath(run.path(), bus::Role::kAdmin) &&
                       std::filesystem::exists(NatsOperatorConfigPath(run.path()));
  out.env = roles.has_value() || operator_mode ? bus::PublicEnvironmentFor(global.bus)
                                               : bus::EnvironmentFor(global.bus);
  out.env["SERVE_NAMESPACE"] = global.ns;
  if (options.nats_port > 0) {
    // Requests and answers travel as single NATS messages: allow 8 MiB instead of NATS's 1 MiB
    // default (the proxy answers 413 above the limit the server announces). Credentials are
    // in the file (mode 0600), never on nats-server's command line.
    std::string config = run.path() + "/nats.conf";
    std::string text;
    if (operator_mode) {
      std::ifstream in(NatsOperatorConfigPath(run.path()));
      std::string resolver((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in || resolver.empty()) {
        return Status::Error("cannot read " + NatsOperatorConfigPath(run.path()) +
                             "; `serve shutdown` and `serve start` write it anew");
      }
      text =
          "# Written by serve start: operator mode, a JWT user per role and per worker, each\n"
          "# allowed only what it needs (docs/security.md).\nmax_payload: 8388608\n" +
          resolver;
    } else if (roles.has_value()) {
      text = bus::NatsServerConfig(
          global.ns, [&](bus::Role role) { return bus::QuotedPassword(roles->Of(role).password); });
    } else {
      text = "# Written by serve start.\nmax_payload: 8388608\n";
      if (!global.bus.user.empty()) {
        text += "authorization {\n  user: " + bus::QuotedPassword(global.bus.user) +
                "\n  password: " + bus::QuotedPassword(global.bus.password) + "\n}\n";
      } else if (!global.bus.token.empty()) {
        text += "authorization {\n  token: " + bus::QuotedPassword(global.bus.token) + "\n}\n";
      }
    }
    Status written = WritePrivateFile(config, text);
    if (!written.ok()) return written;
    std::vector<std::string> argv = {"nats-server", "-c", config, "-a", options.nats_host};
    argv.insert(argv.end(), {"-p", std::to_string(options.nats_port)});
    if (options.instance.nats_monitor_port > 0) {
      // nats-server's monitoring (/connz, /varz) on localhost only: it names every client.
      argv.insert(argv.end(), {"-m", std::to_string(options.instance.nats_monitor_port)});
    }
    out.processes.push_back({"nats", "nats-server", argv, -1, /*infrastructure=*/true});
  }
  const StartOptions& instance = options.instance;
  auto socket = http::OpenListeningSocket(instance.http_host, instance.http_port);
  if (!socket.ok()) return Status::Error(socket.error() + "; serve start takes --http-port");
  // Ids that outlive restarts: a restarted proxy or node agent is the same member to the
  // controller, not a new one beside a lost one.
  std::string node_id = "node-" + service::RandomHex(6);
  std::string proxy_id = "proxy-" + service::RandomHex(6);
  std::vector<std::string> replica = {ServiceExecutable("serve-replica"), "--node-id", node_id,
                                      "--work-dir", run.path() + "/node", "--metrics-host",
                                      instance.dashboard_host, "--metrics-port",
                                      std::to_string(instance.node_metrics_port)};
  if (instance.num_cpus > 0) {
    replica.insert(replica.end(), {"--num-cpus", std::to_string(instance.num_cpus)});
  }
  out.processes.push_back({"checkpointer",
                           "serve-checkpointer",
                           {ServiceExecutable("serve-checkpointer"), "--checkpoint-path",
                            instance.checkpoint_path, "--metrics-host", instance.dashboard_host,
                            "--metrics-port", std::to_string(instance.checkpointer_metrics_port)}});
  out.processes.push_back(
      {"controller",
       "serve-controller",
       {ServiceExecutable("serve-controller"), "--checkpoint-path", instance.checkpoint_path,
        "--dashboard-host", instance.dashboard_host, "--dashboard-port",
        std::to_string(instance.dashboard_port)}});
  out.processes.push_back(
      {"proxy",
       "serve-proxy",
       {ServiceExecutable("serve-proxy"), "--proxy-id", proxy_id, "--http-host", instance.http_host,
        "--http-port", std::to_string(instance.http_port), "--http-listen-fd", "3"},
       *socket});
  out.processes.push_back({"replica", "serve-replica", replica});
  if (operator_mode) {
    auto as = [&](bus::Role role, std::map<std::string, std::string>& env) {
      env["SERVE_NATS_CREDS"] = RoleCredsPath(run.path(), role);
    };
    for (auto& process : out.processes) {
      if (process.name == "checkpointer") {
        as(bus::Role::kCheckpointer, process.env);
      } else if (process.name == "controller") {
        as(bus::Role::kController, process.env);
      } else if (process.name == "proxy") {
        as(bus::Role::kProxy, process.env);
      } else if (process.name == "replica") {
        as(bus::Role::kNode, process.env);
        process.env["SERVE_WORKER_SIGNING_KEY_FILE"] = WorkerSigningKeyPath(run.path());
      }
    }
  }
  if (roles.has_value()) {
    auto as = [&](bus::Role role, const char* user_variable, const char* password_variable,
                  std::map<std::string, std::string>& env) {
      env[user_variable] = roles->Of(role).user;
      env[password_variable] = roles->Of(role).password;
    };
    for (auto& process : out.processes) {
      if (process.name == "checkpointer") {
        as(bus::Role::kCheckpointer, "SERVE_NATS_USER", "SERVE_NATS_PASSWORD", process.env);
      } else if (process.name == "controller") {
        as(bus::Role::kController, "SERVE_NATS_USER", "SERVE_NATS_PASSWORD", process.env);
      } else if (process.name == "proxy") {
        as(bus::Role::kProxy, "SERVE_NATS_USER", "SERVE_NATS_PASSWORD", process.env);
      } else if (process.name == "replica") {
        as(bus::Role::kNode, "SERVE_NATS_USER", "SERVE_NATS_PASSWORD", process.env);
        as(bus::Role::kWorker, "SERVE_WORKER_NATS_USER", "SERVE_WORKER_NATS_PASSWORD", process.env);
      }
    }
  }
  for (auto& process : out.processes) {
    if (process.infrastructure) continue;
    // The service writes its log itself, rotated by size (--log-max-size-mb); its stderr goes
    // to the same file (opened to append, so neither overwrites the other) for what only
    // stderr can carry, such as a crash report.
    process.argv.insert(process.argv.end(), {"--log-file", run.LogPath(process.name)});
  }
  return out;
}

void PrintStartedInstance(const GlobalOptions& global, const StartOptions& options,
                          const LocalInstance& instance) {
  RunDir run(RunDirPath(global));
  std::string host = options.http_host == "0.0.0.0" ? "127.0.0.1" : options.http_host;
  std::cout << "Serve is running in namespace '" << global.ns << "'.\n"
            << "  HTTP:        http://" << host << ":" << options.http_port << "\n";
  if (options.dashboard_port > 0) {
    std::string dashboard =
        options.dashboard_host == "0.0.0.0" ? "127.0.0.1" : options.dashboard_host;
    std::cout << "  dashboard:   http://" << dashboard << ":" << options.dashboard_port << "\n";
  }
  std::cout << "  metrics:     http://" << host << ":" << options.http_port << "/-/metrics (proxy)";
  if (options.dashboard_port > 0) {
    std::cout << ", :" << options.dashboard_port << "/metrics (controller)";
  }
  if (options.node_metrics_port > 0) {
    std::cout << ", :" << options.node_metrics_port << "/metrics (node)";
  }
  if (options.checkpointer_metrics_port > 0) {
    std::cout << ", :" << options.checkpointer_metrics_port << "/metrics (checkpointer)";
  }
  std::cout << "\n";
  std::cout << "  bus:         " << RedactUrl(global.bus.url)
            << (instance.started_nats ? " (nats-server started by serve)" : "") << "\n"
            << "  checkpoint:  " << instance.checkpoint << "\n"
            << "  logs:        " << run.path() << "/logs" << std::endl;
}

bool StopInstance(const GlobalOptions& global) {
  RunDir run(RunDirPath(global));
  bool told = false;
  // The controller first: it tells every service of the namespace, on any machine. Signalled
  // first, the supervisor would end the controller before it could.
  if (auto client = Client::Connect(global, 1.0); client.ok()) {
    auto reply = (*client)->CallFor<wire::ShutdownReply>((*client)->subjects().ctl_shutdown,
                                                         wire::Pack(wire::ShutdownRequestT{}), 3);
    told = reply.ok() && reply->error.empty();
    if (!told && reply.ok()) std::cerr << "warning: " << reply->error << "\n";
  }
  bool any = false;
  if (auto supervisor = LiveSupervisor(run)) {
    any = true;
    // The supervisor heard the notice too: it restarts nothing, waits for the services to end
    // (up to 25 s, then signals them), stops nats-server and exits. Without the bus it is told
    // with a signal.
    auto deadline = Clock::now() + std::chrono::seconds(told ? 30 : 0);
    while (ProcessAlive(*supervisor) && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    StopSupervisor(run, *supervisor);
  }
  // What is left: processes of an instance whose supervisor died, or of one started before
  // there was a supervisor.
  any = EndRecordedProcesses(run, told ? 25 : 0) || any;
  return told || any;
}

}  // namespace serve::cli
