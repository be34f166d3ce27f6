// The per-step scalars of one tensor, derived in double from the group's
// hyperparameters, its step count and lr: bias corrections, the decayed lr,
// lr * lambda. Host and device code: the CPU computes them once per distinct
// step count of a call; a capturable CUDA step computes them in the kernel
// from the step counter and lr on the device.
#pragma once

#include <cmath>

#include "hyper.h"
#include "math.h"

namespace proxopt {

// `t` is the step count after this step's increment, `lr` the group's lr
// (a tensor lr has been read by the caller), `inv_scale` AMP's 1/grad_scale
// (1 without AMP), `fresh` an SGD momentum buffer that has no value yet.
PROXOPT_HD Coeffs<double> make_coeffs(const Hyper& h, double t, double lr, double inv_scale, bool fresh) {
  Coeffs<double> k{};
  const int rule = int(h.rule);
  double prox_lr = lr;  // the lr the prox thresholds scale with
  k.inv_scale = inv_scale;
  k.eps = h.eps;
  k.momentum = h.momentum;
  k.one_minus_dampening = 1.0 - h.dampening;
  k.alpha = h.alpha;
  k.one_minus_alpha = 1.0 - h.alpha;
  k.decay = 1.0;
  k.bc2_sqrt = 1.0;
  k.neg_step = -lr;
  if (rule == 1) {  // Adam
    const double bc1 = 1.0 - pow(h.beta1, t);
    const double bc2 = 1.0 - pow(h.beta2, t);
    k.neg_step = -(lr / bc1);
    k.bc2_sqrt = pow(bc2, 0.5);  // Python's bc2 ** 0.5, as torch writes it
    k.beta1_weight = 1.0 - h.beta1;
    k.beta2 = h.beta2;
    k.one_minus_beta2 = 1.0 - h.beta2;
  } else if (rule == 2) {  // Adagrad: lr / (1 + (t - 1) * lr_decay)
    prox_lr = lr / (1.0 + (t - 1.0) * h.lr_decay);
    k.neg_step = -prox_lr;
  }
  if (h.weight_decay != 0) {
    if (h.decoupled_weight_decay != 0) {
      k.decoupled = 1;
      k.decay = 1.0 - lr * h.weight_decay;
    } else {
      k.coupled = 1;
      k.wd = h.weight_decay;
    }
  }
  k.maximize = h.maximize != 0;
  k.nesterov = h.nesterov != 0;
  k.fresh = fresh;
  k.l1_tau = prox_lr * h.l1;
  k.l0_tau = prox_lr * h.l0;
  k.l0_on = h.l0 != 0;
  k.l2_tau = prox_lr * h.l2;
  k.lo = h.lo;
  k.hi = h.hi;
  k.group_lambda = prox_lr * h.group_lasso;
  k.group_lasso_on = h.group_lasso != 0;
  k.max_norm = h.max_norm;
  k.max_norm_on = h.max_norm != 0;
  return k;
}

// The rounding of the euclidean L0 threshold sqrt(2 * tau) happens in the
// math type, as the reference computes it: call on the cast coefficients.
template <class M>
PROXOPT_HD Coeffs<M> finish_coeffs(Coeffs<M> k) {
  k.l0_thr = std::sqrt(M(2) * k.l0_tau);
  return k;
}

// The prox shape (math.h: kProx, kRidge, kAdaptive, kAdaptiveL0, kGroup) a
// group's hyperparameters need; the CPU and CUDA kernels are instantiated for these.
inline unsigned prox_shape(const Hyper& h) {
  unsigned p = 0;
  const bool adaptive = h.adaptive != 0 && (h.l1 != 0 || h.l0 != 0 || h.l2 != 0);
  if (h.has_elementwise_prox() && !(h.has_group() && h.l1 == 0 && h.l0 == 0 && h.l2 == 0)) p |= kProx;
  if ((p & kProx) && h.l2 != 0 && !adaptive) p |= kRidge;
  if ((p & kProx) && adaptive) p |= kAdaptive | (h.l0 != 0 ? kAdaptiveL0 : 0u);
  if (h.has_group()) p |= kGroup;
  return p;
}

}  // namespace proxopt
