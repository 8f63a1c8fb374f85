#include "cli/lifecycle.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>
#include <vector>

#include "cli/instance.h"

namespace serve::cli {
namespace {

using Clock = std::chrono::steady_clock;
using bus::RedactUrl;

const char* kServices[] = {"checkpointer", "controller", "proxy", "replica"};

// The bus: the one that answers, or a nats-server started here when the address is local.
Result<std::unique_ptr<Client>> ConnectOrStartNats(const GlobalOptions& global, const RunDir& run,
                                                   bool* started_nats) {
  auto client = Client::Connect(global, 1.0);
  if (client.ok()) return client;
  auto hp = ParseNatsUrl(global.bus.url);
  if (!hp.has_value() || !IsLocalHost(hp->host)) {
    return Status::Error("cannot reach NATS at " + RedactUrl(global.bus.url) + ": " +
                         client.error() +
                         "\nserve start only launches a NATS server for a local "
                         "nats://host:port address; start NATS there or fix --address.");
  }
  // Requests and answers travel as single NATS messages: allow 8 MiB instead of NATS's 1 MiB
  // default (the proxy answers 413 above the limit the server announces).
  std::string config = run.path() + "/nats.conf";
  {
    std::ofstream out(config, std::ios::trunc);
    out << "# Written by serve start.\nmax_payload: 8388608\n";
  }
  std::vector<std::string> argv = {"nats-server", "-c", config, "-a", hp->host,
                                   "-p", std::to_string(hp->port), "--pid", run.PidPath("nats")};
  if (!global.bus.user.empty()) {
    argv.insert(argv.end(), {"--user", global.bus.user, "--pass", global.bus.password});
  } else if (!global.bus.token.empty()) {
    argv.insert(argv.end(), {"--auth", global.bus.token});
  }
  auto pid = SpawnDetached(argv, run.LogPath("nats"));
  if (!pid.ok()) {
    return Status::Error(pid.error() +
                         "\nInstall NATS (`apt-get install nats-server`) or point --address at "
                         "a running NATS server.");
  }
  run.WritePid("nats", *pid);
  *started_nats = true;
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!(client = Client::Connect(global, 1.0)).ok()) {
    if (!ProcessAlive(*pid) || Clock::now() > deadline) {
      std::string log = run.LogTail("nats");
      TerminateProcess(*pid, 2);
      run.RemovePid("nats");
      return Status::Error("nats-server did not come up on " + hp->host + ":" +
                           std::to_string(hp->port) + ":\n" + log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return client;
}

// The four services, each in the background with its own log. On failure none is left.
Result<std::map<std::string, pid_t>> SpawnServices(const GlobalOptions& global,
                                                   const StartOptions& options, const RunDir& run,
                                                   const std::string& checkpoint) {
  std::map<std::string, std::string> env = bus::EnvironmentFor(global.bus);
  env["SERVE_NAMESPACE"] = global.ns;
  std::map<std::string, std::vector<std::string>> commands = {
      {"checkpointer", {ServiceExecutable("serve-checkpointer"), "--checkpoint-path", checkpoint}},
      {"controller", {ServiceExecutable("serve-controller"), "--checkpoint-path", checkpoint}},
      {"proxy",
       {ServiceExecutable("serve-proxy"), "--http-host", options.http_host, "--http-port",
        std::to_string(options.http_port)}},
      {"replica", {ServiceExecutable("serve-replica"), "--work-dir", run.path() + "/node"}},
  };
  if (options.num_cpus > 0) {
    commands["replica"].insert(commands["replica"].end(),
                               {"--num-cpus", std::to_string(options.num_cpus)});
  }
  std::map<std::string, pid_t> pids;
  for (const char* name : kServices) {
    auto pid = SpawnDetached(commands[name], run.LogPath(name), env);
    if (!pid.ok()) {
      for (auto& [started, p] : pids) {
        TerminateProcess(p, 2);
        run.RemovePid(started);
      }
      return Status::Error(pid.error() + "\nBuild the services (./dev build) or put them on PATH.");
    }
    run.WritePid(name, *pid);
    pids[name] = *pid;
  }
  return pids;
}

// Ready when the controller answers, a node registered and the proxy serves HTTP.
Status WaitUntilReady(Client& client, const StartOptions& options, const RunDir& run,
                      const std::map<std::string, pid_t>& pids, StopSignals* stop) {
  auto deadline = Clock::now() + std::chrono::duration<double>(options.timeout_s);
  bool controller_up = false, node_up = false, proxy_up = false;
  while (!(controller_up && node_up && proxy_up)) {
    for (const auto& [name, pid] : pids) {
      if (!ProcessAlive(pid)) {
        std::string log = run.LogTail(name);
        if (!log.empty() && log.back() == '\n') log.pop_back();
        return Status::Error("serve-" + name + " exited during start. Its log (" +
                             run.LogPath(name) + ") ends with:\n" + log);
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

}  // namespace

std::string RunDirPath(const GlobalOptions& global) {
  return global.run_dir.empty() ? RunDir::DefaultPath(global.ns) : global.run_dir;
}

Result<LocalInstance> StartOrFindInstance(const GlobalOptions& global, const StartOptions& options,
                                          StopSignals* stop) {
  RunDir run(RunDirPath(global));
  Status created = run.Create();
  if (!created.ok()) return created;

  LocalInstance instance;
  auto client = ConnectOrStartNats(global, run, &instance.started_nats);
  if (!client.ok()) return client.status();
  instance.client = std::move(*client);

  // Never a second controller.
  instance.already_running = PingController(*instance.client);
  if (instance.already_running.has_value()) return instance;

  instance.checkpoint = options.checkpoint_path.empty() ? "file://" + run.path() + "/checkpoint"
                                                        : options.checkpoint_path;
  auto pids = SpawnServices(global, options, run, instance.checkpoint);
  Status ready = pids.status();
  if (pids.ok()) {
    std::cout << "Starting Serve in namespace '" << global.ns << "' (logs in " << run.path()
              << "/logs)..." << std::endl;
    ready = WaitUntilReady(*instance.client, options, run, *pids, stop);
  }
  if (!ready.ok()) {
    // Leave nothing half-started behind: what this command launched goes again.
    instance.client.reset();
    if (pids.ok()) {
      for (const auto& [name, pid] : *pids) {
        TerminateProcess(pid, 5);
        run.RemovePid(name);
      }
    }
    if (instance.started_nats) {
      if (auto nats = run.LivePid("nats")) TerminateProcess(*nats, 5);
      run.RemovePid("nats");
    }
    return Status::Error(ready.message() + "\nStopped what this command had started.");
  }
  return instance;
}

void PrintStartedInstance(const GlobalOptions& global, const StartOptions& options,
                          const LocalInstance& instance) {
  RunDir run(RunDirPath(global));
  std::string host = options.http_host == "0.0.0.0" ? "127.0.0.1" : options.http_host;
  std::cout << "Serve is running in namespace '" << global.ns << "'.\n"
            << "  HTTP:        http://" << host << ":" << options.http_port << "\n"
            << "  bus:         " << RedactUrl(global.bus.url)
            << (instance.started_nats ? " (nats-server started by serve)" : "") << "\n"
            << "  checkpoint:  " << instance.checkpoint << "\n"
            << "  logs:        " << run.path() << "/logs" << std::endl;
}

bool StopInstance(const GlobalOptions& global) {
  RunDir run(RunDirPath(global));
  bool told = false;
  if (auto client = Client::Connect(global, 1.0); client.ok()) {
    auto reply = (*client)->CallFor<wire::ShutdownReply>((*client)->subjects().ctl_shutdown,
                                                         wire::Pack(wire::ShutdownRequestT{}), 3);
    told = reply.ok() && reply->error.empty();
    if (!told && reply.ok()) std::cerr << "warning: " << reply->error << "\n";
  }
  // Wait for the processes this machine started (when the controller told them to go), then
  // end what did not listen.
  bool any = false;
  auto deadline = Clock::now() + std::chrono::seconds(told ? 25 : 0);
  for (const auto& name : run.RecordedProcesses()) {
    if (name == "nats") continue;
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
  return told || any;
}

}  // namespace serve::cli
