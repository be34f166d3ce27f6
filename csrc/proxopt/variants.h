// What the kernels are compiled for, listed once for the CPU and CUDA: every
// rule variant (a Rule struct of math.h) and every prox shape, and the one
// function that turns a group's hyperparameters into the template arguments
// of its kernel (visit_variant). The CPU kernels (cpu/kernels.cpp) and the
// CUDA kernels (cuda/kernels.cu) instantiate their loops through it; neither
// has a switch of its own.
#pragma once

#include <type_traits>

#include "coeffs.h"
#include "math.h"
#include "rules.h"

namespace proxopt {

template <class... R>
struct RuleList {};
template <unsigned... P>
struct ShapeList {};

// Every variant of every rule of the table (rules.h): one per state mask.
using RuleVariants = RuleList<Sgd<false>, Sgd<true>, Adam<false>, Adam<true>, Adagrad, Rmsprop<false, false>,
                              Rmsprop<false, true>, Rmsprop<true, false>, Rmsprop<true, true>>;

// Every shape prox_shape (coeffs.h) returns; the CPU has a loop for each.
using CpuShapes = ShapeList<0, kL1, kL0, kRidge, kL1 | kRidge, kClamp, kGeneral, kGroup, kGroupGeneral,
                            kAdaptive | kL1, kAdaptive | kGeneral, kGeneral | kBudget,
                            kAdaptive | kGeneral | kBudget>;
// On a GPU arithmetic is cheap next to memory: every regularized step takes
// the general shape of its kind (unused proxes at their exact neutral values).
// The budget has no CUDA kernel yet: its tensors take the reference path.
using CudaShapes = ShapeList<0, kGeneral, kGroup, kGroupGeneral, kAdaptive | kGeneral>;

inline unsigned cuda_prox_shape(unsigned p) {
  if ((p & (kGroup | kBudget)) != 0) return p;
  if ((p & kAdaptive) != 0) return kAdaptive | kGeneral;
  return p == 0 ? 0u : kGeneral;
}

// ---- each Rule struct agrees with its row of the rule table -----------------------

constexpr int always_states(const RuleSpec& r) {
  int n = 0;
  for (int q = 0; q < r.nstates; ++q) n += r.states[q].when == kAlways ? 1 : 0;
  return n;
}

constexpr bool mask_is_valid(const RuleSpec& r, unsigned mask) {
  for (int q = 0; q < kMaxStates; ++q) {
    const bool set = (mask >> q) & 1u;
    if (q >= r.nstates ? set : (r.states[q].when == kAlways && !set)) return false;
  }
  return true;
}

// Only a rule's first state may start from a group key (Coeffs fresh0).
constexpr bool only_first_state_has_init(const RuleSpec& r) {
  for (int q = 1; q < r.nstates; ++q) {
    if (r.states[q].init[0] != '\0') return false;
  }
  return true;
}

template <class Rule>
constexpr bool agrees_with_table() {
  const RuleSpec& r = kRules[Rule::kRule];
  return mask_is_valid(r, Rule::kMask) && popcount(Rule::kMask) == Rule::kStates &&
         Rule::kHasDenom == r.has_denom && always_states(r) <= Rule::kStates && only_first_state_has_init(r);
}

template <class... R>
constexpr bool all_agree(RuleList<R...>) {
  return (agrees_with_table<R>() && ...);
}
static_assert(all_agree(RuleVariants{}), "a Rule struct of math.h disagrees with its row of the rule table (rules.h)");

// ---- from hyperparameters to template arguments ------------------------------------

// fn(Rule{}, std::integral_constant<unsigned, P>{}) for the variant of `h` and
// the shape `p` of `Shapes`; `none` when there is no such kernel (an
// adaptive shape needs a rule with a denominator).
template <class Rule, unsigned P, class R, class Fn>
R call_variant(Fn& fn, R none) {
  if constexpr ((P & kAdaptive) != 0 && !Rule::kHasDenom) {
    return none;
  } else {
    return fn(Rule{}, std::integral_constant<unsigned, P>{});
  }
}

template <class Rule, class R, class Fn, unsigned... P>
R visit_shape(ShapeList<P...>, unsigned p, R none, Fn& fn) {
  R out = none;
  (void)((p == P ? (out = call_variant<Rule, P>(fn, none), true) : false) || ...);
  return out;
}

template <class Shapes, class R, class Fn, class... Rules>
R visit_rule(RuleList<Rules...>, int rule, unsigned mask, unsigned p, R none, Fn& fn) {
  R out = none;
  (void)(((Rules::kRule == rule && Rules::kMask == mask) ? (out = visit_shape<Rules>(Shapes{}, p, none, fn), true)
                                                           : false) ||
         ...);
  return out;
}

template <class Shapes, class R, class Fn>
R visit_variant(const Hyper& h, unsigned p, R none, Fn&& fn) {
  return visit_rule<Shapes>(RuleVariants{}, int(h.rule), state_mask(h), p, none, fn);
}

}  // namespace proxopt
