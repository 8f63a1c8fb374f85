#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "base/status.h"
#include "http/server.h"
#include "log/log.h"

namespace serve::http::internal {

// Limits and timeouts of ServerOptions, converted once to what the connections use.
struct ConnectionLimits {
  size_t max_header_bytes = 0;
  size_t max_body_bytes = 0;
  size_t max_buffered_bytes = 0;
  uint64_t request_timeout_ms = 0;  // 0 = none
  uint64_t idle_timeout_ms = 0;     // 0 = none
  // How far ahead a connection's timer is armed at most: the shortest timeout (see Connection).
  uint64_t timer_step_ms = 0;
};

// What a Server owns: the listening socket, the connections, and what they share (the handler,
// the limits, one read buffer, the end-of-iteration flush).
//
// It outlives the Server object when the Server is destroyed with handles still open: every
// handle's close callback counts down `open_handles_`, and the core deletes itself when the count
// reaches zero after the Server let go of it (Release()).
class ServerCore {
 public:
  ServerCore(uv_loop_t* loop, ServerOptions options, Handler handler);
  ServerCore(const ServerCore&) = delete;
  ServerCore& operator=(const ServerCore&) = delete;

  Status Listen();
  int port() const { return port_; }
  void Close(std::function<void()> on_closed);
  size_t connection_count() const { return connections_.size(); }
  size_t buffered_bytes() const;
  size_t paused_connection_count() const;
  size_t accept_failure_count() const { return accept_failures_; }
  // Called by ~Server. May delete this.
  void Release();

  // For connections.
  uv_loop_t* loop() const { return loop_; }
  const ConnectionLimits& limits() const { return limits_; }
  const Handler& handler() const { return handler_; }
  // One buffer serves every read: requests are copied out of it before the read callback
  // returns, so connections need no input buffer of their own.
  char* read_buffer() { return read_buffer_.get(); }
  size_t read_buffer_size() const { return kReadBufferSize; }
  // Has `connection->Flush()` called once the current loop phase is over, so responses that
  // become ready together (pipelined requests, answers arriving in one batch) share one write.
  void ScheduleFlush(Connection* connection);
  // The last close callback of a connection: forgets (and so destroys) it. May delete this.
  void OnConnectionClosed(Connection* connection);

 private:
  static constexpr size_t kReadBufferSize = 64 * 1024;

  ~ServerCore();  // via Release() or the last close callback

  static constexpr int kAcceptBatch = 128;
  static constexpr uint64_t kAcceptRetryMs = 100;

  static void OnAcceptable(uv_poll_t* handle, int status, int events);
  static void OnAcceptRetry(uv_timer_t* timer);
  static void OnFlushPhase(uv_idle_t* handle);
  static void OnFlushPhase(uv_check_t* handle);
  static void OnHandleClosed(uv_handle_t* handle);
  void AcceptPending();
  void Accept(int fd);
  // Logs (at most once a second) and pauses accepting for kAcceptRetryMs.
  void OnAcceptFailed(int error);
  void RunFlush();
  void StopFlushHandles();
  // Calls the on_closed callbacks once nothing is open. May delete this.
  void MaybeFinishClose();

  uv_loop_t* const loop_;
  const ServerOptions options_;
  const Handler handler_;
  ConnectionLimits limits_;
  std::unique_ptr<char[]> read_buffer_;

  uv_poll_t listener_;  // readable: connections wait to be accepted from listen_fd_
  int listen_fd_ = -1;
  uv_timer_t accept_retry_;
  size_t accept_failures_ = 0;
  log::RateLimit accept_log_;
  // Flushes run after the poll phase (check) for sends made by I/O callbacks, and early in the
  // next iteration (idle) for sends made anywhere else. An active idle handle also keeps the loop
  // from blocking in poll while a flush is due.
  uv_idle_t flush_idle_;
  uv_check_t flush_check_;
  bool listener_used_ = false;  // listener_ was initialized (and maybe closed again)
  bool listening_ = false;      // listener_ and the flush handles are open
  bool flush_armed_ = false;
  std::vector<Connection*> dirty_;
  std::vector<Connection*> flushing_;

  // Each connection knows its index here, so removal is a swap with the last one.
  std::vector<std::shared_ptr<Connection>> connections_;
  int port_ = 0;
  size_t open_handles_ = 0;  // listener, flush handles, and one per connection
  bool closing_ = false;
  bool closed_ = false;    // closing_ and every handle closed
  bool released_ = false;  // the Server is gone
  std::vector<std::function<void()>> on_closed_;
};

}  // namespace serve::http::internal
