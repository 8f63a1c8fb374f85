// serve-proxy: HTTP ingress for one node.
#include <spdlog/spdlog.h>

#include "bus/roles.h"
#include "proxy/proxy.h"
#include "service/flags.h"

using namespace serve;

int main(int argc, char** argv) {
  CLI::App app{"serve-proxy: routes HTTP requests to replicas over the bus"};
  service::CommonFlags flags;
  proxy::ProxyOptions options;
  options.http.port = 8000;
  service::AddCommonFlags(app, flags);
  app.add_option("--proxy-id", options.proxy_id, "Id (default: proxy-<random>)")
      ->check(service::IdFlag("proxy id"));
  app.add_option("--http-host", options.http.host, "Address to listen on")
      ->envname("SERVE_HTTP_HOST")
      ->capture_default_str();
  app.add_option("--http-port", options.http.port, "Port to listen on")
      ->envname("SERVE_HTTP_PORT")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--http-listen-fd", options.http.listen_fd,
                 "Accept on this inherited listening socket instead of binding (for a "
                 "supervisor that keeps the socket open while the proxy restarts)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--request-timeout-s", options.request_timeout_s,
                 "How long a replica may take before the client gets 504")
      ->capture_default_str()
      ->check(service::NumberIn(0.001, 86400));
  app.add_option("--max-queued-requests", options.max_queued_per_deployment,
                 "Requests per deployment that wait for a replica with room before 503")
      ->capture_default_str();
  app.add_option("--bus-wait-s", options.bus_wait_s,
                 "While NATS is unreachable, how long a request waits for it before 503 with "
                 "Retry-After (0: answer at once)")
      ->envname("SERVE_PROXY_BUS_WAIT_S")
      ->capture_default_str()
      ->check(service::NumberIn(
          0, 60, "requests hold a connection that long while NATS is away, so keep it short"));
  app.add_option("--max-body-bytes", options.http.max_body_bytes, "Largest request body (413)")
      ->capture_default_str();
  app.add_option("--max-connection-buffer-bytes", options.http.max_connection_buffer_bytes,
                 "What one client connection may hold (answers it has not read, requests not "
                 "yet answered) before the proxy stops reading from it until the client reads")
      ->capture_default_str()
      ->check(CLI::Range(size_t{4096}, size_t{1} << 40));
  app.add_flag("--metrics,!--no-metrics", options.metrics,
               "Count requests and serve them in Prometheus' format at GET /-/metrics")
      ->capture_default_str();
  app.add_flag("--access-log,!--no-access-log", options.access_log,
               "Log one line per request: method, path, status, latency, replica, request id")
      ->envname("SERVE_PROXY_ACCESS_LOG")
      ->capture_default_str();
  bool nats_io_on_loop = true;
  app.add_flag("--nats-io-on-loop,!--no-nats-io-on-loop", nats_io_on_loop,
               "Read and write the NATS socket on the proxy's loop instead of on a thread of "
               "nats.c's own: the requests of one turn of the loop go to NATS in one write, "
               "and no reader thread wakes per reply; docs/benchmarks.md has the figures")
      ->envname("SERVE_PROXY_NATS_IO_ON_LOOP")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  Status init = service::Init(flags, "proxy");
  if (!init.ok()) {
    fprintf(stderr, "serve-proxy: %s\n", init.message().c_str());
    return 2;
  }
  if (options.proxy_id.empty()) options.proxy_id = "proxy-" + service::RandomHex(6);
  options.metrics_name_prefix = flags.metrics_name_prefix;

  auto open_files = proxy::RaiseOpenFileLimit();
  if (open_files.ok()) {
    spdlog::info("open file limit: {} (each client connection takes one)", *open_files);
  } else {
    spdlog::warn("{}; the proxy can hold fewer client connections than it could",
                 open_files.error());
  }

  uv_loop_t loop;
  uv_loop_init(&loop);
  flags.bus.name = "serve-proxy " + options.proxy_id;
  flags.bus.inbox_prefix = bus::InboxPrefix(flags.ns, bus::Role::kProxy);
  flags.bus.io_on_loop = nats_io_on_loop;
  auto bus = bus::Bus::Connect(&loop, flags.bus);
  if (!bus.ok()) {
    fprintf(stderr, "serve-proxy: %s\n", bus.error().c_str());
    return 2;
  }
  bus::Subjects subjects(flags.ns);
  proxy::Proxy proxy(&loop, **bus, subjects, options);
  Status started = proxy.Start();
  if (!started.ok()) {
    fprintf(stderr, "serve-proxy: %s\n", started.message().c_str());
    return 2;
  }
  std::unique_ptr<service::SignalWatcher> signals;
  bool stopping = false;
  auto stop = [&] {
    if (stopping) return;
    stopping = true;
    signals->Close();
    proxy.Stop([&] { (*bus)->Close(); });
  };
  signals = std::make_unique<service::SignalWatcher>(&loop, [&](int) { stop(); });
  Status subscribed = service::OnShutdownNotice(**bus, subjects, [&](const std::string& reason) {
    spdlog::info("shutdown requested on the bus: {}", reason);
    stop();
  });
  if (!subscribed.ok()) spdlog::warn("{}", subscribed.message());
  return service::RunLoop(&loop);
}
