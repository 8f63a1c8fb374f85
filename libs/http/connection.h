#pragma once

#include <llhttp.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/server.h"

namespace serve::http::internal {

class ServerCore;

// Bytes queued for one write: response heads and small bodies copied into `bytes`, large bodies
// kept as they came (moved, not copied) and written in place with writev.
class OutputBuffer {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  void Append(std::string_view data);
  void AppendBody(std::string&& body);
  // The buffers to hand to uv_write, in order, skipping the first `skip` bytes.
  void Gather(size_t skip, std::vector<uv_buf_t>* out);
  void Clear();
  std::string* bytes() { return &bytes_; }  // for appending in place; call Grew() after
  void Grew(size_t old_bytes_size) { size_ += bytes_.size() - old_bytes_size; }

 private:
  struct Cut {
    size_t bytes_offset;  // where in bytes_ the body goes
    size_t body_index;
  };
  std::string bytes_;
  std::vector<std::string> bodies_;
  std::vector<Cut> cuts_;
  size_t size_ = 0;
};

// One accepted connection: parses requests with llhttp, hands each to the handler, and writes
// the answers back in request order.
//
// Owned by the ServerCore through a shared_ptr; Responders hold weak_ptrs, so an answer that
// comes after the connection is gone finds nothing to write to. The object is destroyed only
// from the close callback of its last handle, never while one of its own callbacks runs.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  explicit Connection(ServerCore* core);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Initializes the handles and takes over `fd`, a connection just accepted. On failure the
  // connection closes itself (and the socket).
  void Open(int fd);
  // Closes at once, dropping what is not written yet.
  void Close(const char* why);

  // Responder's side.
  void Send(uint64_t sequence, Response&& response);
  // A streamed answer (Stream): the head now, the body as it comes, the connection closing after.
  void StartStream(uint64_t sequence, Response&& head);
  bool StreamWrite(uint64_t sequence, std::string&& data);
  void EndStream(uint64_t sequence);
  bool Streams(uint64_t sequence) const;
  // Whether the answer to `sequence` is still wanted: not sent, not dropped, the client there.
  bool Awaits(uint64_t sequence) const;
  bool client_connected() const { return state_ != State::kClosing; }

  // ServerCore's side.
  void Flush();
  // What the connection holds: output, answers and requests in its queue, unparsed input.
  size_t BufferedBytes() const;
  bool read_paused() const { return read_paused_; }
  size_t index = 0;              // in the core's connection list
  bool flush_scheduled = false;  // in the core's dirty list

 private:
  enum class State {
    kOpen,      // reading and answering requests
    kDraining,  // no more requests (last one said close, or an error): writing what is left
    kShutdown,  // everything written and the write side shut down; waiting for the client's EOF
    kClosing,   // uv_close called
  };
  enum class Deadline { kNone, kIdle, kRequest, kLinger };

  // A request handed to the handler (or an error the server answers itself), in order.
  struct Slot {
    Response response;
    bool ready = false;       // response is set
    bool head = false;        // a HEAD request: no body bytes
    bool keep_alive = false;  // the request allows keeping the connection
    bool http10 = false;      // an HTTP/1.0 client needs "Connection: keep-alive" to keep it
    bool stream = false;      // a Stream's head: no length, the body follows, then close
    size_t bytes = 0;         // the request's size until answered, then the answer's
  };

  static const llhttp_settings_t* ParserSettings();
  static int OnMessageBegin(llhttp_t* parser);
  static int OnUrl(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderField(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderFieldComplete(llhttp_t* parser);
  static int OnHeaderValue(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderValueComplete(llhttp_t* parser);
  static int OnHeadersComplete(llhttp_t* parser);
  static int OnBody(llhttp_t* parser, const char* at, size_t length);
  static int OnChunkExtension(llhttp_t* parser, const char* at, size_t length);
  static int OnMessageComplete(llhttp_t* parser);

  static void OnAlloc(uv_handle_t* handle, size_t suggested_size, uv_buf_t* buf);
  static void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void OnWrite(uv_write_t* request, int status);
  static void OnShutdown(uv_shutdown_t* request, int status);
  static void OnTimer(uv_timer_t* timer);
  static void OnHandleClosed(uv_handle_t* handle);

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }

  // Input.
  void Parse(const char* data, size_t size);
  // Whether the head of the current request, up to `end` in the chunk being parsed, fits.
  bool WithinHeadLimit(const char* end) const;
  int Fail(int status);  // from a parser callback: remember the status, stop the parser
  // Hands the parsed request to the handler; returns whether the connection stays open.
  bool Dispatch();
  void AnswerError(int status, std::string body);
  void SendContinue();
  void StartReading();
  void StopReading();
  bool OverBackpressureLimits() const;
  void MaybeResumeReading();
  void EnterDraining();

  // Output.
  void Encode(Slot& slot, bool* close);
  void StartWrite();
  void AfterWriteDone();
  void BeginShutdown();

  // Timers.
  void SetDeadline(Deadline kind, uint64_t timeout_ms);
  void SetIdleIfQuiet();
  void ArmTimer(uint64_t now);

  ServerCore* const core_;
  State state_ = State::kOpen;
  uv_tcp_t tcp_;
  uv_timer_t timer_;
  uv_write_t write_request_;
  uv_shutdown_t shutdown_request_;
  int open_handles_ = 0;

  // Parsing. Bytes of the current request head are counted from `head_from_` in the chunk
  // being parsed, plus `head_bytes_` from earlier chunks.
  llhttp_t parser_;
  Request request_;
  bool in_message_ = false;
  bool in_head_ = false;
  bool in_header_field_ = false;
  bool in_header_value_ = false;          // a piece of the current header's value came
  bool value_piece_reached_end_ = false;  // ... and it ended where the input ended
  bool message_complete_ = false;
  bool is_head_ = false;
  bool is_http10_ = false;
  int error_status_ = 0;  // set by a callback that rejected the request (400, 413, 431)
  const char* error_description_ = "";  // for a 400 from a callback
  const char* segment_start_ = nullptr;  // the input handed to llhttp_execute
  const char* segment_end_ = nullptr;
  const char* head_from_ = nullptr;
  size_t head_bytes_ = 0;
  size_t trailer_bytes_ = 0;
  size_t chunk_extension_bytes_ = 0;
  size_t declared_body_bytes_ = 0;  // Content-Length, 0 if none
  bool reading_ = false;
  bool read_paused_ = false;  // backpressure: too much unanswered or unwritten
  size_t slot_bytes_ = 0;     // the sum of Slot::bytes from slots_head_ on
  std::string stash_;         // input not parsed yet while read_paused_

  // Answers: slots_[i] belongs to sequence slots_base_ + i; the ones before slots_head_ are
  // written (or queued in output_).
  std::vector<Slot> slots_;
  size_t slots_head_ = 0;
  uint64_t slots_base_ = 0;
  size_t unanswered_ = 0;

  // Writing: at most one uv_write in flight; what becomes ready meanwhile waits in pending_.
  OutputBuffer pending_;
  OutputBuffer in_flight_;
  std::vector<uv_buf_t> iovecs_;
  bool write_in_flight_ = false;
  bool close_after_write_ = false;
  // A Stream's head is written and its body goes on: the connection stays until it ends.
  bool streaming_ = false;
  uint64_t stream_sequence_ = 0;
  size_t last_write_queue_size_ = 0;

  // One timer serves every deadline. It is armed no further ahead than the shortest timeout, so
  // moving between the idle and the request deadline (every request) never re-arms it; it only
  // re-arms itself when it fires before the deadline.
  Deadline deadline_ = Deadline::kNone;
  uint64_t deadline_ms_ = 0;
  uint64_t timer_due_ms_ = 0;  // 0 = not armed
};

}  // namespace serve::http::internal
