#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "base/status.h"
#include "bus/bus.h"
#include "bus/subjects.h"
#include "log/log.h"

namespace serve::service {

// Flags every service takes: how to reach the bus, and how to log (service/flags.h adds them
// to a command line).
struct CommonFlags {
  bus::Options bus;
  std::string ns = "serve";
  std::string log_format = "text";
  std::string log_level = "info";
  // Empty: log to stderr. Otherwise a file rotated by size (see log::Options).
  std::string log_file;
  double log_max_size_mb = 100;
  int log_max_files = 5;
  // Replaces `serve_` at the start of every metric name (`ray_serve_` gives Ray Serve's).
  std::string metrics_name_prefix = "serve_";
};

// Validates the namespace and the metrics prefix, and installs the logger for `component`.
// Lines name `context.node`, or this machine's host name when it is empty.
Status Init(const CommonFlags& flags, const std::string& component, log::Context context = {});

// Calls `on_notice` with its reason when a ShutdownNotice arrives on <ns>.shutdown. Anyone who
// reaches the bus can publish there: anything but a verified notice is logged and ignored.
Status OnShutdownNotice(bus::Bus& bus, const bus::Subjects& subjects,
                        std::function<void(const std::string& reason)> on_notice);

// Calls `on_signal` on the loop thread when SIGINT or SIGTERM arrives. Close() releases the
// signal handles so the loop can end.
class SignalWatcher {
 public:
  SignalWatcher(uv_loop_t* loop, std::function<void(int signal)> on_signal);
  ~SignalWatcher();
  void Close();

 private:
  std::function<void(int)> on_signal_;
  uv_signal_t* sigint_ = nullptr;
  uv_signal_t* sigterm_ = nullptr;
};

// A repeating timer owned by a service; closed (not just stopped) by Close() or destruction.
class RepeatingTimer {
 public:
  RepeatingTimer(uv_loop_t* loop, double period_s, std::function<void()> on_tick);
  ~RepeatingTimer();
  void Close();

 private:
  std::function<void()> on_tick_;
  uv_timer_t* timer_ = nullptr;
};

// Runs `fn` once on `loop` after `delay_s` unless cancelled first (by destroying the handle).
class OneShotTimer {
 public:
  explicit OneShotTimer(uv_loop_t* loop);
  ~OneShotTimer();
  void Start(double delay_s, std::function<void()> fn);
  void Stop();
  bool active() const;

 private:
  std::function<void()> fn_;
  uv_timer_t* timer_ = nullptr;
};

// A short random hex string for ids ("a3f9c2").
std::string RandomHex(size_t length);

// This machine's host name, for status tables (ids never depend on it).
std::string HostName();

// Milliseconds since the Unix epoch.
int64_t UnixMillis();

// Runs the loop until every handle is closed. Services end by closing their handles.
int RunLoop(uv_loop_t* loop);

}  // namespace serve::service
