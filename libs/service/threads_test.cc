#include "service/threads.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace serve::service {
namespace {

using std::chrono::milliseconds;

// Tasks that each wait until `expected` of them run at once (or 20 s pass), recording the
// most seen together.
struct Rendezvous {
  explicit Rendezvous(int expected) : expected(expected) {}
  void Arrive() {
    std::unique_lock<std::mutex> lock(mutex);
    ++now;
    most = std::max(most, now);
    changed.notify_all();
    changed.wait_for(lock, std::chrono::seconds(20), [this] { return most >= expected; });
    --now;
  }
  const int expected;
  std::mutex mutex;
  std::condition_variable changed;
  int now = 0;
  int most = 0;
};

TEST(ThreadPool, OneThreadRunsTasksInTheOrderPosted) {
  ThreadPool pool(1);
  std::vector<int> order;  // written by the pool's one thread only
  for (int i = 0; i < 500; ++i) pool.Post([&order, i] { order.push_back(i); });
  ASSERT_TRUE(pool.WaitIdle(std::chrono::seconds(20)));
  ASSERT_EQ(order.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(order[i], i);
  EXPECT_EQ(pool.threads(), 1u);
}

TEST(ThreadPool, TasksThatComputeUseNoMoreThreadsThanTheRunnableLimit) {
  // Tasks of microseconds, never running long enough to count as blocked: the threads that run
  // take the next as they finish one instead of waking more.
  ThreadPool pool(64, /*runnable_limit=*/2, /*blocked_after=*/std::chrono::seconds(30));
  std::atomic<int> done{0};
  for (int i = 0; i < 5000; ++i) pool.Post([&done] { done.fetch_add(1); });
  ASSERT_TRUE(pool.WaitIdle(std::chrono::seconds(20)));
  EXPECT_EQ(done.load(), 5000);
  EXPECT_LE(pool.threads(), 2u);
}

TEST(ThreadPool, TasksThatBlockEachGetAThreadOfTheirOwn) {
  // Each task waits until eight run at once: only possible once the pool takes the running
  // ones as blocked and gives the queued ones threads beyond the runnable limit.
  ThreadPool pool(16, /*runnable_limit=*/1, /*blocked_after=*/milliseconds(1));
  Rendezvous rendezvous(8);
  for (int i = 0; i < 8; ++i) pool.Post([&rendezvous] { rendezvous.Arrive(); });
  ASSERT_TRUE(pool.WaitIdle(std::chrono::seconds(30)));
  EXPECT_EQ(rendezvous.most, 8);
}

TEST(ThreadPool, TasksThatBlockNeverRunOnMoreThanMaxThreads) {
  ThreadPool pool(3, /*runnable_limit=*/1, /*blocked_after=*/milliseconds(1));
  std::atomic<int> now{0};
  std::atomic<int> most{0};
  for (int i = 0; i < 6; ++i) {
    pool.Post([&] {
      int running = now.fetch_add(1) + 1;
      int seen = most.load();
      while (running > seen && !most.compare_exchange_weak(seen, running)) {
      }
      // Blocking is what this pool is tested with, not a way to wait for something.
      std::this_thread::sleep_for(milliseconds(100));
      now.fetch_sub(1);
    });
  }
  ASSERT_TRUE(pool.WaitIdle(std::chrono::seconds(30)));
  EXPECT_EQ(most.load(), 3);
  EXPECT_EQ(pool.threads(), 3u);
}

TEST(ThreadPool, MoreThreadsAllowedLaterTakeTheQueuedTasks) {
  ThreadPool pool(1, /*runnable_limit=*/1, /*blocked_after=*/milliseconds(1));
  Rendezvous rendezvous(2);
  for (int i = 0; i < 2; ++i) pool.Post([&rendezvous] { rendezvous.Arrive(); });
  pool.SetMaxThreads(2);
  ASSERT_TRUE(pool.WaitIdle(std::chrono::seconds(30)));
  EXPECT_EQ(rendezvous.most, 2);
}

TEST(ThreadPool, EndingWithTasksQueuedDropsThemAndWaitsForTheRunningOne) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(1);
    std::mutex gate;
    std::unique_lock<std::mutex> hold(gate);
    pool.Post([&] {
      std::lock_guard<std::mutex> wait_for_gate(gate);
      ran.fetch_add(1);
    });
    for (int i = 0; i < 100; ++i) pool.Post([&ran] { ran.fetch_add(1); });
    while (pool.busy() == 0) std::this_thread::yield();
    hold.unlock();
  }
  EXPECT_GE(ran.load(), 1);
  EXPECT_LE(ran.load(), 101);
}

}  // namespace
}  // namespace serve::service
