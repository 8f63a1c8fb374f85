// serve-replica: the node agent, or (`serve-replica worker ...`, started by the agent) one
// replica worker process.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "bus/jwt.h"
#include "bus/roles.h"
#include "replica/artifact_cache.h"
#include "replica/node_agent.h"
#include "replica/worker.h"
#include "replica/worker_user.h"
#include "service/descriptors.h"
#include "service/flags.h"
#include "wire/codec.h"

extern char** environ;

namespace {

using namespace serve;

std::string SelfExe() {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "serve-replica";
}

void WriteError(const std::string& path, const std::string& error) {
  if (path.empty()) return;
  std::ofstream out(path, std::ios::trunc);
  out << error << "\n";
}

// Reads what the node agent wrote on this worker's stdin, then points stdin at /dev/null.
Status ApplySecretsFromStdin(bus::Options* options) {
  constexpr size_t kMaxSecretBytes = 64 * 1024;
  std::string text;
  char buffer[4096];
  while (text.size() <= kMaxSecretBytes) {
    ssize_t n = read(0, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return Status::Error(std::string("cannot read the bus credentials: ") + strerror(errno));
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd >= 0) {
    dup2(null_fd, 0);
    close(null_fd);
  }
  if (text.size() > kMaxSecretBytes)
    return Status::Error("the bus credentials on stdin are too long");
  return bus::ApplySecretText(text, options);
}

// The scoped signing key a node agent mints its workers' users with.
Result<bus::WorkerSigningKey> ReadWorkerSigningKey(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return Status::Error("cannot read the worker signing key " + path + ": " + strerror(errno) +
                         " (`serve start` writes it in <run dir>/creds/)");
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto key = bus::ParseWorkerSigningKey(text);
  if (!key.ok()) {
    return Status::Error("the worker signing key " + path + " is malformed: " + key.error() +
                         "; `serve start` writes it anew when it starts nats-server");
  }
  return key;
}

int RunWorker(int argc, char** argv, int inherited_descriptors) {
  CLI::App app{"serve-replica worker: one replica (started by the node agent)"};
  service::CommonFlags flags;
  std::string replica_id, node_id, spec_path, error_file, cache_dir, scratch_dir;
  int agent_pid = 0;
  int ready_fd = -1;
  bool request_log = true;
  service::AddCommonFlags(app, flags);
  // Workers inherit the agent's environment: SERVE_REQUEST_LOG=false on the agent turns the
  // request lines of all its replicas off.
  app.add_flag("--request-log,!--no-request-log", request_log,
               "Log one line per handled request: method, path, status, latency, request id")
      ->envname("SERVE_REQUEST_LOG");
  app.add_option("--replica-id", replica_id)->required();
  app.add_option("--node-id", node_id)->required();
  app.add_option("--spec", spec_path)->required();
  app.add_option("--error-file", error_file);
  app.add_option("--agent-pid", agent_pid);
  app.add_option("--cache-dir", cache_dir, "The node's artifact cache");
  app.add_option("--scratch-dir", scratch_dir, "A directory of this replica's own");
  app.add_option("--ready-fd", ready_fd,
                 "A descriptor from the agent: one byte is written to it once the replica serves");
  std::optional<replica::WorkerUser> run_as;
  std::string run_as_user;
  int64_t run_as_uid = -1, run_as_gid = -1;
  app.add_option("--run-as-user", run_as_user,
                 "Switch to this user (with --run-as-uid/--run-as-gid) once the code is fetched");
  app.add_option("--run-as-uid", run_as_uid)->check(CLI::Range(int64_t{1}, int64_t{4294967294}));
  app.add_option("--run-as-gid", run_as_gid)->check(CLI::Range(int64_t{0}, int64_t{4294967294}));
  bool bus_secrets_on_stdin = false;
  app.add_flag("--bus-secrets-on-stdin", bus_secrets_on_stdin,
               "Read the bus credentials from stdin (bus::SecretText), not the environment");
  CLI11_PARSE(app, argc, argv);
  if (!run_as_user.empty() || run_as_uid >= 0 || run_as_gid >= 0) {
    if (run_as_user.empty() || run_as_uid < 0 || run_as_gid < 0) {
      WriteError(error_file, "--run-as-user, --run-as-uid and --run-as-gid go together");
      return 2;
    }
    run_as = replica::WorkerUser{run_as_user, static_cast<uid_t>(run_as_uid),
                                 static_cast<gid_t>(run_as_gid)};
  }
  // A python runtime enters the deployment's working directory: paths used later must not
  // depend on the process's.
  std::error_code absolute_error;
  if (!error_file.empty()) error_file = std::filesystem::absolute(error_file, absolute_error);
  if (!scratch_dir.empty()) scratch_dir = std::filesystem::absolute(scratch_dir, absolute_error);
  // User code never sees a bus credential: not in the environment a command inherits, not on
  // stdin once read.
  if (bus_secrets_on_stdin) {
    Status applied = ApplySecretsFromStdin(&flags.bus);
    if (!applied.ok()) {
      WriteError(error_file, applied.message());
      return 2;
    }
  }
  std::vector<std::string> secrets;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    std::string_view name = text.substr(0, text.find('='));
    if (bus::IsSecretVariable(name)) secrets.emplace_back(name);
  }
  for (const std::string& name : secrets) unsetenv(name.c_str());
  // The readiness pipe must not reach user code (a command's child processes).
  if (ready_fd > 2) fcntl(ready_fd, F_SETFD, FD_CLOEXEC);

  // A worker never outlives its node agent.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (agent_pid > 0 && getppid() != agent_pid) return 1;

  std::ifstream in(spec_path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto spec = wire::Unpack<wire::DeploymentSpec>(bytes);
  if (!spec.ok()) {
    WriteError(error_file, "cannot read the replica spec " + spec_path + ": " + spec.error());
    return 2;
  }
  Status init = service::Init(flags, "worker", log::Context{node_id, spec->name, replica_id});
  if (!init.ok()) {
    WriteError(error_file, init.message());
    return 2;
  }
  if (inherited_descriptors > 0) {
    // Rare (see main()); frequent lines mean a spawn site that does not mark its descriptors.
    spdlog::info("closed {} descriptors inherited from the node agent", inherited_descriptors);
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  flags.bus.name = "serve-replica " + replica_id;
  flags.bus.inbox_prefix = bus::WorkerInboxPrefix(flags.ns, replica_id);
  // Requests are read, answered and the answers written in one turn of the worker's loop,
  // with no thread of nats.c's to wake on the way (bus::Options::io_on_loop).
  flags.bus.io_on_loop = true;
  auto bus = bus::Bus::Connect(&loop, flags.bus);
  if (!bus.ok()) {
    WriteError(error_file, bus.error());
    service::RunLoop(&loop);
    return 2;
  }
  bus::Subjects subjects(flags.ns);
  // Ends the worker before it serves: says why (for the node agent's exit report), then lets
  // the bus and the loop close, so nothing is left open.
  auto fail = [&](int code, const std::string& why) {
    spdlog::error("{}", why);
    WriteError(error_file, why);
    (*bus)->Close();
    bus->reset();
    service::RunLoop(&loop);
    return code;
  };

  replica::RuntimeContext context;
  context.spec = *spec;
  context.identity = replica::ReplicaIdentity{replica_id, spec->name, spec->version};
  context.scratch_dir =
      scratch_dir.empty() ? std::filesystem::current_path().string() : scratch_dir;
  context.error_file = error_file;
  if (!spec->artifact.empty()) {
    if (cache_dir.empty()) cache_dir = context.scratch_dir + "/artifacts";
    auto code = replica::EnsureArtifact(&loop, **bus, subjects, cache_dir, *spec);
    if (!code.ok()) return fail(3, code.error());
    context.artifact_path = *code;
  }
  if (run_as.has_value()) {
    // Everything that needs the agent's rights is done: the log is open, the bus connected,
    // the code fetched into the node's cache. User code runs as the worker user from here on.
    Status switched = replica::BecomeWorkerUser(*run_as, agent_pid);
    if (!switched.ok()) return fail(2, switched.message());
    setenv("HOME", context.scratch_dir.c_str(), 1);
    spdlog::info("running as user {} (uid {})", run_as->name, run_as->uid);
  }
  auto runtime = replica::MakeRuntime(context);
  if (!runtime.ok()) return fail(3, runtime.error());
  replica::WorkerOptions options{replica_id, node_id, *spec, spec->version, request_log};
  auto worker = std::make_unique<replica::ReplicaWorker>(&loop, **bus, subjects,
                                                         std::move(options), std::move(*runtime));
  Status started = worker->Start();
  if (!started.ok()) {
    worker.reset();
    return fail(2, started.message());
  }
  if (ready_fd > 2) {
    // The agent reports the replica as ready from now on; a restarted controller adopts it as
    // RUNNING rather than STARTING.
    (void)!write(ready_fd, "R", 1);
    close(ready_fd);
  }
  service::SignalWatcher signals(&loop, [&](int) {
    worker->Drain([&] {
      signals.Close();
      (*bus)->Close();
    });
  });
  service::RunLoop(&loop);
  if (!worker->WaitForUserCode(std::chrono::milliseconds(200))) {
    // A handler or health check that never returns cannot be joined; leave without it.
    spdlog::shutdown();
    _exit(0);
  }
  worker.reset();
  return 0;
}

int RunAgent(int argc, char** argv) {
  CLI::App app{"serve-replica: the node agent that runs replica worker processes"};
  service::CommonFlags flags;
  replica::NodeAgentOptions options;
  std::string resources_json;
  options.num_cpus = std::max(1u, std::thread::hardware_concurrency());
  service::AddCommonFlags(app, flags);
  app.add_option("--node-id", options.node_id, "Node id (default: node-<random>)")
      ->envname("SERVE_NODE_ID")
      ->check(service::IdFlag("node id"));
  app.add_option("--num-cpus", options.num_cpus, "CPUs this node offers to replicas")
      ->capture_default_str()
      ->check(service::NumberIn(0, 1e6));
  app.add_option("--num-gpus", options.num_gpus, "GPUs this node offers to replicas")
      ->capture_default_str()
      ->check(service::NumberIn(0, 1e6));
  app.add_option("--resources", resources_json, "Custom resources as JSON: '{\"name\": 2}'");
  app.add_option("--work-dir", options.work_dir,
                 "Where replica specs live (default: ~/.serve/<namespace>/nodes/<node-id>)")
      ->envname("SERVE_NODE_WORK_DIR");
  app.add_option("--artifact-cache-keep-s", options.artifact_cache_keep_s,
                 "Remove cached code no replica of this node runs and none has started with "
                 "for this many seconds (0: keep it)")
      ->envname("SERVE_ARTIFACT_CACHE_KEEP_S")
      ->capture_default_str()
      ->check(service::NumberIn(0, 1e9));
  app.add_option("--heartbeat-period-s", options.heartbeat_period_s)
      ->capture_default_str()
      ->check(service::NumberIn(0.05, 60));  // the range the controller accepts from a heartbeat
  app.add_option("--metrics-host", options.metrics_host, "Address of the /metrics server")
      ->envname("SERVE_NODE_METRICS_HOST")
      ->capture_default_str();
  app.add_option("--metrics-port", options.metrics_port,
                 "Serve the node's and its replicas' Prometheus metrics at /metrics on this port "
                 "(0: none)")
      ->envname("SERVE_NODE_METRICS_PORT")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  std::string worker_user, worker_password;
  app.add_option("--worker-nats-user", worker_user,
                 "The NATS user workers connect as (the `worker` role); default: the agent's")
      ->envname("SERVE_WORKER_NATS_USER");
  app.add_option("--worker-nats-password", worker_password, "That user's password")
      ->envname("SERVE_WORKER_NATS_PASSWORD");
  std::string worker_user_name;
  app.add_option("--worker-user", worker_user_name,
                 "Run workers (user code) as this user, a name or a uid; default when the agent "
                 "runs as root: nobody. `root` keeps them root")
      ->envname("SERVE_WORKER_USER");
  std::string worker_signing_key_file;
  app.add_option("--worker-signing-key", worker_signing_key_file,
                 "A file with the account's scoped signing key for workers (operator mode): "
                 "each worker gets a NATS user of its own, limited to its replica")
      ->envname("SERVE_WORKER_SIGNING_KEY_FILE");
  CLI11_PARSE(app, argc, argv);

  if (options.node_id.empty()) options.node_id = "node-" + service::RandomHex(6);
  Status init = service::Init(flags, "node", log::Context{options.node_id, "", ""});
  if (!init.ok()) {
    fprintf(stderr, "serve-replica: %s\n", init.message().c_str());
    return 2;
  }
  if (!resources_json.empty()) {
    auto parsed = nlohmann::json::parse(resources_json, nullptr, false);
    if (!parsed.is_object()) {
      fprintf(stderr, "serve-replica: --resources must be a JSON object like '{\"tpu\": 2}'\n");
      return 2;
    }
    for (auto& [name, amount] : parsed.items()) {
      if (!amount.is_number() || amount.get<double>() < 0) {
        fprintf(stderr, "serve-replica: --resources: '%s' must be a non-negative number\n",
                name.c_str());
        return 2;
      }
      options.custom_resources[name] = amount.get<double>();
    }
  }
  auto resolved_worker_user = replica::ResolveWorkerUser(worker_user_name, geteuid());
  if (!resolved_worker_user.ok()) {
    fprintf(stderr, "serve-replica: %s\n", resolved_worker_user.error().c_str());
    return 2;
  }
  options.worker_user = *resolved_worker_user;
  if (options.work_dir.empty()) {
    // Root's home is out of its workers' reach: a root agent keeps its files where a system
    // service does.
    const char* home = getenv("HOME");
    std::string base =
        geteuid() == 0 ? "/var/lib/serve" : std::string(home ? home : "/tmp") + "/.serve";
    options.work_dir = base + "/" + flags.ns + "/nodes/" + options.node_id;
  }
  options.worker_exe = SelfExe();
  options.metrics_name_prefix = flags.metrics_name_prefix;
  // Workers reach the same bus as their agent, however the agent was told about it, but as
  // their own user when one is given; the credentials go on their stdin, not in their
  // environment.
  bus::Options worker_bus = flags.bus;
  if (!worker_user.empty()) {
    worker_bus.user = worker_user;
    worker_bus.password = worker_password;
    worker_bus.token.clear();
  }
  if (!worker_signing_key_file.empty()) {
    // Operator mode: no shared worker credentials at all; each worker gets a user minted for
    // its replica, which the server holds to that replica's subjects.
    auto signing = ReadWorkerSigningKey(worker_signing_key_file);
    if (!signing.ok()) {
      fprintf(stderr, "serve-replica: %s\n", signing.error().c_str());
      return 2;
    }
    worker_bus.user.clear();
    worker_bus.password.clear();
    worker_bus.token.clear();
    worker_bus.creds_file.clear();
    options.mint_worker_bus_secrets =
        [worker_bus, signing = std::make_shared<bus::WorkerSigningKey>(std::move(*signing))](
            const std::string& replica_id) -> Result<std::string> {
      auto user = bus::MintWorkerUser(*signing, replica_id);
      if (!user.ok()) return user.status();
      bus::Options own = worker_bus;
      own.user_jwt = user->jwt;
      own.user_seed = user->seed;
      return bus::SecretText(own);
    };
  } else {
    auto worker_secrets = bus::SecretText(worker_bus);
    if (!worker_secrets.ok()) {
      fprintf(stderr, "serve-replica: %s\n", worker_secrets.error().c_str());
      return 2;
    }
    options.worker_bus_secrets = *worker_secrets;
  }
  options.worker_env = bus::PublicEnvironmentFor(worker_bus);
  options.worker_env["SERVE_NAMESPACE"] = flags.ns;
  options.worker_env["SERVE_LOG_FORMAT"] = flags.log_format;
  options.worker_env["SERVE_LOG_LEVEL"] = flags.log_level;

  uv_loop_t loop;
  uv_loop_init(&loop);
  flags.bus.name = "serve-replica " + options.node_id;
  flags.bus.inbox_prefix = bus::InboxPrefix(flags.ns, bus::Role::kNode);
  auto bus = bus::Bus::Connect(&loop, flags.bus);
  if (!bus.ok()) {
    fprintf(stderr, "serve-replica: %s\n", bus.error().c_str());
    uv_loop_close(&loop);
    return 2;
  }
  bus::Subjects subjects(flags.ns);
  auto agent = std::make_unique<replica::NodeAgent>(&loop, **bus, subjects, options);
  Status started = agent->Start();
  if (!started.ok()) {
    fprintf(stderr, "serve-replica: %s\n", started.message().c_str());
    // The bus's handles close on the loop: one more turn lets them go, so the exit leaves
    // nothing allocated behind (the sanitizer build checks).
    agent.reset();
    (*bus)->Close();
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return 2;
  }
  std::unique_ptr<service::SignalWatcher> signals;
  auto shutdown = [&] {
    agent->Shutdown([&] {
      signals->Close();
      (*bus)->Close();
    });
  };
  signals = std::make_unique<service::SignalWatcher>(&loop, [&](int) { shutdown(); });
  Status subscribed = service::OnShutdownNotice(**bus, subjects, [&](const std::string& reason) {
    spdlog::info("shutdown requested on the bus: {}", reason);
    shutdown();
  });
  if (!subscribed.ok()) spdlog::warn("{}", subscribed.message());
  service::RunLoop(&loop);
  agent.reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "worker") {
    // The agent marks its descriptors close-on-exec before it spawns a worker, but nats.c
    // opens sockets without O_CLOEXEC on its own threads (a reconnect, say), so one can appear
    // between the marking and the fork. Nothing of the worker's own is open yet here: whatever
    // is above stderr was inherited, and is closed before it can leak further (to a command's
    // process) or keep the agent's connections open.
    // The one descriptor handed over on purpose is the readiness pipe (--ready-fd).
    int ready_fd = -1;
    for (int i = 2; i + 1 < argc; ++i) {
      if (std::string(argv[i]) == "--ready-fd") ready_fd = std::atoi(argv[i + 1]);
    }
    int inherited = service::CloseInheritedDescriptors(ready_fd);
    return RunWorker(argc - 1, argv + 1, inherited);
  }
  return RunAgent(argc, argv);
}
