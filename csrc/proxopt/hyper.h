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

// rule: 0 SGD, 1 Adam, 2 Adagrad, 3 RMSprop. Booleans are 0 or 1.
// lo/hi: bounds (+-inf when unconstrained); max_norm 0: no constraint;
// group_dim: the dim group_lasso and max_norm act along (any sign).
#define PROXOPT_HYPER_FIELDS(X)                                                               \
  X(rule) X(lr) X(beta1) X(beta2) X(eps) X(weight_decay) X(momentum) X(dampening) X(alpha)   \
  X(lr_decay) X(l1) X(l2) X(l0) X(lo) X(hi) X(group_lasso) X(max_norm) X(group_dim)           \
  X(maximize) X(decoupled_weight_decay) X(amsgrad) X(nesterov) X(centered) X(adaptive)

enum class RuleKind : int { kSgd = 0, kAdam = 1, kAdagrad = 2, kRmsprop = 3 };

struct Hyper {
#define PROXOPT_FIELD(name) double name = 0;
  PROXOPT_HYPER_FIELDS(PROXOPT_FIELD)
#undef PROXOPT_FIELD

  RuleKind kind() const { return RuleKind(int(rule)); }
  bool has_group() const { return group_lasso != 0 || max_norm != 0; }
  bool has_elementwise_prox() const {
    return l1 != 0 || l0 != 0 || l2 != 0 || std::isfinite(lo) || std::isfinite(hi);
  }
  bool has_denom() const { return kind() != RuleKind::kSgd; }
};

#define PROXOPT_COUNT(name) +1
constexpr int kHyperFields = 0 PROXOPT_HYPER_FIELDS(PROXOPT_COUNT);
#undef PROXOPT_COUNT

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
  require(h.rule == 0 || h.rule == 1 || h.rule == 2 || h.rule == 3,
          "unknown rule code " + std::to_string(h.rule));
  require(is_bool(h.maximize) && is_bool(h.decoupled_weight_decay) && is_bool(h.amsgrad) &&
              is_bool(h.nesterov) && is_bool(h.centered) && is_bool(h.adaptive),
          "boolean hyperparameters must be 0 or 1");
  require(std::isfinite(h.lr) && h.lr >= 0, "lr must be finite and >= 0");
  require(h.l1 >= 0 && h.l2 >= 0 && h.l0 >= 0 && h.group_lasso >= 0 && h.max_norm >= 0 &&
              std::isfinite(h.l1) && std::isfinite(h.l2) && std::isfinite(h.l0) &&
              std::isfinite(h.group_lasso) && std::isfinite(h.max_norm),
          "regularizer strengths must be finite and >= 0");
  require(!(h.l1 != 0 && h.l0 != 0), "l1 and l0 cannot be combined");
  require(!(h.lo > h.hi) && !std::isnan(h.lo) && !std::isnan(h.hi), "bounds need lo <= hi");
  require(h.group_dim == std::floor(h.group_dim) && std::fabs(h.group_dim) < 64, "group_dim must be an int");
  require(!(h.adaptive != 0 && (!h.has_denom() || h.has_group())),
          "prox_metric='adaptive' needs a rule with a preconditioner and no group prox");
  return h;
}

// State tensors the rule variant reads and writes, in the order Python lays
// them out (python/proxopt/*.py: _state_keys).
inline int state_count(const Hyper& h) {
  switch (h.kind()) {
    case RuleKind::kSgd: return h.momentum != 0 ? 1 : 0;
    case RuleKind::kAdam: return h.amsgrad != 0 ? 3 : 2;
    case RuleKind::kAdagrad: return 1;
    case RuleKind::kRmsprop: return 1 + (h.momentum > 0) + (h.centered != 0);
  }
  return -1;
}

}  // namespace proxopt
