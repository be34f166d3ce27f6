// A small persistent thread pool of our own: torch ships its own OpenMP
// runtime, and linking a second one into the extension oversubscribes cores.
#pragma once

#include <cstdint>
#include <functional>

namespace proxopt::cpu {

// Runs fn(i) for every i in [0, n) on up to `nthreads` threads, the calling
// thread included; returns when all are done. Calls are serialized.
void parallel_for(int nthreads, int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace proxopt::cpu
