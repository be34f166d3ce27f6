// proxopt._C: the CPU extension. Importing it registers the operator
// proxopt::step and its CPU kernel with PyTorch's dispatcher (op/cpu_op.cpp);
// this pybind11 module holds what Python calls outside the step: the SIMD
// level, and the facts Python derives from or checks itself against (the
// hyperparameter layout, the rule table, the kernel dtypes, the operator's
// arguments, the state alignment, the refusal codes).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "cpu/driver.h"
#include "cpu/isa.h"
#include "op/checks.h"
#include "proxopt/hyper.h"
#include "proxopt/rules.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "proxopt CPU kernels; the step itself is the operator torch.ops.proxopt.step";
  // The facts declared once in C++ that Python derives from or checks its
  // own declarations against when it loads this module.
  py::tuple fields(size_t(proxopt::kHyperFields));
  for (int i = 0; i < proxopt::kHyperFields; ++i) fields[size_t(i)] = proxopt::hyper_field_names()[i];
  m.attr("HYPER_FIELDS") = fields;
  py::list rules;  // per rule code: (name, has_step, has_denom, ((key, switched on by, initial value from), ...))
  for (const proxopt::RuleSpec& r : proxopt::kRules) {
    py::list states;
    for (int q = 0; q < r.nstates; ++q) {
      const proxopt::StateSpec& st = r.states[q];
      states.append(py::make_tuple(
          st.key, st.when == proxopt::kAlways ? py::object(py::none()) : py::str(proxopt::hyper_field_names()[st.when]),
          st.init[0] == '\0' ? py::object(py::none()) : py::str(st.init)));
    }
    rules.append(py::make_tuple(r.name, r.has_step, r.has_denom, py::tuple(states)));
  }
  m.attr("RULES") = py::tuple(rules);
  py::list dtypes;
  py::dict real;
  for (const auto& d : proxopt::op::dtype_table()) {
    dtypes.append(d.name);
    real[py::str(d.name)] = d.real_name;
  }
  m.attr("KERNEL_DTYPES") = py::tuple(dtypes);
  m.attr("STATE_DTYPES") = real;  // a parameter dtype -> its states' dtype
  py::list args;
  for (int i = 0; i < proxopt::op::kStepArgs; ++i) args.append(proxopt::op::step_arg_names()[i]);
  m.attr("STEP_ARGS") = py::tuple(args);
  m.attr("STATE_ALIGN") = proxopt::op::kStateAlign;
  py::dict refusals;
#define PROXOPT_REFUSAL_ITEM(name, code) refusals[#name] = code;
  PROXOPT_REFUSALS(PROXOPT_REFUSAL_ITEM)
#undef PROXOPT_REFUSAL_ITEM
  m.attr("REFUSALS") = refusals;
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
