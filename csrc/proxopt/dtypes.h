// The storage dtypes the kernels step, declared once. Each entry is
// X(tag, torch_name, bytes): `tag` names the DType and the namespace of that
// dtype's CUDA kernels (CMakeLists.txt reads the tags from this list),
// `torch_name` is torch's name (torch.float32) and the shim's
// (aoti_torch_dtype_float32), `bytes` the size of one element. The list's
// order is the DType code. Complex parameters run as their real view:
// X(torch_name, tag of the real dtype).
#pragma once

#define PROXOPT_DTYPES(X) \
  X(f32, float32, 4)      \
  X(f64, float64, 8)      \
  X(f16, float16, 2)      \
  X(bf16, bfloat16, 2)

#define PROXOPT_COMPLEX_DTYPES(X) \
  X(complex64, f32)               \
  X(complex128, f64)

namespace proxopt {

enum class DType : int {
#define PROXOPT_DTYPE_ENUM(tag, name, bytes) tag,
  PROXOPT_DTYPES(PROXOPT_DTYPE_ENUM)
#undef PROXOPT_DTYPE_ENUM
};

}  // namespace proxopt
