// proxopt._C: the CPU backend. Takes raw pointers from Python (no libtorch),
// checks the lists before touching memory, derives per-tensor scalars in
// double, then runs one parallel region over all chunks with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../proxopt/bind_hyper.h"
#include "../proxopt/step_checks.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "driver.h"
#include "isa.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace proxopt::cpu {
namespace {

// Below this many elements a call runs on one thread: waking the pool costs
// more than it saves.
constexpr int64_t kParallelMinElems = 1 << 16;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("proxopt._C.step: " + what);
}

double read_scalar(uintptr_t ptr, int step_dtype) {
  if (step_dtype == 1) return *reinterpret_cast<const double*>(ptr);
  return *reinterpret_cast<const float*>(ptr);
}

void write_scalar(uintptr_t ptr, int step_dtype, double v) {
  if (step_dtype == 1) {
    *reinterpret_cast<double*>(ptr) = v;
  } else {
    *reinterpret_cast<float*>(ptr) = float(v);
  }
}

// One optimizer step over one (param group, dtype). Returns false, having
// written nothing, when found_inf is set.
bool step(const Hyper& h, int dtype, const std::vector<uintptr_t>& params,
          const std::vector<uintptr_t>& grads, const std::vector<std::vector<uintptr_t>>& states,
          const std::vector<uintptr_t>& steps, int step_dtype, const std::vector<int64_t>& numels,
          const std::vector<bool>& fresh, uintptr_t grad_scale, uintptr_t found_inf,
          const std::vector<std::vector<int64_t>>& group_shapes, int nthreads) {
  // Every check happens before the first write.
  check_step_lists("proxopt._C.step", h, dtype, params, grads, states, steps, step_dtype, numels, fresh);
  const size_t n = params.size();
  const int nstates = state_count(h);
  const bool has_steps = RuleKind(h.rule) != RuleKind::kSgd;
  require(nthreads >= 1, "nthreads must be >= 1");
  // group_shapes: per tensor (outer, groups, inner) of the group dimension.
  const bool grouped = h.group_lasso != 0 || h.max_norm != 0;
  require(grouped ? group_shapes.size() == n : group_shapes.empty(),
          "group_shapes must give (outer, groups, inner) for every tensor exactly when a group "
          "prox is set");
  std::vector<int64_t> outer(n, 1), groups(n, 1), inner(n, 1);
  for (size_t i = 0; grouped && i < n; ++i) {
    const auto& gs = group_shapes[i];
    require(gs.size() == 3 && gs[0] >= 0 && gs[1] >= 0 && gs[2] >= 0 &&
                gs[0] * gs[1] * gs[2] == numels[i],
            "group shape of tensor " + std::to_string(i) + " does not match its numel");
    outer[i] = gs[0];
    groups[i] = gs[1];
    inner[i] = gs[2];
  }

  if (found_inf != 0 && *reinterpret_cast<const float*>(found_inf) != 0.0f) return false;
  const double scale = grad_scale != 0 ? *reinterpret_cast<const float*>(grad_scale) : 1.0;

  std::vector<Coeffs<double>> coeffs(n);
  for (size_t i = 0; i < n; ++i) {
    double t = 0;
    if (has_steps) {
      t = read_scalar(steps[i], step_dtype) + 1.0;
      write_scalar(steps[i], step_dtype, t);
    }
    coeffs[i] = make_coeffs(h, t, !fresh.empty() && fresh[i], scale, grad_scale != 0,
                            double(outer[i]) * double(inner[i]));
  }

  CpuCall call;
  call.params = params.data();
  call.grads = grads.data();
  for (int s = 0; s < nstates; ++s) call.states[s] = states[s].data();
  call.numels = numels.data();
  call.coeffs = coeffs.data();

  call.group_outer = outer.data();
  call.group_count = groups.data();
  call.group_inner = inner.data();

  // One flat list of chunks over every tensor; with a group prox on rows
  // (outer == 1) a chunk holds whole rows. Strided groups go afterwards.
  const KernelSet ks = select_kernels(h, DType(dtype));
  require(ks.plain != nullptr, "no kernel for this rule and dtype");
  std::vector<Chunk> chunks;
  std::vector<ChunkFn> fns;
  std::vector<size_t> strided;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    total += numels[i];
    if (grouped && outer[i] > 1) {
      strided.push_back(i);
      continue;
    }
    const int64_t step = grouped ? std::max<int64_t>(1, kChunkElems / std::max<int64_t>(1, inner[i])) * inner[i]
                                 : kChunkElems;
    for (int64_t b = 0; b < numels[i]; b += step) {
      chunks.push_back({int64_t(i), b, std::min(numels[i], b + step)});
      fns.push_back(grouped ? ks.rows : ks.plain);
    }
  }
  const int threads = total < kParallelMinElems ? 1 : nthreads;
  py::gil_scoped_release release;
  parallel_for(threads, int64_t(chunks.size()), [&](int64_t c) { fns[c](call, chunks[c]); });
  for (size_t i : strided) {
    std::vector<Chunk> parts;
    for (int64_t b = 0; b < numels[i]; b += kChunkElems) {
      parts.push_back({int64_t(i), b, std::min(numels[i], b + kChunkElems)});
    }
    // Each chunk sums into its own row of partial sums: no sharing between threads.
    const int64_t G = groups[i];
    std::vector<double> partial(parts.size() * size_t(G), 0.0);
    const int tt = numels[i] < kParallelMinElems ? 1 : nthreads;
    parallel_for(tt, int64_t(parts.size()), [&](int64_t c) { ks.pass1(call, parts[c], &partial[c * G]); });
    std::vector<double> sums(size_t(G), 0.0);
    for (size_t c = 0; c < parts.size(); ++c) {
      for (int64_t q = 0; q < G; ++q) sums[q] += partial[c * G + q];
    }
    parallel_for(tt, int64_t(parts.size()), [&](int64_t c) { ks.pass2(call, parts[c], sums.data()); });
  }
  return true;
}

}  // namespace
}  // namespace proxopt::cpu

PYBIND11_MODULE(_C, m) {
  m.doc() = "proxopt CPU kernels (raw pointers; see python/proxopt/_fused.py)";
  proxopt::bind_hyper(m);
  m.def("step", &proxopt::cpu::step, py::arg("hyper"), py::arg("dtype"), py::arg("params"),
        py::arg("grads"), py::arg("states"), py::arg("steps"), py::arg("step_dtype"),
        py::arg("numels"), py::arg("fresh"), py::arg("grad_scale"), py::arg("found_inf"),
        py::arg("group_shapes"), py::arg("nthreads"));
  m.def("supported_isas", &proxopt::cpu::supported_isas);
  m.def("current_isa", &proxopt::cpu::current_isa);
  m.def("set_isa", &proxopt::cpu::set_isa, py::arg("name"));
  m.attr("CHUNK_ELEMS") = proxopt::cpu::kChunkElems;
  m.attr("PARALLEL_MIN_ELEMS") = proxopt::cpu::kParallelMinElems;
}
