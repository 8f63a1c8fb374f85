#include "cli/events.h"

#include <time.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "service/service.h"

namespace serve::cli {
namespace {

using Clock = std::chrono::steady_clock;

std::string Seconds(double seconds) {
  char text[32];
  snprintf(text, sizeof(text), "%g s", seconds);
  return text;
}

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.size() >= prefix.size() && text.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

std::string ClockTime(int64_t unix_ms) {
  int64_t ms = unix_ms % 1000;
  if (ms < 0) ms += 1000;
  time_t seconds = static_cast<time_t>((unix_ms - ms) / 1000);
  tm local{};
  localtime_r(&seconds, &local);
  char text[32];
  size_t n = strftime(text, sizeof(text), "%H:%M:%S", &local);
  snprintf(text + n, sizeof(text) - n, ".%03d", static_cast<int>(ms));
  return text;
}

std::string FormatEvent(const wire::EventT& event) {
  std::string line =
      ClockTime(event.time_ms) + "  " + event.kind + " " + event.name + ": " + event.state;
  if (!event.message.empty()) line += " - " + event.message;
  return line;
}

std::string EventJson(const wire::EventT& event) {
  nlohmann::ordered_json json = {{"time_ms", event.time_ms},
                                 {"kind", event.kind},
                                 {"name", event.name},
                                 {"state", event.state},
                                 {"message", event.message}};
  // Strings come off the bus: bytes that are not UTF-8 are replaced rather than thrown about.
  return json.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

bool EventConcerns(const wire::EventT& event, const std::vector<std::string>& deployments) {
  if (deployments.empty()) return true;
  for (const auto& deployment : deployments) {
    if (event.kind == "deployment" && event.name == deployment) return true;
    // Replica ids are "<deployment>-<suffix>" (Reconciler::NewReplicaId).
    if (event.kind == "replica" && event.name.size() > deployment.size() + 1 &&
        StartsWith(event.name, deployment + "-") &&
        event.name.find('-', deployment.size() + 1) == std::string::npos) {
      return true;
    }
  }
  return false;
}

// What the bus callbacks and the loop share. Owned jointly by the watch and the callbacks, since
// a delivery queued before the watch unsubscribed still runs.
struct EventWatch::State {
  WatchOptions options;
  std::string ns;
  uv_loop_t* loop = nullptr;
  bus::Bus* bus = nullptr;  // valid until `closed`

  bool running = false;  // Run() prints; before, events are held
  bool closed = false;   // the watch is over: late callbacks do nothing
  std::vector<wire::EventT> held;
  std::optional<WatchEnd> end;
  std::string end_text;

  bool warned_garbage = false;
  bool controller_missing = false;
  bool ping_in_flight = false;
  Clock::time_point last_contact = Clock::now();  // the controller last answered

  void Show(const wire::EventT& event) {
    std::cout << (options.json ? EventJson(event) : FormatEvent(event)) << std::endl;
  }

  // A line about the watch itself. With JSON on stdout, such lines go to stderr.
  void Notice(const std::string& text) {
    auto now = std::chrono::system_clock::now().time_since_epoch();
    if (options.json) {
      std::cerr << text << std::endl;
    } else {
      std::cout << ClockTime(std::chrono::duration_cast<std::chrono::milliseconds>(now).count())
                << "  " << text << std::endl;
    }
  }

  void Finish(WatchEnd why, std::string text) {
    if (end.has_value()) return;
    end = why;
    end_text = std::move(text);
    if (running) uv_stop(loop);
  }

  double AwaySeconds() const {
    return std::chrono::duration<double>(Clock::now() - last_contact).count();
  }

  void OnEvent(const bus::Message& message) {
    if (closed) return;
    auto event = wire::Unpack<wire::Event>(message.data);
    if (!event.ok()) {
      if (!warned_garbage) {
        std::cerr << "warning: skipped a message on " << message.subject
                  << " that is not an Event (" << event.error()
                  << "); later ones are skipped without a word" << std::endl;
        warned_garbage = true;
      }
      return;
    }
    if (!EventConcerns(*event, options.deployments)) return;
    if (running) {
      Show(*event);
    } else {
      held.push_back(std::move(*event));
    }
  }

  void OnShutdown(const bus::Message& message) {
    if (closed) return;
    auto notice = wire::Unpack<wire::ShutdownNotice>(message.data);
    if (!notice.ok()) return;
    Finish(WatchEnd::kInstanceShutDown,
           "Serve in namespace '" + ns + "' shut down" +
               (notice->reason.empty() ? "" : " (" + notice->reason + ")"));
  }

  void OnConnection(bool connected) {
    if (closed) return;
    std::string url = bus::RedactUrl(bus->url());
    if (connected) {
      Notice("connected to NATS at " + url + " again");
    } else {
      Notice("lost the connection to NATS at " + url + "; waiting for it to come back (for " +
             Seconds(options.give_up_after_s) + ")");
    }
  }

  void OnPingReply(const Result<bus::Message>& reply) {
    ping_in_flight = false;
    if (closed || end.has_value()) return;
    Status answered = reply.status();
    if (answered.ok()) answered = wire::Verify<wire::PingReply>(reply->data).status();
    if (answered.ok()) {
      last_contact = Clock::now();
      if (controller_missing) Notice("the controller of namespace '" + ns + "' answers again");
      controller_missing = false;
      return;
    }
    if (!bus->connected()) return;  // OnConnection told; Tick gives up if it lasts
    if (!controller_missing) {
      Notice("the controller of namespace '" + ns + "' does not answer (" + answered.message() +
             "); waiting for it (for " + Seconds(options.give_up_after_s) + ")");
      controller_missing = true;
    }
    if (AwaySeconds() > options.give_up_after_s) {
      Finish(WatchEnd::kLost, "gave up: no controller has answered in namespace '" + ns + "' for " +
                                  Seconds(options.give_up_after_s) +
                                  "; `serve status` tells whether one runs, `serve start` "
                                  "starts one");
    }
  }
};

EventWatch::EventWatch(Client& client, std::shared_ptr<State> state)
    : client_(client), state_(std::move(state)) {}

Result<std::unique_ptr<EventWatch>> EventWatch::Start(Client& client, WatchOptions options) {
  auto state = std::make_shared<State>();
  state->options = std::move(options);
  state->ns = client.subjects().ns;
  state->loop = client.loop();
  state->bus = &client.bus();
  const bus::Subjects& subjects = client.subjects();
  Status subscribed = client.bus().Subscribe(
      subjects.events, [state](bus::Message& message) { state->OnEvent(message); });
  if (subscribed.ok()) {
    subscribed = client.bus().Subscribe(
        subjects.shutdown, [state](bus::Message& message) { state->OnShutdown(message); });
  }
  if (!subscribed.ok()) {
    client.bus().Unsubscribe(subjects.events);
    return subscribed.WithContext("cannot follow the events of namespace '" + state->ns + "'");
  }
  client.bus().SetConnectionListener([state](bool connected) { state->OnConnection(connected); });
  return std::unique_ptr<EventWatch>(new EventWatch(client, std::move(state)));
}

EventWatch::~EventWatch() {
  state_->closed = true;
  client_.bus().Unsubscribe(client_.subjects().events);
  client_.bus().Unsubscribe(client_.subjects().shutdown);
  client_.bus().SetConnectionListener(nullptr);
}

WatchEnd EventWatch::Run(StopSignals& stop) {
  State& s = *state_;
  s.running = true;
  for (const auto& event : s.held) s.Show(event);
  s.held.clear();
  std::cout.flush();
  if (stop.requested()) s.Finish(WatchEnd::kStopSignal, "");
  if (!s.end.has_value()) {
    stop_ = &stop;
    auto* poll = new uv_poll_t;
    uv_poll_init(client_.loop(), poll, stop.fd());
    poll->data = this;
    uv_poll_start(poll, UV_READABLE, [](uv_poll_t* handle, int, int) {
      auto* watch = static_cast<EventWatch*>(handle->data);
      if (watch->stop_->requested()) watch->state_->Finish(WatchEnd::kStopSignal, "");
    });
    service::RepeatingTimer ticker(client_.loop(), 1.0, [this] { Tick(); });
    while (!s.end.has_value()) {
      // Only uv_stop() ends it: the bus keeps the loop alive.
      if (uv_run(client_.loop(), UV_RUN_DEFAULT) == 0 && !s.end.has_value()) {
        s.Finish(WatchEnd::kLost, "the bus connection closed");
      }
    }
    uv_close(reinterpret_cast<uv_handle_t*>(poll),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); });
    stop_ = nullptr;
  }
  s.closed = true;
  if (!s.end_text.empty()) s.Notice(s.end_text);
  return *s.end;
}

void EventWatch::Tick() {
  State& s = *state_;
  if (s.end.has_value()) return;
  if (!s.bus->connected()) {
    if (s.AwaySeconds() > s.options.give_up_after_s) {
      s.Finish(WatchEnd::kLost, "gave up: the controller has not answered for " +
                                    Seconds(s.options.give_up_after_s) +
                                    " and the connection to NATS at " +
                                    bus::RedactUrl(s.bus->url()) +
                                    " is down; check that NATS runs, then `serve status`");
    }
    return;
  }
  if (s.ping_in_flight) return;
  s.ping_in_flight = true;
  s.bus->Request(client_.subjects().ctl_ping, wire::Pack(wire::PingRequestT{}), 2.0,
                 [state = state_](Result<bus::Message> reply) { state->OnPingReply(reply); });
}

}  // namespace serve::cli
