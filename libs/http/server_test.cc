#include "http/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace serve::http {
namespace {

using namespace std::chrono_literals;

constexpr auto kDeadline = 5s;

// Polls `condition` until it holds or the deadline passes.
bool WaitUntil(const std::function<bool()>& condition) {
  auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) {
      return true;
    }
    std::this_thread::sleep_for(1ms);
  }
  return condition();
}

// A libuv loop on a background thread. Work for the loop thread is posted with Call(), which
// waits for its result.
class LoopThread {
 public:
  LoopThread() {
    uv_loop_init(&loop_);
    uv_async_init(&loop_, &wakeup_, &LoopThread::OnWakeup);
    wakeup_.data = this;
  }
  ~LoopThread() {
    Stop();
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  uv_loop_t* loop() { return &loop_; }

  void Start() {
    thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }

  template <typename F>
  auto Call(F fn) {
    using R = std::invoke_result_t<F&>;
    std::packaged_task<R()> task(std::move(fn));
    std::future<R> result = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back([&task] { task(); });
    }
    uv_async_send(&wakeup_);
    return result.get();
  }

  // Returns once every handle on the loop is closed; servers must be closed first.
  void Stop() {
    if (stopped_) {
      return;
    }
    stopped_ = true;
    if (thread_.joinable()) {
      Call([this] { uv_close(reinterpret_cast<uv_handle_t*>(&wakeup_), nullptr); });
      thread_.join();
    } else {
      uv_close(reinterpret_cast<uv_handle_t*>(&wakeup_), nullptr);
      uv_run(&loop_, UV_RUN_DEFAULT);
    }
  }

 private:
  static void OnWakeup(uv_async_t* handle) {
    auto* self = static_cast<LoopThread*>(handle->data);
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      tasks.swap(self->tasks_);
    }
    for (auto& task : tasks) {
      task();
    }
  }

  uv_loop_t loop_;
  uv_async_t wakeup_;
  std::thread thread_;
  bool stopped_ = false;
  std::mutex mutex_;
  std::vector<std::function<void()>> tasks_;
};

struct ClientResponse {
  int status = 0;
  std::string reason;
  std::vector<Header> headers;
  std::string body;

  const std::string* Find(std::string_view name) const {
    for (const Header& header : headers) {
      if (header.name == name) {
        return &header.value;
      }
    }
    return nullptr;
  }
};

// A blocking client socket. Reads give up after the deadline, so a broken server fails a test
// instead of hanging it.
class Client {
 public:
  explicit Client(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval timeout{static_cast<time_t>(kDeadline / 1s), 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    int on = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    EXPECT_TRUE(connected_) << "connect: " << strerror(errno);
  }
  ~Client() { Close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  void Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        return;  // the server may have closed already; reads tell the rest
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  void Close() {
    if (fd_ >= 0) {
      close(fd_);
      fd_ = -1;
    }
  }

  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }

  // Reads one response; nullopt on EOF or timeout.
  std::optional<ClientResponse> Read(bool head_request = false) {
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) {
        return std::nullopt;
      }
    }
    std::string head = buffer_.substr(0, end + 2);
    buffer_.erase(0, end + 4);
    ClientResponse response;
    size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    EXPECT_EQ(status_line.substr(0, 9), "HTTP/1.1 ") << status_line;
    response.status = std::stoi(status_line.substr(9, 3));
    response.reason = status_line.size() > 13 ? status_line.substr(13) : "";
    size_t position = line_end + 2;
    while (position < head.size()) {
      size_t next = head.find("\r\n", position);
      std::string line = head.substr(position, next - position);
      size_t colon = line.find(": ");
      EXPECT_NE(colon, std::string::npos) << line;
      response.headers.push_back({line.substr(0, colon), line.substr(colon + 2)});
      position = next + 2;
    }
    bool no_body = head_request || response.status / 100 == 1 || response.status == 204 ||
                   response.status == 304;
    if (!no_body) {
      const std::string* length = response.Find("Content-Length");
      EXPECT_NE(length, nullptr) << "no Content-Length";
      size_t size = length != nullptr ? std::stoul(*length) : 0;
      while (buffer_.size() < size) {
        if (!Fill()) {
          return std::nullopt;
        }
      }
      response.body = buffer_.substr(0, size);
      buffer_.erase(0, size);
    }
    return response;
  }

  // True once the server closed the connection (EOF or reset) within the deadline. Bytes that
  // arrive first are kept in leftover().
  bool WaitClosed() {
    while (true) {
      char chunk[4096];
      ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      return n == 0 || errno == ECONNRESET;
    }
  }

  const std::string& leftover() const { return buffer_; }

  // Reads until `text` has arrived; false on EOF or timeout first.
  bool ReadUntil(std::string_view text) {
    while (buffer_.find(text) == std::string::npos) {
      if (!Fill()) {
        return false;
      }
    }
    return true;
  }

 private:
  bool Fill() {
    char chunk[64 * 1024];
    ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) {
      return false;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

Response TextResponse(int status, std::string body) {
  Response response;
  response.status = status;
  response.headers.push_back({"Content-Type", "text/plain"});
  response.body = std::move(body);
  return response;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options, Handler handler) {
    options.port = 0;
    server_ = std::make_unique<Server>(loop_.loop(), std::move(options), std::move(handler));
    Status listening = server_->Listen();
    ASSERT_TRUE(listening.ok()) << listening.message();
    port_ = server_->port();
    loop_.Start();
  }

  // Records each request and answers 200 with the request's target as the body.
  void StartEchoServer(ServerOptions options = {}) {
    StartServer(std::move(options), [this](Request&& request, Responder responder) {
      std::string target = request.target;
      requests_.push_back(std::move(request));
      responder.Send(TextResponse(200, target));
    });
  }

  void TearDown() override {
    if (server_ != nullptr) {
      loop_.Call([this] { server_->Close(nullptr); });
    }
    loop_.Stop();
    server_.reset();
  }

  size_t ConnectionCount() {
    return loop_.Call([this] { return server_->connection_count(); });
  }

  std::vector<Request> Requests() {
    return loop_.Call([this] { return requests_; });
  }

  LoopThread loop_;
  std::unique_ptr<Server> server_;
  int port_ = 0;
  // Touched on the loop thread only.
  std::vector<Request> requests_;
  std::vector<Responder> held_;
  std::vector<Stream> streams_;
  uv_timer_t timer_;  // here, not in a test body: its close may finish after the body returned
};

TEST_F(HttpServerTest, PortZeroPicksARealPort) {
  StartEchoServer();
  EXPECT_GT(port_, 0);
  Client client(port_);
  EXPECT_TRUE(client.connected());
}

TEST_F(HttpServerTest, SimpleGetIsAnswered) {
  StartServer({}, [this](Request&& request, Responder responder) {
    requests_.push_back(std::move(request));
    Response response = TextResponse(200, "hello");
    response.headers.push_back({"X-Test", "1"});
    responder.Send(std::move(response));
  });
  Client client(port_);
  client.Send("GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: localhost\r\nX-Custom: Some Value\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->reason, "OK");
  EXPECT_EQ(response->body, "hello");
  ASSERT_NE(response->Find("Content-Length"), nullptr);
  EXPECT_EQ(*response->Find("Content-Length"), "5");
  ASSERT_NE(response->Find("X-Test"), nullptr);
  EXPECT_EQ(response->Find("Connection"), nullptr);
  EXPECT_EQ(response->Find("Date"), nullptr);

  std::vector<Request> requests = Requests();
  ASSERT_EQ(requests.size(), 1u);
  const Request& request = requests[0];
  EXPECT_EQ(request.method, "GET");
  EXPECT_EQ(request.target, "/a/b?x=1&y=2");
  EXPECT_EQ(request.path, "/a/b");
  EXPECT_EQ(request.query, "x=1&y=2");
  ASSERT_EQ(request.headers.size(), 2u);
  EXPECT_EQ(request.headers[1].name, "X-Custom");
  EXPECT_EQ(request.headers[1].value, "Some Value");
  ASSERT_NE(request.FindHeader("x-custom"), nullptr);
  EXPECT_EQ(*request.FindHeader("x-custom"), "Some Value");
  EXPECT_EQ(request.FindHeader("missing"), nullptr);
  EXPECT_TRUE(request.body.empty());
  EXPECT_TRUE(request.keep_alive);
}

TEST_F(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  StartEchoServer();
  Client client(port_);
  client.Send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> first = client.Read();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->body, "/first");
  client.Send("GET /second HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> second = client.Read();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->body, "/second");
  EXPECT_EQ(ConnectionCount(), 1u);
}

TEST_F(HttpServerTest, PipelinedAnswersAreWrittenInRequestOrder) {
  StartServer({}, [this](Request&& request, Responder responder) {
    requests_.push_back(std::move(request));
    held_.push_back(std::move(responder));
    if (held_.size() < 3) {
      return;
    }
    // The last two are answered at once, the first one later.
    held_[2].Send(TextResponse(200, "3"));
    held_[1].Send(TextResponse(200, "2"));
    uv_timer_init(loop_.loop(), &timer_);
    timer_.data = &held_;
    uv_timer_start(
        &timer_,
        [](uv_timer_t* handle) {
          auto* held = static_cast<std::vector<Responder>*>(handle->data);
          (*held)[0].Send(TextResponse(200, "1"));
          uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
        },
        20, 0);
  });
  Client client(port_);
  client.Send(
      "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
  for (const char* expected : {"1", "2", "3"}) {
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->body, expected);
  }
  std::vector<Request> requests = Requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].target, "/1");
  EXPECT_EQ(requests[2].target, "/3");
}

TEST_F(HttpServerTest, ManyPipelinedRequestsAreAllAnswered) {
  StartEchoServer();
  Client client(port_);
  std::string batch;
  constexpr int kCount = 300;  // more than the server lets pile up before it stops reading
  for (int i = 0; i < kCount; ++i) {
    batch.append("GET /").append(std::to_string(i)).append(" HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  client.Send(batch);
  for (int i = 0; i < kCount; ++i) {
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value()) << i;
    ASSERT_EQ(response->body, std::string("/").append(std::to_string(i)));
  }
}

// A client that pipelines requests and does not read the answers cannot make the server hold
// more than about max_connection_buffer_bytes for it: the server stops reading until the client
// has read what was written, and then every answer comes, in order.
TEST_F(HttpServerTest, PipeliningWithoutReadingIsBoundedByTheConnectionBuffer) {
  constexpr size_t kLimit = 64 * 1024;
  constexpr size_t kAnswerBytes = 8 * 1024;
  constexpr int kCount = 4000;  // 32 MiB of answers: more than the sockets' buffers take
  ServerOptions options;
  options.max_connection_buffer_bytes = kLimit;
  StartServer(options, [](Request&& request, Responder responder) {
    std::string body = request.target;
    body.resize(kAnswerBytes, '.');
    responder.Send(TextResponse(200, std::move(body)));
  });
  Client client(port_);
  std::thread sender([&client] {
    std::string batch;
    for (int i = 0; i < kCount; ++i) {
      batch.append("GET /").append(std::to_string(i)).append(" HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    client.Send(batch);  // blocks while the server does not read
  });
  // Over the limit by at most the request and answer that crossed it, and the rest of one read.
  constexpr size_t kBound = kLimit + kAnswerBytes + 64 * 1024 + 1024;
  size_t most = 0;
  EXPECT_TRUE(WaitUntil([&] {
    auto [buffered, paused] = loop_.Call([this] {
      return std::make_pair(server_->buffered_bytes(), server_->paused_connection_count());
    });
    most = std::max(most, buffered);
    return paused == 1;
  })) << "the server never stopped reading";
  for (int i = 0; i < 100; ++i) {  // stays paused and bounded while the client does not read
    size_t buffered = loop_.Call([this] { return server_->buffered_bytes(); });
    most = std::max(most, buffered);
  }
  EXPECT_LE(most, kBound);
  EXPECT_GT(most, 0u);
  for (int i = 0; i < kCount; ++i) {
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value()) << i;
    std::string expected = std::string("/").append(std::to_string(i));
    ASSERT_EQ(response->body.substr(0, expected.size()), expected);
    ASSERT_EQ(response->body.size(), kAnswerBytes);
    if (i % 64 == 0) {
      most = std::max(most, loop_.Call([this] { return server_->buffered_bytes(); }));
    }
  }
  sender.join();
  EXPECT_LE(most, kBound);
  EXPECT_TRUE(WaitUntil([this] {
    return loop_.Call([this] {
      return server_->buffered_bytes() == 0 && server_->paused_connection_count() == 0;
    });
  }));
}

TEST_F(HttpServerTest, ChunkedBodyIsReassembled) {
  StartServer({}, [this](Request&& request, Responder responder) {
    std::string body = request.body;
    requests_.push_back(std::move(request));
    responder.Send(TextResponse(200, body));
  });
  Client client(port_);
  client.Send("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  client.Send("5\r\nhello\r\n");
  client.Send("6\r\n world\r\n");
  client.Send("0\r\nX-Trailer: t\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "hello world");
  std::vector<Request> requests = Requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "POST");
  EXPECT_EQ(requests[0].body, "hello world");
}

TEST_F(HttpServerTest, ContentLengthBodyIsRead) {
  StartServer({}, [](Request&& request, Responder responder) {
    responder.Send(TextResponse(200, request.body));
  });
  Client client(port_);
  client.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello");
  client.Send(" world");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "hello world");
}

TEST_F(HttpServerTest, RequestSentByteByByteIsParsed) {
  StartServer({}, [](Request&& request, Responder responder) {
    responder.Send(TextResponse(200, request.method + " " + request.target + " " +
                                         *request.FindHeader("host") + " " + request.body));
  });
  Client client(port_);
  const std::string request =
      "PUT /p?q HTTP/1.1\r\nHost: example\r\nX-Long: a value in many pieces\r\n"
      "Transfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n";
  for (char c : request) {
    client.Send(std::string_view(&c, 1));
  }
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "PUT /p?q example abc");
}

TEST_F(HttpServerTest, BodyOverLimitByContentLengthIs413) {
  ServerOptions options;
  options.max_body_bytes = 100;
  StartEchoServer(options);
  Client client(port_);
  client.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 413);
  EXPECT_EQ(response->reason, "Payload Too Large");
  ASSERT_NE(response->Find("Connection"), nullptr);
  EXPECT_EQ(*response->Find("Connection"), "close");
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_TRUE(Requests().empty());
}

TEST_F(HttpServerTest, ChunkedBodyOverLimitIs413) {
  ServerOptions options;
  options.max_body_bytes = 100;
  StartEchoServer(options);
  Client client(port_);
  client.Send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  client.Send("3c\r\n" + std::string(60, 'a') + "\r\n");
  client.Send("3c\r\n" + std::string(60, 'b') + "\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 413);
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_TRUE(Requests().empty());
}

TEST_F(HttpServerTest, HugeHeaderIs431) {
  ServerOptions options;
  options.max_header_bytes = 1024;
  StartEchoServer(options);
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4000, 'a') + "\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 431);
  EXPECT_EQ(response->reason, "Request Header Fields Too Large");
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(HttpServerTest, HeaderLimitCountsAcrossReads) {
  ServerOptions options;
  options.max_header_bytes = 1024;
  StartEchoServer(options);
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\n");
  for (int i = 0; i < 40; ++i) {
    client.Send("X-H" + std::to_string(i) + ": " + std::string(40, 'v') + "\r\n");
  }
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 431);
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(HttpServerTest, HeadersJustUnderTheLimitAreAccepted) {
  ServerOptions options;
  options.max_header_bytes = 1024;
  StartEchoServer(options);
  Client client(port_);
  std::string request = "GET / HTTP/1.1\r\nHost: x\r\nX-Fill: ";
  request += std::string(1000 - request.size(), 'f') + "\r\n\r\n";
  client.Send(request);
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
}

TEST_F(HttpServerTest, GarbageIs400AndTheServerKeepsServing) {
  StartEchoServer();
  {
    Client client(port_);
    client.Send(std::string("\x16\x03\x01\x02\x00 garbage\r\n\r\n", 17));
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, 400);
    EXPECT_EQ(response->body.rfind("bad request: ", 0), 0u) << response->body;
    EXPECT_TRUE(client.WaitClosed());
  }
  for (const char* header : {"Bad@Header: 1", "Bad Header: 1"}) {
    Client client(port_);
    client.Send(std::string("GET / HTTP/1.1\r\nHost: x\r\n") + header + "\r\n\r\n");
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, 400);
    EXPECT_EQ(response->body.rfind("bad request: invalid header token", 0), 0u) << response->body;
  }
  Client client(port_);
  client.Send("GET /fine HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "/fine");
}

// Requests that servers (or a server behind this one) could read in more than one way are
// refused, so that no request can be smuggled past the proxy inside another one.
TEST_F(HttpServerTest, AmbiguousRequestsAre400AndClose) {
  StartEchoServer();
  const std::string chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string many_extensions = chunked;
  for (int i = 0; i < 100; ++i) {
    many_extensions += "1;ext=" + std::string(60, 'e') + "\r\nx\r\n";
  }
  many_extensions += "0\r\n\r\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"other bytes than CRLF after chunk data", chunked + "5\r\nhelloXX0\r\n\r\n"},
      {"bare LF after chunk data", chunked + "5\r\nhello\n0\r\n\r\n"},
      {"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n"},
      {"obs-fold with a tab", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tfolded\r\n\r\n"},
      {"no Host on HTTP/1.1", "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"},
      {"two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n"},
      {"HTTP/2.0 on an HTTP/1 connection", "GET / HTTP/2.0\r\nHost: x\r\n\r\n"},
      {"HTTP/3.0", "GET / HTTP/3.0\r\nHost: x\r\n\r\n"},
      {"HTTP/0.9", "GET /\r\n\r\n"},
      {"a long chunk extension",
       chunked + "5;" + std::string(5000, 'a') + "\r\nhello\r\n0\r\n\r\n"},
      {"many chunk extensions", many_extensions},
  };
  for (const auto& [what, bytes] : cases) {
    SCOPED_TRACE(what);
    Client client(port_);
    client.Send(bytes);
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, 400);
    EXPECT_EQ(response->body.rfind("bad request: ", 0), 0u) << response->body;
    EXPECT_NE(response->Find("Connection"), nullptr);
    EXPECT_TRUE(client.WaitClosed());
  }
  // A folded line is noticed also when the value arrives in pieces.
  Client client(port_);
  for (char c : std::string("GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n")) {
    client.Send(std::string_view(&c, 1));
  }
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 400);
  EXPECT_TRUE(Requests().empty());
}

TEST_F(HttpServerTest, StrictParsingAcceptsWhatIsWellFormed) {
  StartEchoServer();
  const std::vector<std::string> requests = {
      "GET /1 HTTP/1.0\r\n\r\n",  // HTTP/1.0 needs no Host
      "GET /2 HTTP/1.1\r\nhost: x\r\n\r\n",
      "GET /3 HTTP/1.1\r\nHost:\r\n\r\n",  // empty, as RFC 9112 allows for a target without one
      "POST /4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;name=value\r\nhello\r\n0\r\n\r\n",
  };
  for (const std::string& request : requests) {
    SCOPED_TRACE(request);
    Client client(port_);
    client.Send(request);
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, 200) << response->body;
  }
  EXPECT_EQ(Requests().size(), requests.size());
}

TEST_F(HttpServerTest, IncompleteRequestTimesOutWith408) {
  ServerOptions options;
  options.request_timeout_s = 0.1;
  StartEchoServer(options);
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 408);
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(HttpServerTest, IdleConnectionIsClosedQuietly) {
  ServerOptions options;
  options.idle_timeout_s = 0.1;
  StartEchoServer(options);
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(client.Read().has_value());
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_TRUE(client.leftover().empty());
  EXPECT_TRUE(WaitUntil([this] { return ConnectionCount() == 0; }));
}

TEST_F(HttpServerTest, SlowHandlerIsNeitherARequestTimeoutNorIdle) {
  ServerOptions options;
  // Short against the handler's 600 ms, long enough for the client to send its request first
  // on a loaded machine.
  options.request_timeout_s = 0.2;
  options.idle_timeout_s = 0.2;
  StartServer(options, [this](Request&&, Responder responder) {
    held_.push_back(std::move(responder));
    uv_timer_init(loop_.loop(), &timer_);
    timer_.data = &held_;
    uv_timer_start(
        &timer_,
        [](uv_timer_t* handle) {
          auto* held = static_cast<std::vector<Responder>*>(handle->data);
          (*held)[0].Send(TextResponse(200, "slow"));
          uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
        },
        600, 0);
  });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "slow");
  EXPECT_TRUE(client.WaitClosed());  // idle afterwards
}

TEST_F(HttpServerTest, SendAfterTheClientLeftIsANoOp) {
  StartServer({}, [this](Request&&, Responder responder) {
    EXPECT_TRUE(responder.client_connected());
    held_.push_back(std::move(responder));
  });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(WaitUntil([this] { return loop_.Call([this] { return held_.size() == 1; }); }));
  client.Close();
  ASSERT_TRUE(WaitUntil([this] { return ConnectionCount() == 0; }));
  loop_.Call([this] {
    EXPECT_FALSE(held_[0].client_connected());
    held_[0].Send(TextResponse(200, "too late"));
    held_.clear();
  });
}

TEST_F(HttpServerTest, ClientLeavingIsNoticedBeforeTheAnswer) {
  StartServer({},
              [this](Request&&, Responder responder) { held_.push_back(std::move(responder)); });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(WaitUntil([this] { return loop_.Call([this] { return held_.size() == 1; }); }));
  client.Close();
  EXPECT_TRUE(
      WaitUntil([this] { return loop_.Call([this] { return !held_[0].client_connected(); }); }));
  // Dropped unanswered after the client left: nothing to answer, nothing to log.
  loop_.Call([this] { held_.clear(); });
}

TEST_F(HttpServerTest, DroppedResponderAnswers500) {
  StartServer({}, [](Request&&, Responder) {});
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 500);
  EXPECT_EQ(response->reason, "Internal Server Error");
  // The connection stays usable.
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 500);
}

TEST_F(HttpServerTest, ThrowingHandlerAnswers500) {
  StartServer({}, [](Request&&, Responder) { throw std::runtime_error("boom"); });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 500);
}

TEST_F(HttpServerTest, HeadHasContentLengthButNoBody) {
  StartServer({}, [](Request&& request, Responder responder) {
    responder.Send(TextResponse(200, request.method == "HEAD" ? "hello" : "after head"));
  });
  Client client(port_);
  client.Send(
      "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> head = client.Read(/*head_request=*/true);
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->status, 200);
  ASSERT_NE(head->Find("Content-Length"), nullptr);
  EXPECT_EQ(*head->Find("Content-Length"), "5");
  // Had the HEAD answer carried a body, this would read it as a status line.
  std::optional<ClientResponse> get = client.Read();
  ASSERT_TRUE(get.has_value());
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->body, "after head");
}

TEST_F(HttpServerTest, HeadKeepsAForwardedContentLength) {
  StartServer({}, [](Request&&, Responder responder) {
    Response response;
    response.headers.push_back({"content-length", "1234"});
    responder.Send(std::move(response));
  });
  Client client(port_);
  client.Send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> head = client.Read(/*head_request=*/true);
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->headers.size(), 1u);
  ASSERT_NE(head->Find("Content-Length"), nullptr);
  EXPECT_EQ(*head->Find("Content-Length"), "1234");
}

TEST_F(HttpServerTest, Http10ClosesAfterTheResponse) {
  StartEchoServer();
  Client client(port_);
  client.Send("GET /old HTTP/1.0\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/old");
  ASSERT_NE(response->Find("Connection"), nullptr);
  EXPECT_EQ(*response->Find("Connection"), "close");
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_FALSE(Requests()[0].keep_alive);
}

TEST_F(HttpServerTest, Http10KeepAliveIsHonoured) {
  StartEchoServer();
  Client client(port_);
  client.Send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  ASSERT_NE(response->Find("Connection"), nullptr);
  EXPECT_EQ(*response->Find("Connection"), "keep-alive");
  client.Send("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/b");
}

TEST_F(HttpServerTest, ConnectionCloseIsHonoured) {
  StartEchoServer();
  Client client(port_);
  client.Send(
      "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      "GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/last");
  EXPECT_EQ(*response->Find("Connection"), "close");
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_TRUE(client.leftover().empty());
  EXPECT_EQ(Requests().size(), 1u);
}

TEST_F(HttpServerTest, HandlerAskingToCloseClosesAndDropsLaterAnswers) {
  StartServer({}, [](Request&& request, Responder responder) {
    Response response = TextResponse(200, request.target);
    if (request.target == "/1") {
      response.headers.push_back({"Connection", "close"});
      response.headers.push_back({"Content-Length", "999"});         // replaced
      response.headers.push_back({"Transfer-Encoding", "chunked"});  // dropped
    }
    responder.Send(std::move(response));
  });
  Client client(port_);
  client.Send(
      "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/1");
  EXPECT_EQ(*response->Find("Content-Length"), "2");
  EXPECT_EQ(response->Find("Transfer-Encoding"), nullptr);
  EXPECT_EQ(*response->Find("Connection"), "close");
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_TRUE(client.leftover().empty());
}

TEST_F(HttpServerTest, ExpectContinueGets100BeforeTheBody) {
  StartServer({}, [](Request&& request, Responder responder) {
    responder.Send(TextResponse(201, request.body));
  });
  Client client(port_);
  client.Send("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
  std::optional<ClientResponse> interim = client.Read();
  ASSERT_TRUE(interim.has_value());
  EXPECT_EQ(interim->status, 100);
  EXPECT_EQ(interim->reason, "Continue");
  client.Send("hello");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 201);
  EXPECT_EQ(response->reason, "Created");
  EXPECT_EQ(response->body, "hello");
}

TEST_F(HttpServerTest, ExpectContinueOverTheLimitGets413Instead) {
  ServerOptions options;
  options.max_body_bytes = 10;
  StartEchoServer(options);
  Client client(port_);
  client.Send("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 413);
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(HttpServerTest, LargeResponsesAreWrittenCompletely) {
  constexpr size_t kSize = 8 * 1024 * 1024;
  StartServer({}, [](Request&& request, Responder responder) {
    std::string body(kSize, 'x');
    for (size_t i = 0; i < body.size(); i += 4096) {
      body[i] = static_cast<char>('a' + (i / 4096) % 26);
    }
    body.back() = request.target.back();
    responder.Send(TextResponse(200, std::move(body)));
  });
  Client client(port_);
  client.Send(
      "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  for (char expected : {'1', '2'}) {
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    ASSERT_EQ(response->body.size(), kSize);
    EXPECT_EQ(response->body[4096 * 3], 'd');
    EXPECT_EQ(response->body.back(), expected);
  }
}

TEST_F(HttpServerTest, UnusualStatusesGetReasonPhrases) {
  StartServer({}, [](Request&& request, Responder responder) {
    responder.Send(TextResponse(std::stoi(request.path.substr(1)), ""));
  });
  Client client(port_);
  for (auto [status, reason] :
       std::vector<std::pair<int, std::string>>{{404, "Not Found"},
                                                {503, "Service Unavailable"},
                                                {299, "Unknown"},
                                                {101, ""},
                                                {600, ""},
                                                {999, ""}}) {
    client.Send("GET /" + std::to_string(status) + " HTTP/1.1\r\nHost: x\r\n\r\n");
    std::optional<ClientResponse> response = client.Read();
    ASSERT_TRUE(response.has_value());
    if (status == 101 || status >= 600) {  // not a final status: sent as 500
      EXPECT_EQ(response->status, 500);
    } else {
      EXPECT_EQ(response->status, status);
      EXPECT_EQ(response->reason, reason);
    }
  }
  client.Send("GET /204 HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 204);
  EXPECT_EQ(response->Find("Content-Length"), nullptr);
}

// Headers from a handler (user code, behind the proxy) are written as given; ones that could end
// the head early or be read as part of another header are dropped instead.
TEST_F(HttpServerTest, ResponseHeadersThatCouldSplitTheResponseAreDropped) {
  StartServer({}, [](Request&&, Responder responder) {
    Response response = TextResponse(200, "body");
    response.headers.push_back({"X-Bare-LF", "a\nInjected: 1"});
    response.headers.push_back({"X-CRLF", "a\r\nInjected: 2"});
    response.headers.push_back({"X-NUL", std::string("a\0b", 3)});
    response.headers.push_back({" X-Leading-Space", "folded"});
    response.headers.push_back({"\tX-Leading-Tab", "folded"});
    response.headers.push_back({"X-Bad:Name", "v"});
    response.headers.push_back({"X-Bad\nName", "v"});
    response.headers.push_back({std::string("X-NUL\0Name", 11), "v"});
    response.headers.push_back({"", "v"});
    response.headers.push_back({"X-Kept", "a value, with spaces\tand a tab"});
    responder.Send(std::move(response));
  });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "body");
  std::vector<std::string> names;
  for (const Header& header : response->headers) names.push_back(header.name);
  EXPECT_EQ(names, (std::vector<std::string>{"Content-Type", "X-Kept", "Content-Length"}));
  ASSERT_NE(response->Find("X-Kept"), nullptr);
  EXPECT_EQ(*response->Find("X-Kept"), "a value, with spaces\tand a tab");
  // Nothing else follows the answer on the connection.
  client.Send("GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
  response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
}

// Out of file descriptors, the server cannot accept: it says so in its log (at most once a
// second), leaves the connection waiting in the backlog, and accepts it once it can.
TEST_F(HttpServerTest, ConnectionsWaitWhileAcceptingFailsAndAreServedAfter) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
  GTEST_SKIP() << "sanitizers need descriptors of their own (UBSan's vptr check opens a pipe to "
                  "probe memory), and this test leaves none";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
  GTEST_SKIP() << "sanitizers need descriptors of their own (UBSan's vptr check opens a pipe to "
                  "probe memory), and this test leaves none";
#endif
#endif
  StartEchoServer();
  int fd = socket(AF_INET, SOCK_STREAM, 0);  // made before the limit goes down
  ASSERT_GE(fd, 0);
  timeval timeout{static_cast<time_t>(kDeadline / 1s), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  int lowest_free = dup(fd);  // descriptors are handed out lowest first
  ASSERT_GE(lowest_free, 0);
  close(lowest_free);
  rlimit lowered = saved;
  lowered.rlim_cur = static_cast<rlim_t>(lowest_free);  // no new descriptor for anyone
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port_));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  bool failed = WaitUntil(
      [this] { return loop_.Call([this] { return server_->accept_failure_count(); }) > 0; });
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_EQ(connected, 0) << strerror(errno);
  EXPECT_TRUE(failed);
  std::string request = "GET /after HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string answer;
  char chunk[4096];
  while (answer.find("/after") == std::string::npos) {
    ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) break;
    answer.append(chunk, static_cast<size_t>(n));
  }
  close(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << answer;
  EXPECT_NE(answer.find("/after"), std::string::npos) << answer;
}

TEST_F(HttpServerTest, ListenOnAPortInUseFails) {
  StartEchoServer();
  std::string message = loop_.Call([this] {
    ServerOptions options;
    options.port = port_;
    Server second(loop_.loop(), options, [](Request&&, Responder) {});
    return second.Listen().message();
  });
  EXPECT_NE(message.find("address already in use"), std::string::npos) << message;
  EXPECT_NE(message.find("127.0.0.1:" + std::to_string(port_)), std::string::npos) << message;
}

// A supervisor opens the socket once and hands a copy to each server process it starts: a client
// that connects while no server accepts waits in the backlog, and the socket outlives a server
// that closed its copy.
TEST_F(HttpServerTest, AHandedOverSocketServesWhatWaitedInItsBacklog) {
  auto socket = OpenListeningSocket("127.0.0.1", 0);
  ASSERT_TRUE(socket.ok()) << socket.error();
  sockaddr_in address{};
  socklen_t length = sizeof(address);
  ASSERT_EQ(getsockname(*socket, reinterpret_cast<sockaddr*>(&address), &length), 0);
  int port = ntohs(address.sin_port);
  Client early(port);
  ASSERT_TRUE(early.connected());
  early.Send("GET /early HTTP/1.1\r\nHost: x\r\n\r\n");

  ServerOptions options;
  options.listen_fd = dup(*socket);
  StartEchoServer(options);
  EXPECT_EQ(port_, port);
  std::optional<ClientResponse> response = early.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/early");

  std::atomic<bool> closed{false};
  loop_.Call([&] { server_->Close([&] { closed = true; }); });
  ASSERT_TRUE(WaitUntil([&] { return closed.load(); }));
  Client waiting(port);
  ASSERT_TRUE(waiting.connected());
  waiting.Send("GET /waiting HTTP/1.1\r\nHost: x\r\n\r\n");
  Status listening = loop_.Call([&] {
    options.listen_fd = dup(*socket);
    server_ =
        std::make_unique<Server>(loop_.loop(), options, [](Request&& request, Responder responder) {
          responder.Send(TextResponse(200, request.target));
        });
    return server_->Listen();
  });
  ASSERT_TRUE(listening.ok()) << listening.message();
  response = waiting.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/waiting");
  close(*socket);
}

TEST_F(HttpServerTest, CloseClosesConnectionsAndReportsWhenDone) {
  StartServer({},
              [this](Request&&, Responder responder) { held_.push_back(std::move(responder)); });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(WaitUntil([this] { return loop_.Call([this] { return held_.size() == 1; }); }));
  std::atomic<bool> closed{false};
  loop_.Call([&] { server_->Close([&] { closed = true; }); });
  EXPECT_TRUE(WaitUntil([&] { return closed.load(); }));
  EXPECT_TRUE(client.WaitClosed());
  loop_.Call([this] {
    EXPECT_EQ(server_->connection_count(), 0u);
    held_[0].Send(TextResponse(200, "after close"));  // a no-op
    held_.clear();
  });
}

TEST_F(HttpServerTest, ServerMayBeDestroyedWithOpenConnections) {
  StartServer({},
              [this](Request&&, Responder responder) { held_.push_back(std::move(responder)); });
  Client client(port_);
  client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(WaitUntil([this] { return loop_.Call([this] { return held_.size() == 1; }); }));
  loop_.Call([this] { server_.reset(); });
  EXPECT_TRUE(client.WaitClosed());
  // The Responder outlives the server; answering and dropping it is harmless.
  loop_.Call([this] {
    held_[0].Send(TextResponse(200, "nobody listens"));
    held_.clear();
  });
}

TEST_F(HttpServerTest, RandomInputNeverBreaksTheServer) {
  ServerOptions options;
  options.max_header_bytes = 512;
  options.max_body_bytes = 64;
  StartEchoServer(options);
  const std::vector<std::string> seeds = {
      "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
      "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      "HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
      "CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxyz",
  };
  std::mt19937 random(12345);
  for (int round = 0; round < 150; ++round) {
    std::string input;
    int pieces = 1 + static_cast<int>(random() % 3);
    for (int i = 0; i < pieces; ++i) {
      input += seeds[random() % seeds.size()];
    }
    int mutations = static_cast<int>(random() % 6);
    for (int i = 0; i < mutations && !input.empty(); ++i) {
      size_t at = random() % input.size();
      switch (random() % 4) {
        case 0:
          input[at] = static_cast<char>(random() % 256);
          break;
        case 1:
          input.erase(at, 1 + random() % 8);
          break;
        case 2:
          input.insert(at, std::string(1 + random() % 300, static_cast<char>(random() % 256)));
          break;
        case 3:
          input.resize(at);
          break;
      }
    }
    Client client(port_);
    client.Send(input);
    client.ShutdownWrite();
    EXPECT_TRUE(client.WaitClosed()) << "round " << round;
  }
  EXPECT_TRUE(WaitUntil([this] { return ConnectionCount() == 0; }));
  Client client(port_);
  client.Send("GET /still-alive HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<ClientResponse> response = client.Read();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "/still-alive");
}

TEST(HttpReasonPhrase, CommonCodesAndFallback) {
  EXPECT_EQ(ReasonPhrase(200), "OK");
  EXPECT_EQ(ReasonPhrase(408), "Request Timeout");
  EXPECT_EQ(ReasonPhrase(413), "Payload Too Large");
  EXPECT_EQ(ReasonPhrase(504), "Gateway Timeout");
  EXPECT_EQ(ReasonPhrase(799), "Unknown");
}

TEST(HttpServer, DestroyedWithoutListeningNeedsNoLoopRun) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    Server server(&loop, {}, [](Request&&, Responder) {});
  }
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

TEST(HttpServer, FailedListenNeedsNoLoopRun) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    ServerOptions options;
    options.host = "256.1.1.1";
    Server server(&loop, options, [](Request&&, Responder) {});
    Status status = server.Listen();
    EXPECT_FALSE(status.ok());
    EXPECT_NE(status.message().find("cannot listen on 256.1.1.1:8000"), std::string::npos)
        << status.message();
  }
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

// A stream's body goes out as it is written, unframed, and the connection closes after it; an
// answer pipelined before it goes first, and what the stream writes before its turn waits.
TEST_F(HttpServerTest, StreamSendsItsBodyAsWrittenThenCloses) {
  StartServer({}, [this](Request&& request, Responder responder) {
    if (request.path == "/slow") {
      held_.push_back(std::move(responder));
      return;
    }
    Response head = TextResponse(200, "first\n");
    head.headers.push_back({"Content-Length", "999"});  // ignored: the server frames it
    streams_.push_back(responder.StartStream(std::move(head)));
    EXPECT_TRUE(streams_.back().open());
    EXPECT_TRUE(streams_.back().Write("early\n"));
  });
  Client client(port_);
  client.Send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /events HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(WaitUntil([&] { return loop_.Call([this] { return streams_.size(); }) == 1; }));
  loop_.Call([this] {
    held_.back().Send(TextResponse(200, "slow"));
    held_.clear();
  });
  ASSERT_TRUE(client.ReadUntil("early\n")) << client.leftover();
  EXPECT_TRUE(loop_.Call([this] { return streams_.back().Write("second\n"); }));
  ASSERT_TRUE(client.ReadUntil("second\n")) << client.leftover();
  loop_.Call([this] { streams_.clear(); });  // destroying the Stream ends it
  ASSERT_TRUE(client.WaitClosed());
  const std::string& all = client.leftover();
  size_t slow = all.find("\r\n\r\nslow");
  size_t stream_head = all.find("HTTP/1.1 200", slow);
  ASSERT_NE(slow, std::string::npos) << all;
  ASSERT_NE(stream_head, std::string::npos) << all;
  std::string stream = all.substr(stream_head);
  EXPECT_EQ(stream.find("Content-Length"), std::string::npos) << stream;
  EXPECT_NE(stream.find("Connection: close\r\n"), std::string::npos) << stream;
  EXPECT_TRUE(stream.ends_with("\r\n\r\nfirst\nearly\nsecond\n")) << stream;
}

TEST_F(HttpServerTest, StreamWritesFailOnceTheClientLeft) {
  StartServer({}, [this](Request&&, Responder responder) {
    streams_.push_back(responder.StartStream(TextResponse(200, "hello\n")));
  });
  {
    Client client(port_);
    client.Send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_TRUE(client.ReadUntil("hello\n"));
  }
  EXPECT_TRUE(
      WaitUntil([&] { return loop_.Call([this] { return !streams_.back().Write("more\n"); }); }));
  EXPECT_FALSE(loop_.Call([this] { return streams_.back().open(); }));
  EXPECT_TRUE(WaitUntil([&] { return ConnectionCount() == 0; }));
  loop_.Call([this] { streams_.clear(); });
}

}  // namespace
}  // namespace serve::http
