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
//
// Tasks that compute are best run by about as many threads as there are cores, each taking the
// next task as it finishes one: waking a sleeping thread per task costs more than a task that
// takes microseconds, and more threads than cores only take turns. Tasks that block (a call to
// a database, to a child process) need a thread each. The pool cannot tell them apart up front,
// so it does what Go's scheduler does for goroutines in system calls: at most
// `runnable_limit` threads run tasks that have not yet run for `blocked_after`, and a task
// that has is taken as blocked and no longer counts, so a queued task gets a thread of its own
// within about `blocked_after` (a monitor thread checks while tasks wait for one).
class ThreadPool {
 public:
  static constexpr std::chrono::microseconds kBlockedAfter{500};

  // runnable_limit 0: the machine's hardware threads.
  explicit ThreadPool(size_t max_threads, size_t runnable_limit = 0,
                      std::chrono::microseconds blocked_after = kBlockedAfter);
  // Waits for running tasks to finish; tasks still queued are dropped.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Post(std::function<void()> task);
  // Tasks running right now (not queued ones).
  size_t busy() const;
  // Threads started so far (they stay until the pool ends).
  size_t threads() const;
  // Waits until no task runs and none is queued, or `timeout` passes; true when idle.
  bool WaitIdle(std::chrono::milliseconds timeout);
  // Lets more threads start, up to `max_threads` (never fewer than now).
  void SetMaxThreads(size_t max_threads);
  // Lets the threads go without waiting for them: for a process about to exit while user code
  // is stuck in a call that will never return.
  void Abandon();

 private:
  using Clock = std::chrono::steady_clock;
  void Run(size_t slot);
  void Monitor();
  // With mutex_ held: wakes or starts threads for queued tasks, as far as the limit allows.
  // True when queued tasks are left without a thread on its way to them.
  bool WakeForQueued();
  // WakeForQueued(), and the monitor started or woken if tasks are left waiting.
  void WakeOrWatch();

  size_t max_threads_;
  const size_t runnable_limit_;
  const std::chrono::microseconds blocked_after_;
  std::condition_variable idle_changed_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  // By thread: when its current task started; time_point{} while it has none.
  std::vector<Clock::time_point> started_;
  size_t sleeping_ = 0;  // threads waiting for a wake
  size_t wakes_ = 0;     // wakes given to sleeping threads and not yet taken up
  size_t starting_ = 0;  // threads started for a task that have not yet taken one
  size_t busy_ = 0;
  std::thread monitor_;  // started the first time tasks wait for a thread
  std::condition_variable monitor_wake_;
  bool monitor_waits_for_post_ = false;  // else it checks again after blocked_after_
  bool stopping_ = false;
};

}  // namespace serve::service
