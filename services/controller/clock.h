#pragma once

#include <chrono>

namespace serve::controller {

// Monotonic time in seconds. An interface so that timeouts can be tested without sleeping.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual double Now() const = 0;
};

class SteadyClock : public Clock {
 public:
  double Now() const override {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

// A clock that moves only when told to.
class FakeClock : public Clock {
 public:
  double Now() const override { return now_; }
  void Advance(double seconds) { now_ += seconds; }

 private:
  double now_ = 1000;
};

}  // namespace serve::controller
