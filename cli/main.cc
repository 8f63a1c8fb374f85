// serve: the command line for a Serve instance.

#include <unistd.h>

#include <iostream>

#include "bus/flags.h"
#include "bus/roles.h"
#include "bus/subjects.h"
#include "cli/bus_credentials.h"
#include "cli/commands.h"
#include "cli/lifecycle.h"
#include "cli/logs.h"
#include "log/log.h"
#include "service/flags.h"

using namespace serve;

// The options of a local instance that `serve start` and `serve run` share.
static void AddInstanceOptions(CLI::App* command, cli::StartOptions& options) {
  command->add_option("--checkpoint-path", options.checkpoint_path,
                      "Recovery store URI (default: file://<run dir>/checkpoint)");
  command->add_option("--http-host", options.http_host, "Proxy address")->capture_default_str();
  command->add_option("--http-port", options.http_port, "Proxy port")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  command->add_option("--dashboard-host", options.dashboard_host, "REST API and dashboard address")
      ->capture_default_str();
  command->add_option("--dashboard-port", options.dashboard_port,
                      "REST API and dashboard port (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  command->add_option("--node-metrics-port", options.node_metrics_port,
                      "Port of the node agent's /metrics, with its replicas' figures (0: none; "
                      "the proxy's are at /-/metrics, the controller's at /metrics on the "
                      "dashboard port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  command
      ->add_option("--checkpointer-metrics-port", options.checkpointer_metrics_port,
                   "Port of the checkpointer's /metrics: its recovery store's latency and "
                   "errors (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  command->add_flag("--insecure-bus", options.insecure_bus,
                    "Start nats-server without users or permissions: anyone who reaches it can "
                    "deploy code and read every request (default: a user per role, "
                    "docs/security.md)");
  command
      ->add_option("--bus-auth", options.bus_auth,
                   "How nats-server tells users apart: operator (JWTs: a user per role and one "
                   "per worker, limited to its replica) or password (a password per role)")
      ->capture_default_str()
      ->check(CLI::IsMember({"operator", "password"}));
  command
      ->add_option("--nats-monitor-port", options.nats_monitor_port,
                   "Serve nats-server's monitoring (/connz, /varz) on this port (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
}

int main(int argc, char** argv) {
  CLI::App app{"serve: run user code behind HTTP, scaled, health-checked and recoverable"};
  app.require_subcommand(1);
  cli::GlobalOptions global;
  bus::AddBusFlags(app, global.bus, global.ns);
  app.add_option("--run-dir", global.run_dir,
                 "Pid and log files of the local instance (default: ~/.serve/<namespace>; "
                 "/var/lib/serve/<namespace> for root)")
      ->envname("SERVE_RUN_DIR");

  cli::StartOptions start;
  auto* start_cmd =
      app.add_subcommand("start", "Start a local instance (or report the running one)");
  AddInstanceOptions(start_cmd, start);
  start_cmd->add_option("--num-cpus", start.num_cpus, "CPUs the local node offers (default: all)")
      ->check(service::NumberIn(0, 1e6));
  start_cmd->add_option("--timeout-s", start.timeout_s, "How long to wait for readiness")
      ->capture_default_str()
      ->check(service::NumberIn(0, 86400));
  start_cmd->add_flag("--foreground", start.foreground,
                      "Stay until SIGTERM or Ctrl-C, then stop the instance; exit non-zero if it "
                      "ends otherwise (for systemd: deploy/systemd)");

  cli::DeployOptions deploy;
  bool no_wait = false;
  auto* deploy_cmd = app.add_subcommand("deploy", "Create or update the deployments in a file");
  deploy_cmd->add_option("file", deploy.file, "Config file (YAML)")->required();
  deploy_cmd->add_flag("--no-wait", no_wait, "Return once the controller accepted the change");
  deploy_cmd->add_option("--timeout-s", deploy.timeout_s, "How long to wait for HEALTHY")
      ->capture_default_str()
      ->check(service::NumberIn(0, 86400));

  std::vector<std::string> delete_names;
  auto* delete_cmd = app.add_subcommand("delete", "Delete deployments by name");
  delete_cmd->add_option("names", delete_names, "Deployment names")->required();

  cli::StatusOptions status;
  auto* status_cmd = app.add_subcommand("status", "Show deployments, replicas, nodes, proxies");
  status_cmd->add_option("names", status.names, "Only these deployments");
  status_cmd->add_flag("--json", status.json, "Print JSON (with --watch: one object per line)");
  status_cmd->add_flag("--watch", status.watch, "Then print events as they happen, until Ctrl-C");

  bool config_json = false;
  auto* config_cmd = app.add_subcommand(
      "config", "Print the deployments as they are now: a config file `serve deploy` takes back");
  config_cmd->add_flag("--json", config_json,
                       "Print JSON (what GET /api/serve/deployments/ gives)");

  cli::RunOptions run;
  auto* run_cmd = app.add_subcommand(
      "run", "Deploy a file in the foreground (starting Serve if needed); Ctrl-C undoes it all");
  run_cmd->add_option("file", run.deploy.file, "Config file (YAML)")->required();
  AddInstanceOptions(run_cmd, run.instance);

  cli::LogsOptions logs;
  auto* logs_cmd = app.add_subcommand(
      "logs", "Print a replica's log, or those of a deployment's replicas, from their nodes");
  logs_cmd->add_option("target", logs.target, "A deployment's name or a replica's id")->required();
  logs_cmd->add_flag("-f,--follow", logs.follow, "Then print new lines as they come, until Ctrl-C");
  logs_cmd->add_option("--tail", logs.tail, "Start with this many of the last lines of each")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));

  auto* shutdown_cmd = app.add_subcommand("shutdown", "Stop every service of the namespace");

  auto* nats_config_cmd = app.add_subcommand(
      "nats-config",
      "Print a nats-server configuration with a user per role for the namespace; each reads "
      "its password from $SERVE_NATS_PASSWORD_<ROLE> (deploy/nats/nats-server.conf is this "
      "for namespace 'serve')");

  // Started by `serve start` in the background; not for people, so not in --help.
  cli::SuperviseOptions supervise;
  auto* supervise_cmd =
      app.add_subcommand("supervise", "Run and restart the processes of a local instance");
  supervise_cmd->group("");
  AddInstanceOptions(supervise_cmd, supervise.instance);
  supervise_cmd->add_option("--num-cpus", supervise.instance.num_cpus)
      ->check(service::NumberIn(0, 1e6));
  supervise_cmd->add_option("--nats-host", supervise.nats_host, "Run nats-server on this host");
  supervise_cmd->add_option("--nats-port", supervise.nats_port, "... and port")
      ->check(CLI::Range(1, 65535));

  CLI11_PARSE(app, argc, argv);
  if (Status ns = bus::ValidateNamespace(global.ns); !ns.ok()) {
    fprintf(stderr, "error: %s\n", ns.message().c_str());
    return 2;
  }
  // A local instance's admin credentials, unless flags or the environment give some.
  if (!cli::HasBusCredentials(global.bus)) {
    std::string admin_creds = cli::RoleCredsPath(cli::RunDirPath(global), bus::Role::kAdmin);
    if (access(admin_creds.c_str(), F_OK) == 0) {
      global.bus.creds_file = admin_creds;
      global.bus_credentials_from_run_dir = true;
    }
  }
  if (!cli::HasBusCredentials(global.bus)) {
    auto stored = cli::ReadBusCredentials(cli::BusCredentialsPath(cli::RunDirPath(global)));
    if (!stored.ok()) {
      fprintf(stderr, "error: %s\n", stored.error().c_str());
      return 2;
    }
    if (stored->has_value()) {
      const cli::BusUser& admin = (*stored)->Of(bus::Role::kAdmin);
      global.bus.user = admin.user;
      global.bus.password = admin.password;
      global.bus_credentials_from_run_dir = true;
    }
  }
  deploy.wait = !no_wait;
  // Library log lines (the bus's) go to stderr, so that stdout stays what the command prints.
  log::Options log_options;
  log_options.component = "serve";
  log_options.level = "warn";
  (void)log::Init(log_options);
  if (*nats_config_cmd) {
    std::cout << "# Generated by `serve --namespace " << global.ns
              << " nats-config`. Set SERVE_NATS_PASSWORD_<ROLE> for each role\n"
                 "# before nats-server starts. nats-server reads each value as a configuration\n"
                 "# value: use letters and digits starting with a letter (`echo \"p$(openssl rand\n"
                 "# -hex 16)\"`), or put the password in double quotes inside the variable.\n";
    std::cout << bus::NatsServerConfig(
        global.ns, [](bus::Role role) { return "$" + bus::PasswordVariable(role); });
    return 0;
  }
  if (*start_cmd) return cli::StartInstance(global, start);
  if (*deploy_cmd) return cli::DeployFile(global, deploy);
  if (*delete_cmd) return cli::DeleteDeployments(global, delete_names);
  if (*status_cmd) return cli::ShowStatus(global, status);
  if (*logs_cmd) return cli::ShowLogs(global, logs);
  if (*config_cmd) return cli::ShowConfig(global, config_json);
  if (*shutdown_cmd) return cli::ShutdownInstance(global);
  if (*run_cmd) return cli::RunForeground(global, run);
  if (*supervise_cmd) {
    if (supervise.instance.checkpoint_path.empty()) {
      fprintf(stderr, "error: serve supervise needs --checkpoint-path\n");
      return 2;
    }
    return cli::Supervise(global, supervise);
  }
  return 2;
}
