// What proxopt._C_cuda's Python functions ask of the CUDA operator.
#pragma once

namespace proxopt::op {

// Whether the loaded torch has CUDA streams (libtorch_cuda) for the kernels.
bool cuda_streams_available();

}  // namespace proxopt::op
