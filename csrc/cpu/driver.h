// The CPU multi-tensor apply: one call covers every tensor of a
// (param group, dtype), split into a flat list of chunks that the thread pool
// hands out; the per-ISA kernel files provide the function run on one chunk.
#pragma once

#include <cstdint>
#include <vector>

#include "../proxopt/coeffs.h"

namespace proxopt::cpu {

constexpr int kMaxStates = 3;

// Raw pointers of one call, one entry per tensor. Validated by the binding.
struct CpuCall {
  const uintptr_t* params = nullptr;
  const uintptr_t* grads = nullptr;
  const uintptr_t* states[kMaxStates] = {nullptr, nullptr, nullptr};
  const int64_t* numels = nullptr;
  const Coeffs<double>* coeffs = nullptr;  // per tensor
};

struct Chunk {
  int64_t tensor, begin, end;
};

using ChunkFn = void (*)(const CpuCall&, const Chunk&);

// Elements per chunk: a multiple of every SIMD width and of a cache line for
// every dtype, large enough to amortize scheduling, small enough to balance.
constexpr int64_t kChunkElems = 1 << 15;

// Each ISA-specific translation unit defines one of these.
#define PROXOPT_DECLARE_ISA(name) \
  namespace name { ChunkFn select_chunk_fn(const Hyper& h, DType dtype); }
PROXOPT_DECLARE_ISA(baseline)
#if defined(__x86_64__) || defined(_M_X64)
PROXOPT_DECLARE_ISA(avx2)
PROXOPT_DECLARE_ISA(avx512)
#endif
#undef PROXOPT_DECLARE_ISA

}  // namespace proxopt::cpu
