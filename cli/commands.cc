#include "cli/commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "bus/subjects.h"
#include "cli/instance.h"
#include "config/deployment_config.h"
#include "config/spec.h"
#include "wire/codec.h"

namespace serve::cli {
namespace {

using Clock = std::chrono::steady_clock;

using bus::RedactUrl;

// A short-lived bus connection for one command.
class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const GlobalOptions& global,
                                                 double connect_timeout_s = 2) {
    auto client = std::unique_ptr<Client>(new Client(global.ns));
    bus::Options options = global.bus;
    options.name = "serve-cli";
    options.retry_initial_connect = false;
    options.connect_timeout_s = connect_timeout_s;
    auto bus = bus::Bus::Connect(&client->loop_, options);
    if (!bus.ok()) return bus.status();
    client->bus_ = std::move(*bus);
    return client;
  }

  ~Client() {
    if (bus_ != nullptr) bus_->Close();
    bus_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }

  // A control-plane call; "nothing listens" becomes advice about the missing controller.
  // `patient`: give a controller that is reconnecting a moment before calling it missing.
  Result<std::string> Call(const std::string& subject, const std::string& bytes,
                           double timeout_s = 10, bool patient = true) {
    auto reply = bus::RequestAndWait(&loop_, *bus_, subject, bytes, timeout_s);
    // A controller that is reconnecting after a NATS restart is back within a second or two:
    // do not call it missing before then.
    auto deadline = Clock::now() + std::chrono::seconds(patient ? 2 : 0);
    while (!reply.ok() && reply.error().rfind("nothing listens", 0) == 0 &&
           Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      reply = bus::RequestAndWait(&loop_, *bus_, subject, bytes, timeout_s);
    }
    if (!reply.ok()) {
      if (reply.error().rfind("nothing listens", 0) == 0) {
        return Status::Error("no Serve controller is running in namespace '" + subjects_.ns +
                             "' at " + RedactUrl(bus_->url()) + "; start one with `serve start`");
      }
      return reply.status();
    }
    return std::move(reply->data);
  }

  template <typename ReplyTable>
  Result<typename ReplyTable::NativeTableType> CallFor(const std::string& subject,
                                                       const std::string& bytes,
                                                       double timeout_s = 10,
                                                       bool patient = true) {
    auto data = Call(subject, bytes, timeout_s, patient);
    if (!data.ok()) return data.status();
    return wire::Unpack<ReplyTable>(*data);
  }

  const bus::Subjects& subjects() const { return subjects_; }

 private:
  explicit Client(const std::string& ns) : subjects_(ns) { uv_loop_init(&loop_); }
  uv_loop_t loop_;
  std::unique_ptr<bus::Bus> bus_;
  bus::Subjects subjects_;
};

Result<std::unique_ptr<Client>> ConnectOrExplain(const GlobalOptions& global) {
  auto client = Client::Connect(global);
  if (!client.ok()) {
    return Status::Error("no Serve instance is reachable: " + client.error() +
                         "\nStart one with `serve start`, or pass the bus with --address.");
  }
  return client;
}

int Fail(const std::string& message) {
  std::cerr << "error: " << message << "\n";
  return 1;
}

std::string RunDirPath(const GlobalOptions& global) {
  return global.run_dir.empty() ? RunDir::DefaultPath(global.ns) : global.run_dir;
}

// "serve ping" of the controller: who runs this namespace, if anyone.
std::optional<wire::PingReplyT> PingController(Client& client, double timeout_s = 1.0) {
  auto reply = client.CallFor<wire::PingReply>(
      client.subjects().ctl_ping, wire::Pack(wire::PingRequestT{}), timeout_s, /*patient=*/false);
  if (!reply.ok()) return std::nullopt;
  return *reply;
}

std::string DescribeController(const wire::PingReplyT& ping) {
  return "controller " + ping.controller_id + ", pid " + std::to_string(ping.pid) + " on " +
         ping.host;
}

const char* kServices[] = {"checkpointer", "controller", "proxy", "replica"};

}  // namespace

int StartInstance(const GlobalOptions& global, const StartOptions& options) {
  RunDir run(RunDirPath(global));
  Status created = run.Create();
  if (!created.ok()) return Fail(created.message());

  // 1. The bus: reuse the one that answers, or start nats-server when the address is local.
  auto client = Client::Connect(global, 1.0);
  bool started_nats = false;
  if (!client.ok()) {
    auto hp = ParseNatsUrl(global.bus.url);
    if (!hp.has_value() || !IsLocalHost(hp->host)) {
      return Fail("cannot reach NATS at " + RedactUrl(global.bus.url) + ": " + client.error() +
                  "\nserve start only launches a NATS server for a local nats://host:port "
                  "address; start NATS there or fix --address.");
    }
    std::vector<std::string> argv = {"nats-server", "-a",    hp->host, "-p",
                                     std::to_string(hp->port), "--pid", run.PidPath("nats")};
    std::map<std::string, std::string> env;
    if (!global.bus.user.empty()) {
      argv.insert(argv.end(), {"--user", global.bus.user, "--pass", global.bus.password});
    } else if (!global.bus.token.empty()) {
      argv.insert(argv.end(), {"--auth", global.bus.token});
    }
    auto pid = SpawnDetached(argv, run.LogPath("nats"));
    if (!pid.ok()) {
      return Fail(pid.error() +
                  "\nInstall NATS (`apt-get install nats-server`) or point --address at a "
                  "running NATS server.");
    }
    run.WritePid("nats", *pid);
    started_nats = true;
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!(client = Client::Connect(global, 1.0)).ok()) {
      if (!ProcessAlive(*pid) || Clock::now() > deadline) {
        return Fail("nats-server did not come up on " + hp->host + ":" +
                    std::to_string(hp->port) + ":\n" + run.LogTail("nats"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // 2. Never a second controller: report the instance that runs.
  if (auto ping = PingController(**client); ping.has_value()) {
    std::cout << "Serve is already running in namespace '" << global.ns << "' ("
              << DescribeController(*ping) << ") on " << RedactUrl(global.bus.url)
              << ".\nNothing was started. Stop it with `serve shutdown`.\n";
    return 0;
  }

  // 3. The services, each in the background with its own log.
  std::string checkpoint = options.checkpoint_path.empty()
                               ? "file://" + run.path() + "/checkpoint"
                               : options.checkpoint_path;
  std::map<std::string, std::string> env = bus::EnvironmentFor(global.bus);
  env["SERVE_NAMESPACE"] = global.ns;
  std::map<std::string, std::vector<std::string>> commands = {
      {"checkpointer", {ServiceExecutable("serve-checkpointer"), "--checkpoint-path", checkpoint}},
      {"controller", {ServiceExecutable("serve-controller")}},
      {"proxy",
       {ServiceExecutable("serve-proxy"), "--http-host", options.http_host, "--http-port",
        std::to_string(options.http_port)}},
      {"replica",
       {ServiceExecutable("serve-replica"), "--work-dir", run.path() + "/node"}},
  };
  if (options.num_cpus > 0) {
    commands["replica"].insert(commands["replica"].end(),
                               {"--num-cpus", std::to_string(options.num_cpus)});
  }
  std::map<std::string, pid_t> pids;
  for (const char* name : kServices) {
    auto pid = SpawnDetached(commands[name], run.LogPath(name), env);
    if (!pid.ok()) {
      for (auto& [started, p] : pids) TerminateProcess(p, 2);
      return Fail(pid.error() + "\nBuild the services (./dev build) or put them on PATH.");
    }
    run.WritePid(name, *pid);
    pids[name] = *pid;
  }
  std::cout << "Starting Serve in namespace '" << global.ns << "' (logs in " << run.path()
            << "/logs)...\n";

  // 4. Ready when the controller answers, a node registered and the proxy serves HTTP.
  auto deadline = Clock::now() + std::chrono::duration<double>(options.timeout_s);
  bool controller_up = false, node_up = false, proxy_up = false;
  while (!(controller_up && node_up && proxy_up)) {
    for (auto& [name, pid] : pids) {
      if (!ProcessAlive(pid)) {
        std::cerr << "error: serve-" << name << " exited during start. Its log ("
                  << run.LogPath(name) << ") ends with:\n"
                  << run.LogTail(name);
        for (auto& [other, p] : pids) TerminateProcess(p, 2);
        if (started_nats) {
          if (auto nats = run.LivePid("nats")) TerminateProcess(*nats, 2);
        }
        return 1;
      }
    }
    if (Clock::now() > deadline) {
      std::cerr << "error: Serve did not become ready within " << options.timeout_s << " s ("
                << (controller_up ? "" : "controller ") << (node_up ? "" : "node ")
                << (proxy_up ? "" : "proxy ") << "not ready). Logs: " << run.path()
                << "/logs\n";
      return 1;
    }
    if (!controller_up) controller_up = PingController(**client, 0.5).has_value();
    if (controller_up && !node_up) {
      auto status = (*client)->CallFor<wire::StatusReply>((*client)->subjects().ctl_status,
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
  std::string host = options.http_host == "0.0.0.0" ? "127.0.0.1" : options.http_host;
  std::cout << "Serve is running in namespace '" << global.ns << "'.\n"
            << "  HTTP:        http://" << host << ":" << options.http_port << "\n"
            << "  bus:         " << RedactUrl(global.bus.url)
            << (started_nats ? " (nats-server started by serve)" : "") << "\n"
            << "  checkpoint:  " << checkpoint << "\n"
            << "  logs:        " << run.path() << "/logs\n"
            << "Deploy with `serve deploy examples/hello.yaml`; stop with `serve shutdown`.\n";
  return 0;
}

namespace {

struct Progress {
  int running = 0;
  int target = 0;
  std::string state;
  std::string message;
};

}  // namespace

int DeployFile(const GlobalOptions& global, const DeployOptions& options) {
  auto config = config::LoadConfigFile(options.file);
  if (!config.ok()) return Fail(config.error());
  wire::DeployRequestT request;
  for (const auto& deployment : config->deployments) {
    request.deployments.push_back(
        std::make_unique<wire::DeploymentSpecT>(config::ToSpec(deployment)));
  }
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  auto reply = (*client)->CallFor<wire::DeployReply>((*client)->subjects().ctl_deploy,
                                                     wire::Pack(request));
  if (!reply.ok()) return Fail(reply.error());
  if (!reply->error.empty()) return Fail("deploy refused: " + reply->error);
  for (const auto& line : reply->results) std::cout << line << "\n";
  if (!options.wait) return 0;

  // Follow the listed deployments until each is HEALTHY, one line per change.
  wire::StatusRequestT status_request;
  for (const auto& d : config->deployments) status_request.names.push_back(d.name);
  std::string status_bytes = wire::Pack(status_request);
  std::map<std::string, Progress> shown;
  auto deadline = Clock::now() + std::chrono::duration<double>(options.timeout_s);
  while (true) {
    auto status = (*client)->CallFor<wire::StatusReply>((*client)->subjects().ctl_status,
                                                        status_bytes, 5);
    if (!status.ok()) return Fail(status.error());
    bool all_healthy = !status->deployments.empty();
    for (const auto& d : status->deployments) {
      Progress now;
      for (const auto& r : d->replicas) {
        if (r->state == wire::ReplicaState::RUNNING && r->version == d->version) ++now.running;
      }
      now.target = d->num_replicas;
      now.state = wire::EnumNameDeploymentState(d->status);
      now.message = d->message;
      Progress& before = shown[d->name];
      if (now.running != before.running || now.state != before.state ||
          now.message != before.message) {
        std::cout << "  " << d->name << ": " << now.state
                  << (now.message.empty() ? "" : " - ") << now.message << "\n";
        before = now;
      }
      if (d->status == wire::DeploymentState::DEPLOY_FAILED) {
        return Fail("deployment " + d->name + " failed: " + d->message);
      }
      if (d->status != wire::DeploymentState::HEALTHY) all_healthy = false;
    }
    if (all_healthy) {
      std::cout << "All " << status->deployments.size() << " deployment(s) are HEALTHY.\n";
      return 0;
    }
    if (Clock::now() > deadline) {
      return Fail("not HEALTHY within " + std::to_string(static_cast<int>(options.timeout_s)) +
                  " s; `serve status` shows why (the deployment goes on trying)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int DeleteDeployments(const GlobalOptions& global, const std::vector<std::string>& names) {
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  wire::DeleteRequestT request;
  request.names = names;
  auto reply = (*client)->CallFor<wire::DeleteReply>((*client)->subjects().ctl_delete,
                                                     wire::Pack(request));
  if (!reply.ok()) return Fail(reply.error());
  if (!reply->error.empty()) return Fail(reply->error);
  for (const auto& name : reply->deleted) std::cout << "deleted " << name << "\n";
  return 0;
}

namespace {

nlohmann::json StatusJson(const wire::StatusReplyT& status) {
  nlohmann::json out;
  out["namespace"] = status.namespace_;
  out["deployments"] = nlohmann::json::array();
  for (const auto& d : status.deployments) {
    nlohmann::json replicas = nlohmann::json::array();
    for (const auto& r : d->replicas) {
      replicas.push_back({{"id", r->id},
                          {"state", wire::EnumNameReplicaState(r->state)},
                          {"node", r->node},
                          {"version", r->version},
                          {"message", r->message}});
    }
    out["deployments"].push_back({{"name", d->name},
                                  {"status", wire::EnumNameDeploymentState(d->status)},
                                  {"message", d->message},
                                  {"version", d->version},
                                  {"route_prefix", d->route_prefix},
                                  {"runtime", d->runtime},
                                  {"num_replicas", d->num_replicas},
                                  {"replicas", replicas}});
  }
  out["nodes"] = nlohmann::json::array();
  for (const auto& n : status.nodes) {
    out["nodes"].push_back({{"id", n->id},
                            {"state", wire::EnumNameMemberState(n->state)},
                            {"message", n->message},
                            {"host", n->host},
                            {"last_seen_s", n->last_seen_s},
                            {"num_cpus", n->num_cpus},
                            {"num_gpus", n->num_gpus},
                            {"replicas", n->replicas}});
  }
  out["proxies"] = nlohmann::json::array();
  for (const auto& p : status.proxies) {
    out["proxies"].push_back({{"id", p->id},
                              {"state", wire::EnumNameMemberState(p->state)},
                              {"address", p->address},
                              {"last_seen_s", p->last_seen_s}});
  }
  return out;
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

std::string Age(double seconds) {
  char text[32];
  snprintf(text, sizeof(text), "%.1fs ago", seconds);
  return text;
}

}  // namespace

int ShowStatus(const GlobalOptions& global, const StatusOptions& options) {
  auto client = ConnectOrExplain(global);
  if (!client.ok()) return Fail(client.error());
  wire::StatusRequestT request;
  request.names = options.names;
  auto status = (*client)->CallFor<wire::StatusReply>((*client)->subjects().ctl_status,
                                                      wire::Pack(request));
  if (!status.ok()) return Fail(status.error());
  if (!status->error.empty()) return Fail(status->error);
  if (options.json) {
    std::cout << StatusJson(*status).dump(2) << "\n";
    return 0;
  }
  std::cout << "Namespace " << status->namespace_ << "\n\n";
  if (status->deployments.empty()) {
    std::cout << "No deployments. Deploy with `serve deploy FILE.yaml`.\n";
  } else {
    std::vector<std::vector<std::string>> rows = {
        {"DEPLOYMENT", "STATUS", "REPLICAS", "VERSION", "ROUTE", "MESSAGE"}};
    for (const auto& d : status->deployments) {
      int running = 0;
      for (const auto& r : d->replicas) running += r->state == wire::ReplicaState::RUNNING;
      rows.push_back({d->name, wire::EnumNameDeploymentState(d->status),
                      std::to_string(running) + "/" + std::to_string(d->num_replicas),
                      d->version, d->route_prefix, d->message});
    }
    PrintTable(rows);
    std::cout << "\n";
    rows = {{"REPLICA", "DEPLOYMENT", "STATE", "NODE", "VERSION", "MESSAGE"}};
    for (const auto& d : status->deployments) {
      for (const auto& r : d->replicas) {
        rows.push_back({r->id, d->name, wire::EnumNameReplicaState(r->state), r->node,
                        r->version, r->message});
      }
    }
    if (rows.size() > 1) {
      PrintTable(rows);
      std::cout << "\n";
    }
  }
  std::vector<std::vector<std::string>> rows = {
      {"NODE", "STATE", "HOST", "CPUS", "GPUS", "REPLICAS", "LAST SEEN"}};
  for (const auto& n : status->nodes) {
    char cpus[32], gpus[32];
    snprintf(cpus, sizeof(cpus), "%g", n->num_cpus);
    snprintf(gpus, sizeof(gpus), "%g", n->num_gpus);
    rows.push_back({n->id, wire::EnumNameMemberState(n->state), n->host, cpus, gpus,
                    std::to_string(n->replicas), Age(n->last_seen_s)});
  }
  PrintTable(rows);
  std::cout << "\n";
  rows = {{"PROXY", "STATE", "ADDRESS", "LAST SEEN"}};
  for (const auto& p : status->proxies) {
    rows.push_back({p->id, wire::EnumNameMemberState(p->state), p->address, Age(p->last_seen_s)});
  }
  PrintTable(rows);
  return 0;
}

int ShutdownInstance(const GlobalOptions& global) {
  RunDir run(RunDirPath(global));
  bool told = false;
  if (auto client = Client::Connect(global, 1.0); client.ok()) {
    auto reply = (*client)->CallFor<wire::ShutdownReply>((*client)->subjects().ctl_shutdown,
                                                         wire::Pack(wire::ShutdownRequestT{}), 3);
    told = reply.ok() && reply->error.empty();
    if (!told && reply.ok()) std::cerr << "warning: " << reply->error << "\n";
  }
  // Wait for the processes this machine started, then stop what did not listen.
  std::vector<std::string> processes = run.RecordedProcesses();
  bool any = false;
  auto deadline = Clock::now() + std::chrono::seconds(25);
  for (const auto& name : processes) {
    if (name == "nats") continue;
    auto pid = run.LivePid(name);
    if (pid.has_value()) {
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
  if (!told && !any) {
    std::cout << "Nothing to stop: no controller answered in namespace '" << global.ns
              << "' and no process is recorded in " << run.path() << ".\n";
    return 0;
  }
  std::cout << "Serve stopped (namespace '" << global.ns << "').\n";
  return 0;
}

}  // namespace serve::cli
