// The proxy against a real nats-server, with a fake replica and a route table published by the
// test (no controller): what clients see when the bus goes away and comes back.
#include "proxy/proxy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include "support/loop.h"
#include "support/process.h"
#include "wire/codec.h"
#include "wire/serve_generated.h"

namespace serve::proxy {
namespace {

using serve::testing::HttpResult;
using serve::testing::NatsServer;
using serve::testing::RunUntil;
using ::testing::HasSubstr;

class ProxyBusTest : public ::testing::Test {
 protected:
  void SetUp() override { uv_loop_init(&loop_); }

  void TearDown() override {
    if (proxy_ != nullptr) {
      bool closed = false;
      proxy_->Stop([&] { closed = true; });
      RunUntil(&loop_, [&] { return closed; });
      proxy_.reset();
    }
    if (proxy_bus_ != nullptr) proxy_bus_->Close(0);
    if (replica_bus_ != nullptr) replica_bus_->Close(0);
    proxy_bus_.reset();
    replica_bus_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop_), 0);
  }

  std::unique_ptr<bus::Bus> Connect() {
    bus::Options options;
    options.url = nats_.url();
    auto bus = bus::Bus::Connect(&loop_, options);
    EXPECT_TRUE(bus.ok()) << bus.error();
    return bus.ok() ? std::move(*bus) : nullptr;
  }

  // A replica r1 that answers "from r1", unless `silent` (it then never answers), and the route
  // table /a -> deployment a -> r1, published once, as a controller would. After StartProxy.
  void StartReplicaAndRoutes(bool silent = false) {
    replica_bus_ = Connect();
    ASSERT_NE(replica_bus_, nullptr);
    ASSERT_TRUE(replica_bus_
                    ->Subscribe(subjects_.Replica("r1"),
                                [this, silent](bus::Message& m) {
                                  ++received_;
                                  if (silent) return;
                                  wire::HttpResponseT answer;
                                  std::string body = "from r1";
                                  answer.body.assign(body.begin(), body.end());
                                  auto request = wire::Unpack<wire::HttpRequest>(m.data);
                                  if (request.ok()) Script(request->path, &answer);
                                  (void)replica_bus_->Respond(m, wire::Pack(answer));
                                })
                    .ok());
    ASSERT_TRUE(replica_bus_->Flush().ok());
    wire::RouteTableT table;
    table.generation = 7;
    table.controller_id = "c1";
    auto route = std::make_unique<wire::RouteT>();
    route->route_prefix = "/a";
    route->deployment = "a";
    auto replica = std::make_unique<wire::RouteReplicaT>();
    replica->id = "r1";
    replica->max_concurrent_queries = 10;
    route->replicas.push_back(std::move(replica));
    table.routes.push_back(std::move(route));
    // The proxy's subscription must have reached the server before the table is published.
    ASSERT_TRUE(RunUntil(&loop_, [&] { return proxy_bus_->connected(); }));
    ASSERT_TRUE(proxy_bus_->Flush().ok());
    ASSERT_TRUE(replica_bus_->Publish(subjects_.routes, wire::Pack(table)).ok());
    ASSERT_TRUE(RunUntil(&loop_, [&] { return proxy_->router().route_count() == 1; }));
  }

  void StartProxy(double bus_wait_s) {
    proxy_bus_ = Connect();
    ASSERT_NE(proxy_bus_, nullptr);
    ProxyOptions options;
    options.proxy_id = "p1";
    options.http.port = 0;
    options.request_timeout_s = 30;
    options.bus_wait_s = bus_wait_s;
    proxy_ = std::make_unique<Proxy>(&loop_, *proxy_bus_, subjects_, options);
    Status started = proxy_->Start();
    ASSERT_TRUE(started.ok()) << started.message();
  }

  // Sends a request from another thread and runs the loop until it is answered.
  HttpResult Get(const std::string& target) {
    auto answer = Send(target);
    auto ready = [&] { return Ready(answer); };
    bool answered = RunUntil(&loop_, ready, /*timeout_s=*/30);
    EXPECT_TRUE(answered) << "no answer to " << target;
    return answered ? answer.get() : HttpResult{};
  }
  std::future<HttpResult> Send(const std::string& target) {
    int port = proxy_->port();
    return std::async(std::launch::async, [port, target] {
      return testing::HttpRequest(port, "GET", target, "", std::chrono::seconds(30));
    });
  }
  static bool Ready(std::future<HttpResult>& answer) {
    return answer.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }

  // What the fake replica answers to some paths, as user code might: /a/status/<n> answers
  // status n, /a/headers adds headers that could split the response.
  static void Script(const std::string& path, wire::HttpResponseT* answer) {
    if (path.starts_with("/a/status/")) answer->status = std::stoi(path.substr(10));
    if (path.starts_with("/a/big/")) {  // 8 KiB, starting with the path
      std::string body = path;
      body.resize(8 * 1024, '.');
      answer->body.assign(body.begin(), body.end());
    }
    if (path == "/a/headers") {
      auto add = [&](std::string name, std::string value) {
        auto header = std::make_unique<wire::HeaderT>();
        header->name = std::move(name);
        header->value = std::move(value);
        answer->headers.push_back(std::move(header));
      };
      add("X-Split", "a\nX-Injected: 1");
      add(" X-Folded", "v");
      add("X-Kept", "yes");
    }
  }

  NatsServer nats_;
  uv_loop_t loop_;
  bus::Subjects subjects_{"t"};
  std::unique_ptr<bus::Bus> proxy_bus_;
  std::unique_ptr<bus::Bus> replica_bus_;
  std::unique_ptr<Proxy> proxy_;
  int received_ = 0;
};

TEST_F(ProxyBusTest, WithoutTheBusRequestsGet503WithRetryAfterAndTheHeldTableServesWhenItReturns) {
  StartProxy(0.3);
  StartReplicaAndRoutes();
  ASSERT_EQ(Get("/a").body, "from r1");

  nats_.Stop();
  ASSERT_TRUE(RunUntil(&loop_, [&] { return !proxy_bus_->connected(); }));
  for (int i = 0; i < 3; ++i) {
    HttpResult answer = Get("/a");
    EXPECT_EQ(answer.status, 503) << answer.body << answer.error;
    EXPECT_EQ(answer.headers["retry-after"], "1");
    EXPECT_THAT(answer.body, HasSubstr("no connection to NATS at " + nats_.url()));
  }
  // Liveness holds, and says what is wrong.
  HttpResult health = Get("/-/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_THAT(health.body, HasSubstr("success"));
  EXPECT_THAT(health.body, HasSubstr("no connection to NATS"));
  // The table held still answers for paths it does not route.
  EXPECT_EQ(Get("/elsewhere").status, 404);

  nats_.Start();
  ASSERT_TRUE(RunUntil(&loop_, [&] { return proxy_bus_->connected(); }));
  // No controller answers the proxy's route request: the table it held is what serves, even if
  // the replica has not reconnected yet.
  HttpResult answer = Get("/a");
  EXPECT_EQ(answer.status, 200) << answer.body << answer.error;
  EXPECT_EQ(answer.body, "from r1");
  EXPECT_EQ(proxy_->router().generation(), 7u);
  EXPECT_THAT(Get("/-/healthz").body, HasSubstr("bus: connected to NATS"));
}

// Replica ids become the subjects requests go to: a table with one that is not a plain token is
// refused whole. Were it taken, its generation (9) would make the proxy refuse the next (8).
TEST_F(ProxyBusTest, RouteTableWithAnIdNoSubjectCanCarryIsRefused) {
  StartProxy(0.3);
  StartReplicaAndRoutes();
  auto table_with = [](uint64_t generation, const std::string& prefix, const std::string& id) {
    wire::RouteTableT table;
    table.generation = generation;
    table.controller_id = "c1";
    auto route = std::make_unique<wire::RouteT>();
    route->route_prefix = prefix;
    route->deployment = "a";
    auto replica = std::make_unique<wire::RouteReplicaT>();
    replica->id = id;
    replica->max_concurrent_queries = 10;
    route->replicas.push_back(std::move(replica));
    table.routes.push_back(std::move(route));
    return wire::Pack(table);
  };
  ASSERT_TRUE(replica_bus_->Publish(subjects_.routes, table_with(9, "/b", "r1.>")).ok());
  ASSERT_TRUE(replica_bus_->Publish(subjects_.routes, table_with(8, "/c", "r1")).ok());
  ASSERT_TRUE(RunUntil(&loop_, [&] { return proxy_->router().generation() == 8; }));
  EXPECT_EQ(Get("/c").body, "from r1");
  EXPECT_EQ(Get("/b").status, 404);
}

TEST_F(ProxyBusTest, RequestHeldWhileTheBusIsDownGoesOutWhenItReturns) {
  StartProxy(30);
  StartReplicaAndRoutes();
  nats_.Stop();
  ASSERT_TRUE(RunUntil(&loop_, [&] { return !proxy_bus_->connected(); }));
  auto held = Send("/a");
  // Observed through the health body, so the bus returns only once the request waits.
  ASSERT_TRUE(RunUntil(&loop_, [&] {
    auto health = Send("/-/healthz");
    RunUntil(&loop_, [&] { return Ready(health); });
    return Ready(health) && health.get().body.find("(1 waiting now)") != std::string::npos;
  }));
  nats_.Start();
  auto ready = [&] { return Ready(held); };
  bool answered = RunUntil(&loop_, ready, /*timeout_s=*/30);
  ASSERT_TRUE(answered);
  HttpResult answer = held.get();
  EXPECT_EQ(answer.status, 200) << answer.body << answer.error;
  EXPECT_EQ(answer.body, "from r1");
}

TEST_F(ProxyBusTest, RequestInFlightWhenTheBusDropsFailsAtOnceWith502) {
  StartProxy(30);
  StartReplicaAndRoutes(/*silent=*/true);
  auto in_flight = Send("/a");
  ASSERT_TRUE(RunUntil(&loop_, [&] { return received_ == 1; }));
  nats_.Stop();
  // Well before the 30 s request timeout (RunUntil's deadline is 20 s).
  ASSERT_TRUE(RunUntil(&loop_, [&] { return Ready(in_flight); }));
  HttpResult answer = in_flight.get();
  EXPECT_EQ(answer.status, 502) << answer.body;
  EXPECT_THAT(answer.body, HasSubstr("connection to NATS was lost"));
}

TEST_F(ProxyBusTest, ProxyThatNeverReachedTheBusAnswers503NotNoRoute) {
  nats_.Stop();
  StartProxy(0);
  HttpResult answer = Get("/a");
  EXPECT_EQ(answer.status, 503) << answer.body;
  EXPECT_EQ(answer.headers["retry-after"], "1");
  EXPECT_THAT(answer.body, HasSubstr("the bus is unavailable"));

  nats_.Start();
  StartReplicaAndRoutes();
  EXPECT_EQ(Get("/a").body, "from r1");
}

// A replica's status and headers come from user code: the proxy answers 502 for a status that
// is not a final HTTP one and drops headers that could split the response.
TEST_F(ProxyBusTest, ReplicaStatusOutsideTheFinalRangeIs502AndUnsafeHeadersAreDropped) {
  StartProxy(/*bus_wait_s=*/0.5);
  StartReplicaAndRoutes();
  for (int status : {0, 99, 100, 101, 199, 600, 1000, -1}) {
    HttpResult result = Get("/a/status/" + std::to_string(status));
    EXPECT_EQ(result.status, 502) << status;
    EXPECT_THAT(result.body, HasSubstr("not a final HTTP status")) << status;
  }
  for (int status : {200, 204, 404, 599}) {
    EXPECT_EQ(Get("/a/status/" + std::to_string(status)).status, status);
  }
  HttpResult result = Get("/a/headers");
  EXPECT_EQ(result.status, 200);
  EXPECT_EQ(result.headers["x-kept"], "yes");
  EXPECT_EQ(result.headers.count("x-split"), 0u);
  EXPECT_EQ(result.headers.count("x-injected"), 0u);
  EXPECT_EQ(result.headers.count("x-folded"), 0u);
  EXPECT_EQ(result.headers.count(" x-folded"), 0u);
}

// Pipelines `count` requests for /a/big/<i> on one connection without reading, until `read` is
// set; then reads the answers and returns how many came complete and in order.
int PipelineThenRead(int port, int count, const std::atomic<bool>& read) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int small = 16 * 1024;  // so that the proxy, not the client's socket, holds the answers
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  timeval timeout{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  std::string batch;
  for (int i = 0; i < count; ++i) {
    batch += "GET /a/big/" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  std::string_view rest = batch;
  while (!rest.empty()) {  // blocks while the proxy does not read
    ssize_t n = send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n <= 0) break;
    rest.remove_prefix(static_cast<size_t>(n));
  }
  while (!read) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::string input;
  int answered = 0;
  char chunk[64 * 1024];
  while (answered < count) {
    size_t head_end = input.find("\r\n\r\n");
    size_t length_at = input.find("Content-Length: ");
    if (head_end != std::string::npos && length_at < head_end) {
      size_t length = std::stoul(input.substr(length_at + 16));
      if (input.size() >= head_end + 4 + length) {
        std::string expected = "/a/big/" + std::to_string(answered);
        if (input.compare(head_end + 4, expected.size(), expected) != 0) break;  // out of order
        input.erase(0, head_end + 4 + length);
        ++answered;
        continue;
      }
    }
    ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) break;
    input.append(chunk, static_cast<size_t>(n));
  }
  close(fd);
  return answered;
}

// A client that pipelines thousands of requests and reads none of the answers holds the proxy to
// about --max-connection-buffer-bytes; once it reads, every answer comes, in order.
TEST_F(ProxyBusTest, PipeliningClientThatDoesNotReadIsBoundedByTheConnectionBuffer) {
  constexpr size_t kLimit = 64 * 1024;
  constexpr int kCount = 3000;  // 24 MiB of answers
  proxy_bus_ = Connect();
  ASSERT_NE(proxy_bus_, nullptr);
  ProxyOptions options;
  options.proxy_id = "p1";
  options.http.port = 0;
  options.http.max_connection_buffer_bytes = kLimit;
  options.access_log = false;
  proxy_ = std::make_unique<Proxy>(&loop_, *proxy_bus_, subjects_, options);
  ASSERT_TRUE(proxy_->Start().ok());
  StartReplicaAndRoutes();

  std::atomic<bool> read{false};
  auto answered =
      std::async(std::launch::async, PipelineThenRead, proxy_->port(), kCount, std::cref(read));
  size_t most = 0;
  auto sample = [&] {
    most = std::max(most, proxy_->buffered_bytes());
    return proxy_->paused_connection_count() == 1;
  };
  ASSERT_TRUE(RunUntil(&loop_, sample)) << "the proxy never stopped reading";
  EXPECT_GT(most, 0u);
  // The bound: the limit, plus the answer and request that crossed it and one read of input.
  constexpr size_t kBound = kLimit + 8 * 1024 + 64 * 1024 + 1024;
  EXPECT_LE(most, kBound);
  read = true;
  ASSERT_TRUE(RunUntil(
      &loop_,
      [&] {
        most = std::max(most, proxy_->buffered_bytes());
        return answered.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
      },
      /*timeout_s=*/60));
  EXPECT_EQ(answered.get(), kCount);
  EXPECT_LE(most, kBound);
}

TEST(OpenFileLimit, IsRaisedToTheHardLimit) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit lowered = saved;
  lowered.rlim_cur = std::min<rlim_t>(saved.rlim_max, 256);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  Result<uint64_t> raised = RaiseOpenFileLimit();
  rlimit now{};
  getrlimit(RLIMIT_NOFILE, &now);
  setrlimit(RLIMIT_NOFILE, &saved);
  ASSERT_TRUE(raised.ok()) << raised.error();
  EXPECT_EQ(now.rlim_cur, saved.rlim_max);
  EXPECT_EQ(*raised, static_cast<uint64_t>(saved.rlim_max));
}

}  // namespace
}  // namespace serve::proxy
