// The operator proxopt::step: its arguments, declared once. The schema
// string, the stack indices of the unboxing and the names Python checks its
// argument builder against (proxopt._C.STEP_ARGS, compared at import with
// proxopt._dispatch.StepArgs) all follow from PROXOPT_STEP_ARGS.
//
//   params     kernel-eligible parameters, bucket by bucket (mutated);
//   grads      same length; None: the parameter is not stepped this call;
//   states     per bucket, an (S, N) tensor of the parameters' dtype (the real
//              dtype for complex parameters);
//   steps      per bucket, a float32/float64 tensor of one counter per
//              parameter (on the CPU for CPU calls, on the device for CUDA calls);
//   layout     CPU int64: the B + 1 bucket starts (bucket b is
//              params[starts[b]:starts[b+1]]), then each parameter's first state
//              column, then each parameter's budget unit (the index of the unit's
//              first parameter; -1 without a sparsity budget);
//   budget     None, or (with a sparsity budget) a CPU float64 (params, 8)
//              tensor: each parameter's row of the budget's statistics
//              (math.h BudgetField; mutated);
//   hyper      B x kHyperFields values (hyper.h);
//   lrs        per bucket a tensor lr, or None (then hyper's lr);
//   grad_scale, found_inf: AMP's tensors (float32, one element);
//   refusal    None, or a CPU int64 tensor of 2 elements where the operator
//              reports [Refusal code, tensor index] of a parameter it does
//              not take (checks.h) instead of raising;
//   check_only run every check, write nothing.
#pragma once

#include <torch/csrc/stable/library.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "abi.h"

namespace proxopt::op {

#define PROXOPT_STEP_ARGS(X)    \
  X(params, "Tensor(a!)[]")     \
  X(grads, "Tensor?[]")         \
  X(states, "Tensor(b!)[]")     \
  X(steps, "Tensor(c!)[]")      \
  X(layout, "Tensor")           \
  X(hyper, "float[]")           \
  X(lrs, "Tensor?[]")           \
  X(grad_scale, "Tensor?")      \
  X(found_inf, "Tensor?")       \
  X(budget, "Tensor(e!)?")      \
  X(refusal, "Tensor(d!)?")     \
  X(check_only, "bool")

enum StepArg : int {
#define PROXOPT_ARG_INDEX(name, type) kArg_##name,
  PROXOPT_STEP_ARGS(PROXOPT_ARG_INDEX)
#undef PROXOPT_ARG_INDEX
  kStepArgs
};

inline const char* const* step_arg_names() {
#define PROXOPT_ARG_NAME(name, type) #name,
  static const char* const names[] = {PROXOPT_STEP_ARGS(PROXOPT_ARG_NAME)};
#undef PROXOPT_ARG_NAME
  return names;
}

// "step(Tensor(a!)[] params, ...) -> ()", registered once (cpu_op.cpp).
inline const char* step_schema() {
  static const std::string schema = [] {
    std::string s = "step(";
    const char* sep = "";
#define PROXOPT_ARG_DECL(name, type) \
  s += sep;                          \
  s += type " " #name;               \
  sep = ", ";
    PROXOPT_STEP_ARGS(PROXOPT_ARG_DECL)
#undef PROXOPT_ARG_DECL
    return s + ") -> ()";
  }();
  return schema.c_str();
}

// One call's arguments, owned.
struct Args {
  Handles params, grads, states, steps, layout, lrs, grad_scale, found_inf, budget, refusal;
  std::vector<double> hyper;
  bool check_only = false;
};

// Takes ownership of the boxed arguments of one call.
inline void unbox(StableIValue* stack, uint64_t num_args, Args& a) {
  if (num_args != kStepArgs) {
    throw std::invalid_argument("proxopt.step: the registered schema has " + std::to_string(num_args) +
                                " arguments, this build expects " + std::to_string(int(kStepArgs)));
  }
  take_list(stack[kArg_params], false, a.params);
  take_list(stack[kArg_grads], true, a.grads);
  take_list(stack[kArg_states], false, a.states);
  take_list(stack[kArg_steps], false, a.steps);
  a.layout.push(torch::stable::detail::to<AtenTensorHandle>(stack[kArg_layout]));
  a.hyper = torch::stable::detail::to<std::vector<double>>(stack[kArg_hyper]);
  take_list(stack[kArg_lrs], true, a.lrs);
  a.grad_scale.push(take_optional(stack[kArg_grad_scale]));
  a.found_inf.push(take_optional(stack[kArg_found_inf]));
  a.budget.push(take_optional(stack[kArg_budget]));
  a.refusal.push(take_optional(stack[kArg_refusal]));
  a.check_only = torch::stable::detail::to<bool>(stack[kArg_check_only]);
}

}  // namespace proxopt::op
