#include "thread_pool.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace proxopt::cpu {
namespace {

// One parallel region. Workers hold it by shared_ptr, so one that wakes after
// the region ended finds the counter exhausted and touches nothing else.
struct Job {
  const std::function<void(int64_t)>* fn;
  int64_t n;
  int helpers;  // workers allowed to take part
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void drain() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      (*fn)(i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

class Pool {
 public:
  void run(int nthreads, int64_t n, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> serial(run_mu_);
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->helpers = nthreads - 1;
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (int(workers_.size()) < job->helpers) {
        const int id = int(workers_.size());
        workers_.emplace_back([this, id] { loop(id); });
      }
      job_ = job;
      ++generation_;
    }
    cv_.notify_all();
    job->drain();
    // Only chunks already taken remain; they finish within one chunk's time.
    while (job->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      if (job && id < job->helpers) job->drain();
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
};

// Leaked on purpose: joining workers during interpreter shutdown can deadlock.
Pool* g_pool = nullptr;
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
    // A forked child has none of the parent's threads: start a fresh pool there.
    pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; });
  });
  if (g_pool == nullptr) g_pool = new Pool();
  return *g_pool;
}

}  // namespace

void parallel_for(int nthreads, int64_t n, const std::function<void(int64_t)>& fn) {
  if (nthreads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool().run(nthreads, n, fn);
}

}  // namespace proxopt::cpu
