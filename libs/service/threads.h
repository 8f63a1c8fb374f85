#pragma once

#include <uv.h>

#include <condition_variable>
#include <deque>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace serve::service {

// Runs functions posted from any thread on the loop thread, in the order they were posted.
// The way work done on other threads hands its results back to the state the loop owns.
class LoopInbox {
 public:
  explicit LoopInbox(uv_loop_t* loop);
  ~LoopInbox();
  LoopInbox(const LoopInbox&) = delete;
  LoopInbox& operator=(const LoopInbox&) = delete;

  // Thread-safe. Functions posted after Close() are dropped, also from threads that outlive
  // this object.
  void Post(std::function<void()> fn);
  // Closes the handle (on the loop thread); functions not yet run are dropped.
  void Close();

 private:
  struct Shared;
  // Held here and by the handle until its close callback, and by nothing else: Post() only
  // touches it under its mutex, after checking that it is still open.
  std::shared_ptr<Shared> shared_;
};

// A pool of up to `max_threads` threads running posted tasks in FIFO order. Threads start as
// tasks need them, so a pool sized for a hundred concurrent calls costs one thread while idle
// traffic is light. With max_threads == 1, tasks run one at a time in order.
class ThreadPool {
 public:
  explicit ThreadPool(size_t max_threads);
  // Waits for running tasks to finish; tasks still queued are dropped.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Post(std::function<void()> task);
  // Tasks running right now (not queued ones).
  size_t busy() const;
  // Waits until no task runs and none is queued, or `timeout` passes; true when idle.
  bool WaitIdle(std::chrono::milliseconds timeout);
  // Lets more threads start, up to `max_threads` (never fewer than now).
  void SetMaxThreads(size_t max_threads);
  // Lets the threads go without waiting for them: for a process about to exit while user code
  // is stuck in a call that will never return.
  void Abandon();

 private:
  void Run();

  size_t max_threads_;
  std::condition_variable idle_changed_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  size_t busy_ = 0;
  bool stopping_ = false;
};

}  // namespace serve::service
