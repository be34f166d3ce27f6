// The shim's view of the kernel dtypes (dtypes.h): for each torch dtype the
// operator takes, the shim's code, torch's name, the storage type the
// kernels step, and the real dtype of its states. Python reads the names
// from proxopt._C.KERNEL_DTYPES.
#pragma once

#include <torch/csrc/stable/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../proxopt/dtypes.h"

namespace proxopt::op {

struct DTypeInfo {
  int32_t code;       // the shim's dtype code
  const char* name;   // torch's name, as Python spells it (torch.float32, ...)
  DType kernel;       // the storage type the kernels step
  int reals;          // real elements per tensor element
  int elem_size;      // bytes of one real element
  int32_t real_code;  // dtype of the states (the real dtype of a complex one)
  const char* real_name;
};

inline const std::vector<DTypeInfo>& dtype_table() {
  static const std::vector<DTypeInfo> table = [] {
    std::vector<DTypeInfo> t;
#define PROXOPT_REAL_ROW(tag, tname, bytes) \
  t.push_back({aoti_torch_dtype_##tname(), #tname, DType::tag, 1, bytes, aoti_torch_dtype_##tname(), #tname});
    PROXOPT_DTYPES(PROXOPT_REAL_ROW)
#undef PROXOPT_REAL_ROW
    const size_t reals = t.size();
#define PROXOPT_COMPLEX_ROW(cname, real_tag)                                                \
  for (size_t r = 0; r < reals; ++r) {                                                      \
    if (t[r].kernel == DType::real_tag) {                                                   \
      t.push_back({aoti_torch_dtype_##cname(), #cname, DType::real_tag, 2, t[r].elem_size, \
                   t[r].code, t[r].name});                                                  \
    }                                                                                       \
  }
    PROXOPT_COMPLEX_DTYPES(PROXOPT_COMPLEX_ROW)
#undef PROXOPT_COMPLEX_ROW
    return t;
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
  if (code == aoti_torch_dtype_int64()) return "torch.int64";
  if (code == aoti_torch_dtype_int32()) return "torch.int32";
  if (code == aoti_torch_dtype_bool()) return "torch.bool";
  return "dtype code " + std::to_string(code);
}

}  // namespace proxopt::op
