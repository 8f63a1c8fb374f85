#pragma once

#include <gtest/gtest.h>
#include <uv.h>

#include <memory>
#include <string>

#include "bus/bus.h"

namespace serve::testing {

// A bus client on its own loop, for talking to the control plane as any NATS client would, and
// for publishing what no Serve service would.
class RawClient {
 public:
  explicit RawClient(const std::string& url)
      : RawClient([&] {
          bus::Options options;
          options.url = url;
          return options;
        }()) {}
  // As a given user, say (a role's user and its inbox prefix).
  explicit RawClient(bus::Options options) {
    uv_loop_init(&loop_);
    options.retry_initial_connect = false;
    auto bus = bus::Bus::Connect(&loop_, options);
    EXPECT_TRUE(bus.ok()) << bus.error();
    if (bus.ok()) bus_ = std::move(*bus);
  }
  ~RawClient() {
    if (bus_ != nullptr) bus_->Close();
    bus_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  Result<bus::Message> Request(const std::string& subject, const std::string& data,
                               double timeout_s = 10) {
    if (bus_ == nullptr) return Status::Error("not connected");
    return bus::RequestAndWait(&loop_, *bus_, subject, data, timeout_s);
  }
  // Takes what `subject` carries and never answers (a service that hangs).
  void SubscribeSilently(const std::string& subject) {
    (void)bus_->Subscribe(subject, [](bus::Message&) {});
    (void)bus_->Flush();
  }
  // Published and flushed: the server has it when this returns.
  void Publish(const std::string& subject, const std::string& data) {
    (void)bus_->Publish(subject, data);
    (void)bus_->Flush();
  }

 private:
  uv_loop_t loop_;
  std::unique_ptr<bus::Bus> bus_;
};

}  // namespace serve::testing
