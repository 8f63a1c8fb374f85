#include "service/threads.h"

#include <algorithm>

namespace serve::service {

struct LoopInbox::Shared {
  uv_async_t async{};
  std::mutex mutex;
  std::vector<std::function<void()>> queue;
  bool closed = false;
  std::shared_ptr<Shared> handle_ref;  // the handle's hold, released by its close callback
};

LoopInbox::LoopInbox(uv_loop_t* loop) : shared_(std::make_shared<Shared>()) {
  shared_->handle_ref = shared_;
  shared_->async.data = shared_.get();
  uv_async_init(loop, &shared_->async, [](uv_async_t* handle) {
    auto* shared = static_cast<Shared*>(handle->data);
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> lock(shared->mutex);
      if (shared->closed) return;
      batch.swap(shared->queue);
    }
    for (auto& fn : batch) fn();
  });
}

LoopInbox::~LoopInbox() { Close(); }

void LoopInbox::Post(std::function<void()> fn) {
  // The send happens under the mutex: Close() takes it before it closes the handle, so the
  // handle is alive for every send that finds the inbox open.
  std::lock_guard<std::mutex> lock(shared_->mutex);
  if (shared_->closed) return;
  shared_->queue.push_back(std::move(fn));
  uv_async_send(&shared_->async);
}

void LoopInbox::Close() {
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    if (shared_->closed) return;
    shared_->closed = true;
    shared_->queue.clear();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&shared_->async), [](uv_handle_t* handle) {
    static_cast<Shared*>(handle->data)->handle_ref.reset();
  });
}

ThreadPool::ThreadPool(size_t max_threads, size_t runnable_limit,
                       std::chrono::microseconds blocked_after)
    : max_threads_(max_threads == 0 ? 1 : max_threads),
      runnable_limit_(runnable_limit > 0
                          ? runnable_limit
                          : std::max<size_t>(1, std::thread::hardware_concurrency())),
      blocked_after_(blocked_after) {}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    tasks_.clear();
  }
  wake_.notify_all();
  monitor_wake_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void ThreadPool::Post(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return;
  tasks_.push_back(std::move(task));
  WakeOrWatch();
}

void ThreadPool::WakeOrWatch() {
  if (!WakeForQueued()) return;
  // Tasks wait for a thread: the monitor sees when the running tasks turn out to block.
  if (!monitor_.joinable()) {
    monitor_ = std::thread([this] { Monitor(); });
  } else if (monitor_waits_for_post_) {
    monitor_wake_.notify_one();
  }
}

bool ThreadPool::WakeForQueued() {
  // Running tasks that have run for blocked_after_ are taken as blocked: they leave room.
  // Counted only when they could matter: when the queued tasks would not all fit under the
  // limit beside the running ones, which a lightly loaded pool never sees.
  size_t blocked = 0;
  if (busy_ > 0 && busy_ + tasks_.size() > runnable_limit_) {
    Clock::time_point blocked_before = Clock::now() - blocked_after_;
    for (const Clock::time_point& started : started_) {
      if (started != Clock::time_point{} && started < blocked_before) ++blocked;
    }
  }
  auto can_wake = [this] { return sleeping_ > wakes_ || threads_.size() < max_threads_; };
  while (tasks_.size() > wakes_ + starting_ &&
         busy_ - blocked + wakes_ + starting_ < runnable_limit_ && can_wake()) {
    if (sleeping_ > wakes_) {
      ++wakes_;
      wake_.notify_one();
    } else {
      ++starting_;
      started_.emplace_back();
      size_t slot = threads_.size();
      threads_.emplace_back([this, slot] { Run(slot); });
    }
  }
  return tasks_.size() > wakes_ + starting_ && can_wake();
}

size_t ThreadPool::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return busy_;
}

size_t ThreadPool::threads() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return threads_.size();
}

bool ThreadPool::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return idle_changed_.wait_for(lock, timeout, [this] { return busy_ == 0 && tasks_.empty(); });
}

void ThreadPool::SetMaxThreads(size_t max_threads) {
  std::lock_guard<std::mutex> lock(mutex_);
  max_threads_ = std::max(max_threads_, max_threads);
  WakeOrWatch();
}

void ThreadPool::Abandon() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    tasks_.clear();
  }
  wake_.notify_all();
  monitor_wake_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  for (auto& thread : threads_) thread.detach();
  threads_.clear();
}

void ThreadPool::Monitor() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (WakeForQueued()) {
      monitor_waits_for_post_ = false;
      monitor_wake_.wait_for(lock, blocked_after_);
    } else {
      monitor_waits_for_post_ = true;
      monitor_wake_.wait(lock);
    }
  }
}

void ThreadPool::Run(size_t slot) {
  std::unique_lock<std::mutex> lock(mutex_);
  --starting_;
  while (true) {
    if (stopping_) return;
    if (tasks_.empty()) {
      ++sleeping_;
      wake_.wait(lock, [this] { return stopping_ || wakes_ > 0; });
      --sleeping_;
      if (stopping_) return;
      --wakes_;
      continue;  // another thread may have taken the task meanwhile
    }
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    ++busy_;
    started_[slot] = Clock::now();
    lock.unlock();
    task();
    lock.lock();
    started_[slot] = Clock::time_point{};
    --busy_;
    idle_changed_.notify_all();
  }
}

}  // namespace serve::service
