// The Python binding of Hyper, shared by proxopt._C and proxopt._C_cuda: every
// field by its name (the Python side copies fields by name).
#pragma once

#include <pybind11/pybind11.h>

#include "coeffs.h"

namespace proxopt {

template <class... Options>
void bind_hyper(pybind11::module_& m, const Options&... options) {
  pybind11::class_<Hyper>(m, "Hyper", options...)
      .def(pybind11::init<>())
      .def_readwrite("rule", &Hyper::rule)
      .def_readwrite("lr", &Hyper::lr)
      .def_readwrite("beta1", &Hyper::beta1)
      .def_readwrite("beta2", &Hyper::beta2)
      .def_readwrite("eps", &Hyper::eps)
      .def_readwrite("weight_decay", &Hyper::weight_decay)
      .def_readwrite("momentum", &Hyper::momentum)
      .def_readwrite("dampening", &Hyper::dampening)
      .def_readwrite("alpha", &Hyper::alpha)
      .def_readwrite("lr_decay", &Hyper::lr_decay)
      .def_readwrite("l1", &Hyper::l1)
      .def_readwrite("l2", &Hyper::l2)
      .def_readwrite("l0", &Hyper::l0)
      .def_readwrite("lo", &Hyper::lo)
      .def_readwrite("hi", &Hyper::hi)
      .def_readwrite("maximize", &Hyper::maximize)
      .def_readwrite("decoupled_weight_decay", &Hyper::decoupled_weight_decay)
      .def_readwrite("amsgrad", &Hyper::amsgrad)
      .def_readwrite("nesterov", &Hyper::nesterov)
      .def_readwrite("centered", &Hyper::centered)
      .def_readwrite("adaptive", &Hyper::adaptive)
      .def_readwrite("group_lasso", &Hyper::group_lasso)
      .def_readwrite("max_norm", &Hyper::max_norm);
}

}  // namespace proxopt
