#pragma once

// Runs a nats.c connection's socket I/O on a libuv loop (natsOptions_SetEventLoop), in place of
// nats.c's reader thread: one thread hop fewer per message.
//
// Why not nats.c's own adapter (<nats/adapters/libuv.h>): it stops watching a socket only at
// the next attach, after nats.c has closed it, and closing its poll handle then removes the
// descriptor *number* from the loop's epoll set. By then that number can belong to another
// handle of the loop (an accepted HTTP connection, say), which silently stops being watched
// and aborts libuv at its next change. This adapter watches a duplicate of nats.c's descriptor,
// taken while nats.c still holds the socket, so the number it polls is its own until it closes
// it; and it ignores readiness of a socket nats.c has already replaced or stopped polling.

#include <nats/nats.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace serve::bus::detail {

class LoopIo {
 public:
  // On the loop's thread. `after_read` runs on the loop after each read of the socket, when
  // nats.c may have handed messages to synchronous subscriptions.
  LoopIo(uv_loop_t* loop, std::function<void()> after_read);
  LoopIo(const LoopIo&) = delete;
  LoopIo& operator=(const LoopIo&) = delete;

  // The callbacks for natsOptions_SetEventLoop, with this object as its `loop` argument. nats.c
  // calls them from any of its threads; what touches the loop is done on the loop's thread.
  static natsStatus Attach(void** user_data, void* loop_io, natsConnection* connection,
                           natsSock socket);
  static natsStatus Read(void* user_data, bool add);
  static natsStatus Write(void* user_data, bool add);
  static natsStatus Detach(void* user_data);

  // On the loop's thread, once nats.c is done with the connection (natsConnection_Destroy):
  // closes the handles and frees this object when they are closed.
  void Close();

 private:
  ~LoopIo() = default;
  bool OnLoopThread() const { return std::this_thread::get_id() == loop_thread_; }
  // Schedules Apply(): from another thread through wakeup_, on the loop's thread before the
  // loop next polls. Changing a uv_poll's events costs two epoll_ctl calls, and nats.c asks to
  // watch for writability whenever it has buffered a publish and to stop once it wrote; the
  // write is done before then (WriteSoon), so by the time the loop polls, nothing has changed.
  natsStatus ApplySoon();
  // Starts before_poll_, which does what is due: a write, then an Apply().
  void StartBeforePoll();
  // Schedules a write of what nats.c buffered: at the end of this turn of the loop (after the
  // I/O callbacks that published), or before the loop next polls, whichever comes first. Every
  // publish of one turn goes out in one send, as nats.c's flusher would batch them, but
  // without its wait: the server reads one message where it would read many.
  void WriteSoon();
  // Writes what nats.c holds for the socket; what the socket does not take waits for
  // writability.
  void WriteBuffered();
  // Brings the poll handle in line with what nats.c asked for last.
  void Apply();
  void ClosePoll();
  static void OnPoll(uv_poll_t* handle, int status, int events);
  void MaybeFree();

  uv_loop_t* loop_;
  std::function<void()> after_read_;
  std::thread::id loop_thread_;
  uv_async_t* wakeup_;
  uv_prepare_t* before_poll_;  // started while an Apply() or a write is due
  uv_check_t* after_io_;       // started while a write is due
  bool apply_due_ = false;
  bool write_due_ = false;

  // What nats.c asked for, written from any thread.
  std::mutex mutex_;
  natsConnection* connection_ = nullptr;
  int pending_socket_ = -1;  // a duplicate of the socket last attached, not yet polled
  uint64_t generation_ = 0;  // counts attaches
  bool want_read_ = false;
  bool want_write_ = false;
  bool detached_ = false;

  // The loop's side.
  uv_poll_t* poll_ = nullptr;  // watches a duplicate descriptor, closed with the handle
  uint64_t poll_generation_ = 0;
  int poll_events_ = 0;
  int open_handles_ = 3;  // wakeup_, before_poll_, after_io_, and poll handles until closed
  bool closing_ = false;
};

}  // namespace serve::bus::detail
