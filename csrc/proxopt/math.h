// The math of one optimizer step, per element, written once for the CPU and
// CUDA kernels. Every line mirrors python/proxopt/reference.py in the same
// order of operations, so fused and reference results stay within rounding.
//
// Order inside a step (DESIGN.md), all in one visit of the element:
//   1. g <- grad * inv_scale (AMP), negated if maximize;
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
// kProx:     the elementwise prox runs (L1 and L0 thresholds with the
//            euclidean tau, bounds); its absence is the plain step.
// kRidge:    the ridge prox w / (1 + tau2): one division per element.
// kAdaptive: tau_i = lr * lambda / denom_i (prox_metric="adaptive"), with
//            kAdaptiveL0 choosing the hard threshold over the soft one.
// kGroup:    a group prox follows: bounds wait for it (the driver clamps).
enum : unsigned {
  kProx = 1u << 0,
  kRidge = 1u << 1,
  kAdaptive = 1u << 2,
  kAdaptiveL0 = 1u << 3,
  kGroup = 1u << 4,
};

// The scalars of one tensor's step, computed once on the host in double
// (coeffs.h) and rounded once to the math type M.
template <class M>
struct Coeffs {
  M inv_scale;            // AMP: 1 / grad_scale (1 without AMP)
  M wd;                   // coupled weight decay (0 when off or decoupled)
  M decay;                // decoupled decay factor 1 - lr * wd (1 when off)
  M neg_step;             // -(step size); Adam: -lr / (1 - beta1^t)
  M beta1_weight;         // Adam: 1 - beta1 (lerp weight of the first moment)
  M beta2, one_minus_beta2, bc2_sqrt;  // Adam second moment and its bias correction
  M eps;
  M momentum, one_minus_dampening;     // SGD / RMSprop momentum
  M alpha, one_minus_alpha;            // RMSprop smoothing
  M l1_tau, l0_tau, l0_thr, l2_tau;    // lr * lambda; l0_thr = sqrt(2 * l0_tau)
  M lo, hi;                            // bounds
  double group_lambda;                 // lr * group_lasso (times sqrt(group size): the group's tau)
  double max_norm;                     // group proxes decide in double (see group_factor)
  // Uniform switches, 0 or 1. int32, not bool: GCC packs adjacent bools of a
  // copied struct into one word and then cannot vectorize selects on them.
  int32_t maximize, coupled, decoupled, nesterov, fresh, l0_on, group_lasso_on, max_norm_on;

  template <class N>
  PROXOPT_HD Coeffs<N> cast() const {
    return Coeffs<N>{N(inv_scale), N(wd), N(decay), N(neg_step), N(beta1_weight), N(beta2),
                     N(one_minus_beta2), N(bc2_sqrt), N(eps), N(momentum), N(one_minus_dampening),
                     N(alpha), N(one_minus_alpha), N(l1_tau), N(l0_tau), N(l0_thr), N(l2_tau),
                     N(lo), N(hi), group_lambda, max_norm, maximize, coupled, decoupled,
                     nesterov, fresh, l0_on, group_lasso_on, max_norm_on};
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

// R = |x|: sign(w) * max(|w| - tau, 0). Exact zeros; NaN stays NaN; tau = 0
// is the identity.
template <class M>
PROXOPT_HD M soft_threshold(M w, M tau) {
  M a = std::fabs(w) - tau;
  a = (a < M(0)) ? M(0) : a;
  return std::copysign(a, w);
}

// R = |x|_0: keep w where |w| > thr = sqrt(2 tau), else 0. NaN stays NaN.
template <class M>
PROXOPT_HD M hard_threshold_at(M w, M thr) {
  return (std::fabs(w) <= thr) ? M(0) : w;
}

// R = 1/2 x^2: w / (1 + tau).
template <class M>
PROXOPT_HD M ridge(M w, M tau) {
  return w / (M(1) + tau);
}

// Projection onto [lo, hi]; NaN stays NaN; +-inf bounds are the identity.
template <class M>
PROXOPT_HD M clamp(M w, M lo, M hi) {
  return (w < lo) ? lo : ((w > hi) ? hi : w);
}

// ---- update rules ---------------------------------------------------------
// Rule::update(w, g, s, k) advances the states s[0..kStates), moves w
// (steps 3-5) and returns the per-element preconditioner (1 where the rule
// has none), which the adaptive prox metric divides by.

template <bool Momentum>
struct Sgd {
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
  static constexpr int kStates = Amsgrad ? 3 : 2;  // exp_avg, exp_avg_sq, max_exp_avg_sq
  static constexpr bool kHasDenom = true;
  template <class M>
  PROXOPT_HD static M update(M& w, M g, M* s, const Coeffs<M>& k) {
    const M m = lerp(s[0], g, k.beta1_weight);
    const M v = s[1] * k.beta2 + k.one_minus_beta2 * g * g;
    s[0] = m;
    s[1] = v;
    M vhat = v;
    if constexpr (Amsgrad) {
      vhat = maximum(s[2], v);
      s[2] = vhat;
    }
    const M denom = std::sqrt(vhat) / k.bc2_sqrt + k.eps;
    w = k.decoupled ? w * k.decay : w;
    w = w + k.neg_step * m / denom;
    return denom;
  }
};

struct Adagrad {
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
  // square_avg, then momentum_buffer (if momentum), then grad_avg (if centered)
  static constexpr int kStates = 1 + int(Momentum) + int(Centered);
  static constexpr bool kHasDenom = true;
  template <class M>
  PROXOPT_HD static M update(M& w, M g, M* s, const Coeffs<M>& k) {
    const M sq = s[0] * k.alpha + k.one_minus_alpha * g * g;
    s[0] = sq;
    M avg;
    if constexpr (Centered) {
      const M gavg = lerp(s[1 + int(Momentum)], g, k.one_minus_alpha);
      s[1 + int(Momentum)] = gavg;
      avg = std::sqrt(sq + M(-1) * gavg * gavg);
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

// Step 6 for the elementwise proxes (L1 or L0, ridge, bounds).
template <unsigned P, class M>
PROXOPT_HD M prox_element(M w, M denom, const Coeffs<M>& k) {
  if constexpr ((P & kAdaptive) != 0) {
    if constexpr ((P & kAdaptiveL0) != 0) {
      w = hard_threshold_at(w, std::sqrt(M(2) * (k.l0_tau / denom)));
    } else {
      w = soft_threshold(w, k.l1_tau / denom);
    }
    w = ridge(w, k.l2_tau / denom);  // tau 0: w / 1, exact
  } else {
    w = soft_threshold(w, k.l1_tau);                           // tau 0: the identity
    w = (k.l0_on && std::fabs(w) <= k.l0_thr) ? M(0) : w;      // hard threshold
    if constexpr ((P & kRidge) != 0) w = ridge(w, k.l2_tau);
  }
  if constexpr ((P & kGroup) == 0) w = clamp(w, k.lo, k.hi);
  return w;
}

// One element of one tensor: returns the new weight (before any group
// prox) and updates the rule's states s[] in place.
template <class Rule, unsigned P, class M>
PROXOPT_HD M step_element(M w, M g, M* s, const Coeffs<M>& k) {
  g = g * k.inv_scale;
  g = k.maximize ? -g : g;
  g = k.coupled ? g + k.wd * w : g;
  const M denom = Rule::update(w, g, s, k);
  if constexpr ((P & kProx) != 0) w = prox_element<P>(w, denom, k);
  return w;
}

// ---- group proxes: one factor per group, from the norm of its updated weights

// Group soft threshold max(0, 1 - tau/||w_g||) (0 when ||w_g|| <= tau), then
// the max-norm projection min(1, c/||w_g||) of the shrunk group, whose norm
// is ||w_g|| times the first factor. NaN norms propagate. The norm arrives in
// double (sums of squares are accumulated in double) and the factor is
// computed in double, so a group whose norm exceeds the math type's range
// (||w|| > FLT_MAX for float) is still scaled, not zeroed.
// `tau` is the group's threshold lr * group_lasso * sqrt(group size).
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
