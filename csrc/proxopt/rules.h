// The update rules' facts, declared once: for each rule its code (the
// `rule` hyperparameter), its name, whether it keeps a step counter in its
// state, whether it has a per-element denominator (what prox_metric=
// "adaptive" divides by), and its state tensors in kernel order -- each with
// the hyperparameter that switches it on (always kept when none) and the
// param-group key whose value a fresh state starts from (0 when none).
//
// Everything else derives from this table: the state count of a call
// (state_count), the kernel variants (variants.h checks every Rule struct of
// math.h against it at compile time), and on the Python side each optimizer's
// state keys, initial values and step counter (proxopt/rules.py declares the
// same table, and proxopt compares it with proxopt._C.RULES when it loads
// the extension).
#pragma once

#include <string>
#include <stdexcept>

#include "hyper.h"

namespace proxopt {

constexpr int kMaxStates = 3;
constexpr int kAlways = -1;  // a state kept by every variant of its rule

struct StateSpec {
  const char* key;   // the state_dict key
  int when;          // the HyperField whose nonzero value keeps this state, or kAlways
  const char* init;  // the param-group key a fresh state starts from, or "" (0)
};

struct RuleSpec {
  RuleKind kind;
  const char* name;
  bool has_step;     // keeps `step` in its state (SGD does not, as torch)
  bool has_denom;    // has a per-element denominator
  int nstates;       // entries of `states`
  StateSpec states[kMaxStates];
};

// In RuleKind order.
inline constexpr RuleSpec kRules[kRuleKinds] = {
    {RuleKind::kSgd, "sgd", false, false, 1, {{"momentum_buffer", kField_momentum, ""}}},
    {RuleKind::kAdam, "adam", true, true, 3,
     {{"exp_avg", kAlways, ""}, {"exp_avg_sq", kAlways, ""}, {"max_exp_avg_sq", kField_amsgrad, ""}}},
    {RuleKind::kAdagrad, "adagrad", true, true, 1, {{"sum", kAlways, "initial_accumulator_value"}}},
    {RuleKind::kRmsprop, "rmsprop", true, true, 3,
     {{"square_avg", kAlways, ""}, {"momentum_buffer", kField_momentum, ""}, {"grad_avg", kField_centered, ""}}},
};

constexpr bool rules_in_order() {
  for (int r = 0; r < kRuleKinds; ++r) {
    if (int(kRules[r].kind) != r) return false;
  }
  return true;
}
static_assert(rules_in_order(), "kRules must list the rules in RuleKind order");

constexpr const RuleSpec& rule_spec(RuleKind k) { return kRules[int(k)]; }

// The states a rule variant keeps: bit q for the q-th entry of its table row.
// A variant is (rule, mask); the kernels are compiled once per variant.
inline unsigned state_mask(const Hyper& h) {
  const RuleSpec& r = rule_spec(h.kind());
  unsigned mask = 0;
  for (int q = 0; q < r.nstates; ++q) {
    if (r.states[q].when == kAlways || h.field(r.states[q].when) != 0) mask |= 1u << q;
  }
  return mask;
}

constexpr int popcount(unsigned m) { return m == 0 ? 0 : int(m & 1u) + popcount(m >> 1); }

// State tensors the variant of `h` reads and writes, in table order.
inline int state_count(const Hyper& h) { return popcount(state_mask(h)); }

inline bool has_denom(const Hyper& h) { return rule_spec(h.kind()).has_denom; }

// What the kernels rely on beyond parse_hyper's checks: the adaptive metric
// divides by the rule's denominator, and group proxes use the euclidean one.
inline void check_rule_hyper(const Hyper& h, const std::string& where) {
  if (h.adaptive != 0 && (!has_denom(h) || h.has_group())) {
    throw std::invalid_argument(where + ": prox_metric='adaptive' needs a rule with a preconditioner and no group prox");
  }
}

}  // namespace proxopt
