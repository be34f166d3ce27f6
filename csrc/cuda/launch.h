// The boundary between the binding (plain C++, compiled by the host compiler)
// and the kernels (kernels.cu, compiled by nvcc once per storage dtype).
#pragma once

#include "multi_tensor.h"

namespace proxopt::cuda {

// Launches every kernel of one call on `stream` (a cudaStream_t) on the
// current device. Returns 0 or the cudaError_t of the first failed launch.
using LaunchFn = int (*)(const Tensors& c, void* stream);

// Each dtype's translation unit (kernels.cu with PROXOPT_CUDA_NS) defines:
//   select(h):    the launcher of the rule variant `h` asks for, or nullptr;
//   image_status(): 0 if this module has a kernel image for the current
//                 device, else the cudaError_t (e.g. no image for its arch).
#define PROXOPT_DECLARE_CUDA_DTYPE(name) \
  namespace name {                       \
  LaunchFn select(const Hyper& h);       \
  int image_status();                    \
  }
PROXOPT_DECLARE_CUDA_DTYPE(f32)
PROXOPT_DECLARE_CUDA_DTYPE(f64)
PROXOPT_DECLARE_CUDA_DTYPE(f16)
PROXOPT_DECLARE_CUDA_DTYPE(bf16)
#undef PROXOPT_DECLARE_CUDA_DTYPE

}  // namespace proxopt::cuda
