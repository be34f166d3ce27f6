// CUDA multi-tensor apply, the part shared by host and device.
//
// One Python call (a param group's tensors of one dtype) becomes one or more
// kernel launches. Each launch gets a `Launch` struct by value as its only
// kernel argument, so it stays under the classic 4 KB kernel-parameter limit:
// per tensor the data pointers, the element count, the index of its scalars
// (`Coeffs`) and an alignment bit; the block -> (tensor, chunk) map is stored
// compressed as the first block of each tensor (prefix sums), which a block
// inverts with a binary search over at most ~100 entries of the parameter
// bank. Unlike an explicit per-block table (apex), that costs 4 bytes per
// tensor instead of 6 per block, so one launch covers any number of chunks and
// a call needs a second launch only past ~60-110 tensors.
//
// A tensor too long for the rest of a launch continues in the next one: its
// pointers are then advanced to the first chunk that launch covers (a multiple
// of kChunkElems, so alignment is kept). All sizes are 64-bit; only the
// element index inside one chunk is a 32-bit int.
//
// This header has no CUDA syntax: the packing runs on the host (kernels.cu
// launches what it packs; bindings.cpp replays it without a GPU for tests),
// and `locate` is the device's decoding, compiled for both.
#pragma once

#include <cstdint>

#include "../proxopt/coeffs.h"

namespace proxopt::cuda {

constexpr int kThreads = 256;               // threads per block
constexpr int64_t kChunkElems = 1 << 14;    // elements per block; a multiple of every vector width
constexpr int kMaxCoeffs = 4;               // distinct per-tensor scalars per launch
constexpr int kParamBytes = 4096;           // the classic kernel-parameter limit
constexpr int32_t kMaxBlocks = 1 << 30;     // per launch; keeps block_start in int32
constexpr int kVectorBytes = 16;            // the fast path's loads are 16-byte aligned

// The kernel argument of one launch over tensors with D data pointers each
// (param, grad, then the rule's states) and math type M.
template <class M, int D>
struct Launch {
  static constexpr int kBytesPerTensor = D * 8 + 8 + 4 + 1 + 1;
  static constexpr int kMaxTensors =
      (kParamBytes - 32 - kMaxCoeffs * int(sizeof(Coeffs<M>))) / kBytesPerTensor;

  Coeffs<M> coeffs[kMaxCoeffs];          // the distinct scalars of this launch
  uintptr_t ptr[D][kMaxTensors];         // advanced to the first element this launch covers
  int64_t numel[kMaxTensors];            // elements from ptr on
  int32_t block_start[kMaxTensors];      // first block of each tensor, ascending
  uint8_t coeff[kMaxTensors];            // index into coeffs
  uint8_t aligned[kMaxTensors];          // every pointer kVectorBytes-aligned
  uintptr_t grad_scale;                  // AMP: device float32 scalar, 0 when absent
  int32_t ntensors;
};

// The part of one tensor a block updates: [begin, begin + n) from ptr[.][t].
struct Span {
  int t;
  int64_t begin;
  int n;
};

template <class M, int D>
PROXOPT_HD Span locate(const Launch<M, D>& L, int32_t block) {
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
  const int64_t begin = int64_t(block - L.block_start[lo]) * kChunkElems;
  const int64_t left = L.numel[lo] - begin;
  return Span{lo, begin, int(left < kChunkElems ? left : kChunkElems)};
}

// The tensors of one call, validated by the binding.
struct Tensors {
  int64_t count = 0;
  int nptr = 0;                          // 2 + the rule's state count
  const uintptr_t* ptr[5] = {};          // params, grads, states..., each `count` long
  const int64_t* numels = nullptr;
  const int32_t* coeff_of = nullptr;     // per tensor: index into coeff_table
  const Coeffs<double>* coeff_table = nullptr;
  int elem_size = 0;                     // bytes per element of the storage type
  uintptr_t grad_scale = 0;              // device pointer or 0
};

// Pack `c` into launches and hand each to `sink(const Launch<M, D>&, int32_t
// blocks, const int64_t* source)`, `source[t]` being the index in `c` of the
// launch's tensor t. Stops at, and returns, the first nonzero sink result.
template <class M, int D, class Sink>
int pack(const Tensors& c, Sink&& sink) {
  using L = Launch<M, D>;
  static_assert(sizeof(L) <= kParamBytes, "kernel argument over the 4 KB limit");
  static_assert(L::kMaxTensors >= 16, "too few tensors per launch");
  static_assert(kChunkElems % 16 == 0, "chunks must keep vector alignment");
  L launch{};
  launch.grad_scale = c.grad_scale;
  int64_t source[L::kMaxTensors];
  int32_t slot_source[kMaxCoeffs];  // coeff_table index held by each slot
  int nt = 0, nc = 0;
  int32_t blocks = 0;
  auto flush = [&]() -> int {
    if (nt == 0) return 0;
    launch.ntensors = nt;
    const int err = sink(static_cast<const L&>(launch), blocks, static_cast<const int64_t*>(source));
    nt = 0;
    nc = 0;
    blocks = 0;
    return err;
  };
  for (int64_t i = 0; i < c.count; ++i) {
    const int64_t numel = c.numels[i];
    const int64_t chunks = (numel + kChunkElems - 1) / kChunkElems;
    for (int64_t c0 = 0; c0 < chunks;) {
      int slot = -1;
      for (int q = 0; q < nc; ++q) {
        if (slot_source[q] == c.coeff_of[i]) slot = q;
      }
      if (nt == L::kMaxTensors || blocks == kMaxBlocks || (slot < 0 && nc == kMaxCoeffs)) {
        if (const int err = flush()) return err;
        continue;
      }
      if (slot < 0) {
        slot = nc++;
        slot_source[slot] = c.coeff_of[i];
        launch.coeffs[slot] = c.coeff_table[c.coeff_of[i]].template cast<M>();
      }
      const int64_t take = chunks - c0 < int64_t(kMaxBlocks - blocks) ? chunks - c0 : int64_t(kMaxBlocks - blocks);
      const int64_t first = c0 * kChunkElems;
      bool aligned = true;
      for (int d = 0; d < D; ++d) {
        const uintptr_t p = c.ptr[d][i] + uintptr_t(first) * uintptr_t(c.elem_size);
        launch.ptr[d][nt] = p;
        aligned = aligned && p % kVectorBytes == 0;
      }
      launch.numel[nt] = numel - first;
      launch.block_start[nt] = blocks;
      launch.coeff[nt] = uint8_t(slot);
      launch.aligned[nt] = aligned;
      source[nt] = i;
      ++nt;
      blocks += int32_t(take);
      c0 += take;
    }
  }
  return flush();
}

}  // namespace proxopt::cuda
