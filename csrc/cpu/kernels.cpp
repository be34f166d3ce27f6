// Per-ISA kernels. CMake compiles this file once per instruction set
// (baseline, AVX2, AVX-512) with PROXOPT_ISA naming the namespace; isa.cpp
// picks one at run time. The loop body is proxopt::step_element, the same
// function the CUDA kernels call, so the math exists once.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>
#include <cstring>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "../proxopt/math.h"
#include "driver.h"

#ifndef PROXOPT_ISA
#error "PROXOPT_ISA must name the instruction-set namespace"
#endif

namespace proxopt::cpu::PROXOPT_ISA {
namespace {

// bfloat16 storage: the top half of a float32.
struct BF16 {
  uint16_t bits;
};

template <class T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };

inline float load(float x) { return x; }
inline double load(double x) { return x; }
inline float load(_Float16 x) { return static_cast<float>(x); }
inline float load(BF16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <class T> inline T store(typename MathType<T>::type v) { return static_cast<T>(v); }
template <> inline BF16 store<BF16>(float v) {
  // Round to nearest even, as c10::BFloat16 does; NaN stays a quiet NaN.
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return BF16{nan ? uint16_t(0x7fc0) : uint16_t(u >> 16)};
}

// Elements per tile: the tile's arrays (about 6 KiB in float) stay in L1.
constexpr int kTile = 256;

// One chunk, tile by tile: load and widen into the tile, step it, narrow and
// store. Distinct __restrict pointers: tensors never overlap (Python rejects
// aliasing), so the compiler needs no alias checks.
// Widen storage into the tile and narrow it back: plain loops the compiler
// vectorizes, except float16, which GCC only converts in bulk with F16C.
template <class T, class M>
inline void widen(const T* __restrict src, M* __restrict dst, int n) {
#pragma GCC ivdep
  for (int j = 0; j < n; ++j) dst[j] = load(src[j]);
}
template <class T, class M>
inline void narrow(const M* __restrict src, T* __restrict dst, int n) {
#pragma GCC ivdep
  for (int j = 0; j < n; ++j) dst[j] = store<T>(src[j]);
}
#if defined(__F16C__)
template <>
inline void widen<_Float16, float>(const _Float16* __restrict src, float* __restrict dst, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
  for (; j < n; ++j) dst[j] = load(src[j]);
}
template <>
inline void narrow<_Float16, float>(const float* __restrict src, _Float16* __restrict dst, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), h);
  }
  for (; j < n; ++j) dst[j] = store<_Float16>(src[j]);
}
#endif

// A tile whose weights and states are the tensors' own memory (float32 and
// float64: storage is the math type), so no copies in and out; the gradient
// is copied, since the step rewrites it in place and must not touch .grad.
template <class M>
struct DirectTile {
  M* w;
  M g[kTile];
  M* s[kMaxStates];
  M denom[kTile];
};

// Steps `len` elements tile by tile and hands the new weights (math
// precision) to `sink(offset, n, weights)`; with a DirectTile they are
// already in the tensor. Tensors never overlap (Python rejects aliasing).
template <class Rule, class T, class M, class Sink>
void step_range(int64_t len, const Coeffs<M>& k, T* __restrict w, const T* __restrict g,
                T* __restrict s0, T* __restrict s1, T* __restrict s2, Sink&& sink) {
  constexpr int S = Rule::kStates;
  T* const st[kMaxStates] = {s0, s1, s2};
  if constexpr (std::is_same_v<T, M>) {
    DirectTile<M> t;
    for (int64_t base = 0; base < len; base += kTile) {
      const int n = int(std::min<int64_t>(kTile, len - base));
      t.w = w + base;
      for (int q = 0; q < S; ++q) t.s[q] = st[q] + base;
      widen(g + base, t.g, n);
      step_tile<Rule>(n, t, k);
      sink(base, n, static_cast<const M*>(t.w));
    }
  } else {
    Tile<M, kTile> t;
    for (int64_t base = 0; base < len; base += kTile) {
      const int n = int(std::min<int64_t>(kTile, len - base));
      widen(w + base, t.w, n);
      widen(g + base, t.g, n);
      for (int q = 0; q < S; ++q) widen(st[q] + base, t.s[q], n);
      step_tile<Rule>(n, t, k);
      for (int q = 0; q < S; ++q) narrow(t.s[q], st[q] + base, n);
      sink(base, n, static_cast<const M*>(t.w));
    }
  }
}

// Stores new weights unless the tile already wrote them in place.
template <class T, class M>
inline void store_weights(const M* nw, T* dst, int n) {
  if constexpr (!std::is_same_v<T, M>) narrow(nw, dst, n);
}

// Sum of squares in double over independent lanes, so it vectorizes without
// reassociating one long chain.
template <class M>
double sum_squares(const M* x, int n) {
  constexpr int L = 16;
  double lane[L] = {};
  int j = 0;
  for (; j + L <= n; j += L) {
    for (int l = 0; l < L; ++l) lane[l] += double(x[j + l]) * double(x[j + l]);
  }
  for (; j < n; ++j) lane[0] += double(x[j]) * double(x[j]);
  double s = 0;
  for (int l = 0; l < L; ++l) s += lane[l];
  return s;
}

template <class T>
struct ChunkPtrs {
  T* w;
  const T* g;
  T* s[kMaxStates];
};

template <class Rule, class T>
ChunkPtrs<T> chunk_ptrs(const CpuCall& c, int64_t t, int64_t b) {
  constexpr int S = Rule::kStates;
  ChunkPtrs<T> p{reinterpret_cast<T*>(c.params[t]) + b, reinterpret_cast<const T*>(c.grads[t]) + b,
                 {nullptr, nullptr, nullptr}};
  for (int q = 0; q < S; ++q) p.s[q] = reinterpret_cast<T*>(c.states[q][t]) + b;
  return p;
}

template <class Rule, class T>
void run_chunk(const CpuCall& c, const Chunk& ch) {
  using M = typename MathType<T>::type;
  const auto p = chunk_ptrs<Rule, T>(c, ch.tensor, ch.begin);
  step_range<Rule, T, M>(ch.end - ch.begin, c.coeffs[ch.tensor].template cast<M>(), p.w, p.g,
                         p.s[0], p.s[1], p.s[2],
                         [&](int64_t off, int n, const M* nw) { store_weights(nw, p.w + off, n); });
}

// Contiguous groups (rows): each row is stepped into a math-precision
// scratch row while its squares are summed, then scaled and stored once, in
// one visit while the row is in cache.
template <class Rule, class T>
void run_rows(const CpuCall& c, const Chunk& ch) {
  using M = typename MathType<T>::type;
  const int64_t t = ch.tensor, inner = c.group_inner[t];
  const Coeffs<M> k = c.coeffs[t].template cast<M>();
  thread_local std::vector<M> scratch;
  scratch.resize(size_t(inner));
  M* row = scratch.data();
  for (int64_t r = ch.begin; r < ch.end; r += inner) {
    const auto p = chunk_ptrs<Rule, T>(c, t, r);
    double sumsq = 0;
    step_range<Rule, T, M>(inner, k, p.w, p.g, p.s[0], p.s[1], p.s[2],
                           [&](int64_t off, int n, const M* nw) {
                             std::copy(nw, nw + n, row + off);
                             sumsq += sum_squares(nw, n);
                           });
    apply_group(inner, row, group_factor(M(std::sqrt(sumsq)), k), k);
    for (int64_t j = 0; j < inner; j += kTile) {
      narrow(row + j, p.w + j, int(std::min<int64_t>(kTile, inner - j)));
    }
  }
}

// Calls run(e, len, group) over [begin, end) split into runs of consecutive
// elements whose group index is known without a division per element. With
// inner == 1 (e.g. columns of a matrix) consecutive elements cycle through
// the groups: run(e, len, q) then covers groups q, q+1, ..., q+len-1.
template <class Run>
void for_group_runs(int64_t begin, int64_t end, int64_t groups, int64_t inner, Run&& run) {
  for (int64_t e = begin; e < end;) {
    const int64_t q = (e / inner) % groups;
    const int64_t len = inner == 1 ? std::min(end - e, groups - q) : std::min(end - e, inner - e % inner);
    run(e, len, q);
    e += len;
  }
}

// Strided groups, pass 1: the step, with each square added to its group's sum.
template <class Rule, class T>
void run_strided_pass1(const CpuCall& c, const Chunk& ch, double* sums) {
  using M = typename MathType<T>::type;
  const int64_t t = ch.tensor, groups = c.group_count[t], inner = c.group_inner[t];
  const auto p = chunk_ptrs<Rule, T>(c, t, ch.begin);
  step_range<Rule, T, M>(ch.end - ch.begin, c.coeffs[t].template cast<M>(), p.w, p.g, p.s[0],
                         p.s[1], p.s[2], [&](int64_t off, int n, const M* nw) {
                           store_weights(nw, p.w + off, n);
                           const int64_t e0 = ch.begin + off;
                           for_group_runs(e0, e0 + n, groups, inner, [&](int64_t e, int64_t len, int64_t q) {
                             const M* x = nw + (e - e0);
                             if (inner == 1) {
                               double* __restrict acc = sums + q;
#pragma GCC ivdep
                               for (int64_t j = 0; j < len; ++j) acc[j] += double(x[j]) * double(x[j]);
                             } else {
                               sums[q] += sum_squares(x, int(len));
                             }
                           });
                         });
}

// Strided groups, pass 2: scale every element by its group's factor.
template <class T>
void run_strided_pass2(const CpuCall& c, const Chunk& ch, double* sums) {
  using M = typename MathType<T>::type;
  const int64_t t = ch.tensor, groups = c.group_count[t], inner = c.group_inner[t];
  const Coeffs<M> k = c.coeffs[t].template cast<M>();
  thread_local std::vector<M> factor, buf;
  factor.resize(size_t(groups));
  for (int64_t q = 0; q < groups; ++q) factor[q] = group_factor(M(std::sqrt(sums[q])), k);
  T* w = reinterpret_cast<T*>(c.params[t]);
  for_group_runs(ch.begin, ch.end, groups, inner, [&](int64_t e, int64_t len, int64_t q) {
    for (int64_t j0 = 0; j0 < len; j0 += kTile) {
      const int n = int(std::min<int64_t>(kTile, len - j0));
      buf.resize(kTile);
      M* v = buf.data();
      widen(w + e + j0, v, n);
      if (inner == 1) {
        const M* f = factor.data() + q + j0;
#pragma GCC ivdep
        for (int j = 0; j < n; ++j) v[j] = v[j] * f[j];
        apply_group(n, v, M(1), k);  // the clamp (scaling by 1 is exact)
      } else {
        apply_group(n, v, factor[q], k);
      }
      narrow(v, w + e + j0, n);
    }
  });
}

template <class Rule, class T>
KernelSet kernels_of() {
  return {run_chunk<Rule, T>, run_rows<Rule, T>, run_strided_pass1<Rule, T>, run_strided_pass2<T>};
}

template <class T>
KernelSet select_rule(const Hyper& h) {
  switch (RuleKind(h.rule)) {
    case RuleKind::kSgd:
      return h.momentum != 0 ? kernels_of<Sgd<true>, T>() : kernels_of<Sgd<false>, T>();
    case RuleKind::kAdam:
      return h.amsgrad ? kernels_of<Adam<true>, T>() : kernels_of<Adam<false>, T>();
    case RuleKind::kAdagrad:
      return kernels_of<Adagrad, T>();
    case RuleKind::kRmsprop:
      if (h.centered) {
        return h.momentum > 0 ? kernels_of<Rmsprop<true, true>, T>() : kernels_of<Rmsprop<true, false>, T>();
      }
      return h.momentum > 0 ? kernels_of<Rmsprop<false, true>, T>() : kernels_of<Rmsprop<false, false>, T>();
  }
  return {};
}

}  // namespace

KernelSet select_kernels(const Hyper& h, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return select_rule<float>(h);
    case DType::kFloat64: return select_rule<double>(h);
    case DType::kFloat16: return select_rule<_Float16>(h);
    case DType::kBFloat16: return select_rule<BF16>(h);
  }
  return {};
}

}  // namespace proxopt::cpu::PROXOPT_ISA
