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

ThreadPool::ThreadPool(size_t max_threads) : max_threads_(max_threads == 0 ? 1 : max_threads) {}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    tasks_.clear();
  }
  wake_.notify_all();
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
}

void ThreadPool::Post(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return;
  tasks_.push_back(std::move(task));
  if (idle_ < tasks_.size() && threads_.size() < max_threads_) {
    threads_.emplace_back([this] { Run(); });
  } else {
    wake_.notify_one();
  }
}

size_t ThreadPool::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return busy_;
}

bool ThreadPool::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return idle_changed_.wait_for(lock, timeout, [this] { return busy_ == 0 && tasks_.empty(); });
}

void ThreadPool::SetMaxThreads(size_t max_threads) {
  std::lock_guard<std::mutex> lock(mutex_);
  max_threads_ = std::max(max_threads_, max_threads);
}

void ThreadPool::Abandon() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    tasks_.clear();
  }
  wake_.notify_all();
  for (auto& thread : threads_) thread.detach();
  threads_.clear();
}

void ThreadPool::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    ++idle_;
    wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
    --idle_;
    if (stopping_) return;
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    ++busy_;
    lock.unlock();
    task();
    lock.lock();
    --busy_;
    idle_changed_.notify_all();
  }
}

}  // namespace serve::service
