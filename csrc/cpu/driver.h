// The CPU multi-tensor apply: what one call hands the per-ISA kernels. One
// operator call covers every tensor of every bucket on the CPU; it becomes a
// flat list of chunks over all of them, run in one parallel region.
#pragma once

#include <cstdint>

#include "../proxopt/coeffs.h"

namespace proxopt::cpu {

constexpr int kMaxStates = 3;

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

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
};

// A kernel runs one chunk of one tensor: elements [begin, end) for a plain
// step, groups [begin, end) with a group prox.
using ChunkFn = void (*)(const TensorTask&, int64_t begin, int64_t end);

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

// Below this many elements a call runs on the calling thread: waking the
// pool costs more than it saves.
constexpr int64_t kParallelMinElems = 1 << 16;

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
