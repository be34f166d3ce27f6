// The math of one optimizer step, per element, written once for the CPU and
// CUDA kernels. Every line mirrors python/proxopt/reference.py in the same
// order of operations, so fused and reference results stay within rounding.
//
// Order inside a step (DESIGN.md): prepare the gradient (unscale, maximize,
// coupled weight decay) -> the rule's state update and direction -> decoupled
// decay -> w -= step * d -> elementwise prox (L1 or L0, ridge, bounds).
// Group proxes (group lasso, max-norm) need a norm over a whole group and are
// applied by the drivers after this function.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PROXOPT_HD __host__ __device__ __forceinline__
#else
#define PROXOPT_HD inline __attribute__((always_inline))
#endif

namespace proxopt {

// Switches that are uniform over one call (see step_tile for how they stay
// out of the inner loops).
enum Flag : uint32_t {
  kMaximize = 1u << 0,
  kCoupledWd = 1u << 1,    // g += wd * w          (SGD, Adam, Adagrad, RMSprop)
  kDecoupledWd = 1u << 2,  // w *= 1 - lr * wd     (AdamW semantics)
  kNesterov = 1u << 3,
  kFreshBuf = 1u << 4,     // SGD: first momentum step, buf <- g
  kGradScale = 1u << 5,    // AMP: g /= grad_scale
  kL1 = 1u << 6,
  kL0 = 1u << 7,
  kL2 = 1u << 8,
  kBounds = 1u << 9,
  kAdaptive = 1u << 10,    // prox_metric="adaptive": tau_i = lr*lambda / denom_i
  kGroupLasso = 1u << 11,  // block soft threshold of each group
  kMaxNorm = 1u << 12,     // projection of each group onto the ball of radius max_norm
};
constexpr uint32_t kElementwiseProx = kL1 | kL0 | kL2 | kBounds;
constexpr uint32_t kGroupProx = kGroupLasso | kMaxNorm;

// The scalars of one tensor's step, computed once on the host in double
// (coeffs.h) and rounded once to the math type M.
template <class M>
struct Coeffs {
  M neg_step;             // -(step size); Adam: -lr / (1 - beta1^t)
  M grad_scale;           // AMP loss scale (1 when absent)
  M wd;                   // coupled weight decay
  M decay;                // decoupled decay factor 1 - lr * wd
  M beta1_weight;         // Adam: 1 - beta1 (lerp weight of the first moment)
  M beta2, one_minus_beta2, bc2_sqrt;  // Adam second moment and its bias correction
  M eps;
  M momentum, one_minus_dampening;     // SGD / RMSprop momentum
  M alpha, one_minus_alpha;            // RMSprop smoothing
  M l1_tau, l0_tau, l2_tau;            // lr * lambda of each elementwise prox
  M lo, hi;                            // bounds
  M group_tau;                         // lr * group_lasso * sqrt(group size)
  M max_norm;
  uint32_t flags;

  template <class N>
  Coeffs<N> cast() const {
    return Coeffs<N>{N(neg_step), N(grad_scale), N(wd), N(decay), N(beta1_weight), N(beta2),
                     N(one_minus_beta2), N(bc2_sqrt), N(eps), N(momentum), N(one_minus_dampening),
                     N(alpha), N(one_minus_alpha), N(l1_tau), N(l0_tau), N(l2_tau), N(lo), N(hi),
                     N(group_tau), N(max_norm), flags};
  }
};

// ---- helpers with torch's exact semantics --------------------------------

// torch.lerp: the formula switches at weight 0.5 for accuracy.
template <class M>
PROXOPT_HD M lerp(M a, M b, M w) {
  return (w < M(0.5)) ? a + w * (b - a) : b - (b - a) * (M(1) - w);
}

// torch.maximum: NaN in either argument propagates.
template <class M>
PROXOPT_HD M maximum(M a, M b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// ---- proximal operators (each the argmin_x 1/2|x - w|^2 + tau*R(x)) ------

// R = |x|: sign(w) * max(|w| - tau, 0). Exact zeros; NaN stays NaN.
template <class M>
PROXOPT_HD M soft_threshold(M w, M tau) {
  M a = std::fabs(w) - tau;
  a = (a < M(0)) ? M(0) : a;
  return std::copysign(a, w);
}

// R = |x|_0: keep w where |w| > sqrt(2 tau), else 0. NaN stays NaN.
template <class M>
PROXOPT_HD M hard_threshold(M w, M tau) {
  return (std::fabs(w) <= std::sqrt(M(2) * tau)) ? M(0) : w;
}

// R = 1/2 x^2: w / (1 + tau).
template <class M>
PROXOPT_HD M ridge(M w, M tau) {
  return w / (M(1) + tau);
}

// Projection onto [lo, hi]; NaN stays NaN.
template <class M>
PROXOPT_HD M clamp(M w, M lo, M hi) {
  return (w < lo) ? lo : ((w > hi) ? hi : w);
}

// ---- one step over a tile of N elements ----------------------------------
// Every switch in Coeffs::flags guards a whole loop over the tile, never a
// branch inside one: the CPU (N = a few hundred, in L1) gets branch-free
// vectorizable loops, CUDA (N = a few registers per thread) uniform branches.
// `n <= N` elements are live. A tile is any type with members w, g, s[3] and
// denom indexable by j: arrays (Tile below) or pointers into memory (the CPU
// points w and s straight at float32/float64 tensors; g is always a copy,
// since the gradient is never written).

#if defined(__CUDACC__)
#define PROXOPT_TILE_LOOP _Pragma("unroll") for
#else
#define PROXOPT_TILE_LOOP _Pragma("GCC ivdep") for
#endif

template <class M, int N>
struct Tile {
  M w[N];          // weight
  M g[N];          // gradient, then the rule's direction
  M s[3][N];       // the rule's state tensors
  M denom[N];      // the rule's preconditioner (adaptive prox metric)
};

// g <- grad / grad_scale, negated if maximize, plus coupled weight decay.
template <class M, class TileT>
PROXOPT_HD void prepare_grad(int n, TileT& t, const Coeffs<M>& k) {
  if (k.flags & kGradScale) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.g[j] = t.g[j] / k.grad_scale;
  if (k.flags & kMaximize) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.g[j] = -t.g[j];
  if (k.flags & kCoupledWd) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.g[j] = t.g[j] + k.wd * t.w[j];
}

// ---- update rules ---------------------------------------------------------
// Rule::update(n, tile, k) advances the states s[0..kStates), moves w, and
// leaves the per-element preconditioner in denom where the rule has one.

template <bool Momentum>
struct Sgd {
  static constexpr int kStates = Momentum ? 1 : 0;  // momentum_buffer
  static constexpr bool kHasDenom = false;
  template <class M, class TileT>
  PROXOPT_HD static void update(int n, TileT& t, const Coeffs<M>& k) {
    if constexpr (Momentum) {
      M* buf = &t.s[0][0];
      if (k.flags & kFreshBuf) {
        PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) buf[j] = t.g[j];
      } else {
        PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) buf[j] = buf[j] * k.momentum + k.one_minus_dampening * t.g[j];
      }
      if (k.flags & kNesterov) {
        PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.g[j] = t.g[j] + k.momentum * buf[j];
      } else {
        PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.g[j] = buf[j];
      }
    }
    PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = t.w[j] + k.neg_step * t.g[j];
  }
};

template <bool Amsgrad>
struct Adam {
  static constexpr int kStates = Amsgrad ? 3 : 2;  // exp_avg, exp_avg_sq, max_exp_avg_sq
  static constexpr bool kHasDenom = true;
  template <class M, class TileT>
  PROXOPT_HD static void update(int n, TileT& t, const Coeffs<M>& k) {
    M *m = &t.s[0][0], *v = &t.s[1][0], *vmax = &t.s[2][0];
    PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) {
      m[j] = lerp(m[j], t.g[j], k.beta1_weight);
      v[j] = v[j] * k.beta2 + k.one_minus_beta2 * t.g[j] * t.g[j];
      M vhat = v[j];
      if constexpr (Amsgrad) {
        vmax[j] = maximum(vmax[j], v[j]);
        vhat = vmax[j];
      }
      t.denom[j] = std::sqrt(vhat) / k.bc2_sqrt + k.eps;
    }
    if (k.flags & kDecoupledWd) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = t.w[j] * k.decay;
    PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = t.w[j] + k.neg_step * m[j] / t.denom[j];
  }
};

struct Adagrad {
  static constexpr int kStates = 1;  // sum
  static constexpr bool kHasDenom = true;
  template <class M, class TileT>
  PROXOPT_HD static void update(int n, TileT& t, const Coeffs<M>& k) {
    M* sum = &t.s[0][0];
    PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) {
      sum[j] = sum[j] + t.g[j] * t.g[j];
      t.denom[j] = std::sqrt(sum[j]) + k.eps;
      t.w[j] = t.w[j] + k.neg_step * t.g[j] / t.denom[j];
    }
  }
};

template <bool Centered, bool Momentum>
struct Rmsprop {
  // square_avg, then momentum_buffer (if momentum), then grad_avg (if centered)
  static constexpr int kStates = 1 + int(Momentum) + int(Centered);
  static constexpr bool kHasDenom = true;
  template <class M, class TileT>
  PROXOPT_HD static void update(int n, TileT& t, const Coeffs<M>& k) {
    M *sq = &t.s[0][0], *buf = &t.s[1][0], *gavg = &t.s[1 + int(Momentum)][0];
    PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) {
      sq[j] = sq[j] * k.alpha + k.one_minus_alpha * t.g[j] * t.g[j];
      M avg;
      if constexpr (Centered) {
        gavg[j] = lerp(gavg[j], t.g[j], k.one_minus_alpha);
        avg = std::sqrt(sq[j] + M(-1) * gavg[j] * gavg[j]);
      } else {
        avg = std::sqrt(sq[j]);
      }
      t.denom[j] = avg + k.eps;
      if constexpr (Momentum) {
        buf[j] = buf[j] * k.momentum + t.g[j] / t.denom[j];
        t.w[j] = t.w[j] + k.neg_step * buf[j];
      } else {
        t.w[j] = t.w[j] + k.neg_step * t.g[j] / t.denom[j];
      }
    }
  }
};

// ---- the elementwise prox, in DESIGN order: L1 or L0, ridge, bounds --------

template <class M, class TileT>
PROXOPT_HD void prox_elementwise(int n, TileT& t, const Coeffs<M>& k, bool has_denom) {
  // Euclidean metric: tau = lr * lambda; adaptive: tau_i = lr * lambda / denom_i.
  const bool adaptive = has_denom && (k.flags & kAdaptive);
  if (k.flags & kL1) {
    if (adaptive) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = soft_threshold(t.w[j], k.l1_tau / t.denom[j]);
    else PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = soft_threshold(t.w[j], k.l1_tau);
  } else if (k.flags & kL0) {
    if (adaptive) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = hard_threshold(t.w[j], k.l0_tau / t.denom[j]);
    else PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = hard_threshold(t.w[j], k.l0_tau);
  }
  if (k.flags & kL2) {
    if (adaptive) PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = ridge(t.w[j], k.l2_tau / t.denom[j]);
    else PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = ridge(t.w[j], k.l2_tau);
  }
  // With a group prox the clamp comes last, after the group scaling (apply_group).
  if ((k.flags & kBounds) && !(k.flags & kGroupProx)) {
    PROXOPT_TILE_LOOP (int j = 0; j < n; ++j) t.w[j] = clamp(t.w[j], k.lo, k.hi);
  }
}

// ---- group proxes: one factor per group, from the norm of its updated weights

// Group soft threshold max(0, 1 - tau/||w_g||) (0 when ||w_g|| = 0), then the
// max-norm projection min(1, c/||w_g||) of the shrunk group, whose norm is
// ||w_g|| times the first factor. NaN norms propagate.
template <class M>
PROXOPT_HD M group_factor(M norm, const Coeffs<M>& k) {
  M f = M(1);
  if (k.flags & kGroupLasso) f = (norm <= k.group_tau) ? M(0) : M(1) - k.group_tau / norm;
  if (k.flags & kMaxNorm) {
    const M shrunk = norm * f;
    if (shrunk > k.max_norm) f = f * (k.max_norm / shrunk);
  }
  return f;
}

// Scale n weights of one group by its factor, then clamp to the bounds (the
// last step of all).
template <class M>
PROXOPT_HD void apply_group(int64_t n, M* w, M factor, const Coeffs<M>& k) {
  PROXOPT_TILE_LOOP (int64_t j = 0; j < n; ++j) w[j] = w[j] * factor;
  if (k.flags & kBounds) PROXOPT_TILE_LOOP (int64_t j = 0; j < n; ++j) w[j] = clamp(w[j], k.lo, k.hi);
}

// One step of one tile: the whole order of operations of DESIGN.md, except
// the group proxes, which need a norm over a whole group (drivers apply them).
template <class Rule, class M, class TileT>
PROXOPT_HD void step_tile(int n, TileT& t, const Coeffs<M>& k) {
  prepare_grad(n, t, k);
  Rule::update(n, t, k);
  if (k.flags & kElementwiseProx) prox_elementwise(n, t, k, Rule::kHasDenom);
}

}  // namespace proxopt
