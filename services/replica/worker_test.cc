#include "replica/worker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "support/loop.h"
#include "support/process.h"

namespace serve::replica {
namespace {

using ::testing::HasSubstr;

TEST(HandlerThreads, FollowsConcurrencyUpToTheCap) {
  EXPECT_EQ(HandlerThreads(1), 1u);
  EXPECT_EQ(HandlerThreads(100), 100u);
  EXPECT_EQ(HandlerThreads(kMaxHandlerThreads), static_cast<size_t>(kMaxHandlerThreads));
}

// max_concurrent_queries may be 10,000 (or more, with the controller's flag): the worker runs
// at most kMaxHandlerThreads of them at once and queues the rest.
TEST(HandlerThreads, NeverGrowsPastTheCap) {
  EXPECT_EQ(HandlerThreads(10'000), static_cast<size_t>(kMaxHandlerThreads));
  EXPECT_EQ(HandlerThreads(1'000'000), static_cast<size_t>(kMaxHandlerThreads));
  EXPECT_EQ(HandlerThreads(500, 8), 8u);
}

TEST(HandlerThreads, IsAtLeastOne) {
  EXPECT_EQ(HandlerThreads(0), 1u);
  EXPECT_EQ(HandlerThreads(-5), 1u);
  EXPECT_EQ(HandlerThreads(10, 0), 1u);
}

// A built-in answers where nats.c delivers the request, not on the worker's loop: requests are
// answered while that loop does not run at all (as when it is busy with a burst of control
// messages), and the worker's figures count them.
TEST(ReplicaWorkerTest, ABuiltinAnswersWithoutWaitingForTheLoop) {
  serve::testing::NatsServer nats;
  uv_loop_t worker_loop, client_loop;
  uv_loop_init(&worker_loop);
  uv_loop_init(&client_loop);
  bus::Options options;
  options.url = nats.url();
  auto worker_bus = bus::Bus::Connect(&worker_loop, options);
  auto client_bus = bus::Bus::Connect(&client_loop, options);
  ASSERT_TRUE(worker_bus.ok() && client_bus.ok());
  bus::Subjects subjects("wt");
  WorkerOptions worker_options;
  worker_options.replica_id = "hello-1";
  worker_options.node_id = "node-1";
  worker_options.spec.name = "hello";
  worker_options.spec.runtime = "builtin:hello";
  worker_options.spec.max_concurrent_queries = 100;
  worker_options.spec.health_check_period_s = 10;
  worker_options.spec.graceful_shutdown_timeout_s = 5;
  worker_options.version = "v1";
  worker_options.request_log = false;
  RuntimeContext context;
  context.spec = worker_options.spec;
  auto runtime = MakeRuntime(context);
  ASSERT_TRUE(runtime.ok()) << runtime.error();
  auto worker = std::make_unique<ReplicaWorker>(&worker_loop, **worker_bus, subjects,
                                                worker_options, std::move(*runtime));
  ASSERT_TRUE(worker->Start().ok());
  ASSERT_TRUE((*worker_bus)->Flush().ok());

  constexpr int kRequests = 50;
  int answered = 0;
  int wrong = 0;
  for (int i = 0; i < kRequests; ++i) {
    // In JSON, as `nats req` sends it: parsed and answered on the delivery thread too.
    (*client_bus)
        ->Request(subjects.Replica("hello-1"), R"({"method": "GET", "path": "/hello"})", 20,
                  [&](Result<bus::Message> reply) {
                    ++answered;
                    if (!reply.ok() || reply->data.find("\"status\":200") == std::string::npos) {
                      ++wrong;
                      ADD_FAILURE() << (reply.ok() ? reply->data : reply.error());
                    }
                  });
  }
  ASSERT_TRUE(serve::testing::RunUntil(&client_loop, [&] { return answered == kRequests; }));
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(worker->completed(), static_cast<uint64_t>(kRequests));

  // Garbage is answered with an error naming the cause, also off the loop.
  auto garbage = bus::RequestAndWait(&client_loop, **client_bus, subjects.Replica("hello-1"),
                                     "\x01\x02garbage", 10);
  ASSERT_TRUE(garbage.ok()) << garbage.error();

  bool drained = false;
  worker->Drain([&] { drained = true; });
  ASSERT_TRUE(serve::testing::RunUntil(&worker_loop, [&] { return drained; }));
  worker.reset();
  (*worker_bus)->Close();
  (*client_bus)->Close();
  worker_bus->reset();
  client_bus->reset();
  uv_run(&worker_loop, UV_RUN_DEFAULT);
  uv_run(&client_loop, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&worker_loop), 0);
  EXPECT_EQ(uv_loop_close(&client_loop), 0);
}

}  // namespace
}  // namespace serve::replica
