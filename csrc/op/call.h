// The operator proxopt::step, device-independent part: its schema, the
// unboxing of its arguments and the checks of one call that run before
// anything is written (shared by the CPU and CUDA implementations). A call
// that passes them is described by a `Call`: raw pointers, element counts,
// group shapes and the hyperparameters of each bucket.
//
// A bucket is the tensors of one param group with one dtype on the call's
// device. Its states are one (S, N) tensor whose columns the layout assigns
// to parameters; its step counters one tensor with an element per parameter.
// The state_dict's per-parameter tensors are views of these (Python's
// proxopt._dispatch keeps that so).
//
// The per-parameter lists are unboxed into raw handles and read through the
// Stable ABI's C shim directly: a step on many small tensors is bound by this
// per-tensor work, and torch::stable::Tensor adds a shared_ptr per element and
// several shim calls per dtype query.
//
// Errors are std::invalid_argument (Python: ValueError), prefixed
// "proxopt.step: tensor K: " when they concern the K-th parameter of the
// call, so that Python can name the parameter; "proxopt.step: reroute tensor
// K: " marks a tensor the kernels cannot take but the reference can (a
// parameter or gradient that stopped being contiguous).
#pragma once

#include <torch/csrc/stable/library.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../proxopt/hyper.h"

namespace proxopt::op {

// The schema, registered once (cpu_op.cpp) and implemented for CPU and CUDA.
//   params   kernel-eligible parameters, bucket by bucket (mutated);
//   grads    same length; None: the parameter is not stepped this call;
//   states   per bucket, an (S, N) tensor of the parameters' dtype (the real
//            dtype for complex parameters);
//   steps    per bucket, a float32/float64 tensor of one counter per parameter
//            (on the CPU for CPU calls, on the device for CUDA calls);
//   layout   CPU int64: the B + 1 bucket starts (bucket b is
//            params[starts[b]:starts[b+1]]), then each parameter's first state column;
//   hyper    B x kHyperFields values (hyper.h);
//   lrs      per bucket a tensor lr, or None (then hyper's lr);
//   grad_scale, found_inf: AMP's tensors (float32, one element);
//   check_only: run every check, write nothing.
constexpr const char* kStepSchema =
    "step(Tensor(a!)[] params, Tensor?[] grads, Tensor(b!)[] states, Tensor(c!)[] steps, "
    "Tensor layout, float[] hyper, Tensor?[] lrs, Tensor? grad_scale, Tensor? found_inf, "
    "bool check_only=False) -> ()";
constexpr int kStepArgs = 10;

#define PROXOPT_SHIM(call) STABLE_TORCH_ERROR_CODE_CHECK(call)

// ---- the shim's codes, read once ----------------------------------------------

struct Codes {
  int32_t f32, f64, f16, bf16, c64, c128, i64, i32, boolean;
  int32_t cpu, cuda;
  int32_t strided;
};

inline const Codes& codes() {
  static const Codes c{aoti_torch_dtype_float32(),    aoti_torch_dtype_float64(),
                       aoti_torch_dtype_float16(),    aoti_torch_dtype_bfloat16(),
                       aoti_torch_dtype_complex64(),  aoti_torch_dtype_complex128(),
                       aoti_torch_dtype_int64(),      aoti_torch_dtype_int32(),
                       aoti_torch_dtype_bool(),       aoti_torch_device_type_cpu(),
                       aoti_torch_device_type_cuda(), aoti_torch_layout_strided()};
  return c;
}

// Storage types of the kernels (the one dtype table: Python reads it from
// proxopt._C.KERNEL_DTYPES). A complex tensor runs as its real view.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct DTypeInfo {
  int32_t code;      // the shim's dtype code
  const char* name;  // torch's name, as Python spells it (torch.float32, ...)
  DType kernel;      // the storage type the kernels step
  int reals;         // real elements per tensor element
  int elem_size;     // bytes of one real element
  int32_t real_code; // dtype of the states (the real dtype of a complex one)
};

inline const std::vector<DTypeInfo>& dtype_table() {
  static const std::vector<DTypeInfo> table = [] {
    const Codes& c = codes();
    return std::vector<DTypeInfo>{
        {c.f32, "float32", DType::kFloat32, 1, 4, c.f32},
        {c.f64, "float64", DType::kFloat64, 1, 8, c.f64},
        {c.f16, "float16", DType::kFloat16, 1, 2, c.f16},
        {c.bf16, "bfloat16", DType::kBFloat16, 1, 2, c.bf16},
        {c.c64, "complex64", DType::kFloat32, 2, 4, c.f32},
        {c.c128, "complex128", DType::kFloat64, 2, 8, c.f64},
    };
  }();
  return table;
}

inline const DTypeInfo* find_dtype(int32_t code) {
  for (const auto& d : dtype_table()) {
    if (d.code == code) return &d;
  }
  return nullptr;
}

// As Python prints it (torch.float32), for messages.
inline std::string dtype_name(int32_t code) {
  if (const DTypeInfo* d = find_dtype(code)) return std::string("torch.") + d->name;
  const Codes& c = codes();
  if (code == c.i64) return "torch.int64";
  if (code == c.i32) return "torch.int32";
  if (code == c.boolean) return "torch.bool";
  return "dtype code " + std::to_string(code);
}

// ---- a borrowed tensor handle and its metadata ------------------------------------

struct Ref {
  AtenTensorHandle h = nullptr;

  explicit operator bool() const { return h != nullptr; }
  int32_t dtype() const {
    int32_t v;
    PROXOPT_SHIM(aoti_torch_get_dtype(h, &v));
    return v;
  }
  int32_t device_type() const {
    int32_t v;
    PROXOPT_SHIM(aoti_torch_get_device_type(h, &v));
    return v;
  }
  int32_t device_index() const {
    int32_t v;
    PROXOPT_SHIM(aoti_torch_get_device_index(h, &v));
    return v;
  }
  int32_t layout() const {
    int32_t v;
    PROXOPT_SHIM(aoti_torch_get_layout(h, &v));
    return v;
  }
  int64_t dim() const {
    int64_t v;
    PROXOPT_SHIM(aoti_torch_get_dim(h, &v));
    return v;
  }
  const int64_t* sizes() const {
    int64_t* v;
    PROXOPT_SHIM(aoti_torch_get_sizes(h, &v));
    return v;
  }
  int64_t numel() const {
    int64_t v;
    PROXOPT_SHIM(aoti_torch_get_numel(h, &v));
    return v;
  }
  bool contiguous() const {
    bool v;
    PROXOPT_SHIM(aoti_torch_is_contiguous(h, &v));
    return v;
  }
  void* data() const {
    void* v;
    PROXOPT_SHIM(aoti_torch_get_data_ptr(h, &v));
    return v;
  }
};

// ---- unboxing: every handle the call receives is owned here ---------------------------

class Handles {
 public:
  Handles() = default;
  Handles(const Handles&) = delete;
  Handles& operator=(const Handles&) = delete;
  ~Handles() {
    for (AtenTensorHandle h : hs_) {
      if (h != nullptr) aoti_torch_delete_tensor_object(h);
    }
  }
  void push(AtenTensorHandle h) { hs_.push_back(h); }
  void reserve(size_t n) { hs_.reserve(n); }
  size_t size() const { return hs_.size(); }
  Ref operator[](size_t i) const { return Ref{hs_[i]}; }

 private:
  std::vector<AtenTensorHandle> hs_;
};

// A `Tensor?` argument: a pointer to a boxed tensor, or null for None (the
// 2.10 convention, as torch/csrc/stable/stableivalue_conversions.h reads it).
inline AtenTensorHandle take_optional(StableIValue v) {
  auto* boxed = torch::stable::detail::to<StableIValue*>(v);
  if (boxed == nullptr) return nullptr;
  AtenTensorHandle h = torch::stable::detail::to<AtenTensorHandle>(*boxed);
  delete boxed;
  return h;
}

inline void take_list(StableIValue v, bool optional, Handles& out) {
  auto list = torch::stable::detail::to<StableListHandle>(v);
  size_t n = 0;
  PROXOPT_SHIM(torch_list_size(list, &n));
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    StableIValue el;
    PROXOPT_SHIM(torch_list_get_item(list, i, &el));
    out.push(optional ? take_optional(el) : torch::stable::detail::to<AtenTensorHandle>(el));
  }
  PROXOPT_SHIM(torch_delete_list(list));
}

struct Args {
  Handles params, grads, states, steps, layout, lrs, grad_scale, found_inf;
  std::vector<double> hyper;
  bool check_only = false;
};

// Takes ownership of the boxed arguments of one call (the stack's layout is
// the schema's argument order).
inline void unbox(StableIValue* stack, uint64_t num_args, Args& a) {
  if (num_args != kStepArgs) {
    throw std::invalid_argument("proxopt.step: the registered schema has " + std::to_string(num_args) +
                                " arguments, this build expects " + std::to_string(kStepArgs));
  }
  take_list(stack[0], false, a.params);
  take_list(stack[1], true, a.grads);
  take_list(stack[2], false, a.states);
  take_list(stack[3], false, a.steps);
  a.layout.push(torch::stable::detail::to<AtenTensorHandle>(stack[4]));
  a.hyper = torch::stable::detail::to<std::vector<double>>(stack[5]);
  take_list(stack[6], true, a.lrs);
  a.grad_scale.push(take_optional(stack[7]));
  a.found_inf.push(take_optional(stack[8]));
  a.check_only = torch::stable::detail::to<bool>(stack[9]);
}

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
  fail("tensor " + std::to_string(i) + ": " + what);
}
[[noreturn]] inline void reroute(int64_t i, const std::string& what) {
  fail("reroute tensor " + std::to_string(i) + ": " + what);
}

inline double read_scalar(const void* p, bool f64) {
  return f64 ? *static_cast<const double*>(p) : double(*static_cast<const float*>(p));
}

// Every check of one call. It reads only metadata (and the layout); the
// values of steps, lr and found_inf are read by the backend afterwards.
inline Call check_call(const Args& a, Backend backend) {
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
      layout.numel() != nb + 1 + n) {
    fail("layout must be a contiguous CPU int64 tensor of buckets + 1 + params values");
  }
  const int64_t* lay = static_cast<const int64_t*>(layout.data());
  const int64_t* column = lay + nb + 1;
  if (lay[0] != 0 || lay[nb] != n) fail("layout's bucket starts must run from 0 to the number of params");

  c.buckets.resize(size_t(nb));
  c.items.resize(size_t(n));
  for (int64_t b = 0; b < nb; ++b) {
    Bucket& bk = c.buckets[size_t(b)];
    const std::string bname = "bucket " + std::to_string(b);
    bk.h = parse_hyper(a.hyper.data() + b * kHyperFields, "proxopt.step: " + bname);
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
    const bool grouped = bk.h.has_group();
    if (bk.dtype->reals == 2 && (grouped || bk.h.has_elementwise_prox())) {
      fail_tensor(bk.first, "is complex: proximal regularizers are not defined for complex parameters (l1, l2, "
                            "l0, bounds, group_lasso, max_norm); put it in a param group without them");
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
      if (p.layout() != cd.strided || !p.contiguous()) reroute(i, "the parameter is not contiguous");
      it.numel = p.numel() * bk.dtype->reals;
      it.column = column[i];
      if (bk.nstates > 0 && (it.column < prev_end || it.column + it.numel > bk.cols || it.column % 16 != 0)) {
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
          fail_tensor(i, "group_lasso/max_norm need at least 2 dimensions and group_dim in range, got shape " +
                             shape_of(p) + " and group_dim " + std::to_string(dim0));
        }
        const int64_t dim = dim0 < 0 ? dim0 + nd : dim0;
        it.outer = it.groups = it.inner = 1;
        for (int64_t d = 0; d < nd; ++d) {
          if (d < dim) it.outer *= psizes[d];
          else if (d == dim) it.groups = psizes[d];
          else it.inner *= psizes[d];
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
      if (!g.contiguous()) reroute(i, "its grad is not contiguous");
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

}  // namespace proxopt::op
