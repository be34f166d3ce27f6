// Per-ISA kernels. CMake compiles this file once per instruction set
// (baseline, AVX2, AVX-512) and part -- the plain shapes, or the group
// shapes (PROXOPT_CPU_GROUPS 0 or 1): translation units of about equal size
// that build in parallel. PROXOPT_ISA names the namespace; isa.cpp picks the
// instruction set at run time. The loop body is proxopt::step_element, the
// same function the CUDA kernels call, so the math exists once: every
// element is loaded once, runs the whole order of operations, and is stored
// once.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "../proxopt/math.h"
#include "../proxopt/variants.h"
#include "driver.h"

#if !defined(PROXOPT_ISA) || !defined(PROXOPT_CPU_GROUPS)
#error "PROXOPT_ISA must name the instruction-set namespace, PROXOPT_CPU_GROUPS the part (0 or 1)"
#endif

namespace proxopt::cpu::PROXOPT_ISA {
namespace {

// bfloat16 storage: the top half of a float32.
struct BF16 {
  uint16_t bits;
};

// The storage type of each kernel dtype (dtypes.h).
template <DType D> struct Storage;

template <class T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };
template <class T> using math_t = typename MathType<T>::type;

inline float load(_Float16 x) { return static_cast<float>(x); }
inline float load(BF16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline _Float16 store_as(float v, _Float16*) { return static_cast<_Float16>(v); }
inline BF16 store_as(float v, BF16*) {
  // Round to nearest even, as c10::BFloat16 does; NaN stays a quiet NaN.
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return BF16{nan ? uint16_t(0x7fc0) : uint16_t(u >> 16)};
}

// Widen 16-bit storage into a float tile and narrow it back: plain loops the
// compiler vectorizes, except float16, which GCC converts in bulk only with
// F16C intrinsics.
template <class T>
inline void widen(const T* __restrict src, float* __restrict dst, int n) {
#pragma GCC ivdep
  for (int j = 0; j < n; ++j) dst[j] = load(src[j]);
}
template <class T>
inline void narrow(const float* __restrict src, T* __restrict dst, int n) {
#pragma GCC ivdep
  for (int j = 0; j < n; ++j) dst[j] = store_as(src[j], static_cast<T*>(nullptr));
}
#if defined(__F16C__)
template <>
inline void widen<_Float16>(const _Float16* __restrict src, float* __restrict dst, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
  for (; j < n; ++j) dst[j] = load(src[j]);
}
template <>
inline void narrow<_Float16>(const float* __restrict src, _Float16* __restrict dst, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), h);
  }
  for (; j < n; ++j) dst[j] = store_as(src[j], static_cast<_Float16*>(nullptr));
}
#endif

// What becomes of the new weights of a range:
//   kStore:   stored to the tensor (with the states): a plain step;
//   kScratch: written to a math-precision buffer, states stored: the group
//             prox scales and stores them once the group's norm is known;
//   kScratchSq: kScratch, and the range's sum of squares (the group's norm)
//             accumulated in the same loop;
//   kStoreColSq: kStore (32/64-bit only), and each element's square added
//             to its own sum (element j to sums[j]: one group per element,
//             the columns of a matrix);
//   kDry:     written to the buffer, nothing stored (16-bit groups too big
//             for a scratch are computed twice: norms first, then for real).
enum class Out { kStore, kScratch, kScratchSq, kStoreColSq, kDry };

// 16-bit storage is widened a tile at a time; the tile stays in L1.
constexpr int kTile = 256;
// Sums of squares run over this many independent double lanes (element j to
// lane j % kLanes, a tail to lane 0): vectorizable without reassociating one
// chain, the same lanes at every SIMD level (so bit-identical results).
constexpr int kLanes = 16;
static_assert(kTile % kLanes == 0, "tiles must keep the lanes aligned");

template <class M>
inline double lane_total(const double* lane) {
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

// Adds the squares of x[0, n) to the lanes (element j to lane j % kLanes, a
// tail to lane 0).
template <class M>
inline void add_squares(const M* __restrict x, int64_t n, double* __restrict lane) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] += double(x[j + l]) * double(x[j + l]);
  }
  for (; j < n; ++j) lane[0] += double(x[j]) * double(x[j]);
}

// One element j: load it and its states, step, store the states (unless
// dry); the new weight is returned. A holds the math type or storage that
// converts to it implicitly (float32/float64 tensors, or a widened tile).
template <class Rule, unsigned P, bool StoreStates, class M, class A>
__attribute__((always_inline)) inline M step_at(const A* w, const A* __restrict g, A* __restrict s0,
                                                A* __restrict s1, A* __restrict s2, int64_t j, const Coeffs<M>& k,
                                                BudgetCounts& c) {
  constexpr int S = Rule::kStates;
  M st[S > 0 ? S : 1];
  if constexpr (S > 0) st[0] = s0[j];
  if constexpr (S > 1) st[1] = s1[j];
  if constexpr (S > 2) st[2] = s2[j];
  const M nw = step_element<Rule, P>(M(w[j]), M(g[j]), st, k, c);
  if constexpr (StoreStates) {
    if constexpr (S > 0) s0[j] = st[0];
    if constexpr (S > 1) s1[j] = st[1];
    if constexpr (S > 2) s2[j] = st[2];
  }
  return nw;
}

// Elements [0, n) of arrays of the math type (a tensor's own memory, or a
// tile): the new weights go to `dst` (which may be w itself); with kScratchSq
// their squares are then added to `lane` (element j to lane j % kLanes), with
// kStoreColSq to lane[j]; a budget shape adds its counts to `c`.
template <class Rule, unsigned P, Out O, class M>
__attribute__((always_inline)) inline void step_loop(M* w, const M* __restrict g, M* __restrict s0, M* __restrict s1,
                                                     M* __restrict s2, int64_t n, const Coeffs<M>& k, M* dst,
                                                     double* lane, BudgetCounts& c) {
  constexpr bool kStates = O != Out::kDry;
  if constexpr ((P & kBudget) != 0) {
    static_assert(O == Out::kStore, "the budget has plain loops only");
    // The counts in locals, so that they vectorize as three reductions.
    int32_t lo = 0, mid = 0, hi = 0;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      BudgetCounts e;
      dst[j] = step_at<Rule, P, kStates>(w, g, s0, s1, s2, j, k, e);
      lo += e.lo;
      mid += e.mid;
      hi += e.hi;
    }
    c.lo += lo;
    c.mid += mid;
    c.hi += hi;
    return;
  }
  BudgetCounts none;
  if constexpr (O == Out::kScratchSq || O == Out::kStoreColSq) {
    // Step, then square what was written, in a second loop over it (the
    // same lanes, so the same sums). In one loop GCC threads the heal and
    // reset selects of the zeroing shapes, moves the double square onto the
    // paths and selects between the squares on a uniform switch: a double
    // select on an int32 condition, which it does not vectorize next to the
    // float math (docs/DEVELOPING.md; the general group shape ran 6x slower).
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) dst[j] = step_at<Rule, P, kStates>(w, g, s0, s1, s2, j, k, none);
    if constexpr (O == Out::kScratchSq) {
      add_squares(dst, n, lane);
    } else {
      const M* __restrict x = dst;
      double* __restrict sq = lane;
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) sq[j] += double(x[j]) * double(x[j]);
    }
  } else {
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) dst[j] = step_at<Rule, P, kStates>(w, g, s0, s1, s2, j, k, none);
  }
}

// Steps elements [0, len) of w/g/s (pointers already offset). `out` receives
// the new weights for kScratch, kScratchSq and kDry. Returns the sum of
// squares of the new weights for kScratchSq (0 otherwise).
template <class Rule, unsigned P, Out O, class T>
double step_range(T* __restrict w, const T* __restrict g, T* const* s, int64_t len,
                  const Coeffs<math_t<T>>& kref, math_t<T>* __restrict out, BudgetCounts* counts = nullptr) {
  using M = math_t<T>;
  constexpr int S = Rule::kStates;
  // A local copy: its fields cannot alias the tensors, so they stay in
  // registers and the uniform selects if-convert (with a reference, GCC keeps
  // the branches and does not vectorize).
  const Coeffs<M> k = kref;
  T* __restrict s0 = S > 0 ? s[0] : nullptr;
  T* __restrict s1 = S > 1 ? s[1] : nullptr;
  T* __restrict s2 = S > 2 ? s[2] : nullptr;
  double lane[kLanes] = {};
  BudgetCounts c;
  if constexpr (std::is_same_v<T, M>) {
    // float32/float64: the loop reads and writes the tensors themselves.
    step_loop<Rule, P, O>(w, g, s0, s1, s2, len, k, O == Out::kStore ? w : out, lane, c);
  } else {
    // 16-bit: widen a tile of every array, step it, narrow what is stored.
    alignas(64) M tw[kTile], tg[kTile], ts[S > 0 ? S : 1][kTile];
    for (int64_t base = 0; base < len; base += kTile) {
      const int n = int(std::min<int64_t>(kTile, len - base));
      widen(w + base, tw, n);
      widen(g + base, tg, n);
      if constexpr (S > 0) widen(s0 + base, ts[0], n);
      if constexpr (S > 1) widen(s1 + base, ts[1], n);
      if constexpr (S > 2) widen(s2 + base, ts[2], n);
      step_loop<Rule, P, O>(tw, tg, ts[0], S > 1 ? ts[S > 1 ? 1 : 0] : nullptr, S > 2 ? ts[S > 2 ? 2 : 0] : nullptr,
                            n, k, O == Out::kStore ? tw : out + base, lane, c);
      if constexpr (O != Out::kDry) {
        if constexpr (S > 0) narrow(ts[0], s0 + base, n);
        if constexpr (S > 1) narrow(ts[1], s1 + base, n);
        if constexpr (S > 2) narrow(ts[2], s2 + base, n);
      }
      if constexpr (O == Out::kStore) narrow(tw, w + base, n);
    }
  }
  if (counts != nullptr) *counts = c;
  return O == Out::kScratchSq ? lane_total<M>(lane) : 0.0;
}

// Sum of squares in double over the lanes (see kLanes).
template <class M>
double sum_squares(const M* x, int64_t n) {
  double lane[kLanes] = {};
  add_squares(x, n, lane);
  return lane_total<M>(lane);
}

template <class T>
struct Ptrs {
  T* w;
  const T* g;
  T* s[kMaxStates];
};

template <class Rule, class T>
Ptrs<T> ptrs_at(const TensorTask& t, int64_t offset) {
  Ptrs<T> p{static_cast<T*>(t.w) + offset, static_cast<const T*>(t.g) + offset, {nullptr, nullptr, nullptr}};
  for (int q = 0; q < Rule::kStates; ++q) p.s[q] = static_cast<T*>(t.s[q]) + offset;
  return p;
}

template <class T>
Coeffs<math_t<T>> coeffs_of(const TensorTask& t) {
  Coeffs<math_t<T>> k = finish_coeffs(t.coeffs->template cast<math_t<T>>());
  if (t.budget != nullptr) {  // this tensor's own threshold and probes
    using M = math_t<T>;
    k.budget_thr = M(t.budget[0]);
    k.probe_lo = M(t.budget[1]);
    k.probe_mid = M(t.budget[2]);
    k.probe_hi = M(t.budget[3]);
  }
  return k;
}

// ---- plain chunks: elements [begin, end) ------------------------------------

template <class Rule, unsigned P, class T>
void run_plain(const TensorTask& t, int64_t begin, int64_t end, BudgetCounts* counts) {
  const auto p = ptrs_at<Rule, T>(t, begin);
  step_range<Rule, P, Out::kStore>(p.w, p.g, p.s, end - begin, coeffs_of<T>(t), nullptr, counts);
}

// ---- group chunks: groups [q0, q1) of a tensor seen as [outer, groups, inner]

// Weights of one run: x scaled by factor f (one per element: f[j], or one
// for all: f[0] with stride 0), clamped, stored in the storage type.
template <class T>
void store_scaled(T* __restrict w, const math_t<T>* __restrict x, int64_t n, const math_t<T>* __restrict f,
                  int64_t f_stride, const Coeffs<math_t<T>>& kref) {
  using M = math_t<T>;
  const Coeffs<M> k = kref;  // see step_range
  if constexpr (std::is_same_v<T, M>) {
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) w[j] = finish_group(x[j], f[j * f_stride], k);
  } else {
    alignas(64) M tile[kTile];
    for (int64_t b = 0; b < n; b += kTile) {
      const int m = int(std::min<int64_t>(kTile, n - b));
#pragma GCC ivdep
      for (int j = 0; j < m; ++j) tile[j] = finish_group(x[b + j], f[(b + j) * f_stride], k);
      narrow(tile, w + b, m);
    }
  }
}

// The factors of groups [q0, q0 + n) from their sums of squares (with the
// tensor's channel budget, if any: each group's decision is read from its
// slot in the tensor's row, and its norm written there).
template <class T>
void group_factors(const TensorTask& t, int64_t q0, int64_t n, const double* sums, double tau,
                   const Coeffs<math_t<T>>& k, math_t<T>* factor) {
  using M = math_t<T>;
  if (t.group_norms == nullptr) {
    for (int64_t j = 0; j < n; ++j) factor[j] = group_factor<M>(std::sqrt(sums[j]), tau, k);
  } else {
    for (int64_t j = 0; j < n; ++j) factor[j] = group_factor<M>(std::sqrt(sums[j]), tau, k, t.group_norms + q0 + j);
  }
}

// The states of one row's run of a column panel: fresh where the column's
// factor is 0 (the reset is on), as selects the compiler vectorizes.
template <class Rule, class T>
void reset_zeroed_run(T* const* s, int64_t n, const math_t<T>* __restrict factor, const Coeffs<math_t<T>>& k) {
  using M = math_t<T>;
  auto as_t = [](M v) {
    if constexpr (std::is_same_v<T, M>) return v; else return store_as(v, static_cast<T*>(nullptr));
  };
  for (int q = 0; q < Rule::kStates; ++q) {
    T* __restrict st = s[q];
    const T fresh = as_t(q == 0 ? k.fresh0 : M(0));
    for (int64_t j = 0; j < n; ++j) {
      if (factor[j] == M(0)) st[j] = fresh;
    }
  }
}

// Groups [q0, q0 + n) that their factor zeroed get fresh states when the
// reset is on: the states were stored before the group's norm was known.
// Called after the last store of the states (16-bit paths step twice).
template <class Rule, class T>
void reset_zeroed_groups(const TensorTask& t, int64_t q0, int64_t n, const math_t<T>* factor,
                         const Coeffs<math_t<T>>& k) {
  using M = math_t<T>;
  if constexpr (Rule::kStates > 0) {
    if (k.reset == 0) return;
    auto as_t = [](M v) {
      if constexpr (std::is_same_v<T, M>) return v; else return store_as(v, static_cast<T*>(nullptr));
    };
    const T fresh[3] = {as_t(k.fresh0), as_t(M(0)), as_t(M(0))};
    const int64_t G = t.groups, I = t.inner;
    for (int64_t j = 0; j < n; ++j) {
      if (factor[j] != M(0)) continue;
      for (int q = 0; q < Rule::kStates; ++q) {
        T* st = static_cast<T*>(t.s[q]);
        for (int64_t o = 0; o < t.outer; ++o) std::fill_n(st + (o * G + q0 + j) * I, I, fresh[q]);
      }
    }
  }
}

// A block of whole groups that fits the scratch: one visit. Each run of
// consecutive elements (one outer index: groups q0..q1, inner each) is
// stepped into the scratch while the squares go to their group's sum; the
// factors follow from the sums; each weight is then scaled, clamped and
// stored once, while the block is still in cache.
template <class Rule, unsigned P, class T>
void run_group_block(const TensorTask& t, int64_t q0, int64_t q1, const Coeffs<math_t<T>>& k, double tau) {
  using M = math_t<T>;
  const int64_t G = t.groups, I = t.inner, nq = q1 - q0, run = nq * I;
  thread_local std::vector<M> scratch, factor;
  thread_local std::vector<double> sums;
  scratch.resize(size_t(t.outer * run));
  sums.assign(size_t(nq), 0.0);
  for (int64_t o = 0; o < t.outer; ++o) {
    const auto p = ptrs_at<Rule, T>(t, (o * G + q0) * I);
    M* x = scratch.data() + o * run;
    if (I >= kLanes) {  // rows: each group's squares summed in its stepping loop
      for (int64_t j = 0; j < nq; ++j) {
        const auto pj = ptrs_at<Rule, T>(t, (o * G + q0 + j) * I);
        sums[j] += step_range<Rule, P, Out::kScratchSq>(pj.w, pj.g, pj.s, I, k, x + j * I);
      }
    } else {
      step_range<Rule, P, Out::kScratch>(p.w, p.g, p.s, run, k, x);
      if (I == 1) {
#pragma GCC ivdep
        for (int64_t j = 0; j < nq; ++j) sums[j] += double(x[j]) * double(x[j]);
      } else {
        for (int64_t j = 0; j < nq; ++j) sums[j] += sum_squares(x + j * I, I);
      }
    }
  }
  factor.resize(size_t(nq));
  group_factors<T>(t, q0, nq, sums.data(), tau, k, factor.data());
  reset_zeroed_groups<Rule, T>(t, q0, nq, factor.data(), k);
  for (int64_t o = 0; o < t.outer; ++o) {
    T* w = static_cast<T*>(t.w) + (o * G + q0) * I;
    const M* x = scratch.data() + o * run;
    if (I == 1) {
      store_scaled(w, x, nq, factor.data(), 1, k);
    } else {
      for (int64_t j = 0; j < nq; ++j) store_scaled(w + j * I, x + j * I, I, factor.data() + j, 0, k);
    }
  }
}

// Groups [q0, q1) of a tensor with inner 1 and many outer indices (the
// columns of a tall matrix): every outer index is a run of q1 - q0
// consecutive elements, one per group, and the runs of a block do not stay
// in cache together. 32/64-bit: each run is stepped in place while the
// squares go to their group's sum; a second pass scales what was stored (no
// rounding between). 16-bit: a dry pass for the sums, then the step for real
// into a run-long scratch, scaled and stored once.
template <class Rule, unsigned P, class T>
void run_column_panel(const TensorTask& t, int64_t q0, int64_t q1, const Coeffs<math_t<T>>& kref, double tau) {
  using M = math_t<T>;
  const Coeffs<M> k = kref;  // see step_range
  const int64_t G = t.groups, nq = q1 - q0;
  thread_local std::vector<M> run, factor;
  thread_local std::vector<double> sums;
  run.resize(size_t(nq));
  sums.assign(size_t(nq), 0.0);
  constexpr int S = Rule::kStates;
  for (int64_t o = 0; o < t.outer; ++o) {
    const auto p = ptrs_at<Rule, T>(t, o * G + q0);
    if constexpr (std::is_same_v<T, M>) {
      BudgetCounts none;
      step_loop<Rule, P, Out::kStoreColSq>(p.w, p.g, p.s[0], S > 1 ? p.s[1] : nullptr, S > 2 ? p.s[2] : nullptr,
                                           nq, k, p.w, sums.data(), none);
    } else {
      step_range<Rule, P, Out::kDry>(p.w, p.g, p.s, nq, k, run.data());
      double* __restrict sq = sums.data();
      const M* __restrict x = run.data();
#pragma GCC ivdep
      for (int64_t j = 0; j < nq; ++j) sq[j] += double(x[j]) * double(x[j]);
    }
  }
  factor.resize(size_t(nq));
  group_factors<T>(t, q0, nq, sums.data(), tau, k, factor.data());
  // A zeroed column's states restart in the same visit of each row (one
  // strided pass per column would touch every row's lines again).
  bool resets = false;
  if constexpr (S > 0) {
    for (int64_t j = 0; j < nq && k.reset != 0 && !resets; ++j) resets = factor[j] == M(0);
  }
  // Last rows first: they are the ones still in cache from the first pass.
  for (int64_t o = t.outer - 1; o >= 0; --o) {
    const auto p = ptrs_at<Rule, T>(t, o * G + q0);
    if constexpr (std::is_same_v<T, M>) {
      M* __restrict w = p.w;
      const M* __restrict f = factor.data();
#pragma GCC ivdep
      for (int64_t j = 0; j < nq; ++j) w[j] = finish_group(w[j], f[j], k);
    } else {
      step_range<Rule, P, Out::kScratch>(p.w, p.g, p.s, nq, k, run.data());
      store_scaled(p.w, run.data(), nq, factor.data(), 1, k);
    }
    if (resets) reset_zeroed_run<Rule, T>(p.s, nq, factor.data(), k);
  }
}

// One group too large for the scratch, in two passes over its runs.
// 32/64-bit: step in place, then scale what was stored (no rounding between).
// 16-bit: a dry pass computes the norm without storing, then the step runs
// again for real and stores once (rounding once, as the reference does).
template <class Rule, unsigned P, class T>
void run_big_group(const TensorTask& t, int64_t q, const Coeffs<math_t<T>>& k, double tau) {
  using M = math_t<T>;
  const int64_t G = t.groups, I = t.inner;
  thread_local std::vector<M> tile;
  tile.resize(size_t(kChunkElems));
  auto for_runs = [&](auto&& fn) {  // fn(offset, length) over the group's pieces
    for (int64_t o = 0; o < t.outer; ++o) {
      for (int64_t b = 0; b < I; b += kChunkElems) fn((o * G + q) * I + b, std::min(kChunkElems, I - b));
    }
  };
  double sumsq = 0;
  if constexpr (std::is_same_v<T, M>) {
    for_runs([&](int64_t off, int64_t n) {
      const auto p = ptrs_at<Rule, T>(t, off);
      step_range<Rule, P, Out::kStore>(p.w, p.g, p.s, n, k, nullptr);
      sumsq += sum_squares(p.w, n);
    });
    M f;
    group_factors<T>(t, q, 1, &sumsq, tau, k, &f);
    const Coeffs<M> kl = k;  // see step_range
    for_runs([&](int64_t off, int64_t n) {
      T* w = static_cast<T*>(t.w) + off;
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) w[j] = finish_group(w[j], f, kl);
    });
    reset_zeroed_groups<Rule, T>(t, q, 1, &f, k);
  } else {
    for_runs([&](int64_t off, int64_t n) {
      const auto p = ptrs_at<Rule, T>(t, off);
      step_range<Rule, P, Out::kDry>(p.w, p.g, p.s, n, k, tile.data());
      sumsq += sum_squares(tile.data(), n);
    });
    M f;
    group_factors<T>(t, q, 1, &sumsq, tau, k, &f);
    for_runs([&](int64_t off, int64_t n) {
      const auto p = ptrs_at<Rule, T>(t, off);
      step_range<Rule, P, Out::kScratch>(p.w, p.g, p.s, n, k, tile.data());
      store_scaled(p.w, tile.data(), n, &f, 0, k);
    });
    reset_zeroed_groups<Rule, T>(t, q, 1, &f, k);
  }
}

template <class Rule, unsigned P, class T>
void run_groups(const TensorTask& t, int64_t q0, int64_t q1, BudgetCounts* /*counts: the channel budget writes norms*/) {
  const auto k = coeffs_of<T>(t);
  const int64_t group_size = t.outer * t.inner;
  const double tau = group_tau(t.coeffs->group_lambda, group_size);
  if (column_panels(t.outer, t.inner)) {
    run_column_panel<Rule, P, T>(t, q0, q1, k, tau);
  } else if (group_size > kBlockElems) {
    for (int64_t q = q0; q < q1; ++q) run_big_group<Rule, P, T>(t, q, k, tau);
  } else {
    run_group_block<Rule, P, T>(t, q0, q1, k, tau);
  }
}

// ---- instantiation: every rule variant x prox shape (variants.h) ---------------------

template <> struct Storage<DType::f32> { using type = float; };
template <> struct Storage<DType::f64> { using type = double; };
template <> struct Storage<DType::f16> { using type = _Float16; };
template <> struct Storage<DType::bf16> { using type = BF16; };

// The kernels of this unit's part for storage type T (none for the other part's shapes).
template <class T>
KernelSet kernels_of(const Hyper& h) {
  return visit_variant<CpuShapes>(h, prox_shape(h), KernelSet{}, [](auto rule, auto shape) {
    using Rule = decltype(rule);
    constexpr unsigned P = decltype(shape)::value;
    KernelSet ks;
    if constexpr ((P & kGroup) != 0 && PROXOPT_CPU_GROUPS) {
      ks.groups = run_groups<Rule, P, T>;
    } else if constexpr ((P & kGroup) == 0 && !PROXOPT_CPU_GROUPS) {
      ks.plain = run_plain<Rule, P, T>;
    }
    return ks;
  });
}

}  // namespace

#if PROXOPT_CPU_GROUPS
KernelSet select_groups(const Hyper& h, DType dtype) {
#else
KernelSet select_plain(const Hyper& h, DType dtype) {
#endif
  switch (dtype) {
#define PROXOPT_DTYPE_CASE(tag, tname, bytes) \
  case DType::tag: return kernels_of<typename Storage<DType::tag>::type>(h);
    PROXOPT_DTYPES(PROXOPT_DTYPE_CASE)
#undef PROXOPT_DTYPE_CASE
  }
  return {};
}

}  // namespace proxopt::cpu::PROXOPT_ISA
