#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "cli/client.h"
#include "cli/stop_signals.h"
#include "wire/codec.h"

namespace serve::cli {

// Events, published by the controller on <ns>.events, as `serve status --watch` and `serve run`
// show them.

// "14:03:07.512  deployment hello: HEALTHY - all 2 replicas running" in local time; without
// " - ..." when the message is empty.
std::string FormatEvent(const wire::EventT& event);

// {"time_ms":...,"kind":"...","name":"...","state":"...","message":"..."} on one line.
std::string EventJson(const wire::EventT& event);

// "14:03:07.512" for milliseconds since the Unix epoch, in local time.
std::string ClockTime(int64_t unix_ms);

// True when `event` is about one of `deployments`: the deployment itself, or one of its
// replicas (a replica id is "<deployment>-<suffix>" with no '-' in the suffix, so replicas of
// "a-b" are not taken for replicas of "a"). Every event qualifies when `deployments` is empty.
bool EventConcerns(const wire::EventT& event, const std::vector<std::string>& deployments);

// How a watch ended.
enum class WatchEnd {
  kStopSignal,        // SIGINT or SIGTERM
  kInstanceShutDown,  // the controller announced the end of the namespace on <ns>.shutdown
  kLost,              // no bus, or no controller answering, for WatchOptions::give_up_after_s
};

struct WatchOptions {
  std::vector<std::string> deployments;  // only these and their replicas; empty: everything
  bool json = false;                     // one JSON object per line instead of text
  double give_up_after_s = 30;
};

// Follows <ns>.events on a client's connection and prints what it sees, one line per event.
// It subscribes when created, so no event published after Start() is missed: events that
// arrive before Run() (while the caller prints a table, say) are held and printed first.
// Messages that are not verified Events are skipped. Connection losses and a controller that
// stops answering are reported as lines of their own (on stderr with `json`), and waited out.
class EventWatch {
 public:
  static Result<std::unique_ptr<EventWatch>> Start(Client& client, WatchOptions options);
  ~EventWatch();
  EventWatch(const EventWatch&) = delete;
  EventWatch& operator=(const EventWatch&) = delete;

  // Prints events until `stop` is requested, the instance shuts down, or the bus or the
  // controller stays away for give_up_after_s; says why in the last two cases.
  WatchEnd Run(StopSignals& stop);

 private:
  struct State;
  EventWatch(Client& client, std::shared_ptr<State> state);
  void Tick();

  Client& client_;
  // Shared with the bus callbacks, which may still be queued after the watch is gone.
  std::shared_ptr<State> state_;
  StopSignals* stop_ = nullptr;  // during Run()
};

}  // namespace serve::cli
