#pragma once

#include <sys/types.h>

#include <memory>

#include "replica/runtime.h"

namespace serve::replica {

// `runtime: command`: starts context.spec.command in the working directory with PORT set,
// waits until it answers, and forwards requests to it over loopback HTTP.
//
// The contract with the command:
// - It runs in context.artifact_path (the unpacked working_dir), or in context.scratch_dir when
//   the deployment has none, with the worker's environment plus PORT, SERVE_REPLICA_ID,
//   SERVE_DEPLOYMENT and SERVE_USER_CONFIG (the deployment's user_config, JSON text).
// - It is ready once GET spec.health_path answers 2xx on 127.0.0.1:$PORT (or, with no
//   health_path, once something accepts TCP connections there), within startup_timeout_s.
// - It lives in its own process group and dies with the worker (PR_SET_PDEATHSIG). Stop sends
//   SIGTERM to the group and SIGKILL after graceful_shutdown_timeout_s (at most 30 s).
// - Its stdout and stderr go to the worker's stderr, each line prefixed with
//   "[<deployment> <replica_id>] "; the last lines appear in startup and exit errors.
// - If it exits while the replica serves, the worker process ends with code 4 (the reason in
//   context.error_file) so that the controller replaces the replica.
Result<std::unique_ptr<Runtime>> StartCommandRuntime(const RuntimeContext& context);

// The command's process id (also its process group id), or -1 when `runtime` is not a command
// runtime. For tests that check no process is left behind.
pid_t CommandRuntimePidForTest(const Runtime& runtime);

}  // namespace serve::replica
