// The per-step scalars of one tensor, derived in double from the group's
// hyperparameters, its step count and lr: bias corrections, the decayed lr,
// lr * lambda. Host and device code: the CPU computes them once per distinct
// step count of a call; a capturable CUDA step computes them in the kernel
// from the step counter and lr on the device.
#pragma once

#include <cmath>

#include "math.h"
#include "rules.h"

namespace proxopt {

// AMP's inverse scale as torch's GradScaler computes it: the reciprocal in
// double, rounded to float32 (1 without AMP).
PROXOPT_HD double inv_grad_scale(const float* grad_scale) {
  return grad_scale != nullptr ? double(float(1.0 / double(*grad_scale))) : 1.0;
}

// `t` is the step count after this step's increment, `lr` the group's lr
// (a tensor lr has been read by the caller), `inv_scale` AMP's 1/grad_scale
// (1 without AMP), `fresh` an SGD momentum buffer that has no value yet.
PROXOPT_HD Coeffs<double> make_coeffs(const Hyper& h, double t, double lr, double inv_scale, bool fresh) {
  Coeffs<double> k{};
  const RuleKind rule = RuleKind(int(h.rule));  // (Hyper's methods are host code)
  double prox_lr = lr;  // the lr the prox thresholds scale with
  k.grad_mul = h.maximize != 0 ? -inv_scale : inv_scale;
  k.eps = h.eps;
  k.momentum = h.momentum;
  k.one_minus_dampening = 1.0 - h.dampening;
  k.alpha = h.alpha;
  k.one_minus_alpha = 1.0 - h.alpha;
  k.decay = 1.0;
  k.inv_bc2_sqrt = 1.0;
  k.neg_step = -lr;
  if (rule == RuleKind::kAdam) {
    const double bc1 = 1.0 - pow(h.beta1, t);
    const double bc2 = 1.0 - pow(h.beta2, t);
    k.neg_step = -(lr / bc1);
    k.inv_bc2_sqrt = 1.0 / pow(bc2, 0.5);  // Python's bc2 ** 0.5, as torch writes it
    k.beta1_weight = 1.0 - h.beta1;
    k.beta2 = h.beta2;
    k.one_minus_beta2 = 1.0 - h.beta2;
  } else if (rule == RuleKind::kAdagrad) {  // lr / (1 + (t - 1) * lr_decay)
    prox_lr = lr / (1.0 + (t - 1.0) * h.lr_decay);
    k.neg_step = -prox_lr;
  }
  if (h.weight_decay != 0) {
    if (h.decoupled_weight_decay != 0) {
      k.decay = 1.0 - lr * h.weight_decay;
    } else {
      k.coupled = 1;
      k.wd = h.weight_decay;
    }
  }
  k.nesterov = h.nesterov != 0;
  k.fresh = fresh;
  k.l1_tau = prox_lr * h.l1;
  k.l0_tau = prox_lr * h.l0;
  k.l2_tau = prox_lr * h.l2;
  k.lo = h.lo;
  k.hi = h.hi;
  k.group_lambda = prox_lr * h.group_lasso;
  k.group_lasso_on = h.group_lasso != 0;
  k.max_norm = h.max_norm;
  k.max_norm_on = h.max_norm != 0;
  k.budget_thr = -1;  // the tensor's own threshold and probes replace these (budget shapes)
  k.probe_lo = k.probe_mid = k.probe_hi = INFINITY;
  k.fresh0 = rule == RuleKind::kAdagrad ? h.initial_accumulator_value : 0.0;
  k.heal = h.heal != 0;
  // A weight the step leaves at 0 gets fresh states with a prox that makes
  // zeros (and reset_state), and always in the heal phase.
  k.reset = h.heal != 0 || (h.reset_state != 0 && (h.l1 != 0 || h.l0 != 0 || h.budget() != 0));
  return k;
}

// The euclidean L0 threshold sqrt(2 * tau), rounded in the math type as the
// reference computes it (call on the cast coefficients); -1 when L0 is off,
// which keeps every weight.
// The ridge factor and the lerp weights' branch are taken here too, in the math type as torch.lerp
// computes 1 - w (math.h lerp).
template <class M>
PROXOPT_HD Coeffs<M> finish_coeffs(Coeffs<M> k) {
  k.l0_thr = k.l0_tau > M(0) ? std::sqrt(M(2) * k.l0_tau) : M(-1);
  k.l2_mul = M(1) / (M(1) + k.l2_tau);  // ridge's factor, in the math type as ridge() computes it
  k.m_lerp_hi = !(k.beta1_weight < M(0.5));
  k.m_lerp = k.m_lerp_hi ? -(M(1) - k.beta1_weight) : k.beta1_weight;
  k.a_lerp_hi = !(k.one_minus_alpha < M(0.5));
  k.a_lerp = k.a_lerp_hi ? -(M(1) - k.one_minus_alpha) : k.one_minus_alpha;
  return k;
}

// The prox shape (math.h) a group's hyperparameters need: exactly their
// proxes for a single regularizer (and L1 + L2), the general shape otherwise;
// a budget adds kBudget to the general shape, and the state reset and the
// heal phase need a shape that can make zeros. It returns one of
// variants.h's CpuShapes (cuda_prox_shape maps it onto the fewer CUDA
// shapes; a budget shape has no CUDA kernel).
inline unsigned prox_shape(const Hyper& h) {
  unsigned used = (h.l1 != 0 ? kL1 : 0u) | (h.l0 != 0 ? kL0 : 0u) | (h.l2 != 0 ? kRidge : 0u);
  // (a channel budget alone keeps the plain group shape: it resets the
  // groups it zeroes, not single weights -- the general group shape costs
  // several times the plain one)
  const bool resets = h.heal != 0 || (h.reset_state != 0 && (used & kZeroing) != 0);
  // (a budget after a group prox has no kernel: this shape is in no list)
  if (h.has_group()) return h.sparsity != 0 ? kGroupGeneral | kBudget : (used != 0 || resets ? kGroupGeneral : kGroup);
  if (h.sparsity != 0) return (h.adaptive != 0 && used != 0 ? kAdaptive : 0u) | kGeneral | kBudget;
  const bool bounded = std::isfinite(h.lo) || std::isfinite(h.hi);
  if (h.adaptive != 0 && used != 0) return kAdaptive | (used == kL1 && !bounded ? kL1 : kGeneral);
  if (bounded) used |= kClamp;
  if (resets && (used & kZeroing) == 0) return kGeneral;
  switch (used) {
    case 0: case kL1: case kL0: case kRidge: case kL1 | kRidge: case kClamp: return used;
    default: return kGeneral;
  }
}

}  // namespace proxopt
