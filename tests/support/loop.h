#pragma once

#include <uv.h>

#include <functional>
#include <string>
#include <string_view>

#include "bus/bus.h"

namespace serve::testing {

// Runs `loop` until `condition` holds or `timeout_s` passes; the tests' only way to wait.
inline bool RunUntil(uv_loop_t* loop, const std::function<bool()>& condition,
                     double timeout_s = 20) {
  uv_update_time(loop);
  uint64_t deadline = uv_now(loop) + static_cast<uint64_t>(timeout_s * 1000);
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(
      &tick, [](uv_timer_t*) {}, 5, 5);  // wakes the loop to re-check
  bool ok = true;
  while (!condition()) {
    uv_update_time(loop);
    if (uv_now(loop) > deadline) {
      ok = false;
      break;
    }
    uv_run(loop, UV_RUN_ONCE);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
  return ok;
}

// Sends requests to `subject` until one is answered (the responder may still be starting or
// subscribing), and returns that answer, or the last error once `timeout_s` has passed.
inline Result<bus::Message> RequestWhenAnswered(uv_loop_t* loop, bus::Bus& bus,
                                                const std::string& subject, std::string_view data,
                                                double timeout_s = 20) {
  Result<bus::Message> last = Status::Error("no request sent");
  RunUntil(
      loop,
      [&] {
        last = bus::RequestAndWait(loop, bus, subject, data, 1);
        return last.ok();
      },
      timeout_s);
  return last;
}

}  // namespace serve::testing
