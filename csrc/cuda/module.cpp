// proxopt._C_cuda: the CUDA extension, separate from proxopt._C so the CPU
// path never depends on it. Importing it (after proxopt._C, which defines
// the operator) registers the CUDA kernel of torch.ops.proxopt.step
// (op/cuda_op.cpp); this pybind11 module holds what Python asks outside the
// step: whether a GPU can run the kernels, and the launch packing for tests.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../op/cuda_op.h"
#include "kernels.h"

namespace py = pybind11;

namespace proxopt::cuda {
namespace {

std::string error_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

// (device count, "" or why not): whether this module's runtime sees a driver
// and devices, and whether torch has CUDA streams. Cheap; never raises.
py::tuple probe() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return py::make_tuple(0, error_text(err));
  if (!op::cuda_streams_available()) return py::make_tuple(0, std::string("this torch is a CPU build (no libtorch_cuda)"));
  return py::make_tuple(count, std::string());
}

// "" when the kernels can run on `device`, else why not (no kernel image for
// its architecture, a driver too old for this CUDA runtime, no such device).
std::string device_error(int device) {
  int prev = 0;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) err = cudaError_t(f32::image_status());
  if (prev >= 0) cudaSetDevice(prev);
  return err == cudaSuccess ? std::string() : error_text(err);
}

// How a call's tensors are split into launches, without a GPU: tensor i has
// numels[i] elements (groups[i] groups when `grouped`), bucket buckets[i] and
// its data at addresses[i]. Returns per launch its blocks and, per tensor,
// (source index, element offset, elements, first block, bucket slot, aligned),
// and with `spans` what every block covers, decoded as the kernel decodes it.
// fn(std::integral_constant<int, D>{}, std::bool_constant<G>{}) for the
// Launch<D, G> of a variant with `nstates` states (D = 2 + nstates).
template <class Fn, int... S>
auto with_launch_of(std::integer_sequence<int, S...>, int nstates, bool grouped, Fn& fn) {
  using R = decltype(fn(std::integral_constant<int, 2>{}, std::false_type{}));
  R out{};
  (void)((nstates == S ? (out = grouped ? fn(std::integral_constant<int, 2 + S>{}, std::true_type{})
                                        : fn(std::integral_constant<int, 2 + S>{}, std::false_type{}),
                          true)
                       : false) ||
         ...);
  return out;
}

template <class Fn>
auto with_launch(int nstates, bool grouped, Fn&& fn) {
  return with_launch_of(std::make_integer_sequence<int, kMaxStates + 1>{}, nstates, grouped, fn);
}

template <int D, bool G>
py::list plan_impl(const Tensors& c, bool spans) {
  py::list launches;
  pack<D, G>(c, [&](const Launch<D, G>& L, int32_t blocks, const int64_t* source) {
    py::dict d;
    d["blocks"] = blocks;
    py::list tensors;
    for (int t = 0; t < L.ntensors; ++t) {
      const int64_t src = source[t];
      const int64_t offset = int64_t(L.ptr[0][t] - c.t[src].ptr[0]) / c.elem_size;
      tensors.append(py::make_tuple(src, offset, L.numel[t], L.block_start[t], int(L.bucket[t]), bool(L.aligned[t])));
    }
    d["tensors"] = tensors;
    if (spans) {
      py::list out;
      for (int32_t b = 0; b < blocks; ++b) {
        const Span sp = locate(L, b);
        const int64_t src = source[sp.t];
        const int64_t offset = int64_t(L.ptr[0][sp.t] - c.t[src].ptr[0]) / c.elem_size;
        out.append(py::make_tuple(src, offset + sp.begin, offset + sp.begin + sp.n));
      }
      d["spans"] = out;
    }
    launches.append(d);
    return 0;
  });
  return launches;
}

py::list plan(const std::vector<int64_t>& numels, const std::vector<int>& buckets,
              const std::vector<uintptr_t>& addresses, int nstates, int elem_size, bool grouped, bool spans) {
  const size_t n = numels.size();
  if (buckets.size() != n || addresses.size() != n || nstates < 0 || nstates > kMaxStates || elem_size <= 0) {
    throw std::invalid_argument("_plan: lists differ in length, or a bad state count / element size");
  }
  std::vector<TensorArgs> ts(n);
  int nb = 0;
  for (size_t i = 0; i < n; ++i) {
    if (numels[i] < 0 || buckets[i] < 0) throw std::invalid_argument("_plan: negative numel or bucket");
    for (int d = 0; d < 2 + kMaxStates; ++d) ts[i].ptr[d] = addresses[i];
    ts[i].numel = numels[i];
    ts[i].bucket = buckets[i];
    ts[i].outer = 1;
    ts[i].groups = numels[i];  // grouped: one element per group
    ts[i].inner = 1;
    nb = std::max(nb, buckets[i] + 1);
  }
  std::vector<Hyper> hyper(static_cast<size_t>(nb));
  std::vector<uintptr_t> lr(static_cast<size_t>(nb), 0);
  std::vector<uint8_t> lr_f64(static_cast<size_t>(nb), 0);
  Tensors c;
  c.t = ts.data();
  c.count = int64_t(n);
  c.nptr = 2 + nstates;
  c.hyper = hyper.data();
  c.lr = lr.data();
  c.lr_f64 = lr_f64.data();
  c.elem_size = elem_size;
  return with_launch(nstates, grouped, [&](auto d, auto g) { return plan_impl<decltype(d)::value, decltype(g)::value>(c, spans); });
}

template <int D, bool G>
py::tuple limits() {
  return py::make_tuple(Launch<D, G>::kMaxTensors, int(sizeof(Launch<D, G>)));
}

}  // namespace
}  // namespace proxopt::cuda

PYBIND11_MODULE(_C_cuda, m) {
  namespace pc = proxopt::cuda;
  m.doc() = "proxopt CUDA kernels; the step itself is the operator torch.ops.proxopt.step";
  m.def("probe", &pc::probe);
  m.def("device_error", &pc::device_error, py::arg("device"));
  m.def("_plan", &pc::plan, py::arg("numels"), py::arg("buckets"), py::arg("addresses"), py::arg("nstates"),
        py::arg("elem_size"), py::arg("grouped") = false, py::arg("spans") = false);
  m.def("_launch_limits", [](int nstates, bool grouped) {
    if (nstates < 0 || nstates > proxopt::kMaxStates) throw std::invalid_argument("_launch_limits: bad state count");
    return pc::with_launch(nstates, grouped, [](auto d, auto g) { return pc::limits<decltype(d)::value, decltype(g)::value>(); });
  }, py::arg("nstates"), py::arg("grouped") = false);
  m.attr("CHUNK_ELEMS") = pc::kChunkElems;
  m.attr("THREADS") = pc::kThreads;
  m.attr("MAX_BUCKETS") = pc::kMaxBuckets;
  m.attr("PARAM_BYTES") = pc::kParamBytes;
  m.attr("VECTOR_BYTES") = pc::kVectorBytes;
  m.attr("CUDART_VERSION") = CUDART_VERSION;
}
