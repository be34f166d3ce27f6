// proxopt._C_cuda: the CUDA backend, a module separate from proxopt._C so the
// CPU path never depends on it. Like the CPU binding it takes raw pointers
// from Python (no libtorch), checks the lists before touching anything,
// derives per-tensor scalars in double on the host (incrementing the host
// `step` tensors), and launches on the caller's stream with the GIL released.
// CUDA failures come back as RuntimeError, bad arguments as ValueError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../proxopt/bind_hyper.h"
#include "../proxopt/step_checks.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "launch.h"

namespace py = pybind11;

namespace proxopt::cuda {
namespace {

struct NotImplemented : std::logic_error {
  using std::logic_error::logic_error;
};

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("proxopt._C_cuda.step: " + what);
}

std::string error_text(int err) {
  const auto e = cudaError_t(err);
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

void check_cuda(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) {
    throw std::runtime_error("proxopt._C_cuda: " + what + " failed: " + error_text(int(err)));
  }
}

// Makes `device` current for this thread and restores the previous device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) {
      check_cuda(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

constexpr int kElemSize[4] = {4, 8, 2, 2};  // by DType code

LaunchFn select_launch(const Hyper& h, int dtype) {
  switch (DType(dtype)) {
    case DType::kFloat32: return f32::select(h);
    case DType::kFloat64: return f64::select(h);
    case DType::kFloat16: return f16::select(h);
    case DType::kBFloat16: return bf16::select(h);
  }
  return nullptr;
}

void check_hyper(const Hyper& h, int dtype) {
  require(dtype >= 0 && dtype <= 3, "unknown dtype code " + std::to_string(dtype));
  require(h.rule >= 0 && h.rule <= 3, "unknown rule code " + std::to_string(h.rule));
  if (h.group_lasso != 0 || h.max_norm != 0) {
    // The seam for group proxes: they need a row-wise kernel (see kernels.cu).
    throw NotImplemented(
        "proxopt._C_cuda.step: group_lasso and max_norm have no CUDA kernel yet; "
        "step such param groups on the reference path");
  }
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

// The distinct scalars of a call: Coeffs depend on the tensor only through
// (step, fresh), so a group at one step count needs one or two entries.
struct CoeffTable {
  std::vector<Coeffs<double>> table;
  std::vector<int32_t> index;  // per tensor

  CoeffTable(const Hyper& h, const std::vector<double>& t, const std::vector<bool>& fresh, size_t n) {
    std::map<std::pair<double, bool>, int32_t> seen;
    index.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const bool f = !fresh.empty() && fresh[i];
      const auto key = std::make_pair(t[i], f);
      auto it = seen.find(key);
      if (it == seen.end()) {
        // grad_scale is applied in the kernel from the device pointer (has_grad_scale false here);
        // group_size only matters for the group proxes, rejected above.
        table.push_back(make_coeffs(h, t[i], f, 1.0, false, 1.0));
        it = seen.emplace(key, int32_t(table.size() - 1)).first;
      }
      index[i] = it->second;
    }
  }
};

// One optimizer step over one (param group, device, dtype).
void step(const Hyper& h, int dtype, const std::vector<uintptr_t>& params,
          const std::vector<uintptr_t>& grads, const std::vector<std::vector<uintptr_t>>& states,
          const std::vector<uintptr_t>& steps, int step_dtype, const std::vector<int64_t>& numels,
          const std::vector<bool>& fresh, uintptr_t grad_scale, int device, uintptr_t stream) {
  // Every check happens before the first write.
  check_step_lists("proxopt._C_cuda.step", h, dtype, params, grads, states, steps, step_dtype, numels,
                   fresh);
  check_hyper(h, dtype);
  const size_t n = params.size();
  const int nstates = state_count(h);
  const bool has_steps = RuleKind(h.rule) != RuleKind::kSgd;
  require(device >= 0, "device index must be >= 0, got " + std::to_string(device));
  bool any_work = false;
  for (size_t i = 0; i < n; ++i) any_work = any_work || numels[i] > 0;
  const LaunchFn fn = select_launch(h, dtype);
  require(fn != nullptr, "no kernel for this rule and dtype");

  // Step counts after this step's increment; written back once the launches succeeded.
  std::vector<double> t(n, 0.0);
  for (size_t i = 0; has_steps && i < n; ++i) t[i] = read_scalar(steps[i], step_dtype) + 1.0;
  const CoeffTable coeffs(h, t, fresh, n);

  Tensors c;
  c.count = int64_t(n);
  c.nptr = 2 + nstates;
  c.ptr[0] = params.data();
  c.ptr[1] = grads.data();
  for (int s = 0; s < nstates; ++s) c.ptr[2 + s] = states[s].data();
  c.numels = numels.data();
  c.coeff_of = coeffs.index.data();
  c.coeff_table = coeffs.table.data();
  c.elem_size = kElemSize[dtype];
  c.grad_scale = grad_scale;

  if (any_work) {
    int err = 0;
    {
      py::gil_scoped_release release;
      DeviceGuard guard(device);
      err = fn(c, reinterpret_cast<void*>(stream));
    }
    if (err != 0) {
      // A failed launch leaves later tensors untouched and every step count as it was.
      throw std::runtime_error("proxopt._C_cuda.step: kernel launch on device " +
                               std::to_string(device) + " failed: " + error_text(err));
    }
  }
  for (size_t i = 0; has_steps && i < n; ++i) write_scalar(steps[i], step_dtype, t[i]);
}

// (device count, "" or the CUDA error): whether this module's runtime sees a
// driver and devices. Cheap; never raises.
py::tuple probe() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return py::make_tuple(0, error_text(int(err)));
  return py::make_tuple(count, std::string());
}

// "" when the kernels can run on `device`, else why not (no kernel image for
// its architecture, a driver too old for this CUDA runtime, no such device).
std::string device_error(int device) {
  try {
    DeviceGuard guard(device);
    const int err = f32::image_status();
    return err == 0 ? std::string() : error_text(err);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
}

// ---- host-only introspection for tests (no GPU needed) -------------------

template <class M, int D>
py::list plan_impl(const Tensors& c, bool spans) {
  py::list launches;
  pack<M, D>(c, [&](const Launch<M, D>& L, int32_t blocks, const int64_t* source) {
    py::dict d;
    d["blocks"] = blocks;
    int ncoeffs = 0;
    py::list tensors;
    for (int t = 0; t < L.ntensors; ++t) {
      const int64_t src = source[t];
      const int64_t offset = int64_t(L.ptr[0][t] - c.ptr[0][src]) / c.elem_size;
      tensors.append(py::make_tuple(src, offset, L.numel[t], L.block_start[t], int(L.coeff[t]),
                                    bool(L.aligned[t])));
      if (L.coeff[t] + 1 > ncoeffs) ncoeffs = L.coeff[t] + 1;
    }
    d["tensors"] = tensors;
    d["coeffs"] = ncoeffs;
    d["grad_scale"] = L.grad_scale;
    if (spans) {
      // What each block updates, decoded exactly as the kernel does.
      py::list out;
      for (int32_t b = 0; b < blocks; ++b) {
        const Span sp = locate(L, b);
        const int64_t src = source[sp.t];
        const int64_t offset = int64_t(L.ptr[0][sp.t] - c.ptr[0][src]) / c.elem_size;
        out.append(py::make_tuple(src, offset + sp.begin, offset + sp.begin + sp.n));
      }
      d["spans"] = out;
    }
    launches.append(d);
    return 0;
  });
  return launches;
}

template <class M>
py::list plan_dispatch(int d, const Tensors& c, bool spans) {
  switch (d) {
    case 2: return plan_impl<M, 2>(c, spans);
    case 3: return plan_impl<M, 3>(c, spans);
    case 4: return plan_impl<M, 4>(c, spans);
    case 5: return plan_impl<M, 5>(c, spans);
  }
  throw std::invalid_argument("bad pointer count");
}

// How a call with these tensors is split into launches, without launching:
// every tensor's data pointers are `addresses[i]` (element offsets are then
// easy to read back), `coeff_keys[i]` stands for its (step, fresh).
py::list plan(const Hyper& h, int dtype, const std::vector<int64_t>& numels,
              const std::vector<uintptr_t>& addresses, const std::vector<int32_t>& coeff_keys,
              uintptr_t grad_scale, bool spans) {
  check_hyper(h, dtype);
  const size_t n = numels.size();
  require(addresses.size() == n && coeff_keys.size() == n, "plan: lists differ in length");
  int32_t nkeys = 0;
  for (size_t i = 0; i < n; ++i) {
    require(numels[i] >= 0 && coeff_keys[i] >= 0, "plan: negative numel or key");
    nkeys = std::max(nkeys, coeff_keys[i] + 1);
  }
  std::vector<Coeffs<double>> table(size_t(nkeys), make_coeffs(h, 1.0, false, 1.0, false, 1.0));
  Tensors c;
  c.count = int64_t(n);
  c.nptr = 2 + state_count(h);
  for (int d = 0; d < c.nptr; ++d) c.ptr[d] = addresses.data();
  c.numels = numels.data();
  c.coeff_of = coeff_keys.data();
  c.coeff_table = table.data();
  c.elem_size = kElemSize[dtype];
  c.grad_scale = grad_scale;
  return dtype == int(DType::kFloat64) ? plan_dispatch<double>(c.nptr, c, spans)
                                       : plan_dispatch<float>(c.nptr, c, spans);
}

template <class M>
std::pair<int, int> limits_for(int d) {
  switch (d) {
    case 2: return {Launch<M, 2>::kMaxTensors, int(sizeof(Launch<M, 2>))};
    case 3: return {Launch<M, 3>::kMaxTensors, int(sizeof(Launch<M, 3>))};
    case 4: return {Launch<M, 4>::kMaxTensors, int(sizeof(Launch<M, 4>))};
    case 5: return {Launch<M, 5>::kMaxTensors, int(sizeof(Launch<M, 5>))};
  }
  throw std::invalid_argument("bad pointer count");
}

// (tensors per launch, bytes of the kernel argument) for a rule variant and dtype.
std::pair<int, int> launch_limits(const Hyper& h, int dtype) {
  check_hyper(h, dtype);
  const int d = 2 + state_count(h);
  return dtype == int(DType::kFloat64) ? limits_for<double>(d) : limits_for<float>(d);
}

}  // namespace
}  // namespace proxopt::cuda

PYBIND11_MODULE(_C_cuda, m) {
  namespace pc = proxopt::cuda;
  m.doc() = "proxopt CUDA kernels (raw pointers; see python/proxopt/_fused_cuda.py)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const pc::NotImplemented& e) {
      PyErr_SetString(PyExc_NotImplementedError, e.what());
    }
  });
  // The same fields as proxopt._C.Hyper; module-local so both modules can
  // register the one C++ type.
  proxopt::bind_hyper(m, py::module_local());
  m.def("step", &pc::step, py::arg("hyper"), py::arg("dtype"), py::arg("params"),
        py::arg("grads"), py::arg("states"), py::arg("steps"), py::arg("step_dtype"),
        py::arg("numels"), py::arg("fresh"), py::arg("grad_scale"), py::arg("device"),
        py::arg("stream"));
  m.def("probe", &pc::probe);
  m.def("device_error", &pc::device_error, py::arg("device"));
  m.def("_plan", &pc::plan, py::arg("hyper"), py::arg("dtype"), py::arg("numels"),
        py::arg("addresses"), py::arg("coeff_keys"), py::arg("grad_scale") = 0,
        py::arg("spans") = false);
  m.def("_launch_limits", &pc::launch_limits, py::arg("hyper"), py::arg("dtype"));
  m.attr("CHUNK_ELEMS") = pc::kChunkElems;
  m.attr("THREADS") = pc::kThreads;
  m.attr("MAX_COEFFS") = pc::kMaxCoeffs;
  m.attr("PARAM_BYTES") = pc::kParamBytes;
  m.attr("VECTOR_BYTES") = pc::kVectorBytes;
  m.attr("CUDART_VERSION") = CUDART_VERSION;
}
