// serve-controller: desired state, placement, health verdicts and the route table for one
// namespace. Exactly one runs per namespace.
#include <spdlog/spdlog.h>

#include "bus/roles.h"
#include "controller/api.h"
#include "controller/controller.h"
#include "service/flags.h"

using namespace serve;

int main(int argc, char** argv) {
  CLI::App app{"serve-controller: keeps the deployments of one namespace as asked"};
  service::CommonFlags flags;
  controller::ControllerOptions options;
  service::AddCommonFlags(app, flags);
  app.add_option("--controller-id", options.controller_id, "Id (default: controller-<random>)")
      ->check(service::IdFlag("controller id"));
  app.add_option("--checkpoint-path", options.checkpoint_path,
                 "The store the checkpointer must serve (as given to serve-checkpointer); "
                 "another is refused. Default: whichever checkpointer answers")
      ->envname("SERVE_CHECKPOINT_PATH");
  app.add_option("--adoption-grace-s", options.reconciler.adoption_grace_s,
                 "After a restart, wait this long for running replicas to be reported before "
                 "starting new ones")
      ->capture_default_str()
      ->check(service::NumberIn(0, 3600));
  app.add_option("--reconnect-grace-s", options.reconciler.min_reconnect_grace_s,
                 "After the controller's bus connection returns, judge no node, proxy or replica "
                 "from missing heartbeats for this long (at least two of their periods)")
      ->capture_default_str()
      ->check(service::NumberIn(0, 3600));
  app.add_option("--max-starting-per-node", options.reconciler.max_starting_per_node,
                 "Replica starts a node may have unfinished before it is sent more")
      ->capture_default_str()
      ->check(service::NumberIn(1, 100000));
  app.add_option("--forget-lost-nodes-after-s", options.reconciler.forget_lost_nodes_after_s,
                 "Drop a lost node, proxy or supervisor from status after this long")
      ->capture_default_str()
      ->check(service::NumberIn(1, 1e7));
  // Bounds on deploy requests: each protects the controller (replicas to track and place) or
  // the workers (threads, memory) from a request that asks too much.
  config::Limits& limits = options.reconciler.limits;
  const config::Limits widest = config::Limits::Widest();
  app.add_option("--max-replicas-per-deployment", limits.max_replicas,
                 "The most num_replicas one deployment may ask for")
      ->capture_default_str()
      ->check(service::NumberIn(1, widest.max_replicas));
  app.add_option("--max-replicas-per-namespace", options.reconciler.max_replicas_per_namespace,
                 "The most replicas all deployments of the namespace may ask for together")
      ->capture_default_str()
      ->check(service::NumberIn(1, widest.max_replicas));
  app.add_option("--max-concurrent-queries", limits.max_concurrent_queries,
                 "The most max_concurrent_queries a deployment may ask for")
      ->capture_default_str()
      ->check(service::NumberIn(1, widest.max_concurrent_queries));
  app.add_option("--max-user-config-bytes", limits.max_user_config_bytes,
                 "The largest user_config (as JSON) a deployment may carry")
      ->capture_default_str()
      ->check(CLI::Range(size_t{2}, widest.max_user_config_bytes));
  std::string dashboard_host = "127.0.0.1";
  int dashboard_port = 8265;
  app.add_option("--dashboard-host", dashboard_host, "Address of the REST API and dashboard")
      ->capture_default_str()
      ->envname("SERVE_DASHBOARD_HOST");
  app.add_option("--dashboard-port", dashboard_port, "Port of the REST API and dashboard (0: none)")
      ->capture_default_str()
      ->envname("SERVE_DASHBOARD_PORT")
      ->check(CLI::Range(0, 65535));
  CLI11_PARSE(app, argc, argv);
  Status init = service::Init(flags, "controller");
  if (!init.ok()) {
    fprintf(stderr, "serve-controller: %s\n", init.message().c_str());
    return 2;
  }
  if (options.controller_id.empty()) options.controller_id = "controller-" + service::RandomHex(6);
  options.metrics_name_prefix = flags.metrics_name_prefix;
  if (options.reconciler.adoption_grace_s == 0) options.reconciler.adoption_grace_s = 2.5;

  uv_loop_t loop;
  uv_loop_init(&loop);
  flags.bus.name = "serve-controller";
  flags.bus.inbox_prefix = bus::InboxPrefix(flags.ns, bus::Role::kController);
  auto bus = bus::Bus::Connect(&loop, flags.bus);
  if (!bus.ok()) {
    fprintf(stderr, "serve-controller: %s\n", bus.error().c_str());
    return 2;
  }
  bus::Subjects subjects(flags.ns);

  // One controller per namespace: ask whether one already answers before taking over.
  {
    uv_timer_t wait;
    uv_timer_init(&loop, &wait);
    uv_timer_start(
        &wait, [](uv_timer_t*) {}, 50, 50);
    while (!(*bus)->connected()) uv_run(&loop, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&wait), nullptr);
    auto live = bus::RequestAndWait(&loop, **bus, subjects.ctl_ping, "{}", 1.0);
    if (live.ok()) {
      fprintf(stderr,
              "serve-controller: a controller is already running for namespace '%s': %s\n"
              "Stop it first (serve shutdown), or use another --namespace.\n",
              flags.ns.c_str(), live->data.c_str());
      return 1;
    }
  }

  controller::Controller controller(&loop, **bus, subjects, options);
  std::unique_ptr<service::SignalWatcher> signals;
  std::unique_ptr<controller::Api> api;
  auto stop = [&] {
    if (api) api->Close(nullptr);
    controller.Stop();
    signals->Close();
    (*bus)->Close();
  };
  signals = std::make_unique<service::SignalWatcher>(&loop, [&](int) { stop(); });
  controller.SetShutdownHandler(stop);
  int exit_code = 0;
  controller.SetFencedHandler([&](const std::string&) {
    exit_code = 3;  // another controller took over: not a clean shutdown
    stop();
  });
  (void)controller.Start();
  if (dashboard_port > 0) {
    http::ServerOptions http_options;
    http_options.host = dashboard_host;
    http_options.port = dashboard_port;
    api = std::make_unique<controller::Api>(&loop, controller, http_options);
    Status listening = api->Listen();
    if (listening.ok()) {
      spdlog::info("REST API on http://{}:{}/api/serve/", dashboard_host, api->port());
    } else {
      // The control plane matters more than its web view: go on without it.
      spdlog::error("no REST API: {}; pass --dashboard-port (0 for none)", listening.message());
      api.reset();
    }
  }
  spdlog::info("controller {} ready for namespace {}", options.controller_id, flags.ns);
  int loop_exit = service::RunLoop(&loop);
  return exit_code != 0 ? exit_code : loop_exit;
}
