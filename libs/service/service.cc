#include "service/service.h"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <random>

#include "log/log.h"
#include "metrics/metrics.h"
#include "wire/codec.h"

namespace serve::service {
namespace {

void CloseAndDelete(uv_handle_t* handle) {
  uv_close(handle, [](uv_handle_t* h) {
    if (h->type == UV_SIGNAL) {
      delete reinterpret_cast<uv_signal_t*>(h);
    } else if (h->type == UV_TIMER) {
      delete reinterpret_cast<uv_timer_t*>(h);
    }
  });
}

}  // namespace

Status OnShutdownNotice(bus::Bus& bus, const bus::Subjects& subjects,
                        std::function<void(const std::string& reason)> on_notice) {
  return bus.Subscribe(subjects.shutdown, [subject = subjects.shutdown,
                                           on_notice = std::move(on_notice)](bus::Message& m) {
    auto notice = wire::Unpack<wire::ShutdownNotice>(m.data);
    if (!notice.ok()) {
      spdlog::warn("ignored a message on {}: {}", subject, notice.error());
      return;
    }
    on_notice(notice->reason);
  });
}

Status Init(const CommonFlags& flags, const std::string& component, log::Context context) {
  Status ns = bus::ValidateNamespace(flags.ns);
  if (!ns.ok()) return ns;
  Status prefix = metrics::ValidatePrefix(flags.metrics_name_prefix);
  if (!prefix.ok()) return prefix;
  auto format = log::ParseFormat(flags.log_format);
  if (!format.ok()) return format.status();
  log::Options options;
  options.component = component;
  options.format = *format;
  options.level = flags.log_level;
  options.file = flags.log_file;
  options.max_file_mb = flags.log_max_size_mb;
  options.max_files = flags.log_max_files;
  if (context.node.empty()) context.node = HostName();
  return log::Init(options, context);
}

SignalWatcher::SignalWatcher(uv_loop_t* loop, std::function<void(int)> on_signal)
    : on_signal_(std::move(on_signal)) {
  for (auto* slot : {&sigint_, &sigterm_}) {
    *slot = new uv_signal_t;
    uv_signal_init(loop, *slot);
    (*slot)->data = this;
  }
  auto callback = [](uv_signal_t* handle, int signal) {
    static_cast<SignalWatcher*>(handle->data)->on_signal_(signal);
  };
  uv_signal_start(sigint_, callback, SIGINT);
  uv_signal_start(sigterm_, callback, SIGTERM);
}

SignalWatcher::~SignalWatcher() { Close(); }

void SignalWatcher::Close() {
  for (auto* slot : {&sigint_, &sigterm_}) {
    if (*slot != nullptr) CloseAndDelete(reinterpret_cast<uv_handle_t*>(*slot));
    *slot = nullptr;
  }
}

RepeatingTimer::RepeatingTimer(uv_loop_t* loop, double period_s, std::function<void()> on_tick)
    : on_tick_(std::move(on_tick)), timer_(new uv_timer_t) {
  uv_timer_init(loop, timer_);
  timer_->data = this;
  auto ms = static_cast<uint64_t>(std::max(1.0, period_s * 1000));
  uv_timer_start(
      timer_, [](uv_timer_t* t) { static_cast<RepeatingTimer*>(t->data)->on_tick_(); }, ms, ms);
}

RepeatingTimer::~RepeatingTimer() { Close(); }

void RepeatingTimer::Close() {
  if (timer_ != nullptr) CloseAndDelete(reinterpret_cast<uv_handle_t*>(timer_));
  timer_ = nullptr;
}

OneShotTimer::OneShotTimer(uv_loop_t* loop) : timer_(new uv_timer_t) {
  uv_timer_init(loop, timer_);
  timer_->data = this;
}

OneShotTimer::~OneShotTimer() {
  if (timer_ != nullptr) CloseAndDelete(reinterpret_cast<uv_handle_t*>(timer_));
}

void OneShotTimer::Start(double delay_s, std::function<void()> fn) {
  fn_ = std::move(fn);
  auto ms = static_cast<uint64_t>(std::max(0.0, delay_s * 1000));
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<OneShotTimer*>(t->data);
        auto fn = std::move(self->fn_);
        self->fn_ = nullptr;
        if (fn) fn();
      },
      ms, 0);
}

void OneShotTimer::Stop() {
  uv_timer_stop(timer_);
  fn_ = nullptr;
}

bool OneShotTimer::active() const {
  return uv_is_active(reinterpret_cast<const uv_handle_t*>(timer_)) != 0;
}

std::string RandomHex(size_t length) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          static_cast<uint64_t>(getpid()) << 32);
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(length, '0');
  for (char& c : out) c = kDigits[rng() & 15];
  return out;
}

std::string HostName() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

int64_t UnixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int RunLoop(uv_loop_t* loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}

}  // namespace serve::service
