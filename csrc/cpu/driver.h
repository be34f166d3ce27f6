// The CPU multi-tensor apply: what one call hands the per-ISA kernels. One
// operator call covers every tensor of every bucket on the CPU; it becomes a
// flat list of chunks over all of them, run in one parallel region.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../proxopt/coeffs.h"
#include "../proxopt/dtypes.h"
#include "../proxopt/rules.h"

namespace proxopt::cpu {

// One tensor of a call: raw pointers (validated by the operator), its element
// count (a complex tensor: its real view, twice as many), its scalars and,
// with a group prox, its shape seen as [outer, groups, inner] (a group is one
// index of the middle dimension).
struct TensorTask {
  void* w = nullptr;
  const void* g = nullptr;
  void* s[kMaxStates] = {nullptr, nullptr, nullptr};
  int64_t numel = 0;
  const Coeffs<double>* coeffs = nullptr;
  int64_t outer = 1, groups = 1, inner = 1;
  // With a sparsity budget: its threshold and probes c/R, c, c*R (else null).
  const double* budget = nullptr;
  // With a channel budget: each group's slot (its row's tail: the plan's
  // decision in, the norm after the group lasso out; else null).
  double* group_norms = nullptr;
};

// A kernel runs one chunk of one tensor: elements [begin, end) for a plain
// step, groups [begin, end) with a group prox. A budget shape writes the
// chunk's counts to `counts` (one slot per chunk: summed in chunk order, so
// the result does not depend on the threads).
using ChunkFn = void (*)(const TensorTask&, int64_t begin, int64_t end, BudgetCounts* counts);

// One unit of work of the parallel region; `cost` is its element count.
struct Chunk {
  ChunkFn fn;
  int32_t task;
  int64_t begin, end, cost;
};

struct KernelSet {
  ChunkFn plain = nullptr;  // elementwise: begin/end are elements
  ChunkFn groups = nullptr; // group prox: begin/end are group indices
};

// Elements per plain chunk: a multiple of every SIMD width and of a cache
// line for every dtype, large enough to amortize scheduling.
constexpr int64_t kChunkElems = 1 << 15;
// Elements of one block of groups: stepped into a math-precision scratch
// (at most 512 KiB of double per thread), their norms taken, then scaled
// and stored while still in cache. A single group larger than this is
// stepped in place (32/64-bit) or recomputed (16-bit) in two passes.
constexpr int64_t kBlockElems = 1 << 16;
// Groups are gathered into blocks of about this many elements: the block's
// weights, gradients and states stay in a core's L2 cache between stepping
// and scaling (a block of kBlockElems does not).
constexpr int64_t kBlockTarget = 1 << 13;
// Groups along a dim whose slices are strided (inner 1: the columns of a
// matrix) visit each outer index once per block, a run of consecutive groups.
// With at most kColumnRows outer indices the whole block is one visit as
// above. With more, the block's rows do not stay in cache together, and its
// runs must be long to stream (16M float AdamW, 4096 columns, one thread:
// runs of 1024 elements 2.0x the plain step, 2048 1.9x, 4096 1.5x), so a
// block is a panel at least kColumnPanel groups wide (or all of them), split
// no finer than one per thread; it is stepped in place and its sums taken,
// then its weights scaled in a second pass (16-bit: a dry pass for the sums,
// then the step). A group's sum runs over the rows in order whatever the
// panel width, so the width changes no result.
constexpr int64_t kColumnRows = 128;
constexpr int64_t kColumnPanel = 2048;

// Whether groups of a tensor seen as [outer, groups, inner] are stepped as
// column panels (two passes) rather than one-visit blocks.
inline bool column_panels(int64_t outer, int64_t inner) { return inner == 1 && outer > kColumnRows; }

// Groups per block (at least one), for a call running on `threads` threads.
inline int64_t groups_per_block(int64_t outer, int64_t groups, int64_t inner, int64_t threads) {
  if (column_panels(outer, inner)) {
    const int64_t per_thread = (groups + threads - 1) / std::max<int64_t>(1, threads);
    return std::max(kColumnPanel, per_thread);
  }
  const int64_t per_group = outer * inner > 0 ? outer * inner : 1;
  return std::max<int64_t>(1, kBlockTarget / per_group);
}

// Below this many elements a call runs on the calling thread: waking the
// pool costs more than it saves.
constexpr int64_t kParallelMinElems = 1 << 16;

// Each instruction set's two translation units define these: the kernels of
// a group's hyperparameters and dtype, for the plain shapes and the group
// shapes of variants.h (an empty KernelSet for the other part's).
#define PROXOPT_DECLARE_ISA(isa)                                  \
  namespace isa {                                                 \
  KernelSet select_plain(const Hyper& h, DType dtype);            \
  KernelSet select_groups(const Hyper& h, DType dtype);           \
  }
PROXOPT_DECLARE_ISA(baseline)
#if defined(__x86_64__) || defined(_M_X64)
PROXOPT_DECLARE_ISA(avx2)
PROXOPT_DECLARE_ISA(avx512)
#endif
#undef PROXOPT_DECLARE_ISA

}  // namespace proxopt::cpu
