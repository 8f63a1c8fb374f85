// serve-checkpointer: owns a namespace's recovery store and answers <ns>.ckpt.{put,get}.

#include <spdlog/spdlog.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "checkpointer/checkpointer.h"
#include "checkpointer/store.h"
#include "service/service.h"

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
  app.add_option("--checkpoint-path", checkpoint_path,
                 "Where checkpoints live: file:///dir (default "
                 "file://$HOME/.serve/<namespace>/checkpoint)")
      ->envname("SERVE_CHECKPOINT_PATH");
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
    staging_dir = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                  "/serve-uploads-" + flags.ns + "-" + std::to_string(getpid());
  }
  checkpointer::Checkpointer checkpointer(&loop, **bus, subjects, **store, staging_dir);
  checkpointer.SetStoreUri(checkpoint_path);
  std::unique_ptr<service::SignalWatcher> signals;
  auto shutdown = [&](const std::string& why) {
    spdlog::info("checkpointer stopping: {}", why);
    checkpointer.Stop();
    (*bus)->Close();
    if (signals) signals->Close();
  };
  checkpointer.SetShutdownHandler(shutdown);
  Status started = checkpointer.Start();
  if (!started.ok()) return Fail(1, started.message());
  signals = std::make_unique<service::SignalWatcher>(
      &loop, [&](int signal) { shutdown(signal == SIGINT ? "SIGINT" : "SIGTERM"); });

  spdlog::info("checkpointer ready: store {}, namespace {}", (*store)->Describe(), flags.ns);
  return service::RunLoop(&loop);
}
