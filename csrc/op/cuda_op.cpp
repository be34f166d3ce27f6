// proxopt::step on CUDA (registered by proxopt._C_cuda): the same checks as
// the CPU kernel (checks.h), then the launches on PyTorch's current stream of
// the parameters' device. Nothing is read back to the host: step counters,
// a tensor lr and AMP's grad_scale / found_inf stay on the device, where the
// kernels read them; a step can therefore be captured in a CUDA graph.
#include <dlfcn.h>

#include <cuda_runtime_api.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "../cuda/kernels.h"
#include "checks.h"
#include "cuda_op.h"

namespace proxopt::op {
namespace {

using cuda::Bump;
using cuda::TensorArgs;
using cuda::Tensors;

std::string cuda_error_text(int err) {
  const auto e = cudaError_t(err);
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// PyTorch's current CUDA stream of `device`. The Stable ABI of torch 2.10
// has it as aoti_torch_get_current_cuda_stream in libtorch_cuda, which a CPU
// build of torch lacks: it is looked up once in the already loaded library
// rather than linked, so this module loads (and reports why it cannot run)
// beside any torch.
using GetStream = AOTITorchError (*)(int32_t, void**);

GetStream stream_getter() {
  static const GetStream fn = []() -> GetStream {
    void* lib = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
    if (lib == nullptr) return nullptr;
    return reinterpret_cast<GetStream>(dlsym(lib, "aoti_torch_get_current_cuda_stream"));
  }();
  return fn;
}

void* current_stream(int device) {
  const GetStream fn = stream_getter();
  if (fn == nullptr) {
    throw std::runtime_error("proxopt.step: this torch has no CUDA streams (libtorch_cuda is not loaded)");
  }
  void* stream = nullptr;
  if (fn(device, &stream) != AOTI_TORCH_SUCCESS) {
    throw std::runtime_error("proxopt.step: could not get the current CUDA stream of device " + std::to_string(device));
  }
  return stream;
}

cuda::LaunchFn launcher(DType d) {
  switch (d) {
#define PROXOPT_LAUNCHER(tag, name, bytes) \
  case DType::tag: return cuda::tag::launch;
    PROXOPT_DTYPES(PROXOPT_LAUNCHER)
#undef PROXOPT_LAUNCHER
  }
  return nullptr;
}

// Buckets that run the same kernel variant (dtype, rule, state mask, prox
// shape) share launches.
using VariantKey = std::tuple<int, int, unsigned, unsigned>;

VariantKey variant_of(const Bucket& b) {
  const Hyper& h = b.h;
  return {int(b.dtype->kernel), int(h.rule), state_mask(h), cuda_prox_shape(prox_shape(h))};
}

void check_launch(int err, int device) {
  if (err == -1) throw std::invalid_argument("proxopt.step: no CUDA kernel for this rule, prox shape and dtype");
  if (err != 0) {
    throw std::runtime_error("proxopt.step: a kernel launch on cuda:" + std::to_string(device) +
                             " failed: " + cuda_error_text(err));
  }
}

void step_cuda(StableIValue* stack, uint64_t num_args, uint64_t /*num_outputs*/) {
  Args args;
  unbox(stack, num_args, args);
  const Call c = checked_call(args, Backend::kCuda);
  if (c.refused || args.check_only || !c.any_stepped) return;
  torch::stable::accelerator::DeviceGuard guard(c.device);
  void* stream = current_stream(c.device);

  std::vector<Hyper> hyper(c.buckets.size());
  std::vector<uintptr_t> lr(c.buckets.size(), 0);
  std::vector<uint8_t> lr_f64(c.buckets.size(), 0);
  std::map<VariantKey, std::vector<TensorArgs>> variants;
  std::map<VariantKey, size_t> first_bucket;
  Bump bump{};
  bump.found_inf = uintptr_t(c.found_inf);
  std::vector<Bump> bumps;
  bool steps_f64 = false;
  for (size_t b = 0; b < c.buckets.size(); ++b) {
    const Bucket& bk = c.buckets[b];
    hyper[b] = bk.h;
    lr[b] = uintptr_t(bk.lr);
    lr_f64[b] = bk.lr_f64;
    if (b > 0 && bk.steps_f64 != steps_f64) {
      fail("the buckets of one CUDA call must keep their step counters in one dtype");
    }
    steps_f64 = bk.steps_f64;
    const VariantKey key = variant_of(bk);
    first_bucket.emplace(key, b);
    const int64_t esize = bk.dtype->elem_size;
    for (int64_t i = bk.first; i < bk.last; ++i) {
      const Item& it = c.items[size_t(i)];
      if (!it.stepped) continue;
      const uintptr_t step = uintptr_t(bk.steps) + uintptr_t((i - bk.first) * (bk.steps_f64 ? 8 : 4));
      bump.step[bump.count++] = step;
      if (bump.count == Bump::kMax) {
        bumps.push_back(bump);
        bump.count = 0;
      }
      if (it.numel == 0) continue;
      TensorArgs a{};
      a.ptr[0] = uintptr_t(it.w);
      a.ptr[1] = uintptr_t(it.g);
      for (int q = 0; q < bk.nstates; ++q) {
        a.ptr[2 + q] = uintptr_t(bk.states) + uintptr_t((int64_t(q) * bk.cols + it.column) * esize);
      }
      a.numel = it.numel;
      a.step = step;
      a.bucket = int(b);
      a.outer = it.outer;
      a.groups = it.groups;
      a.inner = it.inner;
      variants[key].push_back(a);
    }
  }
  bump.steps_f64 = steps_f64;
  if (bump.count > 0) bumps.push_back(bump);

  for (auto& [key, tensors] : variants) {
    const Bucket& bk = c.buckets[first_bucket.at(key)];
    Tensors t;
    t.t = tensors.data();
    t.count = int64_t(tensors.size());
    t.nptr = 2 + bk.nstates;
    t.hyper = hyper.data();
    t.lr = lr.data();
    t.lr_f64 = lr_f64.data();
    t.elem_size = bk.dtype->elem_size;
    t.grad_scale = uintptr_t(c.grad_scale);
    t.found_inf = uintptr_t(c.found_inf);
    t.steps_f64 = steps_f64;
    check_launch(launcher(bk.dtype->kernel)(t, bk.h, stream), c.device);
  }
  // After every kernel of the call (they read the old counters).
  for (Bump& b : bumps) {
    b.steps_f64 = steps_f64;
    check_launch(cuda::launch_bump(b, stream), c.device);
  }
}

}  // namespace

bool cuda_streams_available() { return stream_getter() != nullptr; }

}  // namespace proxopt::op

STABLE_TORCH_LIBRARY_IMPL(proxopt, CUDA, m) { m.impl("step", &proxopt::op::step_cuda); }
