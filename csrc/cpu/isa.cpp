#include "isa.h"

#include <cstdlib>
#include <stdexcept>

namespace proxopt::cpu {
namespace {

using Selector = KernelSet (*)(const Hyper&, DType);

struct Isa {
  const char* name;
  Selector plain, groups;  // the kernels of its two translation units
  bool (*supported)();
};

const std::vector<Isa>& all_isas() {
  static const std::vector<Isa> isas = {
    {"baseline", baseline::select_plain, baseline::select_groups, [] { return true; }},
#if defined(__x86_64__) || defined(_M_X64)
    {"avx2", avx2::select_plain, avx2::select_groups,
     [] {
       return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
     }},
    {"avx512", avx512::select_plain, avx512::select_groups,
     [] {
       return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("f16c");
     }},
#endif
  };
  return isas;
}

const Isa* find(const std::string& name) {
  for (const Isa& isa : all_isas()) {
    if (name == isa.name) return &isa;
  }
  return nullptr;
}

const Isa* initial_isa() {
  // PROXOPT_SIMD forces a level (tests run every one); otherwise the widest.
  if (const char* env = std::getenv("PROXOPT_SIMD"); env != nullptr && *env != '\0') {
    const Isa* isa = find(env);
    if (isa != nullptr && isa->supported()) return isa;
  }
  const Isa* best = &all_isas().front();
  for (const Isa& isa : all_isas()) {
    if (isa.supported()) best = &isa;
  }
  return best;
}

const Isa* g_current = nullptr;

const Isa& current() {
  if (g_current == nullptr) g_current = initial_isa();
  return *g_current;
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const Isa& isa : all_isas()) {
    if (isa.supported()) out.emplace_back(isa.name);
  }
  return out;
}

std::string current_isa() { return current().name; }

void set_isa(const std::string& name) {
  const Isa* isa = find(name);
  if (isa == nullptr) throw std::invalid_argument("unknown SIMD level '" + name + "'");
  if (!isa->supported()) {
    throw std::invalid_argument("SIMD level '" + name + "' is not supported by this CPU");
  }
  g_current = isa;
}

KernelSet select_kernels(const Hyper& h, DType dtype) {
  const Isa& isa = current();
  return (prox_shape(h) & kGroup) != 0 ? isa.groups(h, dtype) : isa.plain(h, dtype);
}

}  // namespace proxopt::cpu
