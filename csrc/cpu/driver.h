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
  // Group proxes: each tensor seen as [outer, groups, inner], a group being
  // one index of the middle dimension (null when the call has none).
  const int64_t* group_outer = nullptr;
  const int64_t* group_count = nullptr;
  const int64_t* group_inner = nullptr;
};

struct Chunk {
  int64_t tensor, begin, end;
};

using ChunkFn = void (*)(const CpuCall&, const Chunk&);
// Groups that are strided (group_dim > 0) take two passes: the step, adding
// each element's square into acc[group]; then the scaling from those sums.
using GroupPassFn = void (*)(const CpuCall&, const Chunk&, double* sums);

struct KernelSet {
  ChunkFn plain;       // no group prox
  ChunkFn rows;        // group prox on contiguous groups: chunks hold whole rows
  GroupPassFn pass1;   // strided groups: step and accumulate squares
  GroupPassFn pass2;   // strided groups: scale by the factor of each group
};

// Elements per chunk: a multiple of every SIMD width and of a cache line for
// every dtype, large enough to amortize scheduling, small enough to balance.
constexpr int64_t kChunkElems = 1 << 15;

// Each ISA-specific translation unit defines one of these.
#define PROXOPT_DECLARE_ISA(name) \
  namespace name { KernelSet select_kernels(const Hyper& h, DType dtype); }
PROXOPT_DECLARE_ISA(baseline)
#if defined(__x86_64__) || defined(_M_X64)
PROXOPT_DECLARE_ISA(avx2)
PROXOPT_DECLARE_ISA(avx512)
#endif
#undef PROXOPT_DECLARE_ISA

}  // namespace proxopt::cpu
