// The boundary between the CUDA operator (host code, op/cuda_op.cpp) and the
// kernels (kernels.cu, compiled by nvcc once per storage dtype).
#pragma once

#include "launch.h"

namespace proxopt::cuda {

// Launches every kernel of `c` -- tensors that share one kernel variant: the
// rule variant, prox shape and dtype of `variant` -- on `stream` (a
// cudaStream_t) on the current device. Returns 0 or the cudaError_t of the
// first failed launch; -1 when this dtype has no kernel for the variant.
using LaunchFn = int (*)(const Tensors& c, const Hyper& variant, void* stream);

// Each dtype's translation unit (kernels.cu with PROXOPT_CUDA_NS) defines:
//   launch:        the LaunchFn of its dtype;
//   image_status(): 0 if this module has a kernel image for the current
//                  device, else the cudaError_t (e.g. no image for its arch).
#define PROXOPT_DECLARE_CUDA_DTYPE(name)                                 \
  namespace name {                                                       \
  int launch(const Tensors& c, const Hyper& variant, void* stream);      \
  int image_status();                                                    \
  }
PROXOPT_DECLARE_CUDA_DTYPE(f32)
PROXOPT_DECLARE_CUDA_DTYPE(f64)
PROXOPT_DECLARE_CUDA_DTYPE(f16)
PROXOPT_DECLARE_CUDA_DTYPE(bf16)
#undef PROXOPT_DECLARE_CUDA_DTYPE

// Increments the step counters in `b` (after every kernel of the call), unless
// found_inf is set. Defined in the float32 translation unit.
int launch_bump(const Bump& b, void* stream);

// The prox shape the CUDA kernels are instantiated for, from the CPU's
// (coeffs.h prox_shape): arithmetic is cheap next to memory on a GPU, so every
// regularized step takes the general shape of its kind (unused proxes at their
// exact neutral values): plain, general, adaptive general, and the two group ones.
inline unsigned cuda_prox_shape(unsigned p) {
  if ((p & kGroup) != 0) return p;
  if ((p & kAdaptive) != 0) return kAdaptive | kGeneral;
  return p == 0 ? 0u : kGeneral;
}

}  // namespace proxopt::cuda
