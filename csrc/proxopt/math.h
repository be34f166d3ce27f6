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
//   6. L1 soft threshold or L0 hard threshold, ridge, the sparsity budget,
//      then bounds; where the step left a weight at 0, its states restart
//      (reset), and in the heal phase a weight that was 0 stays 0.
// Group proxes (group lasso, the channel budget, max-norm) need the norm of
// a whole group: the drivers apply group_factor to the weights this function
// returns, then the bounds (the very last operation); a group it zeroes gets
// fresh states when the reset is on.
//
// What changes the loop is a template argument, fixed once at the entry
// point: the rule (with its state layout) and the prox shape `P`. Switches
// that cost one select or one multiply (maximize, weight decay, nesterov, a
// fresh momentum buffer, euclidean L1/L0 thresholds, bounds) are uniform
// fields of Coeffs, with neutral values when off (inv_scale 1, tau 0,
// bounds +-inf): each is exact when off, so no flag is needed for it.
#pragma once

#include <algorithm>
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
//   kGroup:    a group prox follows;
//   kBudget:   the sparsity budget: a hard threshold at the tensor's budget
//              threshold, and the counts of |w| above its three probes.
// The shapes with kL1 or kL0 (the general ones too) can make zeros: they
// carry the state reset and the heal phase's frozen zeros (Coeffs reset and
// heal; coeffs.h prox_shape gives such a shape whenever either is on).
enum : unsigned {
  kL1 = 1u << 0,
  kL0 = 1u << 1,
  kRidge = 1u << 2,
  kClamp = 1u << 3,
  kAdaptive = 1u << 4,
  kGroup = 1u << 5,
  kBudget = 1u << 6,
};
constexpr unsigned kZeroing = kL1 | kL0;
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
  X(budget_thr)      /* the budget's hard threshold; -1 keeps every weight */         \
  X(probe_lo) X(probe_mid) X(probe_hi) /* the budget counts |w| above these */        \
  X(fresh0)          /* what a fresh state 0 holds (Adagrad's initial sum; else 0) */ \
  X(m_lerp) X(a_lerp) /* lerp factors of beta1_weight, one_minus_alpha (finish_coeffs) */
#define PROXOPT_COEFFS_DOUBLE(X)                                                       \
  X(group_lambda)    /* lr * group_lasso (the group's tau: times sqrt(group size)) */ \
  X(max_norm)
#define PROXOPT_COEFFS_SWITCH(X) \
  X(coupled) X(nesterov) X(fresh) X(group_lasso_on) X(max_norm_on) X(m_lerp_hi) X(a_lerp_hi)  \
  X(reset)           /* a weight the step leaves at exactly 0 gets fresh states */ \
  X(heal)            /* the heal phase: a weight that was 0 stays 0 */

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

// How many weights of a tensor the budget's probes saw above them, before
// the budget acted: the statistics its next threshold comes from (int32: a
// CPU chunk or a CUDA thread counts at most 2^31 elements).
struct BudgetCounts {
  int32_t lo = 0, mid = 0, hi = 0;
};

// Step 6 for the elementwise proxes (L1 or L0, ridge, budget, bounds), those of P.
template <unsigned P, class M>
PROXOPT_HD M prox_element(M w, M denom, const Coeffs<M>& k, BudgetCounts& c) {
  if constexpr ((P & kAdaptive) != 0) {
    if constexpr ((P & kL1) != 0) w = soft_threshold(w, k.l1_tau / denom);
    if constexpr ((P & kL0) != 0) w = hard_threshold_at(w, std::sqrt(M(2) * (k.l0_tau / denom)));
    if constexpr ((P & kRidge) != 0) w = ridge(w, k.l2_tau / denom);
  } else {
    if constexpr ((P & kL1) != 0) w = soft_threshold(w, k.l1_tau);
    if constexpr ((P & kL0) != 0) w = hard_threshold_at(w, k.l0_thr);
    if constexpr ((P & kRidge) != 0) w = w * k.l2_mul;  // the ridge, its division taken once
  }
  if constexpr ((P & kBudget) != 0) {
    const M a = std::fabs(w);
    c.lo += a > k.probe_lo ? 1 : 0;
    c.mid += a > k.probe_mid ? 1 : 0;
    c.hi += a > k.probe_hi ? 1 : 0;
    w = hard_threshold_at(w, k.budget_thr);
  }
  if constexpr ((P & kClamp) != 0) w = clamp(w, k.lo, k.hi);
  return w;
}

// One element of one tensor: returns the new weight (before any group
// prox) and updates the rule's states s[] in place; `c` receives the
// budget's counts (shapes with kBudget).
template <class Rule, unsigned P, class M>
PROXOPT_HD M step_element(M w, M g, M* s, const Coeffs<M>& k, BudgetCounts& c) {
  const M w0 = w;
  g = g * k.grad_mul;  // unscale and negate at once: g * (-s) = -(g * s) exactly
  g = k.coupled ? g + k.wd * w : g;
  const M denom = Rule::update(w, g, s, k);
  if constexpr ((P & (kGeneral | kBudget)) != 0) w = prox_element<P>(w, denom, k, c);
  if constexpr ((P & kZeroing) != 0) {
    // The heal phase's frozen support, then the reset: a weight at 0 keeps
    // no history (its states are those of a fresh entry), so it neither
    // drifts back on stale momentum nor carries it when it revives.
    // Selects on values of the math type: GCC vectorizes these, not a
    // select on two combined comparison masks (measured: AdamW with l1 ran
    // 4.7x slower, its loop left scalar).
    const M held = (k.heal != 0) ? w0 : M(1);  // 0 where the heal phase holds a zero
    w = (held == M(0)) ? M(0) : w;
    const M kept = (k.reset != 0) ? w : M(1);  // 0 where the state restarts
    if constexpr (Rule::kStates > 0) s[0] = (kept == M(0)) ? k.fresh0 : s[0];
    if constexpr (Rule::kStates > 1) s[1] = (kept == M(0)) ? M(0) : s[1];
    if constexpr (Rule::kStates > 2) s[2] = (kept == M(0)) ? M(0) : s[2];
  }
  return w;
}

// The same, for the shapes without a budget.
template <class Rule, unsigned P, class M>
PROXOPT_HD M step_element(M w, M g, M* s, const Coeffs<M>& k) {
  static_assert((P & kBudget) == 0, "a budget shape needs its counts");
  BudgetCounts unused;
  return step_element<Rule, P>(w, g, s, k, unused);
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
// With a channel budget (`slot` non-null: the group's slot in its tensor's
// row), the slot holds the plan's decision for this group (0: cut, 1: kept;
// channel_budget_plan) and receives the group's norm after the group lasso,
// which the next step's plan ranks. A cut group is zeroed before the
// max-norm projection.
template <class M>
PROXOPT_HD M group_factor(double norm, double tau, const Coeffs<M>& k, double* slot) {
  double f = 1.0;
  if (k.group_lasso_on) f = (norm <= tau) ? 0.0 : 1.0 - tau / norm;
  if (slot != nullptr) {
    const bool cut = *slot == 0.0;
    *slot = norm * f;
    f = cut ? 0.0 : f;
  }
  if (k.max_norm_on) {
    const double shrunk = norm * f;
    if (shrunk > k.max_norm) f = f * (k.max_norm / shrunk);
  }
  return M(f);
}

// The same, without a channel budget.
template <class M>
PROXOPT_HD M group_factor(double norm, double tau, const Coeffs<M>& k) {
  return group_factor<M>(norm, tau, k, nullptr);
}

// The last operation on a weight of a group: its factor, then the bounds.
template <class M>
PROXOPT_HD M finish_group(M w, M factor, const Coeffs<M>& k) {
  return clamp(w * factor, k.lo, k.hi);
}

// ---- the sparsity budget's threshold, from the last step's counts ----------------
// A budget unit (one tensor, or every tensor of a param group with the group
// scope) keeps `keep` of its n weights: those whose |w| after the proxes
// exceeds a threshold. The threshold of a step is chosen before the step,
// from the counts the previous step gathered at three probes c/R, c, c*R
// around the last threshold c (no second pass over the weights): the count
// N(x) = #{|w| > x} is interpolated linearly in log x between them and aimed
// at keep + 0.0002 n - D (kBudgetSlack). The drift D is how much N at the threshold changes between
// the counting and the next step (survivors near the threshold move, and
// those that fall below it are cut), learnt from what each step aimed at
// and reached (bounded by 5 % of n). Once a step has cut, only the
// survivors above c remain: the aim is capped at them plus the drift (a
// weight cut is not brought back) and the threshold moves along their
// density between c and cR, at most one probe down. More to cut than the
// probes see moves it one probe up and widens them; an interpolated step
// narrows them back towards kBudgetMinRatio.
// One row of kBudgetFields doubles per tensor (optimizer state
// "sparsity_stats"); a unit's fields live in every member's row, the counts
// are each member's own (-1 in fresh statistics: their first step only
// counts, so that the first cut is planned from weights the rule has moved).
enum BudgetField : int {
  kBudgetThr,     // the threshold applied at the last step (-1: none; inf: all)
  kBudgetCenter,  // c, the middle probe (the threshold, while there is one)
  kBudgetRatio,   // R, the probes' spacing
  kBudgetDrift,   // D
  kBudgetAim,     // what the last threshold aimed N_last at
  kBudgetLo, kBudgetMid, kBudgetHi,  // N at c/R, c, c*R, as the last step counted them
  kBudgetFields
};
constexpr double kBudgetMinRatio = 1.2, kBudgetMaxRatio = 16.0;
// The aim keeps this fraction of n more than the budget: a weight left is
// cut at the next step, one cut too many is not brought back.
constexpr double kBudgetSlack = 0.0002;

// How many of n weights a budget of sparsity s keeps: n - ceil(s n) (at
// least a fraction s of zeros), ignoring the rounding error of s * n.
PROXOPT_HD int64_t budget_keep(double s, int64_t n) {
  const double zeros = std::ceil(s * double(n) - 1e-6);
  if (zeros <= 0) return n;
  if (zeros >= double(n)) return 0;
  return n - int64_t(zeros);
}

// The threshold of this step from the unit's fields and its summed counts
// `lo, mid, hi` (the last step's): writes the unit's fields into `row` (the
// counts are the caller's to clear).
PROXOPT_HD void budget_plan(double* row, double lo, double mid, double hi, int64_t keep, int64_t n) {
  const double c = row[kBudgetCenter];
  double r = row[kBudgetRatio];
  double drift = row[kBudgetDrift];
  // Whether the last step cut at c: then what it counted below c is gone.
  const bool cut = row[kBudgetThr] > 0 && row[kBudgetThr] == c;
  if (cut && row[kBudgetAim] == row[kBudgetAim]) {  // it aimed N at `aim` and reached `mid`
    const double bound = 0.05 * double(n);
    drift = 0.5 * drift + 0.5 * (mid - row[kBudgetAim]);
    drift = drift > bound ? bound : (drift < -bound ? -bound : drift);
  }
  row[kBudgetDrift] = drift;
  row[kBudgetAim] = NAN;
  if (keep <= 0) {
    row[kBudgetThr] = INFINITY;
    return;
  }
  if (keep >= n || lo < 0) {  // nothing to prune, or fresh statistics (no counts yet: this step only counts)
    row[kBudgetThr] = -1;
    return;
  }
  double aim = double(keep) + kBudgetSlack * double(n) - drift;
  double x = c;
  if (!cut && aim > mid) {
    // Nothing cut yet: the counts below c stand. Between the lower probes,
    // or one probe down (wider) when even c/R keeps too few.
    if (aim > lo) {
      x = c / r;
      r = r * 2 < kBudgetMaxRatio ? r * 2 : kBudgetMaxRatio;
    } else {
      x = (c / r) * std::pow(r, lo > mid ? (lo - aim) / (lo - mid) : 1.0);
      r = std::sqrt(r) > kBudgetMinRatio ? std::sqrt(r) : kBudgetMinRatio;
      row[kBudgetAim] = aim;
    }
  } else {
    // After a cut only the survivors (above c) are left: never aim at more
    // than they are plus the drift (weights cut are not brought back), and
    // move along the survivors' density between c and cR, at most one probe.
    if (cut && aim > mid - drift) aim = mid - drift;
    if (aim < hi) {  // more to cut than the probes see: one probe up, wider
      x = c * r;
      r = r * 2 < kBudgetMaxRatio ? r * 2 : kBudgetMaxRatio;
    } else {
      double f = mid > hi ? (mid - aim) / (mid - hi) : 0.0;
      f = f < -1 ? -1 : f;
      x = c * std::pow(r, f);
      r = std::sqrt(r) > kBudgetMinRatio ? std::sqrt(r) : kBudgetMinRatio;
      row[kBudgetAim] = aim;
    }
  }
  x = x > 1e-30 ? (x < 1e30 ? x : 1e30) : 1e-30;  // a positive, finite threshold (an all-zero unit drives x down)
  row[kBudgetThr] = x;
  row[kBudgetCenter] = x;
  row[kBudgetRatio] = r;
}

// ---- the channel budget: an exact ranking on O(groups) data ------------------
// A tensor with channel_sparsity keeps `keep` of its G groups. Its row of
// statistics is kBudgetFields values followed by one slot per group: the
// group norms (after the group lasso) the last step wrote. Before a step the
// plan ranks them (largest first; ties to the lower index; NaN as +inf) and
// overwrites each slot with its decision: 1 for the `keep` largest, 0 for
// the others, which this step zeroes (group_factor) while it writes their
// new norms. So every step zeroes exactly G - keep groups, chosen by the
// norms one step old (a group cut at the last step has one step's norm and
// stays at the bottom). No norms yet (kBudgetLo < 0): every group is kept.
// kBudgetThr receives the norm halfway between the kept and the cut (-1:
// none cut; inf: all). Host code: O(G log G) per tensor per step, before it.
inline void channel_budget_plan(double* row, int64_t groups, int64_t keep, int64_t* order) {
  double* slot = row + kBudgetFields;
  row[kBudgetAim] = NAN;
  const bool ranked = keep > 0 && keep < groups && row[kBudgetLo] >= 0;
  double thr = keep <= 0 ? INFINITY : -1.0;
  if (ranked) {
    auto norm = [&](int64_t q) { return slot[q] == slot[q] ? slot[q] : INFINITY; };
    for (int64_t q = 0; q < groups; ++q) order[q] = q;
    std::nth_element(order, order + keep, order + groups, [&](int64_t a, int64_t b) {
      return norm(a) > norm(b) || (norm(a) == norm(b) && a < b);
    });
    double last = INFINITY, next = -INFINITY;  // the smallest kept, the largest cut
    for (int64_t r = 0; r < keep; ++r) last = std::min(last, norm(order[r]));
    for (int64_t r = keep; r < groups; ++r) next = std::max(next, norm(order[r]));
    thr = std::isfinite(last) ? next + 0.5 * (last - next) : next;
    for (int64_t r = 0; r < groups; ++r) slot[order[r]] = r < keep ? 1.0 : 0.0;
  } else {
    for (int64_t q = 0; q < groups; ++q) slot[q] = keep <= 0 ? 0.0 : 1.0;
  }
  row[kBudgetThr] = thr;
}

}  // namespace proxopt
