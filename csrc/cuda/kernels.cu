// The CUDA kernels of one storage dtype. CMake compiles this file once per
// dtype of dtypes.h (PROXOPT_CUDA_DTYPE = its tag, which also names the
// namespace), like the CPU kernels once per instruction set.
//
// The arithmetic is proxopt::step_element (csrc/proxopt/math.h), the function
// the CPU kernels call; the per-step scalars come from proxopt::make_coeffs
// (coeffs.h), evaluated by each block from the step counter and lr on the
// device. Storage and math types are separate: float math for
// float16/bfloat16/float32, double for float64.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels.h"

#if !defined(PROXOPT_CUDA_DTYPE)
#error "PROXOPT_CUDA_DTYPE must be the tag of a dtype of dtypes.h"
#endif

namespace proxopt::cuda {
namespace {
// The storage type of each kernel dtype (dtypes.h).
template <DType D> struct Storage;
template <> struct Storage<DType::f32> { using type = float; };
template <> struct Storage<DType::f64> { using type = double; };
template <> struct Storage<DType::f16> { using type = __half; };
template <> struct Storage<DType::bf16> { using type = __nv_bfloat16; };
}  // namespace
}  // namespace proxopt::cuda

namespace proxopt::cuda::PROXOPT_CUDA_DTYPE {
namespace {

using T = typename Storage<DType::PROXOPT_CUDA_DTYPE>::type;

using M = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace

// Storage <-> math conversions. Stores round to nearest even, as torch does
// for float16/bfloat16.
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

__device__ __forceinline__ bool overflowed(uintptr_t found_inf) {
  return found_inf != 0 && *reinterpret_cast<const float*>(found_inf) != 0.0f;
}

// The scalars of tensor t of a launch at this step: the counter after its
// increment (the increment itself is launch_bump's, after every kernel).
template <int D, bool G>
__device__ Coeffs<M> coeffs_for(const Launch<D, G>& L, int t) {
  const int b = L.bucket[t];
  const Hyper& h = L.hyper[b];
  const double old = L.steps_f64 ? *reinterpret_cast<const double*>(L.step[t])
                                 : double(*reinterpret_cast<const float*>(L.step[t]));
  const double step = old + 1.0;
  double lr = h.lr;
  if (L.lr[b] != 0) {
    lr = L.lr_f64[b] ? *reinterpret_cast<const double*>(L.lr[b]) : double(*reinterpret_cast<const float*>(L.lr[b]));
  }
  const double inv = inv_grad_scale(reinterpret_cast<const float*>(L.grad_scale));
  return finish_coeffs(make_coeffs(h, step, lr, inv, step == 1.0).template cast<M>());
}

template <int S>
struct Ptrs {
  T* w;
  const T* g;
  T* s[S > 0 ? S : 1];
};

// The one load-step-store of an element, wherever it lives: its weight and
// grad, and state(q) the q-th state (in memory or in a loaded vector). The
// states are stored back unless Store is false (a group's first pass); the
// new weight is returned for the caller to store (scaled, for a group).
template <class Rule, unsigned P, bool Store, class StateRef>
__device__ __forceinline__ M step_loaded(T w, T g, StateRef&& state, const Coeffs<M>& k) {
  constexpr int S = Rule::kStates;
  M st[S > 0 ? S : 1];
#pragma unroll
  for (int q = 0; q < S; ++q) st[q] = widen(state(q));
  const M nw = step_element<Rule, P>(widen(w), widen(g), st, k);
  if constexpr (Store) {
#pragma unroll
    for (int q = 0; q < S; ++q) put(state(q), st[q]);
  }
  return nw;
}

// ---- plain steps: one block per chunk ---------------------------------------------

template <class Rule, unsigned P>
__global__ void __launch_bounds__(kThreads) step_kernel(const __grid_constant__ Launch<2 + Rule::kStates, false> L) {
  constexpr int S = Rule::kStates;
  if (overflowed(L.found_inf)) return;  // AMP: the step changes nothing
  const Span sp = locate(L, int32_t(blockIdx.x));
  Ptrs<S> p;
  p.w = reinterpret_cast<T*>(L.ptr[0][sp.t]) + sp.begin;
  p.g = reinterpret_cast<const T*>(L.ptr[1][sp.t]) + sp.begin;
#pragma unroll
  for (int q = 0; q < S; ++q) p.s[q] = reinterpret_cast<T*>(L.ptr[2 + q][sp.t]) + sp.begin;
  const Coeffs<M> k = coeffs_for(L, sp.t);
  const int n = int(sp.n);
  if (L.aligned[sp.t] && n % kVec == 0) {
    // Fast path: kVec consecutive elements per thread, one vector load per array.
    for (int i = int(threadIdx.x) * kVec; i < n; i += kThreads * kVec) {
      Vec w = *reinterpret_cast<const Vec*>(p.w + i);
      const Vec g = *reinterpret_cast<const Vec*>(p.g + i);
      Vec s[S > 0 ? S : 1];
#pragma unroll
      for (int q = 0; q < S; ++q) s[q] = *reinterpret_cast<const Vec*>(p.s[q] + i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        put(w.v[j], step_loaded<Rule, P, true>(w.v[j], g.v[j], [&](int q) -> T& { return s[q].v[j]; }, k));
      }
      *reinterpret_cast<Vec*>(p.w + i) = w;
#pragma unroll
      for (int q = 0; q < S; ++q) *reinterpret_cast<Vec*>(p.s[q] + i) = s[q];
    }
  } else {
    // Misaligned views and tails: the same step_element, one element at a time.
    for (int i = int(threadIdx.x); i < n; i += kThreads) {
      put(p.w[i], step_loaded<Rule, P, true>(p.w[i], p.g[i], [&](int q) -> T& { return p.s[q][i]; }, k));
    }
  }
}

// ---- group proxes: one block per group -----------------------------------------------

// Deterministic block sum (a fixed tree over the threads).
__device__ double block_sum(double v) {
  __shared__ double part[kThreads];
  part[threadIdx.x] = v;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) part[threadIdx.x] += part[threadIdx.x + width];
    __syncthreads();
  }
  const double total = part[0];
  __syncthreads();
  return total;
}

// Group q of a tensor seen as [outer, groups, inner]: its j-th element.
__device__ __forceinline__ int64_t group_elem(int64_t j, int64_t q, int64_t groups, int64_t inner) {
  return ((j / inner) * groups + q) * inner + j % inner;
}

template <class Rule, unsigned P>
__global__ void __launch_bounds__(kThreads) group_kernel(const __grid_constant__ Launch<2 + Rule::kStates, true> L) {
  constexpr int S = Rule::kStates;
  if (overflowed(L.found_inf)) return;
  const Span sp = locate(L, int32_t(blockIdx.x));
  const int t = sp.t;
  const int64_t q = sp.begin, G = L.groups[t], I = L.inner[t], n = L.outer[t] * I;
  Ptrs<S> p;
  p.w = reinterpret_cast<T*>(L.ptr[0][t]);
  p.g = reinterpret_cast<const T*>(L.ptr[1][t]);
#pragma unroll
  for (int qq = 0; qq < S; ++qq) p.s[qq] = reinterpret_cast<T*>(L.ptr[2 + qq][t]);
  const Coeffs<M> k = coeffs_for(L, t);
  // Pass 1: the new weights' sum of squares, nothing stored.
  double local = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const int64_t i = group_elem(j, q, G, I);
    const M nw = step_loaded<Rule, P, false>(p.w[i], p.g[i], [&](int qq) -> T& { return p.s[qq][i]; }, k);
    local += double(nw) * double(nw);
  }
  const double tau = group_tau(k.group_lambda, n);
  const M factor = group_factor<M>(sqrt(block_sum(local)), tau, k);
  // Pass 2: the same step again, scaled, clamped and stored once.
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const int64_t i = group_elem(j, q, G, I);
    const M nw = step_loaded<Rule, P, true>(p.w[i], p.g[i], [&](int qq) -> T& { return p.s[qq][i]; }, k);
    put(p.w[i], finish_group(nw, factor, k));
  }
}

// ---- launching ---------------------------------------------------------------------------

template <class Rule, unsigned P>
int launch_variant(const Tensors& c, void* stream) {
  constexpr int D = 2 + Rule::kStates;
  auto s = static_cast<cudaStream_t>(stream);
  if constexpr ((P & kGroup) != 0) {
    return pack<D, true>(c, [s](const auto& L, int32_t blocks, const int64_t*) {
      group_kernel<Rule, P><<<unsigned(blocks), kThreads, 0, s>>>(L);
      return int(cudaGetLastError());
    });
  } else {
    return pack<D, false>(c, [s](const auto& L, int32_t blocks, const int64_t*) {
      step_kernel<Rule, P><<<unsigned(blocks), kThreads, 0, s>>>(L);
      return int(cudaGetLastError());
    });
  }
}

#if defined(PROXOPT_CUDA_FIRST_DTYPE)
__global__ void bump_kernel(const __grid_constant__ Bump B) {
  if (overflowed(B.found_inf)) return;
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= B.count) return;
  if (B.steps_f64) {
    *reinterpret_cast<double*>(B.step[i]) += 1.0;
  } else {
    *reinterpret_cast<float*>(B.step[i]) += 1.0f;
  }
}
#endif

}  // namespace

int launch(const Tensors& c, const Hyper& h, void* stream) {
  return visit_variant<CudaShapes>(h, cuda_prox_shape(prox_shape(h)), -1, [&](auto rule, auto shape) {
    return launch_variant<decltype(rule), decltype(shape)::value>(c, stream);
  });
}

int image_status() {
  cudaFuncAttributes attr;
  return int(cudaFuncGetAttributes(&attr, step_kernel<Sgd<false>, 0>));
}

}  // namespace proxopt::cuda::PROXOPT_CUDA_DTYPE

namespace proxopt::cuda {
// Defined once, in the first dtype's unit (CMake defines PROXOPT_CUDA_FIRST_DTYPE there).
#if defined(PROXOPT_CUDA_FIRST_DTYPE)
int launch_bump(const Bump& b, void* stream) {
  if (b.count == 0) return 0;
  PROXOPT_CUDA_DTYPE::bump_kernel<<<unsigned((b.count + kThreads - 1) / kThreads), kThreads, 0,
                                    static_cast<cudaStream_t>(stream)>>>(b);
  return int(cudaGetLastError());
}
#endif
}  // namespace proxopt::cuda
