// The math of one optimizer step, per element, written once for the CPU and
// CUDA kernels. Every line mirrors python/proxopt/reference.py in the same
// order of operations, so fused and reference results stay within rounding.
//
// Order inside a step, all in one visit of the element:
//   1. g <- grad * (1/grad_scale) (AMP), negated if maximize;
//   2. g <- g + wd * w                 (coupled weight decay);
//   3. the rule's state update and direction d;
//   4. w <- w * (1 - lr * wd)          (decoupled weight decay, AdamW);
//   5. w <- w - step * d;
//   6. L1 soft threshold or L0 hard threshold, ridge, then bounds.
// Group proxes (group lasso, max-norm) need the norm of a whole group: the
// drivers apply group_factor to the weights this function returns, then
// the bounds (the very last operation).
//
// What changes the loop is a template argument, fixed once at the entry
// point: the rule (with its state layout) and the prox shape `P`. Switches
// that cost one select or one multiply (maximize, weight decay, nesterov, a
// fresh momentum buffer, euclidean L1/L0 thresholds, bounds) are uniform
// fields of Coeffs, with neutral values when off (inv_scale 1, tau 0,
// bounds +-inf): each is exact when off, so no flag is needed for it.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PROXOPT_HD __host__ __device__ __forceinline__
#else
#define PROXOPT_HD inline __attribute__((always_inline))
#endif

namespace proxopt {

// ---- prox shapes: the template argument P ---------------------------------
// Each bit compiles one elementwise prox into the loop (coeffs.h prox_shape
// picks the shape of a param group): the common single regularizers get a
// loop with exactly their operations -- in cache, every extra operation is
// measurable next to Adam's square root and two divisions -- and any other
// combination the general shape, every prox in, the unused ones at their
// neutral values (tau 0, the L0 threshold -1, bounds +-inf), each exact.
//   kL1, kL0:  soft / hard threshold (exclusive: at most one is nonzero);
//   kRidge:    w / (1 + tau2);
//   kClamp:    bounds (with a group prox the driver clamps, after the group);
//   kAdaptive: tau_i = lr * lambda / denom_i (prox_metric="adaptive");
//   kGroup:    a group prox follows.
enum : unsigned {
  kL1 = 1u << 0,
  kL0 = 1u << 1,
  kRidge = 1u << 2,
  kClamp = 1u << 3,
  kAdaptive = 1u << 4,
  kGroup = 1u << 5,
};
constexpr unsigned kGeneral = kL1 | kL0 | kRidge | kClamp;
// A group prox with elementwise proxes before it (the bounds follow the group).
constexpr unsigned kGroupGeneral = kGroup | (kGeneral & ~kClamp);

// The scalars of one tensor's step, computed once on the host in double
// (coeffs.h) and rounded once to the math type M. Each field is declared
// once, in one of three lists by its type: the math type, double (the group
// proxes decide in double, see group_factor) and int32 switches (0 or 1;
// int32, not bool: GCC packs adjacent bools of a copied struct into one word
// and then cannot vectorize selects on them). cast() follows from the lists.
#define PROXOPT_COEFFS_MATH(X)                                                         \
  X(grad_mul)        /* AMP's 1 / grad_scale (1 without AMP), negative if maximize */ \
  X(wd)              /* coupled weight decay (0 when off or decoupled) */             \
  X(decay)           /* decoupled decay factor 1 - lr * wd (1 when off: exact) */     \
  X(neg_step)        /* -(step size); Adam: -lr / (1 - beta1^t) */                    \
  X(beta1_weight)    /* Adam: 1 - beta1 (lerp weight of the first moment) */          \
  X(beta2) X(one_minus_beta2)                                                         \
  X(inv_bc2_sqrt)    /* Adam: 1 / sqrt(1 - beta2^t) */                                \
  X(eps)                                                                              \
  X(momentum) X(one_minus_dampening) /* SGD / RMSprop momentum */                     \
  X(alpha) X(one_minus_alpha)        /* RMSprop smoothing */                          \
  X(l1_tau) X(l0_tau) /* lr * lambda */                                               \
  X(l0_thr)          /* sqrt(2 * l0_tau), -1 when off (finish_coeffs) */              \
  X(l2_tau)                                                                           \
  X(l2_mul)          /* the euclidean ridge factor 1 / (1 + l2_tau) (finish_coeffs) */ \
  X(lo) X(hi)        /* bounds */                                                     \
  X(m_lerp) X(a_lerp) /* lerp factors of beta1_weight, one_minus_alpha (finish_coeffs) */
#define PROXOPT_COEFFS_DOUBLE(X)                                                       \
  X(group_lambda)    /* lr * group_lasso (the group's tau: times sqrt(group size)) */ \
  X(max_norm)
#define PROXOPT_COEFFS_SWITCH(X) \
  X(coupled) X(nesterov) X(fresh) X(group_lasso_on) X(max_norm_on) X(m_lerp_hi) X(a_lerp_hi)

template <class M>
struct Coeffs {
#define PROXOPT_MATH_FIELD(name) M name;
#define PROXOPT_DOUBLE_FIELD(name) double name;
#define PROXOPT_SWITCH_FIELD(name) int32_t name;
  PROXOPT_COEFFS_MATH(PROXOPT_MATH_FIELD)
  PROXOPT_COEFFS_DOUBLE(PROXOPT_DOUBLE_FIELD)
  PROXOPT_COEFFS_SWITCH(PROXOPT_SWITCH_FIELD)
#undef PROXOPT_MATH_FIELD
#undef PROXOPT_DOUBLE_FIELD
#undef PROXOPT_SWITCH_FIELD

  template <class N>
  PROXOPT_HD Coeffs<N> cast() const {
    Coeffs<N> out;
#define PROXOPT_CAST_MATH(name) out.name = N(name);
#define PROXOPT_COPY(name) out.name = name;
    PROXOPT_COEFFS_MATH(PROXOPT_CAST_MATH)
    PROXOPT_COEFFS_DOUBLE(PROXOPT_COPY)
    PROXOPT_COEFFS_SWITCH(PROXOPT_COPY)
#undef PROXOPT_CAST_MATH
#undef PROXOPT_COPY
    return out;
  }
};

// ---- helpers with torch's exact semantics --------------------------------

// torch.lerp(a, b, w): a + w (b - a) for w < 0.5, else b - (b - a)(1 - w). For
// a weight uniform over the tensor the branch is taken once (finish_coeffs):
// (hi ? b : a) + (b - a) c, with c = w or -(1 - w) -- the same roundings, as
// x (-y) = -(x y) and b + (-z) = b - z exactly.
template <class M>
PROXOPT_HD M lerp(M a, M b, M c, int32_t hi) {
  return (hi ? b : a) + (b - a) * c;
}

// torch.maximum: NaN in either argument propagates.
template <class M>
PROXOPT_HD M maximum(M a, M b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// ---- proximal operators (each the argmin_x 1/2|x - w|^2 + tau*R(x)) ------

// Projection onto [lo, hi]: two selects, each one min/max instruction; NaN
// stays NaN; +-inf bounds are the identity.
template <class M>
PROXOPT_HD M clamp(M w, M lo, M hi) {
  M c = (w < lo) ? lo : w;
  return (c > hi) ? hi : c;
}

// R = |x|: sign(w) * max(|w| - tau, 0), computed as w - clamp(w, -tau, tau):
// the same roundings (|w| - tau, or its negation), three instructions instead
// of six, exact zeros (of either sign) where |w| <= tau; NaN stays NaN; tau 0
// is the identity.
template <class M>
PROXOPT_HD M soft_threshold(M w, M tau) {
  return w - clamp(w, -tau, tau);
}

// R = |x|_0: keep w where |w| > thr = sqrt(2 tau), else 0. NaN stays NaN; a
// negative thr is the identity.
template <class M>
PROXOPT_HD M hard_threshold_at(M w, M thr) {
  return (std::fabs(w) <= thr) ? M(0) : w;
}

// R = 1/2 x^2: w / (1 + tau), as w * (1 / (1 + tau)): for a tau uniform over
// the tensor the division is taken once (finish_coeffs: l2_mul).
template <class M>
PROXOPT_HD M ridge(M w, M tau) {
  return w * (M(1) / (M(1) + tau));
}

// ---- update rules ---------------------------------------------------------
// Rule::update(w, g, s, k) advances the states s[0..kStates), moves w
// (steps 3-5) and returns the per-element preconditioner (1 where the rule
// has none), which the adaptive prox metric divides by. kRule is the rule's
// code and kMask the states it keeps, as bits of its row of the rule table
// (rules.h); variants.h checks kStates and kHasDenom against that table.

template <bool Momentum>
struct Sgd {
  static constexpr int kRule = 0;
  static constexpr unsigned kMask = Momentum ? 1u : 0u;
  static constexpr int kStates = Momentum ? 1 : 0;  // momentum_buffer
  static constexpr bool kHasDenom = false;
  template <class M>
  PROXOPT_HD static M update(M& w, M g, M* s, const Coeffs<M>& k) {
    M d = g;
    if constexpr (Momentum) {
      const M buf = k.fresh ? g : s[0] * k.momentum + k.one_minus_dampening * g;
      s[0] = buf;
      d = k.nesterov ? g + k.momentum * buf : buf;
    }
    w = w + k.neg_step * d;
    return M(1);
  }
};

template <bool Amsgrad>
struct Adam {
  static constexpr int kRule = 1;
  static constexpr unsigned kMask = Amsgrad ? 7u : 3u;
  static constexpr int kStates = Amsgrad ? 3 : 2;  // exp_avg, exp_avg_sq, max_exp_avg_sq
  static constexpr bool kHasDenom = true;
  template <class M>
  PROXOPT_HD static M update(M& w, M g, M* s, const Coeffs<M>& k) {
    const M m = lerp(s[0], g, k.m_lerp, k.m_lerp_hi);
    const M v = s[1] * k.beta2 + k.one_minus_beta2 * g * g;
    s[0] = m;
    s[1] = v;
    M vhat = v;
    if constexpr (Amsgrad) {
      vhat = maximum(s[2], v);
      s[2] = vhat;
    }
    const M denom = std::sqrt(vhat) * k.inv_bc2_sqrt + k.eps;
    w = w * k.decay;
    w = w + k.neg_step * m / denom;
    return denom;
  }
};

struct Adagrad {
  static constexpr int kRule = 2;
  static constexpr unsigned kMask = 1u;
  static constexpr int kStates = 1;  // sum
  static constexpr bool kHasDenom = true;
  template <class M>
  PROXOPT_HD static M update(M& w, M g, M* s, const Coeffs<M>& k) {
    const M sum = s[0] + g * g;
    s[0] = sum;
    const M denom = std::sqrt(sum) + k.eps;
    w = w + k.neg_step * g / denom;
    return denom;
  }
};

template <bool Centered, bool Momentum>
struct Rmsprop {
  static constexpr int kRule = 3;
  static constexpr unsigned kMask = 1u | (Momentum ? 2u : 0u) | (Centered ? 4u : 0u);
  // square_avg, then momentum_buffer (if momentum), then grad_avg (if centered)
  static constexpr int kStates = 1 + int(Momentum) + int(Centered);
  static constexpr bool kHasDenom = true;
  template <class M>
  PROXOPT_HD static M update(M& w, M g, M* s, const Coeffs<M>& k) {
    const M sq = s[0] * k.alpha + k.one_minus_alpha * g * g;
    s[0] = sq;
    M avg;
    if constexpr (Centered) {
      const M gavg = lerp(s[1 + int(Momentum)], g, k.a_lerp, k.a_lerp_hi);
      s[1 + int(Momentum)] = gavg;
      // One rounding, as torch's addcmul (an fma): square_avg - grad_avg^2
      // stays inf where grad_avg^2 alone would overflow (inf - inf = NaN).
      avg = std::sqrt(std::fma(-gavg, gavg, sq));
    } else {
      avg = std::sqrt(sq);
    }
    const M denom = avg + k.eps;
    if constexpr (Momentum) {
      const M buf = s[1] * k.momentum + g / denom;
      s[1] = buf;
      w = w + k.neg_step * buf;
    } else {
      w = w + k.neg_step * g / denom;
    }
    return denom;
  }
};

// ---- one element: the whole order of operations ---------------------------

// Step 6 for the elementwise proxes (L1 or L0, ridge, bounds), those of P.
template <unsigned P, class M>
PROXOPT_HD M prox_element(M w, M denom, const Coeffs<M>& k) {
  if constexpr ((P & kAdaptive) != 0) {
    if constexpr ((P & kL1) != 0) w = soft_threshold(w, k.l1_tau / denom);
    if constexpr ((P & kL0) != 0) w = hard_threshold_at(w, std::sqrt(M(2) * (k.l0_tau / denom)));
    if constexpr ((P & kRidge) != 0) w = ridge(w, k.l2_tau / denom);
  } else {
    if constexpr ((P & kL1) != 0) w = soft_threshold(w, k.l1_tau);
    if constexpr ((P & kL0) != 0) w = hard_threshold_at(w, k.l0_thr);
    if constexpr ((P & kRidge) != 0) w = w * k.l2_mul;  // the ridge, its division taken once
  }
  if constexpr ((P & kClamp) != 0) w = clamp(w, k.lo, k.hi);
  return w;
}

// One element of one tensor: returns the new weight (before any group
// prox) and updates the rule's states s[] in place.
template <class Rule, unsigned P, class M>
PROXOPT_HD M step_element(M w, M g, M* s, const Coeffs<M>& k) {
  g = g * k.grad_mul;  // unscale and negate at once: g * (-s) = -(g * s) exactly
  g = k.coupled ? g + k.wd * w : g;
  const M denom = Rule::update(w, g, s, k);
  if constexpr ((P & kGeneral) != 0) w = prox_element<P>(w, denom, k);
  return w;
}

// ---- group proxes: one factor per group, from the norm of its updated weights

// A group's threshold: lr * group_lasso * sqrt(group size), in double, in
// the reference's order.
PROXOPT_HD double group_tau(double group_lambda, int64_t group_size) {
  return group_lambda * std::sqrt(double(group_size));
}

// Group soft threshold max(0, 1 - tau/||w_g||) (0 when ||w_g|| <= tau), then
// the max-norm projection min(1, c/||w_g||) of the shrunk group, whose norm
// is ||w_g|| times the first factor. NaN norms propagate. The norm arrives in
// double (sums of squares are accumulated in double) and the factor is
// computed in double, so a group whose norm exceeds the math type's range
// (||w|| > FLT_MAX for float) is still scaled, not zeroed.
// `tau` is the group's threshold (group_tau).
template <class M>
PROXOPT_HD M group_factor(double norm, double tau, const Coeffs<M>& k) {
  double f = 1.0;
  if (k.group_lasso_on) f = (norm <= tau) ? 0.0 : 1.0 - tau / norm;
  if (k.max_norm_on) {
    const double shrunk = norm * f;
    if (shrunk > k.max_norm) f = f * (k.max_norm / shrunk);
  }
  return M(f);
}

// The last operation on a weight of a group: its factor, then the bounds.
template <class M>
PROXOPT_HD M finish_group(M w, M factor, const Coeffs<M>& k) {
  return clamp(w * factor, k.lo, k.hi);
}

}  // namespace proxopt
