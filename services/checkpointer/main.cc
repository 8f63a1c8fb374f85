// serve-checkpointer: owns a namespace's recovery store and answers <ns>.ckpt.{put,get}.

#include <spdlog/spdlog.h>
#include <uv.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "checkpointer/checkpointer.h"
#include "checkpointer/store.h"
#include "service/flags.h"

namespace {

// Exit code for a configuration the service cannot run with (bad flags, unusable store).
constexpr int kExitUsage = 2;

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "serve-checkpointer: %s\n", message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace serve;

  CLI::App app{"Serve checkpointer: keeps the recovery store of one namespace",
               "serve-checkpointer"};
  service::CommonFlags flags;
  service::AddCommonFlags(app, flags);
  std::string checkpoint_path;
  std::string staging_dir;
  app.add_option("--staging-dir", staging_dir,
                 "Where artifact uploads are assembled before they are stored "
                 "(default: $TMPDIR/serve-uploads-<namespace>-<pid>)");
  checkpointer::Checkpointer::UploadLimits limits;
  app.add_option("--max-artifact-bytes", limits.max_artifact_bytes,
                 "The largest code artifact (a shared library or a working directory's tar) an "
                 "upload may declare; larger ones are refused at their first chunk")
      ->envname("SERVE_MAX_ARTIFACT_BYTES")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 50));
  app.add_option("--max-uploads-per-client", limits.max_uploads_per_client,
                 "Artifact uploads one client (one bus connection's reply inbox) may have in "
                 "progress at once")
      ->envname("SERVE_MAX_UPLOADS_PER_CLIENT")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  double blob_keep_s = 86400;
  app.add_option("--blob-keep-s", blob_keep_s,
                 "Remove a stored code artifact once no deployment of the stored controller state "
                 "has used it for this long (0: keep every artifact)")
      ->envname("SERVE_BLOB_KEEP_S")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--checkpoint-path", checkpoint_path,
                 "Where checkpoints live: file:///dir (default "
                 "file://$HOME/.serve/<namespace>/checkpoint)")
      ->envname("SERVE_CHECKPOINT_PATH");
  std::string metrics_host = "127.0.0.1";
  int metrics_port = 0;
  app.add_option("--metrics-host", metrics_host, "Address of the /metrics server")
      ->envname("SERVE_CHECKPOINTER_METRICS_HOST")
      ->capture_default_str();
  app.add_option("--metrics-port", metrics_port,
                 "Serve the checkpointer's Prometheus metrics (its store's latency and errors) at "
                 "/metrics on this port (0: none)")
      ->envname("SERVE_CHECKPOINTER_METRICS_PORT")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  CLI11_PARSE(app, argc, argv);

  // First, because the default store path embeds the namespace.
  Status init = service::Init(flags, "checkpointer");
  if (!init.ok()) return Fail(kExitUsage, init.message());
  if (checkpoint_path.empty()) checkpoint_path = checkpointer::DefaultStoreUri(flags.ns);

  // Before the bus: a checkpointer that cannot store must not answer as if it could.
  auto store = checkpointer::OpenStore(checkpoint_path);
  if (!store.ok()) return Fail(kExitUsage, store.error());

  uv_loop_t loop;
  uv_loop_init(&loop);
  bus::Options bus_options = flags.bus;
  bus_options.name = "serve-checkpointer";
  bus_options.retry_initial_connect = true;
  auto bus = bus::Bus::Connect(&loop, bus_options);
  if (!bus.ok()) return Fail(1, bus.error());

  bus::Subjects subjects(flags.ns);
  if (staging_dir.empty()) {
    const char* tmp = getenv("TMPDIR");
    std::string parent = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    std::string prefix = "serve-uploads-" + flags.ns + "-";
    // The default directory is per process; those of checkpointers killed before they could
    // remove theirs go here.
    checkpointer::RemoveDeadStagingDirs(parent, prefix);
    staging_dir = parent + "/" + prefix + std::to_string(getpid());
  }
  checkpointer::Checkpointer checkpointer(&loop, **bus, subjects, **store, staging_dir,
                                          flags.metrics_name_prefix);
  checkpointer.SetStoreUri(checkpoint_path);
  checkpointer.SetUploadLimits(limits);
  checkpointer.SetBlobCollection(blob_keep_s);
  metrics::Endpoint metrics_endpoint(&loop, checkpointer.metrics(), "the checkpointer");
  std::unique_ptr<service::SignalWatcher> signals;
  auto shutdown = [&](const std::string& why) {
    spdlog::info("checkpointer stopping: {}", why);
    checkpointer.Stop();
    metrics_endpoint.Close();
    (*bus)->Close();
    if (signals) signals->Close();
  };
  checkpointer.SetShutdownHandler(shutdown);
  Status started = checkpointer.Start();
  if (!started.ok()) return Fail(1, started.message());
  if (metrics_port != 0) metrics_endpoint.Listen(metrics_host, metrics_port, "--metrics-port");
  signals = std::make_unique<service::SignalWatcher>(
      &loop, [&](int signal) { shutdown(signal == SIGINT ? "SIGINT" : "SIGTERM"); });

  spdlog::info("checkpointer ready: store {}, namespace {}", (*store)->Describe(), flags.ns);
  return service::RunLoop(&loop);
}
