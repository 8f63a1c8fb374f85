#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "bus/bus.h"
#include "bus/subjects.h"
#include "replica/runtime.h"
#include "service/service.h"
#include "wire/serve_generated.h"

namespace serve::replica {

struct WorkerOptions {
  std::string replica_id;
  std::string node_id;
  wire::DeploymentSpecT spec;
  std::string version;  // the effective version (the spec's, or the one the controller derived)
};

// One replica of one deployment, in a process of its own: answers data-plane requests on
// <ns>.replica.<id> and heartbeats on <ns>.hb.replica.
class ReplicaWorker {
 public:
  ReplicaWorker(uv_loop_t* loop, bus::Bus& bus, const bus::Subjects& subjects,
                WorkerOptions options, std::unique_ptr<Runtime> runtime);

  // Subscribes, then heartbeats at once: the first heartbeat tells the controller the replica
  // can take traffic, and the server saw the subscription before it.
  Status Start();
  // Stops taking requests, lets in-flight ones finish (up to graceful_shutdown_timeout_s),
  // sends a last heartbeat, then calls `done`.
  void Drain(std::function<void()> done);

  uint64_t completed() const { return completed_; }

 private:
  void OnRequest(bus::Message& message);
  void OnReconfigure(bus::Message& message);
  void StartHeartbeats();
  void SendHeartbeat();

  uv_loop_t* loop_;
  bus::Bus& bus_;
  const bus::Subjects& subjects_;
  WorkerOptions options_;
  std::unique_ptr<Runtime> runtime_;
  std::string subject_;
  std::string control_subject_;
  std::unique_ptr<service::RepeatingTimer> heartbeat_;
  int in_flight_ = 0;
  uint64_t completed_ = 0;
  bool draining_ = false;
};

}  // namespace serve::replica
