// The checks of one call of proxopt::step that run before anything is
// written, shared by the CPU and CUDA implementations. A call that passes
// them is described by a `Call`: raw pointers, element counts, group shapes
// and the hyperparameters of each bucket.
//
// A bucket is the tensors of one param group with one dtype on the call's
// device. Its states are one (S, N) tensor whose columns the layout assigns
// to parameters; its step counters one tensor with an element per parameter.
// The state_dict's per-parameter tensors are views of these (Python's
// proxopt._dispatch keeps that so).
//
// Errors are std::invalid_argument (Python: ValueError). One that concerns
// the K-th parameter of the call, or a parameter the kernels cannot take but
// the reference can (one that stopped being contiguous), is reported as a
// Refusal code and K in the call's `refusal` tensor when it has one (Python
// names the parameter, or steps it on the reference path), and otherwise
// raised as "proxopt.step: tensor K: ...".
#pragma once

#include <torch/csrc/stable/library.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../proxopt/hyper.h"
#include "../proxopt/math.h"
#include "../proxopt/rules.h"
#include "abi.h"
#include "dtype_table.h"
#include "schema.h"

namespace proxopt::op {

// State columns of a parameter start at a multiple of this many elements
// (64 bytes of float32): Python lays them out so (proxopt._C.STATE_ALIGN).
constexpr int64_t kStateAlign = 16;

// What the `refusal` tensor reports (proxopt._C.REFUSALS).
#define PROXOPT_REFUSALS(X)                                                           \
  X(none, 0)                 /* every tensor taken */                                 \
  X(param_not_contiguous, 1) /* the reference path can step it: reroute */            \
  X(grad_not_contiguous, 2)  /* likewise */                                           \
  X(tensor_error, 3)         /* the K-th parameter is wrong: the message says how */

enum class Refusal : int64_t {
#define PROXOPT_REFUSAL_ENUM(name, code) name = code,
  PROXOPT_REFUSALS(PROXOPT_REFUSAL_ENUM)
#undef PROXOPT_REFUSAL_ENUM
};

// Thrown by the checks at a refused tensor; checked_call turns it into the
// refusal report or the error.
struct Refused {
  Refusal code;
  int64_t index;
  std::string what;
};

// ---- what a checked call is ------------------------------------------------------------

enum class Backend { kCpu, kCuda };

struct Bucket {
  Hyper h;
  const DTypeInfo* dtype = nullptr;
  int nstates = 0;
  int64_t first = 0, last = 0;  // params[first:last]
  void* states = nullptr;       // (nstates, cols), row-major
  int64_t cols = 0;
  void* steps = nullptr;
  bool steps_f64 = false;
  const void* lr = nullptr;     // a tensor lr's data, or null
  bool lr_f64 = false;
};

struct Item {
  int bucket = 0;
  int64_t unit = -1;            // its budget unit's first parameter (-1: no budget)
  double* budget = nullptr;     // its row of budget statistics
  void* w = nullptr;
  const void* g = nullptr;
  bool stepped = false;         // has a grad in this call
  int64_t numel = 0;            // real elements
  int64_t column = 0;           // first state column
  int64_t outer = 1, groups = 1, inner = 1;
};

struct Call {
  Backend backend = Backend::kCpu;
  int device = -1;              // CUDA device index
  std::vector<Bucket> buckets;
  std::vector<Item> items;
  const void* grad_scale = nullptr;
  const void* found_inf = nullptr;
  bool any_stepped = false;
  bool refused = false;         // a tensor was refused and reported: write nothing
};

inline std::string shape_of(Ref t) {
  std::ostringstream os;
  os << "(";
  const int64_t nd = t.dim();
  const int64_t* s = t.sizes();
  for (int64_t i = 0; i < nd; ++i) os << (i ? ", " : "") << s[i];
  if (nd == 1) os << ",";
  os << ")";
  return os.str();
}

// The shim's codes, read once.
struct Codes {
  int32_t f32 = aoti_torch_dtype_float32(), f64 = aoti_torch_dtype_float64(), i64 = aoti_torch_dtype_int64();
  int32_t cpu = aoti_torch_device_type_cpu(), cuda = aoti_torch_device_type_cuda();
  int32_t strided = aoti_torch_layout_strided();
};

inline const Codes& codes() {
  static const Codes c;
  return c;
}

inline std::string where(Ref t) {
  const int32_t type = t.device_type();
  if (type == codes().cpu) return "cpu";
  if (type == codes().cuda) return "cuda:" + std::to_string(t.device_index());
  return "device type " + std::to_string(type);
}

[[noreturn]] inline void fail(const std::string& what) {
  throw std::invalid_argument("proxopt.step: " + what);
}
[[noreturn]] inline void fail_tensor(int64_t i, const std::string& what) {
  throw Refused{Refusal::tensor_error, i, what};
}
[[noreturn]] inline void reroute(int64_t i, Refusal code, const std::string& what) {
  throw Refused{code, i, what};
}

inline double read_scalar(const void* p, bool f64) {
  return f64 ? *static_cast<const double*>(p) : double(*static_cast<const float*>(p));
}

// A number as Python's f"{v:g}" writes it (proxopt.checks words the same errors).
inline std::string number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// A value that overflows float32 where the step computes in float32 (every
// dtype but float64 and complex128) makes the weights inf or NaN; torch
// raises there. Python checks the reference path's tensors alike.
inline void check_hyper_range(int64_t i, const char* name, double v) {
  if (std::fabs(v) > double(FLT_MAX)) {
    fail_tensor(i, std::string(name) + " = " + number(v) + " overflows float32, the dtype its step computes in");
  }
}

// Every check of one call. It reads metadata, the layout and, on the CPU,
// the values of the step counters and a tensor lr (O(1) per tensor; reading
// them on a CUDA device would synchronize); the backend reads the rest.
inline Call check_tensors(const Args& a, Backend backend) {
  const Codes& cd = codes();
  Call c;
  c.backend = backend;
  const int64_t n = int64_t(a.params.size());
  const int64_t nb = int64_t(a.states.size());
  // Where this call's tensors must live: the CPU, or one CUDA device.
  int32_t dev_type = cd.cpu, dev_index = -1;
  if (backend == Backend::kCuda) {
    if (n == 0) fail("a CUDA call needs at least one parameter");
    if (a.params[0].device_type() != cd.cuda) {
      fail_tensor(0, "expected a CUDA tensor, got one on " + where(a.params[0]));
    }
    dev_type = cd.cuda;
    dev_index = a.params[0].device_index();
    c.device = dev_index;
  }
  auto here = [&](Ref t) {
    return t.device_type() == dev_type && (dev_type == cd.cpu || t.device_index() == dev_index);
  };
  const std::string device_name = backend == Backend::kCpu ? "cpu" : "cuda:" + std::to_string(dev_index);

  if (int64_t(a.grads.size()) != n) {
    fail("grads has " + std::to_string(a.grads.size()) + " entries, params " + std::to_string(n));
  }
  if (int64_t(a.steps.size()) != nb || int64_t(a.lrs.size()) != nb) {
    fail("states, steps and lrs need one entry per bucket (" + std::to_string(nb) + ")");
  }
  if (int64_t(a.hyper.size()) != nb * kHyperFields) {
    fail("hyper has " + std::to_string(a.hyper.size()) + " values, expected " +
         std::to_string(nb * kHyperFields) + " (" + std::to_string(kHyperFields) + " per bucket)");
  }
  const Ref layout = a.layout[0];
  if (layout.device_type() != cd.cpu || layout.dtype() != cd.i64 || !layout.contiguous() || layout.dim() != 1 ||
      layout.numel() != nb + 1 + 2 * n) {
    fail("layout must be a contiguous CPU int64 tensor of buckets + 1 + 2 * params values");
  }
  const int64_t* lay = static_cast<const int64_t*>(layout.data());
  const int64_t* column = lay + nb + 1;
  const int64_t* unit = column + n;
  double* budget_rows = nullptr;
  int64_t budget_width = 0;  // kBudgetFields, then room for the group norms of a channel budget
  if (const Ref bt = a.budget[0]) {
    if (bt.device_type() != cd.cpu || bt.dtype() != cd.f64 || !bt.contiguous() || bt.dim() != 2 ||
        bt.sizes()[0] != n || bt.sizes()[1] < kBudgetFields) {
      fail("budget must be a contiguous CPU float64 (params, >= " + std::to_string(int(kBudgetFields)) +
           ") tensor, got " + shape_of(bt) + " " + dtype_name(bt.dtype()) + " on " + where(bt));
    }
    budget_rows = static_cast<double*>(bt.data());
    budget_width = bt.sizes()[1];
  }
  if (lay[0] != 0 || lay[nb] != n) fail("layout's bucket starts must run from 0 to the number of params");

  c.buckets.resize(size_t(nb));
  c.items.resize(size_t(n));
  for (int64_t b = 0; b < nb; ++b) {
    Bucket& bk = c.buckets[size_t(b)];
    const std::string bname = "bucket " + std::to_string(b);
    bk.h = parse_hyper(a.hyper.data() + b * kHyperFields, "proxopt.step: " + bname);
    check_rule_hyper(bk.h, "proxopt.step: " + bname);
    bk.nstates = state_count(bk.h);
    bk.first = lay[b];
    bk.last = lay[b + 1];
    if (bk.last <= bk.first) fail(bname + " has no parameters (layout's starts must increase)");
    const Ref p0 = a.params[size_t(bk.first)];
    const int32_t dt = p0.dtype();
    bk.dtype = find_dtype(dt);
    if (bk.dtype == nullptr) fail_tensor(bk.first, "dtype " + dtype_name(dt) + " has no kernel");
    const Ref st = a.states[size_t(b)];
    if (!here(st) || st.dtype() != bk.dtype->real_code || !st.contiguous() || st.dim() != 2 ||
        st.sizes()[0] != bk.nstates) {
      fail(bname + ": states must be a contiguous (" + std::to_string(bk.nstates) + ", N) tensor of dtype " +
           dtype_name(bk.dtype->real_code) + " on " + device_name + ", got " + shape_of(st) + " " +
           dtype_name(st.dtype()) + " on " + where(st));
    }
    bk.cols = st.sizes()[1];
    bk.states = st.numel() > 0 ? st.data() : nullptr;
    const Ref sp = a.steps[size_t(b)];
    const int32_t sdt = sp.dtype();
    if (!here(sp) || (sdt != cd.f32 && sdt != cd.f64) || !sp.contiguous() || sp.numel() != bk.last - bk.first) {
      fail(bname + ": steps must be a contiguous float32/float64 tensor of one counter per parameter (" +
           std::to_string(bk.last - bk.first) + ") on " + device_name + ", got " + shape_of(sp) + " " +
           dtype_name(sdt) + " on " + where(sp));
    }
    bk.steps = sp.data();
    bk.steps_f64 = sdt == cd.f64;
    if (const Ref lr = a.lrs[size_t(b)]) {
      const int32_t ldt = lr.dtype();
      const bool on_cpu = lr.device_type() == cd.cpu;
      if (lr.numel() != 1 || (ldt != cd.f32 && ldt != cd.f64) || !(on_cpu || here(lr))) {
        fail(bname + ": a tensor lr must be one float32/float64 element on the CPU or " + device_name);
      }
      if (backend == Backend::kCpu || !on_cpu) {
        bk.lr = lr.data();
        bk.lr_f64 = ldt == cd.f64;
      } else {  // a CPU lr for a CUDA call: read now, on the host
        bk.h.lr = read_scalar(lr.data(), ldt == cd.f64);
      }
    }
    if (bk.dtype->real_code != cd.f64) {
      const bool lr_here = bk.lr == nullptr || backend == Backend::kCpu;
      if (lr_here) check_hyper_range(bk.first, "lr", bk.lr ? read_scalar(bk.lr, bk.lr_f64) : bk.h.lr);
      check_hyper_range(bk.first, "weight_decay", bk.h.weight_decay);
    }
    const bool grouped = bk.h.has_group();
    if (bk.dtype->reals == 2 && (grouped || bk.h.has_elementwise_prox() || bk.h.heal != 0)) {
      fail_tensor(bk.first, "is complex: proximal regularizers are not defined for complex parameters (l1, l2, "
                            "l0, bounds, group_lasso, max_norm, sparsity, channel_sparsity, heal); put it in a param group without them");
    }
    if (bk.h.budget() != 0 && budget_rows == nullptr) fail(bname + " has a sparsity budget: budget is required");
    if (bk.h.budget() != 0 && backend != Backend::kCpu) {
      fail(bname + " has a sparsity budget, which has no CUDA kernel yet (proxopt steps it on the reference path)");
    }
    int64_t prev_end = 0;
    for (int64_t i = bk.first; i < bk.last; ++i) {
      const Ref p = a.params[size_t(i)];
      Item& it = c.items[size_t(i)];
      it.bucket = int(b);
      if (i != bk.first && p.dtype() != dt) {
        fail_tensor(i, "dtype " + dtype_name(p.dtype()) + " differs from its bucket's " + dtype_name(dt));
      }
      if (!here(p)) fail_tensor(i, "is on " + where(p) + ", the other parameters of its call on " + device_name);
      if (p.layout() != cd.strided || !p.contiguous()) reroute(i, Refusal::param_not_contiguous, "the parameter is not contiguous");
      it.numel = p.numel() * bk.dtype->reals;
      it.column = column[i];
      if (bk.h.budget() != 0) {
        // A unit starts at its first parameter, in the same or an earlier
        // bucket of the same sparsity; a channel budget's unit is its tensor.
        const int64_t u = unit[i];
        const Hyper& hu = c.buckets[size_t(c.items[size_t(u < 0 || u > i ? i : u)].bucket)].h;
        if (u < 0 || u > i || unit[u] != u || hu.sparsity != bk.h.sparsity ||
            hu.channel_sparsity != bk.h.channel_sparsity || (bk.h.channel_sparsity != 0 && u != i)) {
          fail_tensor(i, "its budget unit " + std::to_string(u) + " in layout is not a parameter of the same "
                         "sparsity at or before it (with channel_sparsity: itself)");
        }
        it.unit = u;
        it.budget = budget_rows + i * budget_width;
      }  // (without a budget this step -- sparsity 0, or the heal phase -- its unit is ignored)
      if (bk.nstates > 0 && (it.column < prev_end || it.column + it.numel > bk.cols || it.column % kStateAlign != 0)) {
        fail_tensor(i, "its state columns [" + std::to_string(it.column) + ", " +
                           std::to_string(it.column + it.numel) + ") are out of order, unaligned or beyond the " +
                           std::to_string(bk.cols) + " columns of its bucket's states: the state no longer fits "
                           "the parameter (was the parameter replaced by one of another size?)");
      }
      prev_end = it.column + it.numel;
      it.w = it.numel > 0 ? p.data() : nullptr;
      const int64_t nd = p.dim();
      const int64_t* psizes = p.sizes();
      if (grouped) {
        const int64_t dim0 = int64_t(bk.h.group_dim);
        if (nd < 2 || dim0 < -nd || dim0 >= nd) {
          fail_tensor(i, "group_lasso/max_norm/channel_sparsity need at least 2 dimensions and group_dim in range, got shape " +
                             shape_of(p) + " and group_dim " + std::to_string(dim0));
        }
        const int64_t dim = dim0 < 0 ? dim0 + nd : dim0;
        it.outer = it.groups = it.inner = 1;
        for (int64_t d = 0; d < nd; ++d) {
          if (d < dim) it.outer *= psizes[d];
          else if (d == dim) it.groups = psizes[d];
          else it.inner *= psizes[d];
        }
        if (bk.h.channel_sparsity != 0 && budget_width < kBudgetFields + it.groups) {
          fail_tensor(i, "has " + std::to_string(it.groups) + " groups: its channel budget needs budget rows of " +
                             std::to_string(kBudgetFields + it.groups) + " values, got " + std::to_string(budget_width));
        }
      }
      const Ref g = a.grads[size_t(i)];
      if (!g) continue;
      if (g.layout() != cd.strided) {
        fail_tensor(i, "its grad is sparse (or another non-strided layout): the optimizers need dense gradients");
      }
      bool same = g.dtype() == dt && here(g) && g.dim() == nd;
      if (same) {
        const int64_t* gsizes = g.sizes();
        for (int64_t d = 0; d < nd; ++d) same = same && gsizes[d] == psizes[d];
      }
      if (!same) {
        fail_tensor(i, "its grad has shape " + shape_of(g) + ", dtype " + dtype_name(g.dtype()) + ", device " +
                           where(g) + "; the parameter has " + shape_of(p) + ", " + dtype_name(dt) + ", " + where(p));
      }
      if (!g.contiguous()) reroute(i, Refusal::grad_not_contiguous, "its grad is not contiguous");
      if (backend == Backend::kCpu) {  // an edited counter (Python checks a replaced one when it plans)
        const int64_t j = i - bk.first;
        const double step = bk.steps_f64 ? static_cast<const double*>(bk.steps)[j]
                                         : double(static_cast<const float*>(bk.steps)[j]);
        if (!(step >= 0) || !std::isfinite(step)) {
          fail_tensor(i, "its state 'step' is " + number(step) + ": a step count must be finite and >= 0");
        }
      }
      it.g = it.numel > 0 ? g.data() : nullptr;
      it.stepped = true;
      c.any_stepped = true;
    }
  }
  auto amp = [&](Ref t, const char* name) -> const void* {
    if (!t) return nullptr;
    if (t.numel() != 1 || t.dtype() != cd.f32 || !here(t)) {
      fail(std::string(name) + " must be one float32 element on " + device_name + ", got " + shape_of(t) + " " +
           dtype_name(t.dtype()) + " on " + where(t));
    }
    return t.data();
  };
  c.grad_scale = amp(a.grad_scale[0], "grad_scale");
  c.found_inf = amp(a.found_inf[0], "found_inf");
  return c;
}

// Every check of one call (check_tensors), with a refused tensor reported in
// the call's `refusal` tensor when it has one, else raised.
inline Call checked_call(const Args& a, Backend backend) {
  const Ref out = a.refusal[0];
  if (out && (out.device_type() != codes().cpu || out.dtype() != codes().i64 || !out.contiguous() ||
              out.numel() != 2)) {
    fail("refusal must be a contiguous CPU int64 tensor of 2 elements");
  }
  try {
    Call c = check_tensors(a, backend);
    if (out) {
      auto* r = static_cast<int64_t*>(out.data());
      r[0] = int64_t(Refusal::none);
      r[1] = -1;
    }
    return c;
  } catch (const Refused& r) {
    if (!out) fail("tensor " + std::to_string(r.index) + ": " + r.what);
    auto* report = static_cast<int64_t*>(out.data());
    report[0] = int64_t(r.code);
    report[1] = r.index;
    if (r.code == Refusal::tensor_error) throw std::invalid_argument(r.what);
    Call c;
    c.backend = backend;
    c.refused = true;
    return c;
  }
}

}  // namespace proxopt::op
