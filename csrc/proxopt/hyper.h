// The hyperparameters of one param group, as the operator receives them: a
// `float[]` of kHyperFields values per bucket, in the order of
// PROXOPT_HYPER_FIELDS. Python's proxopt.hyper.Hyper declares the same
// fields; proxopt compares the two lists when it loads the extension
// (proxopt._C.HYPER_FIELDS) and refuses a mismatched build.
//
// Everything here is host code shared by the CPU, CUDA and checking paths.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace proxopt {

// The rule's fields first (rule: 0 SGD, 1 Adam, 2 Adagrad, 3 RMSprop; booleans
// 0 or 1), then the regularizers' (Python derives those from its keyword
// table, proxopt/regularizers.py, in this order): lo/hi are the bounds
// (+-inf when unconstrained), adaptive the prox metric, group_dim the dim
// group_lasso and max_norm act along (any sign), max_norm 0 no constraint,
// sparsity the budget's fraction of zeros (0: none), channel_sparsity the
// channel budget's fraction of zero groups along group_dim, reset_state and heal
// switches (Python has already turned the proxes that heal stops off).
#define PROXOPT_HYPER_FIELDS(X)                                                                  \
  X(rule) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay) X(momentum) X(dampening) X(alpha)      \
  X(lr_decay) X(initial_accumulator_value) X(maximize) X(decoupled_weight_decay) X(amsgrad) X(nesterov) X(centered)           \
  X(l1) X(l2) X(l0) X(lo) X(hi) X(adaptive) X(group_lasso) X(group_dim) X(max_norm) X(sparsity)   \
  X(channel_sparsity) X(reset_state) X(heal)

enum class RuleKind : int { kSgd = 0, kAdam = 1, kAdagrad = 2, kRmsprop = 3 };
constexpr int kRuleKinds = 4;

// Each field's index in the list (kField_lr, ...): the rule table names the
// hyperparameters that switch a state on by these.
enum HyperField : int {
#define PROXOPT_INDEX(name) kField_##name,
  PROXOPT_HYPER_FIELDS(PROXOPT_INDEX)
#undef PROXOPT_INDEX
  kHyperFields
};

struct Hyper {
#define PROXOPT_FIELD(name) double name = 0;
  PROXOPT_HYPER_FIELDS(PROXOPT_FIELD)
#undef PROXOPT_FIELD

  RuleKind kind() const { return RuleKind(int(rule)); }
  bool has_group() const { return group_lasso != 0 || max_norm != 0 || channel_sparsity != 0; }
  // The budget of this group: sparsity (of weights) or channel_sparsity (of groups).
  double budget() const { return sparsity != 0 ? sparsity : channel_sparsity; }
  bool has_elementwise_prox() const {
    return l1 != 0 || l0 != 0 || l2 != 0 || std::isfinite(lo) || std::isfinite(hi) || sparsity != 0;
  }
  // The value of field `f` (a HyperField).
  double field(int f) const {
    const double* values[] = {
#define PROXOPT_ADDRESS(name) &name,
        PROXOPT_HYPER_FIELDS(PROXOPT_ADDRESS)
#undef PROXOPT_ADDRESS
    };
    return *values[f];
  }
};

// The field names, in order (exported to Python for the load-time check).
inline const char* const* hyper_field_names() {
#define PROXOPT_NAME(name) #name,
  static const char* const names[] = {PROXOPT_HYPER_FIELDS(PROXOPT_NAME)};
#undef PROXOPT_NAME
  return names;
}

// Reads one bucket's values and checks what the kernels rely on (Python
// validated the rest: these guard the C++ against a caller that did not).
inline Hyper parse_hyper(const double* v, const std::string& where) {
  Hyper h;
  int i = 0;
#define PROXOPT_READ(name) h.name = v[i++];
  PROXOPT_HYPER_FIELDS(PROXOPT_READ)
#undef PROXOPT_READ
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(where + ": " + what);
  };
  auto is_bool = [](double x) { return x == 0 || x == 1; };
  require(h.rule == std::floor(h.rule) && h.rule >= 0 && h.rule < kRuleKinds,
          "unknown rule code " + std::to_string(h.rule));
  require(is_bool(h.maximize) && is_bool(h.decoupled_weight_decay) && is_bool(h.amsgrad) &&
              is_bool(h.nesterov) && is_bool(h.centered) && is_bool(h.adaptive) && is_bool(h.reset_state) &&
              is_bool(h.heal),
          "boolean hyperparameters must be 0 or 1");
  require(std::isfinite(h.lr) && h.lr >= 0, "lr must be finite and >= 0");
  require(h.l1 >= 0 && h.l2 >= 0 && h.l0 >= 0 && h.group_lasso >= 0 && h.max_norm >= 0 &&
              std::isfinite(h.l1) && std::isfinite(h.l2) && std::isfinite(h.l0) &&
              std::isfinite(h.group_lasso) && std::isfinite(h.max_norm),
          "regularizer strengths must be finite and >= 0");
  require(!(h.l1 != 0 && h.l0 != 0), "l1 and l0 cannot be combined");
  require(h.sparsity >= 0 && h.sparsity <= 1, "sparsity must lie in [0, 1]");
  require(h.channel_sparsity >= 0 && h.channel_sparsity <= 1, "channel_sparsity must lie in [0, 1]");
  require(h.sparsity == 0 || h.channel_sparsity == 0, "sparsity and channel_sparsity cannot be combined");
  require(h.budget() == 0 || !(h.lo > 0 || h.hi < 0), "a sparsity budget needs bounds that hold 0");
  require(!(h.lo > h.hi) && !std::isnan(h.lo) && !std::isnan(h.hi), "bounds need lo <= hi");
  require(h.group_dim == std::floor(h.group_dim) && std::fabs(h.group_dim) < 64, "group_dim must be an int");
  return h;
}

}  // namespace proxopt
