// The Stable ABI seen from the operator: borrowed tensor handles read
// through the C shim directly, and the unboxing of tensor lists. A step on
// many small tensors is bound by this per-tensor work, and
// torch::stable::Tensor adds a shared_ptr per element and several shim calls
// per dtype query.
#pragma once

#include <torch/csrc/stable/library.h>

#include <cstdint>
#include <vector>

namespace proxopt::op {

#define PROXOPT_SHIM(call) STABLE_TORCH_ERROR_CODE_CHECK(call)

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

}  // namespace proxopt::op
