// Run-time choice of the instruction set the CPU kernels use.
#pragma once

#include <string>
#include <vector>

#include "driver.h"

namespace proxopt::cpu {

std::vector<std::string> supported_isas();  // compiled in and supported by this CPU, widest last
std::string current_isa();
void set_isa(const std::string& name);      // throws std::invalid_argument
KernelSet select_kernels(const Hyper& h, DType dtype);  // of the current ISA

}  // namespace proxopt::cpu
