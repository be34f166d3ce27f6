// Host side of a step: the hyperparameters of one call and the per-tensor
// scalars derived from them in double (bias corrections, decayed lr, lr*lambda),
// shared by the CPU and CUDA backends.
#pragma once

#include <cmath>
#include <cstdint>

#include "math.h"

namespace proxopt {

enum class RuleKind : int { kSgd = 0, kAdam = 1, kAdagrad = 2, kRmsprop = 3 };
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// The hyperparameters of one param group, as Python validated them.
struct Hyper {
  int rule = 0;  // RuleKind
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  double momentum = 0, dampening = 0, alpha = 0, lr_decay = 0;
  double l1 = 0, l2 = 0, l0 = 0, lo = -INFINITY, hi = INFINITY;
  double group_lasso = 0, max_norm = 0;  // max_norm 0: no constraint
  bool maximize = false, decoupled_weight_decay = false, amsgrad = false;
  bool nesterov = false, centered = false, adaptive = false;
};

// Number of state tensors the rule variant reads and writes, in the order the
// Python side passes them.
inline int state_count(const Hyper& h) {
  switch (RuleKind(h.rule)) {
    case RuleKind::kSgd: return h.momentum != 0 ? 1 : 0;
    case RuleKind::kAdam: return h.amsgrad ? 3 : 2;
    case RuleKind::kAdagrad: return 1;
    case RuleKind::kRmsprop: return 1 + (h.momentum > 0) + h.centered;
  }
  return -1;
}

// Scalars of one tensor's step. `step` is the step count after this step's
// increment; `fresh` marks an SGD momentum buffer that does not exist yet;
// `group_size` is the number of elements of one group (group proxes only).
inline Coeffs<double> make_coeffs(const Hyper& h, double step, bool fresh, double grad_scale,
                                  bool has_grad_scale, double group_size) {
  Coeffs<double> k{};
  uint32_t f = 0;
  double lr = h.lr;  // the lr the prox thresholds scale with
  k.grad_scale = has_grad_scale ? grad_scale : 1.0;
  k.eps = h.eps;
  k.momentum = h.momentum;
  k.one_minus_dampening = 1.0 - h.dampening;
  k.alpha = h.alpha;
  k.one_minus_alpha = 1.0 - h.alpha;
  k.decay = 1.0;
  k.bc2_sqrt = 1.0;
  switch (RuleKind(h.rule)) {
    case RuleKind::kSgd:
      k.neg_step = -lr;
      break;
    case RuleKind::kAdam: {
      const double bc1 = 1.0 - std::pow(h.beta1, step);
      const double bc2 = 1.0 - std::pow(h.beta2, step);
      k.neg_step = -(lr / bc1);
      k.bc2_sqrt = std::pow(bc2, 0.5);  // Python's bc2 ** 0.5, as torch writes it
      k.beta1_weight = 1.0 - h.beta1;
      k.beta2 = h.beta2;
      k.one_minus_beta2 = 1.0 - h.beta2;
      break;
    }
    case RuleKind::kAdagrad:
      lr = h.lr / (1.0 + (step - 1.0) * h.lr_decay);
      k.neg_step = -lr;
      break;
    case RuleKind::kRmsprop:
      k.neg_step = -lr;
      break;
  }
  if (h.weight_decay != 0) {
    if (h.decoupled_weight_decay) {
      f |= kDecoupledWd;
      k.decay = 1.0 - h.lr * h.weight_decay;
    } else {
      f |= kCoupledWd;
      k.wd = h.weight_decay;
    }
  }
  if (h.maximize) f |= kMaximize;
  if (h.nesterov) f |= kNesterov;
  if (fresh) f |= kFreshBuf;
  if (has_grad_scale) f |= kGradScale;
  if (h.l1 != 0) f |= kL1;
  if (h.l0 != 0) f |= kL0;
  if (h.l2 != 0) f |= kL2;
  if (std::isfinite(h.lo) || std::isfinite(h.hi)) f |= kBounds;
  if (h.adaptive) f |= kAdaptive;
  if (h.group_lasso != 0) f |= kGroupLasso;
  if (h.max_norm != 0) f |= kMaxNorm;
  k.group_tau = lr * h.group_lasso * std::sqrt(group_size);
  k.max_norm = h.max_norm;
  k.l1_tau = lr * h.l1;
  k.l0_tau = lr * h.l0;
  k.l2_tau = lr * h.l2;
  k.lo = h.lo;
  k.hi = h.hi;
  k.flags = f;
  return k;
}

}  // namespace proxopt
