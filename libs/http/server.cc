#include "http/server.h"

#include <netdb.h>
#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <utility>

#include "http/ascii.h"
#include "http/connection.h"
#include "http/server_core.h"

namespace serve::http {
namespace {

using internal::EqualsIgnoreCase;

uint64_t ToMilliseconds(double seconds) {
  if (!(seconds > 0)) {
    return 0;
  }
  double ms = std::ceil(seconds * 1000);
  return ms > 1e12 ? static_cast<uint64_t>(1e12) : std::max<uint64_t>(1, static_cast<uint64_t>(ms));
}

}  // namespace

const std::string* Request::FindHeader(std::string_view name) const {
  for (const Header& header : headers) {
    if (EqualsIgnoreCase(header.name, name)) {
      return &header.value;
    }
  }
  return nullptr;
}

std::string_view ReasonPhrase(int status) {
  // clang-format off
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Entity";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    case 511: return "Network Authentication Required";
    default: return "Unknown";
  }
  // clang-format on
}

// ---------------------------------------------------------------------------------------------
// Responder

Responder::~Responder() {
  if (connection_.expired()) {
    return;
  }
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  if (connection == nullptr || !connection->Awaits(sequence_)) {
    return;  // nobody waits for this answer any more
  }
  spdlog::warn("http: a request was dropped without an answer; answering 500");
  Response response;
  response.status = 500;
  response.headers.push_back({"Content-Type", "text/plain; charset=utf-8"});
  response.body = "internal server error: the request was not answered\n";
  connection->Send(sequence_, std::move(response));
}

Responder& Responder::operator=(Responder&& other) noexcept {
  if (this != &other) {
    Responder replaced(std::move(*this));  // answers 500 if it was never sent
    connection_ = std::move(other.connection_);
    sequence_ = other.sequence_;
  }
  return *this;
}

void Responder::Send(Response response) {
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  connection_.reset();
  if (connection != nullptr) {
    connection->Send(sequence_, std::move(response));
  }
}

Stream Responder::StartStream(Response head) {
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  connection_.reset();
  if (connection == nullptr || !connection->Awaits(sequence_)) return Stream();
  connection->StartStream(sequence_, std::move(head));
  return Stream(connection, sequence_);
}

Stream::~Stream() { Close(); }

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    Close();
    connection_ = std::move(other.connection_);
    sequence_ = other.sequence_;
  }
  return *this;
}

bool Stream::Write(std::string data) {
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  if (connection == nullptr) return false;
  if (!connection->StreamWrite(sequence_, std::move(data))) {
    connection_.reset();
    return false;
  }
  return true;
}

void Stream::Close() {
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  connection_.reset();
  if (connection != nullptr) connection->EndStream(sequence_);
}

bool Stream::open() const {
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  return connection != nullptr && connection->Streams(sequence_);
}

bool Responder::client_connected() const {
  std::shared_ptr<internal::Connection> connection = connection_.lock();
  return connection != nullptr && connection->client_connected();
}

// ---------------------------------------------------------------------------------------------
// Server

Server::Server(uv_loop_t* loop, ServerOptions options, Handler handler)
    : core_(new internal::ServerCore(loop, std::move(options), std::move(handler))) {}

Server::~Server() { core_->Release(); }

Status Server::Listen() { return core_->Listen(); }

int Server::port() const { return core_->port(); }

void Server::Close(std::function<void()> on_closed) { core_->Close(std::move(on_closed)); }

size_t Server::connection_count() const { return core_->connection_count(); }

size_t Server::buffered_bytes() const { return core_->buffered_bytes(); }

size_t Server::paused_connection_count() const { return core_->paused_connection_count(); }

size_t Server::accept_failure_count() const { return core_->accept_failure_count(); }

Result<int> OpenListeningSocket(const std::string& host, int port, int backlog) {
  const std::string where = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                                                : fmt::format("{}:{}", host, port);
  auto fail = [&](const std::string& why) {
    return Status::Error(fmt::format("cannot listen on {}: {}", where, why));
  };
  if (port < 0 || port > 65535) {
    return fail("the port must be between 0 and 65535 (0 picks a free one)");
  }

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string port_text = std::to_string(port);
  int gai =
      getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &addresses);
  if (gai != 0 || addresses == nullptr) {
    return fail(
        fmt::format("cannot resolve the host: {} (use an address such as 127.0.0.1 or "
                    "0.0.0.0)",
                    gai_strerror(gai)));
  }
  const addrinfo& address = *addresses;

  int fd = socket(address.ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int error = 0;
  if (fd < 0) {
    error = errno;
  } else {
    int on = 1;
    // A restarted server must not wait for the previous one's connections in TIME_WAIT.
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, address.ai_addr, address.ai_addrlen) != 0 || listen(fd, backlog) != 0) {
      error = errno;
      close(fd);
    }
  }
  freeaddrinfo(addresses);
  if (error != 0) {
    int uv_error = uv_translate_sys_error(error);
    std::string why = uv_strerror(uv_error);
    switch (uv_error) {
      case UV_EADDRINUSE:
        why += " (is another server already running on this port? choose another port)";
        break;
      case UV_EACCES:
        if (port > 0 && port < 1024) {
          why +=
              " (ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port above "
              "1023)";
        }
        break;
      case UV_EADDRNOTAVAIL:
        why += " (is this an address of this machine? use 127.0.0.1 or 0.0.0.0)";
        break;
      default:
        break;
    }
    return fail(why);
  }
  return fd;
}

// ---------------------------------------------------------------------------------------------
// ServerCore

namespace internal {

ServerCore::ServerCore(uv_loop_t* loop, ServerOptions options, Handler handler)
    : loop_(loop),
      options_(std::move(options)),
      handler_(std::move(handler)),
      read_buffer_(new char[kReadBufferSize]) {
  limits_.max_header_bytes = options_.max_header_bytes;
  limits_.max_body_bytes = options_.max_body_bytes;
  limits_.max_buffered_bytes = options_.max_connection_buffer_bytes;
  limits_.request_timeout_ms = ToMilliseconds(options_.request_timeout_s);
  limits_.idle_timeout_ms = ToMilliseconds(options_.idle_timeout_s);
  uint64_t step = 0;
  for (uint64_t timeout : {limits_.request_timeout_ms, limits_.idle_timeout_ms}) {
    if (timeout != 0 && (step == 0 || timeout < step)) {
      step = timeout;
    }
  }
  limits_.timer_step_ms = step != 0 ? step : 1000;
}

ServerCore::~ServerCore() = default;

Status ServerCore::Listen() {
  if (closing_) {
    return Status::Error("cannot listen: the server is closed");
  }
  if (listening_) {
    return Status::Error(fmt::format("cannot listen: already listening on port {}", port_));
  }
  if (listener_used_) {
    return Status::Error("cannot listen: an earlier Listen() failed; create a new Server");
  }
  int fd = options_.listen_fd;
  if (fd < 0) {
    auto bound = OpenListeningSocket(options_.host, options_.port, options_.backlog);
    if (!bound.ok()) {
      return bound.status();
    }
    fd = *bound;
  }
  // The server accepts by itself rather than through uv_listen: on EMFILE libuv closes every
  // waiting connection without telling its caller, so a proxy out of descriptors would drop
  // clients without a word in its log.
  listener_used_ = true;
  // An inherited socket listens already; listening again only sets the backlog.
  int rc = listen(fd, options_.backlog) == 0 ? 0 : uv_translate_sys_error(errno);
  if (rc == 0) rc = uv_poll_init_socket(loop_, &listener_, fd);
  if (rc < 0) {
    close(fd);
    return Status::Error(
        fmt::format("cannot listen on {}:{}: {}", options_.host, options_.port, uv_strerror(rc)));
  }
  listen_fd_ = fd;
  listener_.data = this;
  ++open_handles_;
  uv_timer_init(loop_, &accept_retry_);
  accept_retry_.data = this;
  ++open_handles_;
  uv_poll_start(&listener_, UV_READABLE, &ServerCore::OnAcceptable);
  uv_idle_init(loop_, &flush_idle_);
  uv_check_init(loop_, &flush_check_);
  flush_idle_.data = this;
  flush_check_.data = this;
  open_handles_ += 2;
  listening_ = true;

  sockaddr_storage bound_address{};
  socklen_t length = sizeof(bound_address);
  if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound_address), &length) == 0) {
    if (bound_address.ss_family == AF_INET6) {
      port_ = ntohs(reinterpret_cast<sockaddr_in6*>(&bound_address)->sin6_port);
    } else {
      port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound_address)->sin_port);
    }
  }
  spdlog::debug("http: listening on {}:{}", options_.host, port_);
  return Status::Ok();
}

void ServerCore::OnAcceptable(uv_poll_t* handle, int status, int /*events*/) {
  auto* core = static_cast<ServerCore*>(handle->data);
  if (status < 0) {
    core->OnAcceptFailed(status);
    return;
  }
  core->AcceptPending();
}

void ServerCore::OnAcceptRetry(uv_timer_t* timer) {
  auto* core = static_cast<ServerCore*>(timer->data);
  if (core->closing_) return;
  uv_poll_start(&core->listener_, UV_READABLE, &ServerCore::OnAcceptable);
}

void ServerCore::AcceptPending() {
  // A bounded batch, so that a flood of connections does not starve the ones already open.
  for (int i = 0; i < kAcceptBatch && !closing_; ++i) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      Accept(fd);
      continue;
    }
    int error = errno;
    if (error == EAGAIN || error == EWOULDBLOCK) return;
    if (error == EINTR || error == ECONNABORTED) continue;  // the client gave up; next one
    OnAcceptFailed(uv_translate_sys_error(error));
    return;
  }
}

void ServerCore::OnAcceptFailed(int error) {
  ++accept_failures_;
  uint64_t suppressed = 0;
  if (accept_log_.Allow(&suppressed)) {
    std::string hint;
    if (error == UV_EMFILE || error == UV_ENFILE) {
      hint =
          " (out of file descriptors: raise `ulimit -n` or the system's limit, or serve "
          "fewer connections per process)";
    }
    std::string more;
    if (suppressed > 0) more = fmt::format("; {} more failures since the last line", suppressed);
    spdlog::warn(
        "http: cannot accept connections on port {}: {}{}; connections wait in the "
        "listen backlog and accepting is retried in {} ms{}",
        port_, uv_strerror(error), hint, kAcceptRetryMs, more);
  }
  // The same failure would come back at once: pause instead of spinning on it.
  uv_poll_stop(&listener_);
  uv_timer_start(&accept_retry_, &ServerCore::OnAcceptRetry, kAcceptRetryMs, 0);
}

size_t ServerCore::buffered_bytes() const {
  size_t total = 0;
  for (const auto& connection : connections_) total += connection->BufferedBytes();
  return total;
}

size_t ServerCore::paused_connection_count() const {
  return static_cast<size_t>(
      std::count_if(connections_.begin(), connections_.end(),
                    [](const auto& connection) { return connection->read_paused(); }));
}

void ServerCore::Accept(int fd) {
  auto connection = std::make_shared<Connection>(this);
  connection->index = connections_.size();
  connections_.push_back(connection);
  ++open_handles_;
  connection->Open(fd);
}

void ServerCore::OnConnectionClosed(Connection* connection) {
  if (connection->flush_scheduled) {
    auto it = std::find(dirty_.begin(), dirty_.end(), connection);
    if (it != dirty_.end()) {
      dirty_.erase(it);
    }
  }
  size_t index = connection->index;
  std::swap(connections_[index], connections_.back());
  connections_[index]->index = index;
  connections_.pop_back();  // destroys the connection; Responders only hold weak_ptrs
  --open_handles_;
  MaybeFinishClose();
}

void ServerCore::ScheduleFlush(Connection* connection) {
  if (!connection->flush_scheduled) {
    connection->flush_scheduled = true;
    dirty_.push_back(connection);
  }
  if (!flush_armed_ && listening_ && !closing_) {
    uv_idle_start(&flush_idle_, &ServerCore::OnFlushPhase);
    uv_check_start(&flush_check_, &ServerCore::OnFlushPhase);
    flush_armed_ = true;
  }
}

void ServerCore::OnFlushPhase(uv_idle_t* handle) {
  static_cast<ServerCore*>(handle->data)->RunFlush();
}

void ServerCore::OnFlushPhase(uv_check_t* handle) {
  static_cast<ServerCore*>(handle->data)->RunFlush();
}

void ServerCore::RunFlush() {
  StopFlushHandles();
  // Connections are destroyed only by close callbacks, which do not run during this loop.
  flushing_.swap(dirty_);
  for (Connection* connection : flushing_) {
    connection->Flush();
  }
  flushing_.clear();
}

void ServerCore::StopFlushHandles() {
  if (flush_armed_) {
    uv_idle_stop(&flush_idle_);
    uv_check_stop(&flush_check_);
    flush_armed_ = false;
  }
}

void ServerCore::Close(std::function<void()> on_closed) {
  if (closed_) {
    if (on_closed) {
      on_closed();
    }
    return;
  }
  if (on_closed) {
    on_closed_.push_back(std::move(on_closed));
  }
  if (!closing_) {
    closing_ = true;
    if (listening_) {
      StopFlushHandles();
      // uv_close stops the poll at once, so the socket can be closed right after.
      uv_close(reinterpret_cast<uv_handle_t*>(&listener_), &ServerCore::OnHandleClosed);
      close(listen_fd_);
      listen_fd_ = -1;
      uv_close(reinterpret_cast<uv_handle_t*>(&accept_retry_), &ServerCore::OnHandleClosed);
      uv_close(reinterpret_cast<uv_handle_t*>(&flush_idle_), &ServerCore::OnHandleClosed);
      uv_close(reinterpret_cast<uv_handle_t*>(&flush_check_), &ServerCore::OnHandleClosed);
    }
    for (const std::shared_ptr<Connection>& connection : connections_) {
      connection->Close("server closing");
    }
  }
  MaybeFinishClose();  // may delete this
}

void ServerCore::OnHandleClosed(uv_handle_t* handle) {
  auto* core = static_cast<ServerCore*>(handle->data);
  --core->open_handles_;
  core->MaybeFinishClose();
}

void ServerCore::MaybeFinishClose() {
  if (!closing_ || closed_ || open_handles_ > 0) {
    return;
  }
  closed_ = true;
  std::vector<std::function<void()>> callbacks;
  callbacks.swap(on_closed_);
  if (released_) {
    delete this;
  }
  // A callback may destroy the Server, and with it this core: nothing here touches `this`.
  for (const std::function<void()>& callback : callbacks) {
    callback();
  }
}

void ServerCore::Release() {
  released_ = true;
  if (closed_) {
    delete this;
    return;
  }
  Close(nullptr);  // may delete this
}

}  // namespace internal
}  // namespace serve::http
