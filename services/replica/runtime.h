#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"
#include "wire/serve_generated.h"

namespace serve::replica {

// What a runtime answers for one request.
struct HandlerResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// One request as a runtime sees it: views into the worker's copy of the message, valid for the
// duration of the Handle call.
struct RequestView {
  std::string_view method;
  std::string_view path;   // the full path the client asked for, route prefix included
  std::string_view query;  // without the '?'
  std::string_view body;
  std::vector<std::pair<std::string_view, std::string_view>> headers;
  std::string_view request_id;  // the client's X-Request-ID, or the proxy's own

  // The first header called `name` (ASCII case-insensitive), or "" when there is none.
  std::string_view Header(std::string_view name) const;
};

// Identity a runtime may show in its answers.
struct ReplicaIdentity {
  std::string replica_id;
  std::string deployment;
  std::string version;
};

// Everything a runtime is built from.
struct RuntimeContext {
  wire::DeploymentSpecT spec;
  ReplicaIdentity identity;
  // The deployment's code on this node, fetched and verified: for `native` the shared
  // library; for `command` and `python` the unpacked working directory ("" when the
  // deployment has none).
  std::string artifact_path;
  // A directory of this replica's own, for files the runtime keeps while it runs.
  std::string scratch_dir;
  // Where to write, in one line or a few, why the process is about to end on its own (the
  // node agent puts it in the exit report). "" in tests.
  std::string error_file;
};

// User code behind one replica. This is the seam between the worker (bus, heartbeats,
// draining) and the code it serves: built-in handlers, shared libraries built against the SDK
// (`native`), external processes spoken to over loopback HTTP (`command`) and Python classes
// run by an interpreter inside the worker (`python`).
//
// Threads: Handle runs on the worker's loop thread when Concurrency() is 0, otherwise on
// handler threads (at most Concurrency() at once). CheckHealth and Reconfigure run on the
// worker's control thread, one at a time, never queued behind requests, so they may run while
// Handle does.
class Runtime {
 public:
  virtual ~Runtime() = default;

  // 0: Handle is cheap and never blocks, so the worker calls it on its loop thread (the
  // built-ins). 1: calls are serialized on one handler thread. n > 1: up to n at once.
  virtual int Concurrency() const = 0;
  // True when CheckHealth and Reconfigure run on the worker's loop thread too: for a runtime
  // whose state the loop owns (the built-ins). Otherwise they run on the control thread, where
  // user code that blocks holds up neither requests nor heartbeats.
  virtual bool ChecksOnLoop() const { return Concurrency() == 0; }
  // True when Concurrency() is the deployment's max_concurrent_queries (a kConcurrent class, a
  // command), so a new limit applied in place lets more calls run at once.
  virtual bool ScalesWithLimit() const { return false; }
  // Answers one request. Never throws: user code's failures become 5xx answers.
  virtual HandlerResponse Handle(const RequestView& request) = 0;
  // The user's health check. An error marks this check failed; its message says why.
  virtual Status CheckHealth() { return Status::Ok(); }
  // Applies a new user_config (JSON text) without a restart. The error is shown to the person
  // who deployed it.
  virtual Status Reconfigure(const std::string& user_config) = 0;
  // Called once when the replica stops, after in-flight requests ended or were given up on:
  // release what the runtime holds (a child process, say).
  virtual void Stop() {}
};

// Creates the runtime named by `context.spec.runtime`. The error names the runtime and the
// cause (a dlerror text, a command's exit code and last lines of its stderr, ...).
Result<std::unique_ptr<Runtime>> MakeRuntime(const RuntimeContext& context);

}  // namespace serve::replica
