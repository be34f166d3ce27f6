"""A small declarative table of the optimizers under test, after PyTorch's
``torch/testing/_internal/common_optimizers.py``.

For each optimizer: its torch.optim namesake, labelled keyword configurations
(torch's own hyperparameters, no regularizer: the parity tests run each one
against torch), the state keys a parameter carries after a step, and error
inputs with the expected exception type and message pattern. The regularizer
configurations (``PROX_CONFIGS``) are shared: every optimizer takes the same
keywords. Tests iterate these tables instead of hand-writing each case.

The comparison helpers the test modules share live at the bottom.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import proxopt

# ---- the table --------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One labelled set of constructor keyword arguments."""

    label: str
    _kwargs: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        """A fresh copy (configs hold tensors, e.g. a tensor lr)."""
        return copy.deepcopy(self._kwargs)


@dataclass(frozen=True)
class ErrorInput:
    """Constructor kwargs that must be rejected.

    ``group_level``: the value can also be put in a param group, so it must be
    rejected by ``add_param_group`` and, when set on an existing group, by
    ``step()`` -- both without modifying anything.
    """

    label: str
    kwargs: dict
    error: type[BaseException]
    match: str
    group_level: bool = True


@dataclass(frozen=True)
class OptimInfo:
    name: str
    cls: type
    torch_cls: type
    configs: tuple[Config, ...]
    state_keys: Callable[[dict], tuple[str, ...]]  # from the merged group kwargs
    adaptive_ok: bool
    error_inputs: tuple[ErrorInput, ...]
    defaults: dict = field(default_factory=dict)  # merged under every config
    extensions: frozenset = frozenset()  # arguments proxopt adds where torch has none (besides the regularizers)

    def full_kwargs(self, config: Config, **extra: Any) -> dict:
        return {**copy.deepcopy(self.defaults), **config.kwargs(), **extra}

    def keys_for(self, kwargs: dict) -> tuple[str, ...]:
        return self.state_keys({**self.defaults, **kwargs})

    def __repr__(self) -> str:  # readable pytest ids
        return self.name


def _sgd_keys(kw: dict) -> tuple[str, ...]:
    return ("momentum_buffer",) if kw.get("momentum", 0) != 0 else ()


def _adam_keys(kw: dict) -> tuple[str, ...]:
    return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if kw.get("amsgrad") else ())


# Errors every optimizer shares: lr and the regularizer keywords.
_COMMON_ERRORS = (
    ErrorInput("negative_lr", dict(lr=-0.1), ValueError, r"Invalid learning rate: -0\.1"),
    ErrorInput("nan_lr", dict(lr=float("nan")), ValueError, r"Invalid learning rate: nan"),
    ErrorInput("negative_tensor_lr", dict(lr=torch.tensor(-0.5)), ValueError, r"Invalid learning rate: -0\.5"),
    ErrorInput("tensor_lr_2_elements", dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"Tensor lr must be 1-element"),
    ErrorInput("negative_l1", dict(l1=-1e-3), ValueError, r"Invalid l1 value: -0\.001"),
    ErrorInput("nan_l1", dict(l1=float("nan")), ValueError, r"Invalid l1 value: nan"),
    ErrorInput("inf_l1", dict(l1=float("inf")), ValueError, r"Invalid l1 value: inf"),
    ErrorInput("string_l1", dict(l1="big"), TypeError, r"Invalid l1 value: .big. \(a str; expected a number\)"),
    ErrorInput("negative_l2", dict(l2=-2.0), ValueError, r"Invalid l2 value: -2\.0"),
    ErrorInput("nan_l2", dict(l2=float("nan")), ValueError, r"Invalid l2 value: nan"),
    ErrorInput("negative_l0", dict(l0=-0.5), ValueError, r"Invalid l0 value: -0\.5"),
    ErrorInput("nan_l0", dict(l0=float("nan")), ValueError, r"Invalid l0 value: nan"),
    ErrorInput("l1_with_l0", dict(l1=0.1, l0=0.1), ValueError, r"l1=0\.1 and l0=0\.1 cannot be combined"),
    ErrorInput("bounds_lo_gt_hi", dict(bounds=(1.0, -1.0)), ValueError, r"Invalid bounds value: \(1\.0, -1\.0\)"),
    ErrorInput("bounds_nan", dict(bounds=(0.0, float("nan"))), ValueError, r"Invalid bounds value: \(0\.0, nan\) \(need lo <= hi\)"),
    ErrorInput("bounds_not_a_pair", dict(bounds=(1.0,)), ValueError, r"Invalid bounds value: \(1\.0,\) \(expected a pair"),
    ErrorInput("bounds_scalar", dict(bounds=3.0), ValueError, r"Invalid bounds value: 3\.0 \(expected a pair"),
    ErrorInput("unknown_prox_metric", dict(prox_metric="manhattan"), ValueError, r"Invalid prox_metric value: 'manhattan'"),
)

SGD_INFO = OptimInfo(
    name="SGD",
    cls=proxopt.SGD,
    torch_cls=torch.optim.SGD,
    defaults=dict(lr=0.05),
    configs=(
        Config("plain"),
        Config("momentum", dict(momentum=0.9)),
        Config("dampening", dict(momentum=0.8, dampening=0.3)),
        Config("nesterov", dict(momentum=0.9, nesterov=True)),
        Config("weight_decay", dict(momentum=0.5, weight_decay=0.1)),
        Config("weight_decay_no_momentum", dict(weight_decay=0.2)),
        Config("maximize", dict(momentum=0.9, weight_decay=0.05, maximize=True)),
        Config("tensor_lr", dict(lr=torch.tensor(0.01), momentum=0.9)),
    ),
    state_keys=_sgd_keys,
    adaptive_ok=False,
    error_inputs=_COMMON_ERRORS
    + (
        ErrorInput("negative_momentum", dict(momentum=-0.1), ValueError, r"Invalid momentum value: -0\.1"),
        ErrorInput("negative_dampening", dict(momentum=0.9, dampening=-0.1), ValueError, r"Invalid dampening value: -0\.1"),
        ErrorInput("negative_weight_decay", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
        ErrorInput("nesterov_without_momentum", dict(nesterov=True, momentum=0.0), ValueError, r"Nesterov momentum requires a momentum"),
        ErrorInput(
            "nesterov_with_dampening", dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError,
            r"Nesterov momentum requires a momentum and zero dampening",
        ),
        ErrorInput("adaptive_metric", dict(prox_metric="adaptive", l1=1e-3), ValueError,
                   r"prox_metric='adaptive' is not defined for proxopt\.SGD"),
        ErrorInput("adaptive_metric_no_prox", dict(prox_metric="adaptive"), ValueError,
                   r"prox_metric='adaptive' is not defined for proxopt\.SGD"),
        ErrorInput("differentiable", dict(differentiable=True), NotImplementedError, r"does not support differentiable=True"),
        ErrorInput("fused_and_foreach", dict(fused=True, foreach=True), RuntimeError,
                   r"`fused` and `foreach` cannot be `True` together", group_level=False),
    ),
)

_ADAM_ERRORS = _COMMON_ERRORS + (
    ErrorInput("negative_eps", dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08"),
    ErrorInput("nan_eps", dict(eps=float("nan")), ValueError, r"Invalid epsilon value: nan"),
    ErrorInput("beta1_one", dict(betas=(1.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 1\.0"),
    ErrorInput("beta1_negative", dict(betas=(-0.1, 0.999)), ValueError, r"Invalid beta parameter at index 0: -0\.1"),
    ErrorInput("beta2_one", dict(betas=(0.9, 1.0)), ValueError, r"Invalid beta parameter at index 1: 1\.0"),
    ErrorInput("beta2_above_one", dict(betas=(0.9, 1.5)), ValueError, r"Invalid beta parameter at index 1: 1\.5"),
    ErrorInput("beta2_nan", dict(betas=(0.9, float("nan"))), ValueError, r"Invalid beta parameter at index 1: nan"),
    ErrorInput("negative_weight_decay", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
    ErrorInput("capturable_on_cpu", dict(capturable=True), ValueError, r"capturable=True needs every parameter of its param group on a CUDA device"),
    ErrorInput("differentiable", dict(differentiable=True), NotImplementedError, r"does not support differentiable=True"),
    ErrorInput("fused_and_foreach", dict(fused=True, foreach=True), RuntimeError,
               r"`fused` and `foreach` cannot be `True` together", group_level=False),
)

ADAM_INFO = OptimInfo(
    name="Adam",
    cls=proxopt.Adam,
    torch_cls=torch.optim.Adam,
    defaults=dict(lr=0.01),
    configs=(
        Config("plain"),
        Config("betas_eps", dict(betas=(0.8, 0.99), eps=1e-6)),
        Config("weight_decay", dict(weight_decay=0.1)),
        Config("amsgrad", dict(amsgrad=True)),
        Config("amsgrad_weight_decay_maximize", dict(amsgrad=True, weight_decay=0.05, maximize=True)),
        Config("decoupled_weight_decay", dict(weight_decay=0.1, decoupled_weight_decay=True)),
        Config("tensor_lr", dict(lr=torch.tensor(0.01))),
        Config("tensor_betas", dict(betas=(torch.tensor(0.85), torch.tensor(0.995)))),
    ),
    state_keys=_adam_keys,
    adaptive_ok=True,
    error_inputs=_ADAM_ERRORS,
)

ADAMW_INFO = OptimInfo(
    name="AdamW",
    cls=proxopt.AdamW,
    torch_cls=torch.optim.AdamW,
    defaults=dict(lr=0.01),
    configs=(
        Config("plain"),  # weight_decay=1e-2 by default, decoupled
        Config("weight_decay", dict(weight_decay=0.2)),
        Config("no_weight_decay", dict(weight_decay=0.0)),
        Config("amsgrad", dict(amsgrad=True, weight_decay=0.1)),
        Config("maximize", dict(maximize=True, weight_decay=0.1)),
        Config("tensor_lr", dict(lr=torch.tensor(0.01), weight_decay=0.1)),
    ),
    state_keys=_adam_keys,
    adaptive_ok=True,
    error_inputs=_ADAM_ERRORS,
)

def _adagrad_keys(kw: dict) -> tuple[str, ...]:
    return ("step", "sum")


def _rmsprop_keys(kw: dict) -> tuple[str, ...]:
    keys = ("step", "square_avg")
    if kw.get("momentum", 0) > 0:
        keys += ("momentum_buffer",)
    if kw.get("centered"):
        keys += ("grad_avg",)
    return keys


ADAGRAD_INFO = OptimInfo(
    name="Adagrad",
    cls=proxopt.Adagrad,
    torch_cls=torch.optim.Adagrad,
    defaults=dict(lr=0.05),
    configs=(
        Config("plain"),
        Config("lr_decay_weight_decay_accumulator",
               dict(lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-8)),
        Config("maximize", dict(maximize=True, lr_decay=0.001)),
        Config("tensor_lr", dict(lr=torch.tensor(0.05))),
    ),
    state_keys=_adagrad_keys,
    adaptive_ok=True,
    error_inputs=_COMMON_ERRORS + (
        ErrorInput("negative_lr_decay", dict(lr_decay=-0.1), ValueError, r"Invalid lr_decay value: -0\.1"),
        ErrorInput("negative_weight_decay", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
        ErrorInput("negative_accumulator", dict(initial_accumulator_value=-1.0), ValueError,
                   r"Invalid initial_accumulator_value value: -1\.0"),
        ErrorInput("negative_eps", dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08"),
        ErrorInput("differentiable", dict(differentiable=True), NotImplementedError, r"does not support differentiable=True"),
    ),
)

RMSPROP_INFO = OptimInfo(
    name="RMSprop",
    cls=proxopt.RMSprop,
    torch_cls=torch.optim.RMSprop,
    defaults=dict(lr=0.01),
    configs=(
        Config("plain"),
        Config("momentum_weight_decay", dict(alpha=0.9, momentum=0.8, weight_decay=0.05)),
        Config("centered", dict(centered=True, eps=1e-6)),
        Config("centered_momentum_maximize", dict(centered=True, momentum=0.5, maximize=True)),
        Config("tensor_lr", dict(lr=torch.tensor(0.01), momentum=0.3)),
    ),
    state_keys=_rmsprop_keys,
    extensions=frozenset({"fused"}),  # fused=False: the reference path (torch's RMSprop has no fused)
    adaptive_ok=True,
    error_inputs=_COMMON_ERRORS + (
        ErrorInput("negative_alpha", dict(alpha=-0.1), ValueError, r"Invalid alpha value: -0\.1"),
        ErrorInput("negative_momentum", dict(momentum=-0.1), ValueError, r"Invalid momentum value: -0\.1"),
        ErrorInput("negative_weight_decay", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
        ErrorInput("negative_eps", dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08"),
        ErrorInput("capturable_on_cpu", dict(capturable=True), ValueError,
                   r"capturable=True needs every parameter of its param group on a CUDA device"),
        ErrorInput("differentiable", dict(differentiable=True), NotImplementedError, r"does not support differentiable=True"),
    ),
)

OPTIMS: tuple[OptimInfo, ...] = (SGD_INFO, ADAM_INFO, ADAMW_INFO, ADAGRAD_INFO, RMSPROP_INFO)

# Every regularizer at a nonzero strength (weights are ~N(0, 1), lr ~1e-2).
PROX_CONFIGS: tuple[Config, ...] = (
    Config("l1", dict(l1=0.5)),
    Config("l2", dict(l2=2.0)),
    Config("elastic_net", dict(l1=0.5, l2=2.0)),
    Config("l0", dict(l0=0.8)),
    Config("l0_l2", dict(l0=0.8, l2=1.0)),
    Config("bounds", dict(bounds=(-0.4, 0.6))),
    Config("nonnegative", dict(bounds=(0.0, math.inf))),
    Config("elastic_net_bounds", dict(l1=0.3, l2=1.0, bounds=(-0.5, 0.5))),
    Config("adaptive_l1", dict(l1=0.5, prox_metric="adaptive")),
    Config("adaptive_elastic_net_bounds", dict(l1=0.3, l2=2.0, bounds=(-0.5, 0.5), prox_metric="adaptive")),
    Config("adaptive_l0", dict(l0=0.8, prox_metric="adaptive")),
)


# The group regularizers (tensors of 2 or more dimensions only), along rows and other dims.
GROUP_CONFIGS: tuple[Config, ...] = (
    Config("group_lasso_rows", dict(group_lasso=0.05)),
    Config("group_lasso_cols", dict(group_lasso=0.05, group_dim=1)),
    Config("group_lasso_last_dim", dict(group_lasso=0.05, group_dim=-1)),
    Config("sparse_group_lasso", dict(l1=0.3, group_lasso=0.05)),
    Config("sparse_group_lasso_cols_l2", dict(l1=0.3, l2=1.0, group_lasso=0.05, group_dim=1)),
    Config("max_norm_rows", dict(max_norm=0.8)),
    Config("max_norm_cols_bounds", dict(max_norm=0.8, max_norm_dim=1, bounds=(-0.3, 0.4))),
    Config("group_lasso_max_norm", dict(group_lasso=0.02, max_norm=1.5, l0=0.5)),
)
GROUP_SHAPES = [(7, 13), (1, 257), (40, 3), (3, 5, 7), (0, 4), (70, 1000), (2, 70000), (300, 7), (130, 4100)]
# (2, 70000): rows past a block; (300, 7) and (130, 4100): columns as panels (two panels on two threads)


def prox_configs(info: OptimInfo) -> tuple[Config, ...]:
    """The regularizer configurations ``info`` accepts."""
    return tuple(c for c in PROX_CONFIGS if info.adaptive_ok or c.kwargs().get("prox_metric") != "adaptive")


def configs_with_ids(optims=OPTIMS):
    """(info, config) pairs with readable ids, for ``pytest.mark.parametrize``."""
    import pytest

    return [pytest.param(info, cfg, id=f"{info.name}-{cfg.label}") for info in optims for cfg in info.configs]


def prox_configs_with_ids(optims=OPTIMS):
    import pytest

    return [pytest.param(info, cfg, id=f"{info.name}-{cfg.label}") for info in optims for cfg in prox_configs(info)]


def error_inputs_with_ids(optims=OPTIMS, *, group_level_only: bool = False):
    import pytest

    return [
        pytest.param(info, err, id=f"{info.name}-{err.label}")
        for info in optims
        for err in info.error_inputs
        if err.group_level or not group_level_only
    ]


# ---- shared helpers -----------------------------------------------------------

def examples(n: int) -> int:
    """Hypothesis example counts: modest by default (the suite runs in a few minutes on two
    cores), eight times more under ``HYPOTHESIS_PROFILE=explore``."""
    return n * 8 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else n


# Threads for kernel calls that should use the thread pool: more than this machine's cores
# is fine (and exercises preemption); proxopt follows torch.get_num_threads().
KERNEL_THREADS = 3


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Elementwise tolerances, per dtype, for results that went through different but
# equivalent arithmetic (kernel vs reference, proxopt vs torch).
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.complex64: dict(rtol=1e-5, atol=1e-6),
    torch.complex128: dict(rtol=1e-12, atol=1e-14),
    # one unit in the last place of storage (2**-7 and 2**-10 relative), for a single step
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
    torch.float16: dict(rtol=2**-10, atol=1e-6),
}


def clone_params(params):
    return [p.detach().clone().requires_grad_(p.requires_grad) for p in params]


def snapshot(optimizer: torch.optim.Optimizer, params=()) -> dict:
    """A deep copy of everything a failed call must leave as it was."""
    return {
        "params": [p.detach().clone() for p in params],
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in params],
        "state_dict": copy.deepcopy(optimizer.state_dict()),
        "param_groups": [
            {k: (list(v) if k == "params" else copy.deepcopy(v)) for k, v in g.items()} for g in optimizer.param_groups
        ],
    }


def assert_nested_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality (bitwise for tensors, same dtype and shape) of nested containers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert a.layout == b.layout, f"{path}: {a.layout} vs {b.layout}"
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        if a.is_floating_point():  # bitwise outside NaN (signed zeros included), NaN where NaN
            nan = torch.isnan(a)
            assert torch.equal(nan, torch.isnan(b)), f"{path}: NaN at different elements"
            assert torch.equal(a[~nan], b[~nan]) and torch.equal(a[~nan].signbit(), b[~nan].signbit()), f"{path} differs"
        else:
            assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b)) if isinstance(b, dict) else b}"
        for k in a:
            assert_nested_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def assert_unchanged(optimizer: torch.optim.Optimizer, params, before: dict) -> None:
    """Nothing was modified since ``snapshot``: params, grads, state and groups."""
    assert_nested_equal(snapshot(optimizer, params), before, "optimizer")


def _math_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the arithmetic (float32 for 16-bit storage, as the kernels do)."""
    return torch.finfo(torch.float64).eps if dtype in (torch.float64, torch.complex128) else torch.finfo(torch.float32).eps


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, ulps: float = 16,
                        msg: str = "") -> None:
    """Elementwise ``|a - e| <= atol + rtol*|e|``, where atol also grows with the largest magnitude
    in the tensor (``ulps`` units of the arithmetic's epsilon): an element computed as a small
    difference of large terms (a momentum buffer that nearly cancels, fma or not) carries the
    rounding error of those terms, not of itself."""
    actual, expected = actual.detach(), expected.detach()
    finite = expected[torch.isfinite(expected)] if expected.numel() else expected
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    atol = atol + ulps * _math_eps(expected.dtype) * scale
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{msg}: {m}" if msg else m)


def assert_params_and_state_close(opt_a, params_a, opt_b, params_b, keys=None, *, step_exact=True, **tol) -> None:
    """Params and every state key of two optimizers over matching params, elementwise."""
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        kw = tol or TOL[pa.dtype]
        assert pa.dtype == pb.dtype and pa.shape == pb.shape
        assert_close_scaled(pa, pb, **kw, msg=f"param {i}")
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} vs {sorted(sb)}"
        if keys is not None and sa:
            assert set(sa) == set(keys), f"param {i}: state keys {sorted(sa)}, expected {sorted(keys)}"
        for k in sa:
            a, b = sa[k], sb[k]
            if k == "step":
                assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, f"param {i} step: {a!r} vs {b!r}"
                if step_exact:
                    assert float(a) == float(b), f"param {i} step: {float(a)} vs {float(b)}"
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, f"param {i} state {k!r}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
            assert_close_scaled(a, b, **kw, msg=f"param {i} state {k!r}")
