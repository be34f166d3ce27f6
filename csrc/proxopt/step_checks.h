// The checks of one step call's pointer lists, shared by the CPU and CUDA
// bindings: codes, lengths and null pointers, all before the first write.
// Throws std::invalid_argument (ValueError in Python) prefixed by `where`.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "coeffs.h"

namespace proxopt {

inline void check_step_lists(const std::string& where, const Hyper& h, int dtype,
                             const std::vector<uintptr_t>& params,
                             const std::vector<uintptr_t>& grads,
                             const std::vector<std::vector<uintptr_t>>& states,
                             const std::vector<uintptr_t>& steps, int step_dtype,
                             const std::vector<int64_t>& numels, const std::vector<bool>& fresh) {
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(where + ": " + what);
  };
  const size_t n = params.size();
  require(dtype >= 0 && dtype <= 3, "unknown dtype code " + std::to_string(dtype));
  require(h.rule >= 0 && h.rule <= 3, "unknown rule code " + std::to_string(h.rule));
  require(grads.size() == n, "grads has " + std::to_string(grads.size()) + " entries, params " +
                                 std::to_string(n));
  require(numels.size() == n, "numels and params differ in length");
  const int nstates = state_count(h);
  require(int(states.size()) == nstates, "rule needs " + std::to_string(nstates) +
                                             " state lists, got " + std::to_string(states.size()));
  for (const auto& s : states) require(s.size() == n, "a state list and params differ in length");
  const bool has_steps = RuleKind(h.rule) != RuleKind::kSgd;
  require(steps.size() == (has_steps ? n : 0), "steps has the wrong length");
  require(step_dtype == 0 || step_dtype == 1, "step dtype must be float32 (0) or float64 (1)");
  require(fresh.empty() || fresh.size() == n, "fresh and params differ in length");
  for (size_t i = 0; i < n; ++i) {
    require(numels[i] >= 0, "negative numel");
    if (numels[i] == 0) continue;
    require(params[i] != 0 && grads[i] != 0, "null data pointer");
    for (const auto& s : states) require(s[i] != 0, "null state pointer");
  }
  for (size_t i = 0; i < steps.size(); ++i) require(steps[i] != 0, "null step pointer");
}

}  // namespace proxopt
