// libs/http's server on raw request bytes: llhttp and everything the server does around it
// (head and body limits, chunked bodies, pipelining, Expect: 100-continue, keep-alive), through
// the real Server on a real loop.
//
// One Server, made once, accepts on a Unix socket (no ports, no TIME_WAIT). Each input is one
// client connection: the bytes are written in pieces (the first byte sets their size, so a
// request also arrives split at every kind of place), then the client's side is shut down, and
// the loop runs until the server has closed the connection. A server that keeps it open longer
// than a few seconds after the client's end is a stall, reported as a crash. The handler
// answers every request at once with its body, so answers flow back while requests arrive.

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "http/server.h"

namespace http = serve::http;

namespace {

void Fail(const char* why) {
  fprintf(stderr, "http_request: %s (errno %s)\n", why, strerror(errno));
  abort();
}

struct Fixture {
  uv_loop_t loop;
  sockaddr_un address{};
  socklen_t address_size = 0;
  std::unique_ptr<http::Server> server;

  Fixture() {
    uv_loop_init(&loop);
    signal(SIGPIPE, SIG_IGN);  // as the services do: a closed peer is an error value
    // An abstract socket: nothing on disk to clean up.
    address.sun_family = AF_UNIX;
    std::string name = "serve-fuzz-http-" + std::to_string(getpid());
    memcpy(address.sun_path + 1, name.data(), name.size());
    address_size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&address), address_size) != 0) {
      Fail("cannot bind the Unix socket");
    }
    http::ServerOptions options;
    options.listen_fd = listener;
    // Small limits, so inputs the fuzzer can make reach them.
    options.max_header_bytes = 2048;
    options.max_body_bytes = 4096;
    options.max_connection_buffer_bytes = 8192;
    server = std::make_unique<http::Server>(
        &loop, options, [](http::Request&& request, http::Responder responder) {
          http::Response response;
          response.headers.push_back({"X-Method", request.method});
          response.body = std::move(request.body);
          responder.Send(std::move(response));
        });
    if (!server->Listen().ok()) Fail("cannot listen");
  }
};

Fixture& TheFixture() {
  static Fixture* fixture = new Fixture();  // lives as long as the process
  return *fixture;
}

// Reads what the server sent; true at end of file (the server closed the connection).
bool DrainAndSeeEnd(int fd) {
  char buffer[16 * 1024];
  while (true) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) continue;
    if (n == 0) return true;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    return true;  // ECONNRESET: the server closed with input unread
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& fixture = TheFixture();
  size_t piece = size > 0 ? 1 + data[0] % 64 : 1;
  if (size > 0 && data[0] >= 192) piece = size;  // a quarter of inputs arrive whole
  const char* bytes = reinterpret_cast<const char*>(data) + (size > 0 ? 1 : 0);
  size_t remaining = size > 0 ? size - 1 : 0;

  int client = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (client < 0) Fail("cannot make a client socket");
  if (connect(client, reinterpret_cast<sockaddr*>(&fixture.address), fixture.address_size) != 0) {
    Fail("cannot connect to the server");
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  bool ended = false;
  while (remaining > 0 && !ended) {
    ssize_t n = send(client, bytes, std::min(piece, remaining), MSG_NOSIGNAL);
    if (n > 0) {
      bytes += n;
      remaining -= static_cast<size_t>(n);
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
      break;  // the server closed the connection (EPIPE): the rest is not read
    }
    // Let the server read this piece before the next arrives.
    uv_run(&fixture.loop, UV_RUN_NOWAIT);
    ended = DrainAndSeeEnd(client);
    if (std::chrono::steady_clock::now() > deadline) Fail("the server stopped reading");
  }
  shutdown(client, SHUT_WR);
  while (!ended) {
    uv_run(&fixture.loop, UV_RUN_NOWAIT);
    ended = DrainAndSeeEnd(client);
    if (!ended && std::chrono::steady_clock::now() > deadline) {
      Fail("the server kept the connection open after the client's end");
    }
  }
  close(client);
  // The server's side closes on a later iteration; let it, so connections do not pile up.
  while (fixture.server->connection_count() > 0) {
    uv_run(&fixture.loop, UV_RUN_NOWAIT);
    if (std::chrono::steady_clock::now() > deadline) Fail("the server's connection never closed");
  }
  return 0;
}
