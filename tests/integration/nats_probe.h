#pragma once

#include <nats/nats.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "bus/nats_signature.h"
#include "support/process.h"

namespace serve::testing {

inline std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// A bare nats.c client that records the errors the server sends it: for tests of what the
// server refuses. `configure` gives it its credentials (a user and password, JWT callbacks), or
// none for an anonymous client.
class NatsProbe {
 public:
  NatsProbe(const std::string& url, const std::function<void(natsOptions*)>& configure) {
    natsOptions* options = nullptr;
    natsOptions_Create(&options);
    natsOptions_SetURL(options, url.c_str());
    natsOptions_SetAllowReconnect(options, false);
    natsOptions_SetErrorHandler(options, &NatsProbe::OnError, this);
    configure(options);
    status_ = bus::ConnectNats(&connection_, options);
    natsOptions_Destroy(options);
    if (status_ != NATS_OK) {
      connect_error_ = nats_GetLastError(nullptr) != nullptr ? nats_GetLastError(nullptr) : "";
      connection_ = nullptr;
    }
  }
  NatsProbe(const std::string& url, const std::string& user, const std::string& password)
      : NatsProbe(url, [&](natsOptions* options) {
          if (!user.empty()) natsOptions_SetUserInfo(options, user.c_str(), password.c_str());
        }) {}
  ~NatsProbe() {
    for (natsSubscription* sub : subscriptions_) natsSubscription_Destroy(sub);
    if (connection_ != nullptr) {
      natsConnection_Close(connection_);
      natsConnection_Destroy(connection_);
    }
  }
  NatsProbe(const NatsProbe&) = delete;
  NatsProbe& operator=(const NatsProbe&) = delete;

  bool connected() const { return connection_ != nullptr; }
  natsStatus connect_status() const { return status_; }
  const std::string& connect_error() const { return connect_error_; }

  void Publish(const std::string& subject, const std::string& data) {
    natsConnection_Publish(connection_, subject.c_str(), data.data(),
                           static_cast<int>(data.size()));
    natsConnection_FlushTimeout(connection_, 5000);
  }
  void Subscribe(const std::string& subject) {
    natsSubscription* sub = nullptr;
    if (natsConnection_SubscribeSync(&sub, connection_, subject.c_str()) == NATS_OK) {
      subscriptions_.push_back(sub);
    }
    natsConnection_FlushTimeout(connection_, 5000);
  }
  // Polls until the server has told this client of a permission violation that names
  // `subject`.
  bool WaitForViolation(const std::string& subject) {
    return WaitUntil([&] {
      std::lock_guard<std::mutex> lock(mutex_);
      std::string text = Lower(errors_);
      return text.find("permissions violation") != std::string::npos &&
             text.find(Lower(subject)) != std::string::npos;
    });
  }
  std::string errors() {
    std::lock_guard<std::mutex> lock(mutex_);
    return errors_;
  }

 private:
  static void OnError(natsConnection* connection, natsSubscription*, natsStatus, void* closure) {
    auto* self = static_cast<NatsProbe*>(closure);
    const char* text = nullptr;
    natsConnection_GetLastError(connection, &text);
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->errors_.append(text != nullptr ? text : "?").append("\n");
  }

  natsConnection* connection_ = nullptr;
  natsStatus status_ = NATS_OK;
  std::string connect_error_;
  std::vector<natsSubscription*> subscriptions_;
  std::mutex mutex_;
  std::string errors_;
};

}  // namespace serve::testing
