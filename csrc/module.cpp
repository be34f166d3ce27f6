// proxopt._C: the CPU extension. Importing it registers the operator
// proxopt::step and its CPU kernel with PyTorch's dispatcher (op/cpu_op.cpp);
// this pybind11 module holds what Python calls outside the step: the SIMD
// level, and the facts Python checks the build against (the hyperparameter
// layout, the kernel dtypes, each rule's state count).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "cpu/driver.h"
#include "cpu/isa.h"
#include "op/call.h"
#include "proxopt/hyper.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "proxopt CPU kernels; the step itself is the operator torch.ops.proxopt.step";
  py::tuple fields(proxopt::kHyperFields);
  for (int i = 0; i < proxopt::kHyperFields; ++i) fields[i] = proxopt::hyper_field_names()[i];
  m.attr("HYPER_FIELDS") = fields;
  py::list dtypes;
  for (const auto& d : proxopt::op::dtype_table()) dtypes.append(d.name);
  m.attr("KERNEL_DTYPES") = py::tuple(dtypes);
  m.attr("STEP_SCHEMA") = proxopt::op::kStepSchema;
  m.def(
      "state_count",
      [](const std::vector<double>& hyper) {
        if (int(hyper.size()) != proxopt::kHyperFields) throw std::invalid_argument("hyper: wrong length");
        return proxopt::state_count(proxopt::parse_hyper(hyper.data(), "state_count"));
      },
      py::arg("hyper"), "The number of state tensors the rule variant of `hyper` keeps.");
  // The plan checks of every step (python/proxopt/_dispatch.py), in C: they
  // touch every parameter and state tensor, and in Python they cost as much
  // as the kernel on many small tensors. Identity comparisons only; no
  // Python code runs, so nothing can change the objects while they are read.
  m.def(
      "same_items",
      [](py::object a, py::list b) {
        if (!PyList_Check(a.ptr())) return false;
        const Py_ssize_t n = PyList_GET_SIZE(a.ptr());
        if (n != PyList_GET_SIZE(b.ptr())) return false;
        for (Py_ssize_t i = 0; i < n; ++i) {
          if (PyList_GET_ITEM(a.ptr(), i) != PyList_GET_ITEM(b.ptr(), i)) return false;
        }
        return true;
      },
      py::arg("a"), py::arg("b"), "Whether two lists hold the same objects, in order.");
  m.def(
      "same_state_values",
      [](py::object state, py::list expected) {
        if (!PyDict_Check(state.ptr())) return false;
        // The values of every inner dict of `state`, in order, are `expected`.
        const Py_ssize_t n = PyList_GET_SIZE(expected.ptr());
        Py_ssize_t pos = 0, k = 0;
        PyObject *key, *inner;
        while (PyDict_Next(state.ptr(), &pos, &key, &inner)) {
          if (!PyDict_Check(inner)) return false;
          Py_ssize_t ipos = 0;
          PyObject *ikey, *value;
          while (PyDict_Next(inner, &ipos, &ikey, &value)) {
            if (k >= n || PyList_GET_ITEM(expected.ptr(), k) != value) return false;
            ++k;
          }
        }
        return k == n;
      },
      py::arg("state"), py::arg("expected"),
      "Whether the inner dicts of `state` hold exactly the objects of `expected`, in order.");
  m.def("supported_isas", &proxopt::cpu::supported_isas);
  m.def("current_isa", &proxopt::cpu::current_isa);
  m.def("set_isa", &proxopt::cpu::set_isa, py::arg("name"));
  m.attr("CHUNK_ELEMS") = proxopt::cpu::kChunkElems;
  m.attr("BLOCK_ELEMS") = proxopt::cpu::kBlockElems;
  m.attr("PARALLEL_MIN_ELEMS") = proxopt::cpu::kParallelMinElems;
}
