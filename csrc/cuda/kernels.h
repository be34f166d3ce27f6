// The boundary between the CUDA operator (host code, op/cuda_op.cpp) and the
// kernels (kernels.cu, compiled by nvcc once per storage dtype).
#pragma once

#include "../proxopt/dtypes.h"
#include "../proxopt/variants.h"
#include "launch.h"

namespace proxopt::cuda {

// Launches every kernel of `c` -- tensors that share one kernel variant: the
// rule variant, prox shape and dtype of `variant` -- on `stream` (a
// cudaStream_t) on the current device. Returns 0 or the cudaError_t of the
// first failed launch; -1 when this dtype has no kernel for the variant.
using LaunchFn = int (*)(const Tensors& c, const Hyper& variant, void* stream);

// Each dtype's translation unit (kernels.cu with PROXOPT_CUDA_DTYPE = its tag) defines:
//   launch:        the LaunchFn of its dtype;
//   image_status(): 0 if this module has a kernel image for the current
//                  device, else the cudaError_t (e.g. no image for its arch).
#define PROXOPT_DECLARE_CUDA_DTYPE(tag, name, bytes)                     \
  namespace tag {                                                        \
  int launch(const Tensors& c, const Hyper& variant, void* stream);      \
  int image_status();                                                    \
  }
PROXOPT_DTYPES(PROXOPT_DECLARE_CUDA_DTYPE)
#undef PROXOPT_DECLARE_CUDA_DTYPE

// Increments the step counters in `b` (after every kernel of the call), unless
// found_inf is set. Defined in the float32 translation unit.
int launch_bump(const Bump& b, void* stream);

}  // namespace proxopt::cuda
