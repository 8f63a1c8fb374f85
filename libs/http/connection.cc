#include "http/connection.h"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <exception>
#include <utility>

#include "http/ascii.h"
#include "http/server_core.h"

namespace serve::http::internal {
namespace {

using internal::AsciiToLower;
using internal::EqualsIgnoreCase;

// A client may have this many requests in flight (read but not yet answered and written)
// before the server stops reading from it, whatever their size (ConnectionLimits bounds bytes).
constexpr size_t kMaxPipelinedRequests = 64;
// A stream whose client lets more than this wait to be written is closed.
constexpr size_t kMaxStreamBufferedBytes = 4 * 1024 * 1024;
// Bodies at least this large are written from the Response's own string instead of being copied
// next to the head.
constexpr size_t kInlineBodyBytes = 8 * 1024;
// Output and body buffers keep their capacity between requests up to this size.
constexpr size_t kKeptCapacityBytes = 256 * 1024;
constexpr size_t kInitialBodyReserve = 64 * 1024;
// After the last response of a closing connection the write side is shut down and input is read
// and dropped until the client closes, for at most this long. Closing at once with unread input
// would make the kernel reset the connection, and the client could lose the response.
constexpr uint64_t kLingerMs = 2000;
// Chunk extensions are parsed and dropped, so they are not counted as body: without a limit a
// client could send any amount of them with a tiny body.
constexpr size_t kMaxChunkExtensionBytes = 4 * 1024;

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

// Whether a comma-separated header value such as "keep-alive, Close" lists `token`.
bool HasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) {
      item.remove_prefix(1);
    }
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) {
      item.remove_suffix(1);
    }
    if (EqualsIgnoreCase(item, token)) {
      return true;
    }
    if (comma == std::string_view::npos) {
      break;
    }
    value.remove_prefix(comma + 1);
  }
  return false;
}

// RFC 9110 5.1: a field name is a token. This rules out whitespace (a name starting with it
// would read as an obs-fold continuing the previous header), colons and line breaks.
bool IsToken(std::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alnum && std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos) {
      return false;
    }
  }
  return true;
}

// `text` with control characters and bytes past ASCII as \xNN, for a log line.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f) {
      out += fmt::format("\\x{:02x}", byte);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// A value with CR, LF (also a bare one, which many clients take for a line end) or NUL could end
// the header early and smuggle in headers or a whole response of the sender's choosing.
bool IsSafeFieldValue(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool IsDigits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void AppendNumber(uint64_t value, std::string* out) {
  char digits[24];
  auto [end, error] = std::to_chars(digits, digits + sizeof(digits), value);
  (void)error;  // 24 digits always suffice
  out->append(digits, end);
}

// About what an answer occupies until it is written.
size_t ResponseBytes(const Response& response) {
  size_t bytes = 64 + response.body.size();
  for (const Header& header : response.headers)
    bytes += header.name.size() + header.value.size() + 4;
  return bytes;
}

// "HPE_INVALID_HEADER_TOKEN" -> "invalid header token".
std::string DescribeParserError(llhttp_errno_t error) {
  std::string_view name = llhttp_errno_name(error);
  if (name.starts_with("HPE_")) {
    name.remove_prefix(4);
  }
  std::string text(name);
  for (char& c : text) {
    c = c == '_' ? ' ' : AsciiToLower(c);
  }
  return text;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// OutputBuffer

void OutputBuffer::Append(std::string_view data) {
  bytes_.append(data);
  size_ += data.size();
}

void OutputBuffer::AppendBody(std::string&& body) {
  if (body.size() < kInlineBodyBytes) {
    Append(body);
    return;
  }
  size_ += body.size();
  cuts_.push_back({bytes_.size(), bodies_.size()});
  bodies_.push_back(std::move(body));
}

void OutputBuffer::Gather(size_t skip, std::vector<uv_buf_t>* out) {
  out->clear();
  auto add = [&](const char* data, size_t size) {
    if (skip >= size) {
      skip -= size;
      return;
    }
    out->push_back(uv_buf_init(const_cast<char*>(data) + skip, static_cast<unsigned>(size - skip)));
    skip = 0;
  };
  size_t from = 0;
  for (const Cut& cut : cuts_) {
    add(bytes_.data() + from, cut.bytes_offset - from);
    const std::string& body = bodies_[cut.body_index];
    add(body.data(), body.size());
    from = cut.bytes_offset;
  }
  add(bytes_.data() + from, bytes_.size() - from);
}

void OutputBuffer::Clear() {
  size_ = 0;
  bodies_.clear();
  cuts_.clear();
  if (bytes_.capacity() > kKeptCapacityBytes) {
    std::string().swap(bytes_);
  } else {
    bytes_.clear();
  }
}

// ---------------------------------------------------------------------------------------------
// Connection: setup and teardown

const llhttp_settings_t* Connection::ParserSettings() {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = &Connection::OnMessageBegin;
    s.on_url = &Connection::OnUrl;
    s.on_header_field = &Connection::OnHeaderField;
    s.on_header_field_complete = &Connection::OnHeaderFieldComplete;
    s.on_header_value = &Connection::OnHeaderValue;
    s.on_header_value_complete = &Connection::OnHeaderValueComplete;
    s.on_headers_complete = &Connection::OnHeadersComplete;
    s.on_body = &Connection::OnBody;
    s.on_chunk_extension_name = &Connection::OnChunkExtension;
    s.on_chunk_extension_value = &Connection::OnChunkExtension;
    s.on_message_complete = &Connection::OnMessageComplete;
    return s;
  }();
  return &settings;
}

Connection::Connection(ServerCore* core) : core_(core) {}

Connection::~Connection() = default;

void Connection::Open(int fd) {
  // Neither can fail: uv_tcp_init creates no socket, uv_timer_init only links the handle.
  uv_tcp_init(core_->loop(), &tcp_);
  uv_timer_init(core_->loop(), &timer_);
  open_handles_ = 2;
  tcp_.data = this;
  timer_.data = this;
  write_request_.data = this;
  shutdown_request_.data = this;
  llhttp_init(&parser_, HTTP_REQUEST, ParserSettings());
  parser_.data = this;

  int rc = uv_tcp_open(&tcp_, fd);
  if (rc < 0) {
    close(fd);  // not the handle's
    spdlog::warn("http: cannot use an accepted connection: {}", uv_strerror(rc));
    Close("open failed");
    return;
  }
  uv_tcp_nodelay(&tcp_, 1);
  if (spdlog::should_log(spdlog::level::debug)) {
    sockaddr_storage peer{};
    int length = sizeof(peer);
    char ip[64] = "?";
    if (uv_tcp_getpeername(&tcp_, reinterpret_cast<sockaddr*>(&peer), &length) == 0) {
      uv_ip_name(reinterpret_cast<sockaddr*>(&peer), ip, sizeof(ip));
    }
    spdlog::debug("http: connection from {}", ip);
  }
  StartReading();
  SetDeadline(Deadline::kIdle, core_->limits().idle_timeout_ms);
}

void Connection::Close(const char* why) {
  if (state_ == State::kClosing) {
    return;
  }
  spdlog::debug("http: closing connection: {}", why);
  state_ = State::kClosing;
  reading_ = false;
  deadline_ = Deadline::kNone;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), &Connection::OnHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), &Connection::OnHandleClosed);
}

void Connection::OnHandleClosed(uv_handle_t* handle) {
  auto* connection = static_cast<Connection*>(handle->data);
  if (--connection->open_handles_ == 0) {
    connection->core_->OnConnectionClosed(connection);  // destroys the connection
  }
}

// ---------------------------------------------------------------------------------------------
// Reading and parsing

void Connection::StartReading() {
  if (reading_ || state_ == State::kClosing) {
    return;
  }
  int rc = uv_read_start(stream(), &Connection::OnAlloc, &Connection::OnRead);
  if (rc < 0) {
    spdlog::warn("http: cannot read from a connection: {}", uv_strerror(rc));
    Close("read start failed");
    return;
  }
  reading_ = true;
}

void Connection::StopReading() {
  if (reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
}

void Connection::OnAlloc(uv_handle_t* handle, size_t /*suggested_size*/, uv_buf_t* buf) {
  ServerCore* core = static_cast<Connection*>(handle->data)->core_;
  *buf = uv_buf_init(core->read_buffer(), static_cast<unsigned>(core->read_buffer_size()));
}

void Connection::OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* connection = static_cast<Connection*>(stream->data);
  if (nread > 0) {
    // Once draining, input is only read to notice when the client leaves.
    if (connection->state_ == State::kOpen) {
      connection->Parse(buf->base, static_cast<size_t>(nread));
    }
    return;
  }
  if (nread == 0) {
    return;  // EAGAIN
  }
  // A client that stops sending while an answer is pending has given up on it (nginx treats it
  // the same way); otherwise it is simply done.
  connection->Close(nread == UV_EOF ? "closed by the client"
                                    : uv_strerror(static_cast<int>(nread)));
}

void Connection::Parse(const char* data, size_t size) {
  const char* position = data;
  const char* end = data + size;
  while (position < end) {
    segment_start_ = position;
    segment_end_ = end;
    if (in_head_) {
      head_from_ = position;
    }
    llhttp_errno_t error = llhttp_execute(&parser_, position, static_cast<size_t>(end - position));
    const char* stop = end;
    if (error == HPE_PAUSED) {  // after each complete message, see OnMessageComplete
      stop = llhttp_get_error_pos(&parser_);
      llhttp_resume(&parser_);
    } else if (error != HPE_OK) {
      if (error_status_ == 400) {
        AnswerError(400, fmt::format("bad request: {}\n", error_description_));
        return;
      }
      if (error_status_ != 0) {
        AnswerError(error_status_, "");
        return;
      }
      AnswerError(400, fmt::format("bad request: {} ({})\n", DescribeParserError(error),
                                   llhttp_get_error_reason(&parser_)));
      return;
    }
    if (in_head_) {
      head_bytes_ += static_cast<size_t>(stop - head_from_);
      head_from_ = stop;
      if (head_bytes_ > core_->limits().max_header_bytes) {
        AnswerError(431, "");
        return;
      }
    }
    if (message_complete_) {
      message_complete_ = false;
      bool keep_alive = Dispatch();
      if (state_ != State::kOpen) {
        return;  // the handler closed the server
      }
      if (!keep_alive) {
        EnterDraining();
        return;
      }
      // Also at the end of the input: the next read could hold many more requests.
      if (OverBackpressureLimits()) {
        stash_.assign(stop, end);
        StopReading();
        read_paused_ = true;
        return;
      }
    }
    position = stop;
  }
}

bool Connection::WithinHeadLimit(const char* end) const {
  return head_bytes_ + static_cast<size_t>(end - head_from_) <= core_->limits().max_header_bytes;
}

int Connection::Fail(int status) {
  error_status_ = status;
  llhttp_set_error_reason(&parser_, "rejected by a server limit");
  return HPE_USER;
}

int Connection::OnMessageBegin(llhttp_t* parser) {
  auto* c = static_cast<Connection*>(parser->data);
  c->in_message_ = true;
  c->in_head_ = true;
  c->in_header_field_ = false;
  c->in_header_value_ = false;
  c->head_bytes_ = 0;
  c->head_from_ = c->segment_start_;
  c->trailer_bytes_ = 0;
  c->chunk_extension_bytes_ = 0;
  c->declared_body_bytes_ = 0;
  // Whatever the last handler did not move out keeps its capacity for this request.
  Request& request = c->request_;
  request.method.clear();
  request.target.clear();
  request.path.clear();
  request.query.clear();
  request.headers.clear();
  request.headers.reserve(8);
  if (request.body.capacity() > kKeptCapacityBytes) {
    std::string().swap(request.body);
  } else {
    request.body.clear();
  }
  request.keep_alive = true;
  c->SetDeadline(Deadline::kRequest, c->core_->limits().request_timeout_ms);
  return 0;
}

int Connection::OnUrl(llhttp_t* parser, const char* at, size_t length) {
  auto* c = static_cast<Connection*>(parser->data);
  if (!c->WithinHeadLimit(at + length)) {
    return c->Fail(431);
  }
  c->request_.target.append(at, length);
  return 0;
}

int Connection::OnHeaderField(llhttp_t* parser, const char* at, size_t length) {
  auto* c = static_cast<Connection*>(parser->data);
  if (!c->in_head_) {  // a trailer after a chunked body: counted, not kept
    c->trailer_bytes_ += length;
    return c->trailer_bytes_ > c->core_->limits().max_header_bytes ? c->Fail(431) : 0;
  }
  if (!c->WithinHeadLimit(at + length)) {
    return c->Fail(431);
  }
  if (!c->in_header_field_) {
    c->request_.headers.emplace_back();
    c->in_header_field_ = true;
  }
  c->request_.headers.back().name.append(at, length);
  return 0;
}

int Connection::OnHeaderFieldComplete(llhttp_t* parser) {
  auto* c = static_cast<Connection*>(parser->data);
  c->in_header_field_ = false;
  // llhttp 8 accepts "Bad Header: x"; later versions reject it, because servers behind a proxy
  // disagree on what such a header means (request smuggling).
  if (c->in_head_) {
    const std::string& name = c->request_.headers.back().name;
    if (name.find_first_of(" \t") != std::string::npos) {
      c->error_description_ = "invalid header token (whitespace in a header name)";
      return c->Fail(400);
    }
  }
  return 0;
}

int Connection::OnHeaderValue(llhttp_t* parser, const char* at, size_t length) {
  auto* c = static_cast<Connection*>(parser->data);
  // llhttp 8 accepts obs-fold (a line starting with whitespace continues the value before it)
  // and hands the next line over as another piece of the same value. RFC 9112 lets a server
  // reject it, and servers that unfold it disagree with those that do not on what the header
  // says. A value may also come in pieces because it spans two reads: then one piece ends where
  // the input ended and the next starts where the next input starts.
  if (c->in_header_value_ && !(c->value_piece_reached_end_ && at == c->segment_start_)) {
    c->error_description_ =
        "obsolete line folding (a header line starting with whitespace); send each header on "
        "one line";
    return c->Fail(400);
  }
  c->in_header_value_ = true;
  c->value_piece_reached_end_ = at + length == c->segment_end_;
  if (!c->in_head_) {
    c->trailer_bytes_ += length;
    return c->trailer_bytes_ > c->core_->limits().max_header_bytes ? c->Fail(431) : 0;
  }
  if (!c->WithinHeadLimit(at + length)) {
    return c->Fail(431);
  }
  c->request_.headers.back().value.append(at, length);
  return 0;
}

int Connection::OnHeaderValueComplete(llhttp_t* parser) {
  static_cast<Connection*>(parser->data)->in_header_value_ = false;
  return 0;
}

int Connection::OnHeadersComplete(llhttp_t* parser) {
  auto* c = static_cast<Connection*>(parser->data);
  c->in_head_ = false;
  Request& request = c->request_;
  request.method = llhttp_method_name(static_cast<llhttp_method_t>(parser->method));
  size_t question = request.target.find('?');
  if (question == std::string::npos) {
    request.path = request.target;
  } else {
    request.path.assign(request.target, 0, question);
    request.query.assign(request.target, question + 1);
  }
  // llhttp reads "GET /" as HTTP/0.9 and HTTP/2.0 as a version like any other; neither is
  // HTTP/1 (an HTTP/2 client starts with its preface, which is not a request).
  if (parser->http_major != 1) {
    c->error_description_ =
        "unsupported HTTP version (this server speaks HTTP/1.0 and HTTP/1.1 only)";
    return c->Fail(400);
  }
  // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; any request has at most one. Two
  // servers may pick different ones and route the same request differently.
  size_t hosts = 0;
  for (const Header& header : request.headers) {
    if (header.name.size() == 4 && EqualsIgnoreCase(header.name, "host")) ++hosts;
  }
  if (hosts > 1) {
    c->error_description_ = "more than one Host header";
    return c->Fail(400);
  }
  if (hosts == 0 && parser->http_minor >= 1) {
    c->error_description_ = "no Host header (HTTP/1.1 requires one)";
    return c->Fail(400);
  }
  c->is_head_ = parser->method == HTTP_HEAD;
  c->is_http10_ = parser->http_major == 1 && parser->http_minor == 0;
  // The bytes after an upgrade request (CONNECT, Upgrade: websocket) are another protocol: the
  // handler can answer it, then the connection closes.
  request.keep_alive = llhttp_should_keep_alive(parser) != 0 && parser->upgrade == 0;

  const bool chunked = (parser->flags & F_CHUNKED) != 0;
  const bool has_length = !chunked && (parser->flags & F_CONTENT_LENGTH) != 0;
  const size_t max_body = c->core_->limits().max_body_bytes;
  if (has_length && parser->content_length > max_body) {
    return c->Fail(413);  // before the body is read, and instead of 100 Continue
  }
  if (has_length) {
    c->declared_body_bytes_ = static_cast<size_t>(parser->content_length);
    request.body.reserve(std::min(c->declared_body_bytes_, kInitialBodyReserve));
  }
  const bool has_body = chunked || (has_length && parser->content_length > 0);
  if (has_body && parser->http_major == 1 && parser->http_minor >= 1) {
    const std::string* expect = request.FindHeader("expect");
    if (expect != nullptr && EqualsIgnoreCase(*expect, "100-continue")) {
      c->SendContinue();
    }
  }
  return 0;
}

int Connection::OnBody(llhttp_t* parser, const char* at, size_t length) {
  auto* c = static_cast<Connection*>(parser->data);
  std::string& body = c->request_.body;
  if (body.size() + length > c->core_->limits().max_body_bytes) {
    return c->Fail(413);  // a chunked body that keeps coming
  }
  if (body.size() + length > body.capacity() && c->declared_body_bytes_ > 0) {
    body.reserve(c->declared_body_bytes_);  // the client is sending it: make room once
  }
  body.append(at, length);
  return 0;
}

int Connection::OnChunkExtension(llhttp_t* parser, const char* /*at*/, size_t length) {
  auto* c = static_cast<Connection*>(parser->data);
  c->chunk_extension_bytes_ += length;
  if (c->chunk_extension_bytes_ > kMaxChunkExtensionBytes) {
    c->error_description_ = "chunk extensions longer than 4096 bytes in one request";
    return c->Fail(400);
  }
  return 0;
}

int Connection::OnMessageComplete(llhttp_t* parser) {
  auto* c = static_cast<Connection*>(parser->data);
  c->in_message_ = false;
  c->message_complete_ = true;
  // Pausing hands control back to Parse(), which calls the handler outside the parser and
  // learns exactly where the next request starts.
  return HPE_PAUSED;
}

bool Connection::Dispatch() {
  const uint64_t sequence = slots_base_ + slots_.size();
  Slot& slot = slots_.emplace_back();
  slot.head = is_head_;
  slot.keep_alive = request_.keep_alive;
  slot.http10 = is_http10_;
  slot.bytes = head_bytes_ + request_.body.size();
  slot_bytes_ += slot.bytes;
  ++unanswered_;
  SetDeadline(Deadline::kNone, 0);  // the handler owns the time from here
  const bool keep_alive = request_.keep_alive;
  try {
    core_->handler()(std::move(request_), Responder(weak_from_this(), sequence));
  } catch (const std::exception& e) {
    spdlog::warn("http: request handler threw: {}", e.what());
  } catch (...) {
    spdlog::warn("http: request handler threw a non-standard exception");
  }
  return keep_alive;
}

void Connection::SendContinue() {
  // Only when nothing is waiting to be answered before it; otherwise a 100 now would come out
  // of order. The client then sends the body after its own short wait.
  if (slots_head_ != slots_.size()) {
    return;
  }
  pending_.Append(kContinue);
  core_->ScheduleFlush(this);
}

void Connection::AnswerError(int status, std::string body) {
  const ConnectionLimits& limits = core_->limits();
  if (body.empty()) {
    switch (status) {
      case 408:
        body = fmt::format("request timeout: the request did not arrive within {} ms\n",
                           limits.request_timeout_ms);
        break;
      case 413:
        body = fmt::format("payload too large: the request body is larger than {} bytes\n",
                           limits.max_body_bytes);
        break;
      case 431:
        body = fmt::format(
            "request header fields too large: the request line and headers are larger than {} "
            "bytes\n",
            limits.max_header_bytes);
        break;
      default:
        body = fmt::format("{}\n", ReasonPhrase(status));
        break;
    }
  }
  spdlog::debug("http: answering {} and closing: {}", status,
                std::string_view(body).substr(0, body.size() - 1));
  in_message_ = false;
  in_head_ = false;
  Slot& slot = slots_.emplace_back();
  slot.ready = true;
  slot.keep_alive = false;
  slot.response.status = status;
  slot.response.headers.push_back({"Content-Type", "text/plain; charset=utf-8"});
  slot.response.body = std::move(body);
  slot.bytes = ResponseBytes(slot.response);
  slot_bytes_ += slot.bytes;
  if (slots_head_ + 1 == slots_.size()) {
    core_->ScheduleFlush(this);
  }
  EnterDraining();
}

void Connection::EnterDraining() {
  if (state_ != State::kOpen) {
    return;
  }
  state_ = State::kDraining;
  read_paused_ = false;
  std::string().swap(stash_);
  StartReading();  // to notice when the client leaves
  if (unanswered_ == 0) {
    SetDeadline(Deadline::kIdle, core_->limits().idle_timeout_ms);
  } else {
    SetDeadline(Deadline::kNone, 0);
  }
}

bool Connection::OverBackpressureLimits() const {
  // Unparsed input (stash_) is left out: it is parsed only once reading resumes, so counting it
  // could keep the connection paused for good.
  return slots_.size() - slots_head_ >= kMaxPipelinedRequests ||
         slot_bytes_ + pending_.size() + in_flight_.size() >= core_->limits().max_buffered_bytes;
}

size_t Connection::BufferedBytes() const {
  return slot_bytes_ + pending_.size() + in_flight_.size() + stash_.size() + request_.body.size();
}

void Connection::MaybeResumeReading() {
  if (!read_paused_ || state_ != State::kOpen || OverBackpressureLimits()) {
    return;
  }
  read_paused_ = false;
  if (!stash_.empty()) {
    std::string input;
    input.swap(stash_);
    Parse(input.data(), input.size());  // may pause again and stash the rest anew
    if (stash_.empty()) {
      input.clear();
      stash_.swap(input);  // keep the capacity
    }
  }
  if (state_ == State::kOpen && !read_paused_) {
    StartReading();
  }
}

// ---------------------------------------------------------------------------------------------
// Answering and writing

bool Connection::Awaits(uint64_t sequence) const {
  if (state_ != State::kOpen && state_ != State::kDraining) {
    return false;
  }
  // Sequences outside the queue belong to requests dropped after a closing answer.
  if (sequence < slots_base_ + slots_head_ || sequence >= slots_base_ + slots_.size()) {
    return false;
  }
  return !slots_[sequence - slots_base_].ready;
}

void Connection::Send(uint64_t sequence, Response&& response) {
  if (!Awaits(sequence)) {
    return;
  }
  Slot& slot = slots_[sequence - slots_base_];
  slot.response = std::move(response);
  slot.ready = true;
  slot_bytes_ -= slot.bytes;  // the handler is done with the request
  slot.bytes = ResponseBytes(slot.response);
  slot_bytes_ += slot.bytes;
  --unanswered_;
  if (sequence == slots_base_ + slots_head_) {
    core_->ScheduleFlush(this);
  }
  SetIdleIfQuiet();
}

void Connection::StartStream(uint64_t sequence, Response&& head) {
  if (!Awaits(sequence)) return;
  slots_[sequence - slots_base_].stream = true;
  stream_sequence_ = sequence;
  Send(sequence, std::move(head));
}

bool Connection::Streams(uint64_t sequence) const {
  return (state_ == State::kOpen || state_ == State::kDraining) && sequence == stream_sequence_ &&
         (streaming_ ||
          (sequence >= slots_base_ + slots_head_ && sequence < slots_base_ + slots_.size() &&
           slots_[sequence - slots_base_].stream));
}

bool Connection::StreamWrite(uint64_t sequence, std::string&& data) {
  if (!Streams(sequence)) return false;
  if (!streaming_) {
    // The head waits behind earlier answers: the data joins its body.
    Slot& slot = slots_[sequence - slots_base_];
    slot.response.body.append(data);
    slot.bytes += data.size();
    slot_bytes_ += data.size();
    return true;
  }
  if (pending_.size() + in_flight_.size() + data.size() > kMaxStreamBufferedBytes) {
    Close("the client reads a stream too slowly");
    return false;
  }
  pending_.AppendBody(std::move(data));
  StartWrite();
  return state_ == State::kOpen || state_ == State::kDraining;
}

void Connection::EndStream(uint64_t sequence) {
  if (!Streams(sequence)) return;
  if (!streaming_) {
    // Not written yet: it goes out as a whole answer, and the connection still closes after it.
    slots_[sequence - slots_base_].stream = false;
    slots_[sequence - slots_base_].keep_alive = false;
    return;
  }
  streaming_ = false;
  if (!write_in_flight_ && pending_.empty()) BeginShutdown();
}

void Connection::Flush() {
  flush_scheduled = false;
  if (state_ != State::kOpen && state_ != State::kDraining) {
    return;
  }
  bool close = false;
  while (slots_head_ < slots_.size() && slots_[slots_head_].ready) {
    slot_bytes_ -= slots_[slots_head_].bytes;  // now counted in pending_
    Encode(slots_[slots_head_], &close);
    slots_[slots_head_] = Slot();
    ++slots_head_;
    if (close) {
      break;
    }
  }
  if (close || slots_head_ == slots_.size()) {
    // After a closing answer nothing more is written; Responders of requests behind it find no
    // slot and do nothing.
    slots_base_ += slots_.size();
    slots_.clear();
    slots_head_ = 0;
    slot_bytes_ = 0;
    if (close) {
      unanswered_ = 0;
      close_after_write_ = true;
      EnterDraining();
    }
  } else if (slots_head_ >= 16 && slots_head_ * 2 >= slots_.size()) {
    slots_.erase(slots_.begin(), slots_.begin() + static_cast<ptrdiff_t>(slots_head_));
    slots_base_ += slots_head_;
    slots_head_ = 0;
  }
  StartWrite();
}

void Connection::Encode(Slot& slot, bool* close) {
  Response& response = slot.response;
  int status = response.status;
  if (status < 200 || status > 599) {
    // 1xx cannot be a final answer, and anything else is not a status code (RFC 9110 15).
    spdlog::warn("http: handler answered with status {}; sending 500 instead", status);
    status = 500;
  }
  bool close_requested = !slot.keep_alive || slot.stream;
  const bool no_body = slot.head || status == 204 || status == 304;
  if (slot.stream && !no_body) streaming_ = true;

  std::string* out = pending_.bytes();
  const size_t old_size = out->size();
  size_t estimate = 96;
  for (const Header& header : response.headers) {
    estimate += header.name.size() + header.value.size() + 4;
  }
  if (no_body || response.body.size() >= kInlineBodyBytes) {
    out->reserve(old_size + estimate);
  } else {
    out->reserve(old_size + estimate + response.body.size());
  }

  out->append("HTTP/1.1 ");
  out->push_back(static_cast<char>('0' + status / 100));
  out->push_back(static_cast<char>('0' + status / 10 % 10));
  out->push_back(static_cast<char>('0' + status % 10));
  out->push_back(' ');
  out->append(ReasonPhrase(status));
  out->append("\r\n");

  const std::string* given_length = nullptr;
  for (const Header& header : response.headers) {
    const std::string& name = header.name;
    // The server frames the message itself; these come from the handler only by accident, e.g.
    // copied from an upstream response.
    if (name.size() == 10 && EqualsIgnoreCase(name, "connection")) {
      close_requested = close_requested || HasToken(header.value, "close");
      continue;
    }
    if (name.size() == 14 && EqualsIgnoreCase(name, "content-length")) {
      given_length = &header.value;
      continue;
    }
    if (name.size() == 17 && EqualsIgnoreCase(name, "transfer-encoding")) {
      continue;
    }
    if (!IsToken(name) || !IsSafeFieldValue(header.value)) {
      spdlog::warn(
          "http: dropping response header \"{}\": a name must be a token (no whitespace, colon "
          "or control character) and a value must not contain CR, LF or NUL",
          Printable(std::string_view(name).substr(0, 64)));
      continue;
    }
    out->append(name);
    out->append(": ");
    out->append(header.value);
    out->append("\r\n");
  }
  if (streaming_) {
    // The body ends with the connection.
  } else if (status != 204) {
    if (no_body && response.body.empty() && given_length != nullptr && IsDigits(*given_length)) {
      out->append("Content-Length: ");
      out->append(*given_length);
      out->append("\r\n");
    } else if (status != 304) {
      out->append("Content-Length: ");
      AppendNumber(response.body.size(), out);
      out->append("\r\n");
    }
  }
  if (close_requested) {
    out->append("Connection: close\r\n");
  } else if (slot.http10) {
    out->append("Connection: keep-alive\r\n");
  }
  out->append("\r\n");
  pending_.Grew(old_size);
  if (!no_body && !response.body.empty()) {
    pending_.AppendBody(std::move(response.body));
  }
  *close = close_requested;
}

void Connection::StartWrite() {
  if (write_in_flight_ || (state_ != State::kOpen && state_ != State::kDraining)) {
    return;
  }
  if (pending_.empty()) {
    AfterWriteDone();
    return;
  }
  // Most answers fit the socket buffer: write them now, without a request or a callback.
  pending_.Gather(0, &iovecs_);
  int written = uv_try_write(stream(), iovecs_.data(), static_cast<unsigned>(iovecs_.size()));
  if (written >= 0 && static_cast<size_t>(written) == pending_.size()) {
    pending_.Clear();
    AfterWriteDone();
    return;
  }
  if (written < 0 && written != UV_EAGAIN) {
    Close(uv_strerror(written));
    return;
  }
  std::swap(pending_, in_flight_);
  in_flight_.Gather(written > 0 ? static_cast<size_t>(written) : 0, &iovecs_);
  int rc = uv_write(&write_request_, stream(), iovecs_.data(),
                    static_cast<unsigned>(iovecs_.size()), &Connection::OnWrite);
  if (rc < 0) {
    in_flight_.Clear();
    Close(uv_strerror(rc));
    return;
  }
  write_in_flight_ = true;
  last_write_queue_size_ = uv_stream_get_write_queue_size(stream());
}

void Connection::OnWrite(uv_write_t* request, int status) {
  auto* c = static_cast<Connection*>(request->data);
  c->write_in_flight_ = false;
  c->in_flight_.Clear();
  if (status < 0) {
    c->Close(uv_strerror(status));  // also UV_ECANCELED: the connection is closing anyway
    return;
  }
  c->StartWrite();
}

void Connection::AfterWriteDone() {
  if (close_after_write_ && !streaming_) {
    BeginShutdown();
    return;
  }
  SetIdleIfQuiet();
  MaybeResumeReading();
}

void Connection::BeginShutdown() {
  if (state_ != State::kOpen && state_ != State::kDraining) {
    return;
  }
  state_ = State::kShutdown;
  StartReading();
  int rc = uv_shutdown(&shutdown_request_, stream(), &Connection::OnShutdown);
  if (rc < 0) {
    Close(uv_strerror(rc));
    return;
  }
  SetDeadline(Deadline::kLinger, kLingerMs);
}

void Connection::OnShutdown(uv_shutdown_t* request, int status) {
  if (status < 0) {
    static_cast<Connection*>(request->data)->Close(uv_strerror(status));
  }
}

// ---------------------------------------------------------------------------------------------
// Timers

void Connection::SetDeadline(Deadline kind, uint64_t timeout_ms) {
  if (state_ == State::kClosing) {
    return;
  }
  if (kind == Deadline::kNone || timeout_ms == 0) {
    deadline_ = Deadline::kNone;  // an armed timer fires and finds nothing to do
    return;
  }
  deadline_ = kind;
  uint64_t now = uv_now(core_->loop());
  deadline_ms_ = now + timeout_ms;
  if (timer_due_ms_ == 0 || timer_due_ms_ > deadline_ms_) {
    ArmTimer(now);
  }
}

void Connection::SetIdleIfQuiet() {
  const bool quiet = (state_ == State::kOpen && !in_message_) || state_ == State::kDraining;
  if (quiet && unanswered_ == 0) {
    SetDeadline(Deadline::kIdle, core_->limits().idle_timeout_ms);
  }
}

void Connection::ArmTimer(uint64_t now) {
  uint64_t due = std::min(deadline_ms_, now + core_->limits().timer_step_ms);
  uv_timer_start(&timer_, &Connection::OnTimer, due - now, 0);
  timer_due_ms_ = due;
}

void Connection::OnTimer(uv_timer_t* timer) {
  auto* c = static_cast<Connection*>(timer->data);
  c->timer_due_ms_ = 0;
  if (c->deadline_ == Deadline::kNone || c->state_ == State::kClosing) {
    return;
  }
  uint64_t now = uv_now(c->core_->loop());
  if (now < c->deadline_ms_) {
    c->ArmTimer(now);
    return;
  }
  switch (c->deadline_) {
    case Deadline::kIdle: {
      // A large answer to a slow reader is one long write: it is idle only if it stopped moving.
      if (c->write_in_flight_) {
        size_t queued = uv_stream_get_write_queue_size(c->stream());
        if (queued < c->last_write_queue_size_) {
          c->last_write_queue_size_ = queued;
          c->SetDeadline(Deadline::kIdle, c->core_->limits().idle_timeout_ms);
          return;
        }
      }
      c->Close("idle timeout");
      return;
    }
    case Deadline::kRequest:
      c->deadline_ = Deadline::kNone;
      c->AnswerError(408, "");
      return;
    case Deadline::kLinger:
      c->Close("client did not close after the last response");
      return;
    case Deadline::kNone:
      return;
  }
}

}  // namespace serve::http::internal
