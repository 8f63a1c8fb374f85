#include "bus/loop_io.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstring>
#include <utility>

namespace serve::bus::detail {

namespace {

// A poll handle with the duplicate descriptor it watches, closed after the handle.
struct Poll {
  uv_poll_t handle;
  int fd;
  LoopIo* owner;
};

}  // namespace

LoopIo::LoopIo(uv_loop_t* loop, std::function<void()> after_read)
    : loop_(loop),
      after_read_(std::move(after_read)),
      loop_thread_(std::this_thread::get_id()),
      wakeup_(new uv_async_t),
      before_poll_(new uv_prepare_t),
      after_io_(new uv_check_t) {
  uv_async_init(loop_, wakeup_,
                [](uv_async_t* handle) { static_cast<LoopIo*>(handle->data)->Apply(); });
  wakeup_->data = this;
  uv_prepare_init(loop_, before_poll_);
  before_poll_->data = this;
  uv_check_init(loop_, after_io_);
  after_io_->data = this;
}

natsStatus LoopIo::Attach(void** user_data, void* loop_io, natsConnection* connection,
                          natsSock socket) {
  auto* self = static_cast<LoopIo*>(loop_io);
  *user_data = self;
  // Duplicated now, while nats.c holds the socket: by the time the loop runs, nats.c may have
  // closed it and its number may be another handle's.
  int fd = fcntl(socket, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    spdlog::error("cannot watch the NATS socket on the loop: dup: {}", strerror(errno));
    return NATS_SYS_ERROR;
  }
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->connection_ = connection;
    if (self->pending_socket_ >= 0) close(self->pending_socket_);  // attached again meanwhile
    self->pending_socket_ = fd;
    ++self->generation_;
    self->want_read_ = true;
    self->want_write_ = false;
    self->detached_ = false;  // the Bus's next connection, after nats.c gave one up
  }
  return self->ApplySoon();
}

natsStatus LoopIo::Read(void* user_data, bool add) {
  auto* self = static_cast<LoopIo*>(user_data);
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->want_read_ = add;
  }
  return self->ApplySoon();
}

natsStatus LoopIo::Write(void* user_data, bool add) {
  auto* self = static_cast<LoopIo*>(user_data);
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->want_write_ = add;
  }
  // Called with the connection locked: the write itself has to wait for the loop's next phase.
  if (add && self->OnLoopThread()) self->WriteSoon();
  return self->ApplySoon();
}

natsStatus LoopIo::Detach(void* user_data) {
  auto* self = static_cast<LoopIo*>(user_data);
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->detached_ = true;
    self->want_read_ = self->want_write_ = false;
  }
  return self->ApplySoon();
}

void LoopIo::StartBeforePoll() {
  uv_prepare_start(before_poll_, [](uv_prepare_t* handle) {
    auto* self = static_cast<LoopIo*>(handle->data);
    uv_prepare_stop(handle);
    if (self->write_due_) self->WriteBuffered();
    if (self->apply_due_) self->Apply();
  });
}

natsStatus LoopIo::ApplySoon() {
  if (!OnLoopThread()) return uv_async_send(wakeup_) == 0 ? NATS_OK : NATS_SYS_ERROR;
  if (!apply_due_ && !closing_) {
    apply_due_ = true;
    StartBeforePoll();
  }
  return NATS_OK;
}

void LoopIo::WriteSoon() {
  if (write_due_ || closing_) return;
  write_due_ = true;
  StartBeforePoll();
  uv_check_start(after_io_, [](uv_check_t* handle) {
    auto* self = static_cast<LoopIo*>(handle->data);
    if (self->write_due_) self->WriteBuffered();
  });
}

void LoopIo::WriteBuffered() {
  write_due_ = false;
  uv_check_stop(after_io_);
  if (closing_) return;
  natsConnection* connection;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (detached_ || !want_write_) return;
    connection = connection_;
  }
  // Writes what the socket takes; nats.c stops asking for writability once all is written.
  natsConnection_ProcessWriteEvent(connection);
}

void LoopIo::Apply() {
  apply_due_ = false;
  if (closing_) return;
  int new_fd;
  uint64_t generation;
  bool read, write, detached;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    new_fd = std::exchange(pending_socket_, -1);
    generation = generation_;
    read = want_read_;
    write = want_write_;
    detached = detached_;
  }
  if (new_fd >= 0) {
    ClosePoll();
    auto* poll = new Poll{{}, new_fd, this};
    if (uv_poll_init_socket(loop_, &poll->handle, new_fd) != 0) {
      // The connection's pings go unanswered and nats.c reconnects.
      spdlog::error("cannot watch the NATS socket on the loop");
      close(new_fd);
      delete poll;
      return;
    }
    poll->handle.data = this;
    ++open_handles_;
    poll_ = &poll->handle;
    poll_generation_ = generation;
    poll_events_ = 0;
  }
  if (detached) {
    ClosePoll();
    return;
  }
  if (poll_ == nullptr) return;
  int events = (read ? UV_READABLE : 0) | (write ? UV_WRITABLE : 0);
  if (events == poll_events_) return;
  poll_events_ = events;
  if (events != 0) {
    uv_poll_start(poll_, events, OnPoll);
  } else {
    uv_poll_stop(poll_);
  }
}

void LoopIo::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<LoopIo*>(handle->data);
  if (handle != self->poll_) return;
  natsConnection* connection;
  bool read, write;
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    // The socket this handle watches was replaced, or is no longer to be read: its readiness
    // says nothing about nats.c's current socket.
    if (self->pending_socket_ >= 0 || self->generation_ != self->poll_generation_ ||
        self->detached_) {
      return;
    }
    connection = self->connection_;
    read = self->want_read_;
    write = self->want_write_;
  }
  // An error on the socket is read as one, and nats.c reconnects.
  if (read && (status < 0 || (events & UV_READABLE) != 0)) {
    natsConnection_ProcessReadEvent(connection);
    if (!self->closing_) self->after_read_();
  }
  if (write && status >= 0 && (events & UV_WRITABLE) != 0 && handle == self->poll_) {
    natsConnection_ProcessWriteEvent(connection);
  }
}

void LoopIo::ClosePoll() {
  if (poll_ == nullptr) return;
  // The descriptor is still open, so the loop forgets this handle's number and nothing else.
  uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* handle) {
    auto* poll = reinterpret_cast<Poll*>(handle);
    LoopIo* owner = poll->owner;
    close(poll->fd);
    delete poll;
    --owner->open_handles_;
    owner->MaybeFree();
  });
  poll_ = nullptr;
  poll_events_ = 0;
}

void LoopIo::Close() {
  if (closing_) return;
  closing_ = true;
  ClosePoll();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (pending_socket_ >= 0) close(pending_socket_);
    pending_socket_ = -1;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(wakeup_), [](uv_handle_t* handle) {
    auto* self = static_cast<LoopIo*>(handle->data);
    delete reinterpret_cast<uv_async_t*>(handle);
    --self->open_handles_;
    self->MaybeFree();
  });
  uv_close(reinterpret_cast<uv_handle_t*>(before_poll_), [](uv_handle_t* handle) {
    auto* self = static_cast<LoopIo*>(handle->data);
    delete reinterpret_cast<uv_prepare_t*>(handle);
    --self->open_handles_;
    self->MaybeFree();
  });
  uv_close(reinterpret_cast<uv_handle_t*>(after_io_), [](uv_handle_t* handle) {
    auto* self = static_cast<LoopIo*>(handle->data);
    delete reinterpret_cast<uv_check_t*>(handle);
    --self->open_handles_;
    self->MaybeFree();
  });
}

void LoopIo::MaybeFree() {
  if (closing_ && open_handles_ == 0) delete this;
}

}  // namespace serve::bus::detail
