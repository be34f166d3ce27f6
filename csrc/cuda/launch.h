// CUDA multi-tensor apply, the part shared by host and device.
//
// One operator call (every bucket on one device) becomes a few kernel
// launches. Each launch gets a `Launch` struct by value as its only kernel
// argument, under the classic 4 KB kernel-parameter limit: per tensor its data
// pointers, its element count, its step counter (a device pointer), its
// bucket and an alignment bit; per bucket its hyperparameters. The block ->
// (tensor, chunk) map is stored as the first block of each tensor (prefix
// sums), which a block inverts with a binary search.
//
// Every per-step scalar (bias corrections, lr * lambda) is derived in the
// kernel from the step counter and lr on the device (proxopt/coeffs.h), and
// AMP's grad_scale / found_inf are read there: a step never synchronizes with
// the host, and it can be captured in a CUDA graph.
//
// Plain steps: a block is a chunk of kChunkElems elements. Group proxes: a
// block is one whole group, stepped twice -- once to sum the squares of the
// new weights (nothing stored), once for real, scaled by the group's factor
// (stored once, rounded once): deterministic, no workspace.
//
// A tensor too long for the rest of a launch continues in the next one: its
// pointers are then advanced to the first chunk that launch covers. All sizes
// are 64-bit; only an index inside one chunk is 32-bit.
//
// This header has no CUDA syntax: the packing runs on the host (and in tests,
// through proxopt._C_cuda._plan, without a GPU).
#pragma once

#include <cstdint>

#include "../proxopt/coeffs.h"
#include "../proxopt/rules.h"

namespace proxopt::cuda {

constexpr int kThreads = 256;               // threads per block
constexpr int64_t kChunkElems = 1 << 14;    // elements per block of a plain step
constexpr int kMaxBuckets = 2;              // distinct hyperparameter sets per launch
constexpr int kParamBytes = 4096;           // the classic kernel-parameter limit
constexpr int32_t kMaxBlocks = 1 << 30;     // per launch; keeps block_start in int32
constexpr int kVectorBytes = 16;            // the fast path's loads are 16-byte aligned

// The tensors of one launch with D data pointers each (param, grad, the
// rule's states); `Grouped` launches carry each tensor's group shape.
template <int D, bool Grouped>
struct Launch {
  static constexpr int kBytesPerTensor = D * 8 + 8 + 8 + 4 + 1 + 1 + (Grouped ? 24 : 0);
  static constexpr int kMaxTensors =
      (kParamBytes - 64 - kMaxBuckets * int(sizeof(Hyper) + 8)) / kBytesPerTensor;

  Hyper hyper[kMaxBuckets];
  uintptr_t lr[kMaxBuckets];             // a device lr (float32/float64), or 0: hyper's lr
  uintptr_t ptr[D][kMaxTensors];         // advanced to the first element this launch covers
  int64_t numel[kMaxTensors];            // elements from ptr on
  uintptr_t step[kMaxTensors];           // the tensor's step counter on the device
  int32_t block_start[kMaxTensors];      // first block of each tensor, ascending
  uint8_t bucket[kMaxTensors];           // index into hyper
  uint8_t aligned[kMaxTensors];          // every pointer kVectorBytes-aligned
  int64_t outer[Grouped ? kMaxTensors : 1], groups[Grouped ? kMaxTensors : 1], inner[Grouped ? kMaxTensors : 1];
  uintptr_t grad_scale;                  // AMP: device float32 scalar, 0 when absent
  uintptr_t found_inf;                   // AMP: device float32 scalar, 0 when absent
  int32_t ntensors;
  uint8_t steps_f64;
  uint8_t lr_f64[kMaxBuckets];
};

// The part of one tensor a block works on: [begin, begin + n) of tensor t
// (plain), or group `begin` of tensor t (grouped).
struct Span {
  int t;
  int64_t begin;
  int64_t n;
};

template <int D, bool G>
PROXOPT_HD Span locate(const Launch<D, G>& L, int32_t block) {
  // The last tensor whose first block is <= block (block_start ascends;
  // every tensor has at least one block, so the answer is unique).
  int lo = 0, hi = L.ntensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (L.block_start[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t k = int64_t(block - L.block_start[lo]);
  if constexpr (G) return Span{lo, k, 1};
  const int64_t begin = k * kChunkElems;
  const int64_t left = L.numel[lo] - begin;
  return Span{lo, begin, left < kChunkElems ? left : kChunkElems};
}

// One tensor of a call, as the operator's checks found it.
struct TensorArgs {
  uintptr_t ptr[2 + kMaxStates];         // param, grad, states
  int64_t numel;                         // real elements
  uintptr_t step;
  int bucket;                            // index into Tensors::hyper
  int64_t outer, groups, inner;          // group shape (grouped buckets)
};

// The tensors of one kernel variant (one rule variant, prox shape and dtype)
// of one call.
struct Tensors {
  const TensorArgs* t = nullptr;
  int64_t count = 0;
  int nptr = 0;                          // 2 + the rule's state count
  const Hyper* hyper = nullptr;          // per bucket of the call
  const uintptr_t* lr = nullptr;         // per bucket: device lr or 0
  const uint8_t* lr_f64 = nullptr;
  int elem_size = 0;                     // bytes per real element of the storage type
  uintptr_t grad_scale = 0, found_inf = 0;
  bool steps_f64 = false;
};

// Pack `c` into launches and hand each to `sink(const Launch&, int32_t blocks,
// const int64_t* source)`, `source[t]` being the index in `c` of the launch's
// tensor t. Stops at, and returns, the first nonzero sink result.
template <int D, bool G, class Sink>
int pack(const Tensors& c, Sink&& sink) {
  using L = Launch<D, G>;
  static_assert(sizeof(L) <= kParamBytes, "kernel argument over the 4 KB limit");
  static_assert(L::kMaxTensors >= 16, "too few tensors per launch");
  L launch{};
  launch.grad_scale = c.grad_scale;
  launch.found_inf = c.found_inf;
  launch.steps_f64 = c.steps_f64;
  int64_t source[L::kMaxTensors];
  int slot_bucket[kMaxBuckets];
  int nt = 0, nb = 0;
  int32_t blocks = 0;
  auto flush = [&]() -> int {
    if (nt == 0) return 0;
    launch.ntensors = nt;
    const int err = sink(static_cast<const L&>(launch), blocks, static_cast<const int64_t*>(source));
    nt = 0;
    nb = 0;
    blocks = 0;
    return err;
  };
  for (int64_t i = 0; i < c.count; ++i) {
    const TensorArgs& a = c.t[i];
    const int64_t units = G ? a.groups : (a.numel + kChunkElems - 1) / kChunkElems;
    for (int64_t u0 = 0; u0 < units;) {
      int slot = -1;
      for (int q = 0; q < nb; ++q) {
        if (slot_bucket[q] == a.bucket) slot = q;
      }
      if (nt == L::kMaxTensors || blocks == kMaxBlocks || (slot < 0 && nb == kMaxBuckets)) {
        if (const int err = flush()) return err;
        continue;
      }
      if (slot < 0) {
        slot = nb++;
        slot_bucket[slot] = a.bucket;
        launch.hyper[slot] = c.hyper[a.bucket];
        launch.lr[slot] = c.lr[a.bucket];
        launch.lr_f64[slot] = c.lr_f64[a.bucket];
      }
      const int64_t take = units - u0 < int64_t(kMaxBlocks - blocks) ? units - u0 : int64_t(kMaxBlocks - blocks);
      // A grouped tensor continued in the next launch restarts at group u0:
      // its pointers stay at the tensor's start (the kernel indexes groups).
      const int64_t first = G ? 0 : u0 * kChunkElems;
      bool aligned = true;
      for (int d = 0; d < D; ++d) {
        const uintptr_t p = a.ptr[d] + uintptr_t(first) * uintptr_t(c.elem_size);
        launch.ptr[d][nt] = p;
        aligned = aligned && p % kVectorBytes == 0;
      }
      launch.numel[nt] = a.numel - first;
      launch.step[nt] = a.step;
      launch.block_start[nt] = blocks - int32_t(G ? u0 : 0);
      launch.bucket[nt] = uint8_t(slot);
      launch.aligned[nt] = aligned;
      if constexpr (G) {
        launch.outer[nt] = a.outer;
        launch.groups[nt] = a.groups;
        launch.inner[nt] = a.inner;
      }
      source[nt] = i;
      ++nt;
      blocks += int32_t(take);
      u0 += take;
    }
  }
  return flush();
}

// The step counters a call increments, after every kernel of the call ran
// (the kernels read the old value): one thread each.
struct Bump {
  static constexpr int kMax = (kParamBytes - 32) / 8;
  uintptr_t step[kMax];
  uintptr_t found_inf;
  int32_t count;
  uint8_t steps_f64;
};

}  // namespace proxopt::cuda
