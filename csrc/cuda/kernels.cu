// The CUDA kernels of one storage dtype. CMake compiles this file once per
// dtype (PROXOPT_CUDA_DTYPE = the DType code, PROXOPT_CUDA_NS = its namespace),
// like the CPU kernels once per instruction set: four translation units of
// nine rule variants each, which nvcc builds in parallel.
//
// The arithmetic is proxopt::step_tile (csrc/proxopt/math.h), the function
// the CPU kernels call: each thread widens a few elements into a Tile, steps
// it, and narrows it back. Storage and math types are separate: float math
// for float16/bfloat16/float32, double for float64.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "launch.h"

#if !defined(PROXOPT_CUDA_DTYPE) || !defined(PROXOPT_CUDA_NS)
#error "PROXOPT_CUDA_DTYPE (a DType code) and PROXOPT_CUDA_NS must be defined"
#endif

namespace proxopt::cuda::PROXOPT_CUDA_NS {
namespace {

#if PROXOPT_CUDA_DTYPE == 0
using T = float;
#elif PROXOPT_CUDA_DTYPE == 1
using T = double;
#elif PROXOPT_CUDA_DTYPE == 2
using T = __half;
#elif PROXOPT_CUDA_DTYPE == 3
using T = __nv_bfloat16;
#else
#error "unknown PROXOPT_CUDA_DTYPE"
#endif

using M = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace

// Storage <-> math conversions (outside the anonymous namespace: each
// translation unit uses only its dtype's pair). Stores round to nearest even,
// as torch does for float16/bfloat16.
PROXOPT_HD float widen(float x) { return x; }
PROXOPT_HD double widen(double x) { return x; }
PROXOPT_HD float widen(__half x) { return __half2float(x); }
PROXOPT_HD float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
PROXOPT_HD void put(float& dst, float v) { dst = v; }
PROXOPT_HD void put(double& dst, double v) { dst = v; }
PROXOPT_HD void put(__half& dst, float v) { dst = __float2half_rn(v); }
PROXOPT_HD void put(__nv_bfloat16& dst, float v) { dst = __float2bfloat16_rn(v); }

namespace {

// Elements per thread and iteration: 16 bytes of float32/float16/bfloat16,
// 32 bytes (two 16-byte loads) of float64.
constexpr int kVec = sizeof(T) >= 4 ? 4 : 8;
static_assert(kChunkElems % (kThreads * kVec) == 0, "a chunk is whole iterations of the block");

struct alignas(kVectorBytes) Vec {
  T v[kVec];
};

PROXOPT_HD void load_vec(const T* __restrict__ src, M* dst) {
  const Vec x = *reinterpret_cast<const Vec*>(src);
#pragma unroll
  for (int j = 0; j < kVec; ++j) dst[j] = widen(x.v[j]);
}

PROXOPT_HD void store_vec(const M* src, T* __restrict__ dst) {
  Vec x;
#pragma unroll
  for (int j = 0; j < kVec; ++j) put(x.v[j], src[j]);
  *reinterpret_cast<Vec*>(dst) = x;
}

// Bounds-checked: element j of a thread is base + j * kThreads (coalesced
// across the block); lanes past n compute on zeros and store nothing.
PROXOPT_HD void load_strided(const T* __restrict__ src, int base, int n, M* dst) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const int i = base + j * kThreads;
    dst[j] = i < n ? widen(src[i]) : M(0);
  }
}

PROXOPT_HD void store_strided(const M* src, int base, int n, T* __restrict__ dst) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const int i = base + j * kThreads;
    if (i < n) put(dst[i], src[j]);
  }
}

// What thread `thread` of block `block` does: its share of one chunk
// (<= kChunkElems elements) of one tensor. Host-callable too, so the exact
// kernel body can be replayed on a machine without a GPU.
template <class Rule>
PROXOPT_HD void step_thread(const Launch<M, 2 + Rule::kStates>& L, int32_t block, int thread) {
  constexpr int S = Rule::kStates;
  const Span sp = locate(L, block);
  T* __restrict__ w = reinterpret_cast<T*>(L.ptr[0][sp.t]) + sp.begin;
  const T* __restrict__ g = reinterpret_cast<const T*>(L.ptr[1][sp.t]) + sp.begin;
  T* s[S > 0 ? S : 1];
#pragma unroll
  for (int q = 0; q < S; ++q) s[q] = reinterpret_cast<T*>(L.ptr[2 + q][sp.t]) + sp.begin;

  Coeffs<M> k = L.coeffs[L.coeff[sp.t]];
  if (L.grad_scale != 0) {
    // AMP: the scale lives on the device (GradScaler's tensor); never synced to the host.
    k.grad_scale = M(*reinterpret_cast<const float*>(L.grad_scale));
    k.flags |= kGradScale;
  }
  const int n = sp.n;
  Tile<M, kVec> t;
  if (L.aligned[sp.t] && n % kVec == 0) {
    // Fast path: kVec consecutive elements per thread, one vector load per tensor.
    for (int i = thread * kVec; i < n; i += kThreads * kVec) {
      load_vec(w + i, t.w);
      load_vec(g + i, t.g);
#pragma unroll
      for (int q = 0; q < S; ++q) load_vec(s[q] + i, t.s[q]);
      step_tile<Rule, M>(kVec, t, k);
      store_vec(t.w, w + i);
#pragma unroll
      for (int q = 0; q < S; ++q) store_vec(t.s[q], s[q] + i);
    }
  } else {
    // Misaligned views and tails: the same step_tile, element loads with bounds checks.
    for (int b = 0; b < n; b += kThreads * kVec) {
      const int base = b + thread;
      load_strided(w, base, n, t.w);
      load_strided(g, base, n, t.g);
#pragma unroll
      for (int q = 0; q < S; ++q) load_strided(s[q], base, n, t.s[q]);
      step_tile<Rule, M>(kVec, t, k);
      store_strided(t.w, base, n, w);
#pragma unroll
      for (int q = 0; q < S; ++q) store_strided(t.s[q], base, n, s[q]);
    }
  }
  // Seam for the group proxes (kGroupProx: group lasso, max-norm). They need
  // the norm of each updated group, so they cannot run inside this per-chunk
  // kernel: a row-wise kernel (one block per group when it fits in the block,
  // update + norm + scale in one visit; otherwise two passes like apex's LAMB,
  // partial sums then scaling) will take those calls. Until then the binding
  // rejects them (bindings.cpp) and Python keeps them on the reference path.
}

// One block per chunk; blocks find their (tensor, chunk) with `locate`.
template <class Rule>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const __grid_constant__ Launch<M, 2 + Rule::kStates> L) {
  step_thread<Rule>(L, int32_t(blockIdx.x), int(threadIdx.x));
}

template <class Rule>
int launch(const Tensors& c, void* stream) {
  return pack<M, 2 + Rule::kStates>(c, [stream](const auto& L, int32_t blocks, const int64_t*) {
    step_kernel<Rule><<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(L);
    return int(cudaGetLastError());
  });
}

}  // namespace

LaunchFn select(const Hyper& h) {
  switch (RuleKind(h.rule)) {
    case RuleKind::kSgd:
      return h.momentum != 0 ? launch<Sgd<true>> : launch<Sgd<false>>;
    case RuleKind::kAdam:
      return h.amsgrad ? launch<Adam<true>> : launch<Adam<false>>;
    case RuleKind::kAdagrad:
      return launch<Adagrad>;
    case RuleKind::kRmsprop:
      if (h.centered) return h.momentum > 0 ? launch<Rmsprop<true, true>> : launch<Rmsprop<true, false>>;
      return h.momentum > 0 ? launch<Rmsprop<false, true>> : launch<Rmsprop<false, false>>;
  }
  return nullptr;
}

int image_status() {
  cudaFuncAttributes attr;
  return int(cudaFuncGetAttributes(&attr, step_kernel<Sgd<false>>));
}

}  // namespace proxopt::cuda::PROXOPT_CUDA_NS
