#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace serve::http {

namespace internal {
class Connection;
class ServerCore;
}  // namespace internal

struct Header {
  std::string name;
  std::string value;
};

// One request as it arrived. Nothing is decoded except the chunked transfer coding.
struct Request {
  std::string method;           // "GET"
  std::string target;           // raw request target "/a/b?x=1"
  std::string path;             // "/a/b" (target up to '?', not percent-decoded)
  std::string query;            // "x=1" (after '?', without it; empty if none)
  std::vector<Header> headers;  // in arrival order, names as sent
  std::string body;             // the complete body, de-chunked
  bool keep_alive = true;       // false when the connection closes after this request

  // The value of the first header called `name`, compared case-insensitively; null if none.
  const std::string* FindHeader(std::string_view name) const;
};

struct Response {
  int status = 200;
  // Sent as given, except that the server owns message framing: it writes Content-Length itself
  // and drops Content-Length, Transfer-Encoding and Connection headers given here. A
  // "Connection: close" given here makes the server close the connection after this response.
  // For a HEAD request a Content-Length given here with an empty body is kept, so a proxy can
  // forward an upstream's answer to HEAD faithfully.
  std::vector<Header> headers;
  std::string body;
};

// The standard reason phrase for `status` ("OK", "Not Found"), or "Unknown".
std::string_view ReasonPhrase(int status);

class Responder;

// A streamed answer, as Server-Sent Events need: the head (and any body) given to
// Responder::StartStream go out first, then each Write() as it comes, until the Stream is closed
// or destroyed. The body has no length: it ends when the connection closes, which it does after
// the stream, so a stream is the last answer on its connection.
//
// Loop thread only. Movable, not copyable.
class Stream {
 public:
  Stream() = default;  // streams nothing
  ~Stream();           // closes the stream
  Stream(Stream&& other) noexcept = default;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Queues `data` for the client. False once the client is gone, or when it reads so slowly
  // that the server's output limit is reached (the connection is then closed): stop writing.
  bool Write(std::string data);
  // Ends the stream: what was written is sent, then the connection closes.
  void Close();
  bool open() const;

 private:
  friend class Responder;
  Stream(std::weak_ptr<internal::Connection> connection, uint64_t sequence)
      : connection_(std::move(connection)), sequence_(sequence) {}

  std::weak_ptr<internal::Connection> connection_;
  uint64_t sequence_ = 0;
};

// A one-shot handle to answer one request. Movable, not copyable.
//
// Send() and the destructor must run on the server's loop thread. Sending after the client went
// away, or after the server closed, is a harmless no-op. A Responder destroyed without Send()
// answers 500, so that a client never waits for an answer that cannot come.
class Responder {
 public:
  Responder() = default;  // answers nothing
  ~Responder();
  Responder(Responder&& other) noexcept = default;
  Responder& operator=(Responder&& other) noexcept;
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  void Send(Response response);
  // Answers with `head` (its body, if any, first) and a body that follows through the Stream.
  // The server frames it: no Content-Length, and "Connection: close".
  Stream StartStream(Response head);

  // False once the client has disconnected or the server closed the connection (and after
  // Send): a handler doing long work may give up early. Stays true while the server cannot tell,
  // e.g. while it has stopped reading from a client that pipelines faster than it is answered.
  bool client_connected() const;

 private:
  friend class internal::Connection;
  Responder(std::weak_ptr<internal::Connection> connection, uint64_t sequence)
      : connection_(std::move(connection)), sequence_(sequence) {}

  std::weak_ptr<internal::Connection> connection_;
  uint64_t sequence_ = 0;
};

// Called on the loop thread for every complete request, in arrival order per connection. The
// handler may answer at once or keep the Responder and answer later (from the loop thread);
// answers to pipelined requests may come in any order, the server writes them in request order.
using Handler = std::function<void(Request&& request, Responder responder)>;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                           // 0 = pick a free port, see Server::port()
  size_t max_header_bytes = 64 * 1024;       // request line + headers; over -> 431
  size_t max_body_bytes = 16 * 1024 * 1024;  // over -> 413
  double request_timeout_s = 30;  // a started request not fully received in time -> 408; <= 0: none
  double idle_timeout_s = 75;     // an idle keep-alive connection is closed quietly; <= 0: never
  // What one connection may hold before the server stops reading from it: answers not yet
  // written (a client that pipelines requests and never reads its answers), answers waiting
  // behind an earlier one, requests the handler has not answered yet, and read input not yet
  // parsed. Reading resumes once the client has read what was written. A single request or
  // answer larger than this still goes through; it is the pile-up that is bounded.
  size_t max_connection_buffer_bytes = 1024 * 1024;
  int backlog = 1024;
  // A socket already bound and listening, to accept on instead of binding host:port. A
  // supervisor keeps it open across restarts of the server's process, so connections made
  // while the process is down wait in its backlog instead of being refused. -1: bind.
  int listen_fd = -1;
};

// Binds host:port and listens as Server::Listen does, and returns the socket (non-blocking,
// close-on-exec), for a process that hands it to servers it starts (ServerOptions::listen_fd).
// An error names host:port and the cause, with a hint.
Result<int> OpenListeningSocket(const std::string& host, int port, int backlog = 1024);

// An HTTP/1.1 server on a libuv loop: keep-alive, pipelining, chunked request bodies,
// `Expect: 100-continue`, and the limits and timeouts of ServerOptions. Parsing is strict: a
// request that servers could read in more than one way (obs-fold, a missing or repeated Host,
// a version other than HTTP/1.x, ...) is a 400; docs/security.md lists the rules.
//
// Every method must be called on the loop thread (or before the loop runs). The handler runs on
// the loop thread and must not block it.
//
// A Server may be destroyed at any time, also from inside its handler or the on_closed callback:
// destroying it closes every connection, and the memory behind its handles is released once the
// loop has run their close callbacks.
class Server {
 public:
  Server(uv_loop_t* loop, ServerOptions options, Handler handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and starts accepting. An error names host:port and the cause, with a hint.
  Status Listen();

  // The bound port (the one picked when options.port was 0); 0 before Listen() succeeded.
  int port() const;

  // Stops accepting and closes every connection at once; responses not yet written are lost.
  // Calls `on_closed` (if set) when all handles are closed: right away if none are open,
  // otherwise from a later loop iteration.
  void Close(std::function<void()> on_closed);

  // Open connections, including those still closing.
  size_t connection_count() const;
  // What the connections hold now (see ServerOptions::max_connection_buffer_bytes), in bytes.
  size_t buffered_bytes() const;
  // Connections the server stopped reading from because they hold that much.
  size_t paused_connection_count() const;
  // Connections that could not be accepted (e.g. out of file descriptors) since the start.
  size_t accept_failure_count() const;

 private:
  // Owned. Frees itself once its handles are closed, which may be after ~Server.
  internal::ServerCore* core_;
};

}  // namespace serve::http
