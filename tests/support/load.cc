#include "support/load.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

namespace serve::testing {
namespace {

using Clock = LoadGenerator::Clock;

constexpr size_t kMaxHeaderBytes = 64 * 1024;

std::chrono::milliseconds Since(Clock::time_point start, Clock::time_point then) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(then - start);
}

int MillisLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

std::string Lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

}  // namespace

// One keep-alive HTTP/1.1 connection: a blocking socket used with poll() so that every step
// honours the request's deadline.
class LoadGenerator::Connection {
 public:
  Connection(int port, uint64_t* connections) : port_(port), connections_(connections) {}
  ~Connection() { Close(); }

  // Sends `request` and reads one answer, all before `deadline`.
  Response RoundTrip(const std::string& request, bool head, Clock::time_point deadline) {
    Response response;
    bool reused = fd_ >= 0;
    if (fd_ < 0 && !Open(deadline, &response.error)) return response;
    if (!SendAll(request, deadline, &response.error)) {
      if (reused) response.error += " (on a reused keep-alive connection)";
      Close();
      return response;
    }
    bool keep_alive = true;
    if (!ReadResponse(head, deadline, &response, &keep_alive)) {
      if (reused && response.error.find("closed") != std::string::npos) {
        response.error += " (on a reused keep-alive connection)";
      }
      response.status = 0;
      Close();
      return response;
    }
    if (!keep_alive) Close();
    return response;
  }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    buffer_.clear();
  }

 private:
  bool Open(Clock::time_point deadline, std::string* error) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      *error = "socket: " + std::string(strerror(errno));
      return false;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      if (errno != EINPROGRESS) {
        *error = "connect: " + std::string(strerror(errno));
        close(fd);
        return false;
      }
      pollfd pfd{fd, POLLOUT, 0};
      int ready = poll(&pfd, 1, MillisLeft(deadline));
      int so_error = 0;
      socklen_t len = sizeof(so_error);
      if (ready <= 0) {
        *error = "connect: no connection before the request timeout";
        close(fd);
        return false;
      }
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
      if (so_error != 0) {
        *error = "connect: " + std::string(strerror(so_error));
        close(fd);
        return false;
      }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fd_ = fd;
    ++*connections_;
    return true;
  }

  bool SendAll(const std::string& data, Clock::time_point deadline, std::string* error) {
    size_t sent = 0;
    while (sent < data.size()) {
      ssize_t n = send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        pollfd pfd{fd_, POLLOUT, 0};
        if (poll(&pfd, 1, MillisLeft(deadline)) <= 0) {
          *error = "send: timed out";
          return false;
        }
        continue;
      }
      *error = "send: " + std::string(n < 0 ? strerror(errno) : "nothing sent");
      return false;
    }
    return true;
  }

  // Reads more bytes into buffer_; false with `error` set on timeout, close or error.
  bool Fill(Clock::time_point deadline, std::string* error) {
    char chunk[16384];
    while (true) {
      ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
      if (n > 0) {
        buffer_.append(chunk, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) {
        *error = "the server closed the connection after " + std::to_string(buffer_.size()) +
                 " bytes of the answer";
        return false;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        *error = "recv: " + std::string(strerror(errno));
        return false;
      }
      pollfd pfd{fd_, POLLIN, 0};
      int left = MillisLeft(deadline);
      if (left <= 0 || poll(&pfd, 1, left) <= 0) {
        *error =
            "timed out waiting for the answer (got " + std::to_string(buffer_.size()) + " bytes)";
        return false;
      }
    }
  }

  // Parses one answer with a Content-Length body (or none, where HTTP says there is none).
  bool ReadResponse(bool head, Clock::time_point deadline, Response* response, bool* keep_alive) {
    size_t header_end;
    while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (buffer_.size() > kMaxHeaderBytes) {
        response->error = "answer headers larger than 64 KiB";
        return false;
      }
      if (!Fill(deadline, &response->error)) return false;
    }
    std::string head_text = buffer_.substr(0, header_end);
    if (head_text.rfind("HTTP/1.", 0) != 0 || head_text.size() < 12) {
      response->error = "not an HTTP/1.x answer: " + head_text.substr(0, 80);
      return false;
    }
    bool http10 = head_text.compare(0, 8, "HTTP/1.0") == 0;
    int status = std::atoi(head_text.c_str() + 9);
    if (status < 100 || status > 999) {
      response->error = "bad status line: " + head_text.substr(0, head_text.find("\r\n"));
      return false;
    }
    long long content_length = -1;
    bool chunked = false;
    std::string connection;
    std::istringstream lines(head_text);
    std::string line;
    std::getline(lines, line);
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = Lower(line.substr(0, colon));
      size_t start = line.find_first_not_of(" \t", colon + 1);
      std::string value = start == std::string::npos ? "" : line.substr(start);
      if (name == "content-length") content_length = std::atoll(value.c_str());
      if (name == "transfer-encoding") chunked = Lower(value).find("chunked") != std::string::npos;
      if (name == "connection") connection = Lower(value);
    }
    bool no_body = head || status == 204 || status == 304 || status < 200;
    if (!no_body && content_length < 0) {
      response->error = std::string("answer without Content-Length") +
                        (chunked ? " (chunked; this client reads Content-Length bodies only)" : "");
      return false;
    }
    size_t body_size = no_body ? 0 : static_cast<size_t>(content_length);
    size_t total = header_end + 4 + body_size;
    while (buffer_.size() < total) {
      if (!Fill(deadline, &response->error)) {
        response->error += " (" + std::to_string(status) + " with Content-Length " +
                           std::to_string(body_size) + ")";
        return false;
      }
    }
    response->status = status;
    response->body = buffer_.substr(header_end + 4, body_size);
    buffer_.erase(0, total);
    *keep_alive = connection.find("close") == std::string::npos &&
                  (!http10 || connection.find("keep-alive") != std::string::npos);
    return true;
  }

  int port_;
  uint64_t* connections_;
  int fd_ = -1;
  std::string buffer_;
};

LoadGenerator::LoadGenerator(Options options) : options_(std::move(options)) {
  if (!options_.success) options_.success = [](int status) { return status / 100 == 2; };
  started_ = Clock::now();
  report_.started = started_;
  running_clients_ = options_.clients;
  for (int i = 0; i < options_.clients; ++i) threads_.emplace_back([this, i] { RunClient(i); });
}

LoadGenerator::~LoadGenerator() { Stop(); }

bool LoadGenerator::ShouldContinue() {
  if (stop_.load()) return false;
  if (Clock::now() - started_ >= options_.duration) return false;
  return issued_.fetch_add(1) < options_.max_requests;
}

void LoadGenerator::RunClient(int index) {
  uint64_t connections = 0;
  Connection connection(options_.port, &connections);
  std::string request = options_.method + " " + options_.target +
                        " HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: serve-load\r\n"
                        "Content-Length: " +
                        std::to_string(options_.body.size()) + "\r\n\r\n" + options_.body;
  bool head = options_.method == "HEAD";
  while (ShouldContinue()) {
    Clock::time_point sent = Clock::now();
    Response response = connection.RoundTrip(request, head, sent + options_.request_timeout);
    Record(index, sent, response);
    if (response.status == 0) {
      // Do not spin on a refused connection: the next try is a new connection anyway.
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    } else if (options_.pause.count() > 0) {
      std::this_thread::sleep_for(options_.pause);
    }
  }
  connection.Close();
  std::lock_guard<std::mutex> lock(mutex_);
  report_.connections += connections;
  if (--running_clients_ == 0) report_.elapsed = Since(started_, Clock::now());
}

void LoadGenerator::Record(int client, Clock::time_point sent, const Response& response) {
  Clock::time_point now = Clock::now();
  std::string key = options_.key && response.status != 0 ? options_.key(response) : "";
  bool ok = response.status != 0 && options_.success(response.status);
  std::lock_guard<std::mutex> lock(mutex_);
  ++report_.requests;
  ++report_.statuses[response.status];
  if (ok) {
    ++report_.succeeded;
  } else {
    ++report_.failed;
    if (report_.failures.size() < options_.max_recorded_failures) {
      Failure failure;
      failure.client = client;
      failure.sent_at = Since(started_, sent);
      failure.took = Since(sent, now);
      failure.status = response.status;
      failure.body = response.body.substr(0, options_.max_recorded_body);
      failure.error = response.error;
      report_.failures.push_back(std::move(failure));
    }
  }
  if (!key.empty()) {
    auto [it, inserted] = report_.keys.try_emplace(key);
    KeyStats& stats = it->second;
    if (inserted || sent < stats.first_sent) stats.first_sent = sent;
    if (inserted || sent > stats.last_sent) stats.last_sent = sent;
    ++stats.count;
  }
}

LoadGenerator::Report LoadGenerator::Snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Report report = report_;
  if (running_clients_.load() > 0) report.elapsed = Since(started_, Clock::now());
  return report;
}

bool LoadGenerator::WaitForRequests(uint64_t count, std::chrono::milliseconds timeout) const {
  auto deadline = Clock::now() + timeout;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (report_.requests >= count) return true;
    }
    if (Done() || Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

bool LoadGenerator::WaitForMoreRequests(uint64_t count, std::chrono::milliseconds timeout) const {
  uint64_t done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done = report_.requests;
  }
  // Each client has at most one request in flight, sent before this call.
  return WaitForRequests(done + static_cast<uint64_t>(options_.clients) + count, timeout);
}

LoadGenerator::Report LoadGenerator::Stop() {
  stop_ = true;
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  return Snapshot();
}

std::vector<std::string> LoadGenerator::Report::KeysSentSince(Clock::time_point since) const {
  std::vector<std::string> out;
  for (const auto& [key, stats] : keys) {
    if (stats.last_sent >= since) out.push_back(key);
  }
  return out;
}

std::string LoadGenerator::Report::Summary() const {
  std::ostringstream out;
  out << "failed requests: " << failed << " of " << requests << " (" << elapsed.count() << " ms, "
      << connections << " connections)\n";
  out << "  statuses:";
  for (const auto& [status, count] : statuses) {
    out << " " << (status == 0 ? std::string("no-answer") : std::to_string(status)) << " x "
        << count;
  }
  out << "\n";
  if (!keys.empty()) {
    out << "  keys:";
    for (const auto& [key, stats] : keys) {
      out << " " << key << " x " << stats.count << " (sent "
          << Since(started, stats.first_sent).count() << ".."
          << Since(started, stats.last_sent).count() << " ms)";
    }
    out << "\n";
  }
  for (const auto& f : failures) {
    out << "  failure: client " << f.client << " sent at " << f.sent_at.count() << " ms, took "
        << f.took.count() << " ms: "
        << (f.status == 0 ? "no answer: " + f.error
                          : "status " + std::to_string(f.status) + ": " + f.body)
        << "\n";
  }
  if (failed > failures.size()) {
    out << "  (" << failed - failures.size() << " more failures not recorded)\n";
  }
  return out.str();
}

std::function<std::string(const LoadGenerator::Response&)> JsonField(std::string name) {
  return [name = std::move(name)](const LoadGenerator::Response& response) -> std::string {
    auto json = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (!json.is_object()) return "";
    auto it = json.find(name);
    if (it == json.end() || !it->is_string()) return "";
    return it->get<std::string>();
  };
}

std::function<std::string(const LoadGenerator::Response&)> WholeBody() {
  return [](const LoadGenerator::Response& response) { return response.body; };
}

}  // namespace serve::testing
