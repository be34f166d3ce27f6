"""With no regularizer, a proxopt optimizer is its torch.optim namesake.

Same arguments, same gradients, step after step: the parameters and every
state tensor agree elementwise (float64 tightly), the state_dict has torch's
structure, and a checkpoint moves between torch.optim and proxopt in both
directions without changing the trajectory.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn

import proxopt
from optim_db import (
    ADAM_INFO,
    ADAMW_INFO,
    OPTIMS,
    SGD_INFO,
    TOL,
    Config,
    assert_params_and_state_close,
    configs_with_ids,
)

from proxopt.regularizers import REGULARIZER_DEFAULTS

# The regularizer keywords proxopt adds to torch's signature (at least the elementwise ones).
REG_KEYS = set(REGULARIZER_DEFAULTS)
assert {"l1", "l2", "l0", "bounds", "prox_metric"} <= REG_KEYS
STEPS = 22


def _model(dtype: torch.dtype) -> nn.Module:
    """Two layers plus a parameter (``rare``) whose grad is often None."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))
    m.register_parameter("rare", nn.Parameter(torch.randn(4, 2)))
    return m.to(dtype)


ORDER = ["0.weight", "0.bias", "2.weight", "2.bias", "rare"]  # rare last: see _grads_for_step


def _params(model: nn.Module) -> list[nn.Parameter]:
    named = dict(model.named_parameters())
    assert sorted(named) == sorted(ORDER)
    return [named[n] for n in ORDER]


def _groups(model: nn.Module, info, kwargs: dict) -> list[dict]:
    """Three param groups with different hyperparameters, given as named parameters."""
    named = dict(model.named_parameters())
    lr = kwargs.get("lr", info.defaults.get("lr", 1e-3))
    lr = float(lr) if isinstance(lr, torch.Tensor) else lr
    second = {"params": [("2.weight", named["2.weight"]), ("2.bias", named["2.bias"])], "lr": 2 * lr, "weight_decay": 0.03}
    if info.name != "SGD":
        second["betas"] = (0.85, 0.98)
    third = {"params": [("rare", named["rare"])], "lr": 0.5 * lr}
    return [{"params": [("0.weight", named["0.weight"]), ("0.bias", named["0.bias"])]}, second, third]


def _grads_for_step(step: int, params, gen: torch.Generator) -> list[torch.Tensor | None]:
    """Identical gradients for both optimizers; ``rare`` (the last one) has none on some steps."""
    out = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        none = i == len(params) - 1 and (step == 0 or step % 3 == 1)
        out.append(None if none else g)
    return out


def _hypers_in(kwargs: dict, dtype: torch.dtype) -> dict:
    """Tensor hyperparameters in the params' precision.

    torch does its scalar arithmetic on tensor ``lr``/``betas`` in the tensor's
    dtype (``lr / bias_correction1`` is a float32 tensor for ``torch.tensor(0.01)``),
    proxopt in double; with float64 params a float32 tensor lr alone would make the
    trajectories differ by ~1e-8 relative. Cast them so float64 is compared tightly."""
    real = dtype.to_real() if dtype.is_complex else dtype
    if real != torch.float64:
        return kwargs
    out = dict(kwargs)
    if torch.is_tensor(out.get("lr")):
        out["lr"] = out["lr"].to(real)
    if "betas" in out:
        out["betas"] = tuple(b.to(real) if torch.is_tensor(b) else b for b in out["betas"])
    return out


def _set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("info,cfg", configs_with_ids())
@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "reference"])
def test_trajectory_matches_torch(info, cfg: Config, dtype, fused) -> None:
    kwargs = _hypers_in(info.full_kwargs(cfg), dtype)
    m_torch, m_prox = _model(dtype), _model(dtype)
    opt_torch = info.torch_cls(_groups(m_torch, info, kwargs), **kwargs)
    opt_prox = info.cls(_groups(m_prox, info, kwargs), **kwargs, fused=fused)
    p_torch, p_prox = _params(m_torch), _params(m_prox)
    gen = torch.Generator().manual_seed(7)
    keys = info.keys_for(kwargs)
    for step in range(STEPS):
        grads = _grads_for_step(step, p_prox, gen)
        _set_grads(p_torch, grads)
        _set_grads(p_prox, grads)
        opt_torch.step()
        opt_prox.step()
        assert_params_and_state_close(opt_prox, p_prox, opt_torch, p_torch, keys)
    # the rare parameter missed steps: its step counter is behind the others'
    if "step" in keys:
        assert float(opt_prox.state[p_prox[-1]]["step"]) < float(opt_prox.state[p_prox[0]]["step"]) == STEPS
    _assert_state_dict_structure(opt_prox.state_dict(), opt_torch.state_dict(), info.extensions)
    # the parameters moved (a no-op optimizer would pass the comparison with itself only if torch did nothing)
    assert not torch.equal(p_prox[0].detach(), _model(dtype)[0].weight.detach())


def _assert_state_dict_structure(sd_prox: dict, sd_torch: dict, extensions: frozenset = frozenset()) -> None:
    assert set(sd_prox) == set(sd_torch) == {"state", "param_groups"}
    # (empty per-param entries are checked by test_sgd_without_momentum_keeps_no_state)
    assert {k for k, v in sd_prox["state"].items() if v} == set(sd_torch["state"])
    for pid, st in sd_torch["state"].items():
        sp = sd_prox["state"][pid]
        assert set(sp) == set(st), f"state {pid}: {sorted(sp)} vs torch {sorted(st)}"
        for key, value in st.items():
            assert torch.is_tensor(sp[key]) == torch.is_tensor(value)
            if torch.is_tensor(value):
                assert (sp[key].dtype, sp[key].shape, sp[key].device) == (value.dtype, value.shape, value.device), key
    assert len(sd_prox["param_groups"]) == len(sd_torch["param_groups"])
    for gp, gt in zip(sd_prox["param_groups"], sd_torch["param_groups"]):
        assert set(gp) - set(gt) == REG_KEYS | extensions, f"extra group keys {sorted(set(gp) - set(gt))}"
        assert set(gt) <= set(gp), f"missing group keys {sorted(set(gt) - set(gp))}"
        for key in gt:
            a, b = gp[key], gt[key]
            if key == "fused" or torch.is_tensor(b) or (isinstance(b, tuple) and any(torch.is_tensor(x) for x in b)):
                continue
            assert a == b, f"param group {key}: {a!r} vs torch {b!r}"


@pytest.mark.parametrize("info", [ADAM_INFO, ADAMW_INFO], ids=repr)
def test_step_dtype_follows_default_dtype(info) -> None:
    """torch stores ``step`` as float64 when that is the default dtype; so must proxopt."""
    torch.set_default_dtype(torch.float64)
    p_t, p_p = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
    o_t, o_p = info.torch_cls([p_t], lr=0.01), info.cls([p_p], lr=0.01)
    p_t.grad, p_p.grad = torch.ones(5), torch.ones(5)
    o_t.step()
    o_p.step()
    st, sp = o_t.state[p_t]["step"], o_p.state[p_p]["step"]
    assert (sp.dtype, sp.shape) == (st.dtype, st.shape) == (torch.float64, torch.Size([]))


def test_sgd_without_momentum_keeps_no_state() -> None:
    """torch.optim.SGD(momentum=0) never touches ``self.state``: its state_dict has ``'state': {}``."""
    p_t, p_p = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    o_t, o_p = torch.optim.SGD([p_t], lr=0.1), proxopt.SGD([p_p], lr=0.1)
    for p, o in ((p_t, o_t), (p_p, o_p)):
        p.grad = torch.ones(3)
        o.step()
    assert o_t.state_dict()["state"] == {}
    assert o_p.state_dict()["state"] == o_t.state_dict()["state"]
    assert len(o_p.state) == len(o_t.state) == 0


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_complex_params_match_torch(info, cfg: Config, dtype) -> None:
    kwargs = _hypers_in(info.full_kwargs(cfg), dtype)
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in [(6, 5), (3,), ()]]
    init.append(torch.randn(4, generator=gen, dtype=dtype.to_real()))  # a real param in the same group
    p_t = [x.clone().requires_grad_() for x in init]
    p_p = [x.clone().requires_grad_() for x in init]
    o_t, o_p = info.torch_cls(p_t, **kwargs), info.cls(p_p, **kwargs)
    for step in range(12):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in p_p]
        _set_grads(p_t, grads)
        _set_grads(p_p, grads)
        o_t.step()
        o_p.step()
        assert_params_and_state_close(o_p, p_p, o_t, p_t, info.keys_for(kwargs))
    assert not torch.equal(p_p[0].detach(), init[0])


# ---- checkpoints between torch.optim and proxopt -------------------------------

ROUND_TRIP = [
    pytest.param(ADAMW_INFO, Config("wd", dict(lr=0.02, weight_decay=0.1)), id="AdamW"),
    pytest.param(ADAMW_INFO, Config("amsgrad", dict(lr=0.02, amsgrad=True)), id="AdamW-amsgrad"),
    pytest.param(ADAM_INFO, Config("amsgrad", dict(lr=0.02, amsgrad=True, weight_decay=0.05)), id="Adam-amsgrad"),
    pytest.param(SGD_INFO, Config("momentum", dict(lr=0.05, momentum=0.9, weight_decay=0.01)), id="SGD-momentum"),
    pytest.param(SGD_INFO, Config("nesterov", dict(lr=0.05, momentum=0.9, nesterov=True)), id="SGD-nesterov"),
]


@pytest.mark.parametrize("direction", ["torch_to_proxopt", "proxopt_to_torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("info,cfg", ROUND_TRIP)
def test_state_dict_moves_between_torch_and_proxopt(info, cfg: Config, dtype, direction) -> None:
    kwargs = cfg.kwargs()
    src_cls, dst_cls = (info.torch_cls, info.cls) if direction == "torch_to_proxopt" else (info.cls, info.torch_cls)
    gen = torch.Generator().manual_seed(11)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in [(5, 4), (4,), (3, 3, 2), ()]]

    # train the source for k steps, one param group with its own lr
    src_params = [x.clone().requires_grad_() for x in init]
    src = src_cls([{"params": src_params[:2]}, {"params": src_params[2:], "lr": kwargs["lr"] / 2}], **kwargs)
    for _ in range(6):
        _set_grads(src_params, [torch.randn(p.shape, generator=gen, dtype=dtype) for p in src_params])
        src.step()
    saved = copy.deepcopy(src.state_dict())

    # a fresh optimizer of the other library, on a copy of the trained weights
    dst_params = [p.detach().clone().requires_grad_() for p in src_params]
    dst = dst_cls([{"params": dst_params[:2]}, {"params": dst_params[2:]}], **kwargs)
    dst.load_state_dict(copy.deepcopy(saved))
    assert dst.param_groups[1]["lr"] == kwargs["lr"] / 2  # hyperparameters come with the checkpoint
    _assert_same_structure(dst.state_dict(), saved)

    # both continue on identical grads: the same trajectory
    for _ in range(10):
        grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in src_params]
        _set_grads(src_params, grads)
        _set_grads(dst_params, grads)
        src.step()
        dst.step()
        assert_params_and_state_close(dst, dst_params, src, src_params, info.keys_for(kwargs))
    final = dst.state_dict()
    if "step" in info.keys_for(kwargs):
        assert all(float(s["step"]) == 16 for s in final["state"].values())
    _assert_same_structure(final, src.state_dict())


def _assert_same_structure(a: dict, b: dict) -> None:
    assert set(a["state"]) == set(b["state"])
    for pid in b["state"]:
        assert set(a["state"][pid]) == set(b["state"][pid])
        for key, t in b["state"][pid].items():
            assert (a["state"][pid][key].dtype, a["state"][pid][key].shape) == (t.dtype, t.shape), key
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]


def test_torch_checkpoint_through_torch_save(tmp_path) -> None:
    """The realistic path: torch.save a torch.optim.AdamW checkpoint, load it into proxopt.AdamW (with l1)."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, generator=gen)
    w[0, :3] = torch.tensor([0.0, 0.01, -0.02])  # small weights that l1 below must zero
    p_t = w.clone().requires_grad_()
    o_t = torch.optim.AdamW([p_t], lr=0.01)
    for _ in range(4):
        p_t.grad = torch.randn(6, 4, generator=gen)
        o_t.step()
    torch.save({"w": p_t.detach(), "opt": o_t.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")
    p_p = ckpt["w"].clone().requires_grad_()
    o_p = proxopt.AdamW([p_p], lr=0.01, l1=10.0)
    o_p.load_state_dict(ckpt["opt"])
    # a torch checkpoint carries no regularizer: the one this optimizer was built with applies
    assert o_p.param_groups[0]["l1"] == 10.0
    assert o_p.param_groups[0]["weight_decay"] == 1e-2 and o_p.param_groups[0]["lr"] == 0.01
    exp_avg_before = o_p.state[p_p]["exp_avg"].clone()
    p_p.grad = torch.randn(6, 4, generator=gen)
    o_p.step()
    assert float(o_p.state[p_p]["step"]) == 5
    assert not torch.equal(o_p.state[p_p]["exp_avg"], exp_avg_before)
    assert (p_p[0, :3] == 0).all()  # lr * l1 = 0.1 zeroes the smallest weights exactly
    assert (p_p != 0).sum() > 12


# ---- API surface ------------------------------------------------------------------


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_signature_is_torchs_plus_regularizers(info) -> None:
    sig_t = inspect.signature(info.torch_cls.__init__).parameters
    sig_p = inspect.signature(info.cls.__init__).parameters
    for name, par in sig_t.items():
        assert name in sig_p, f"proxopt.{info.name} lacks torch's argument {name!r}"
        assert sig_p[name].kind == par.kind, name
        if name != "params":
            assert sig_p[name].default == par.default, f"{name}: {sig_p[name].default!r} vs torch {par.default!r}"
    extra = set(sig_p) - set(sig_t)
    assert extra == REG_KEYS | info.extensions, sorted(extra)
    for name in extra - info.extensions:
        assert sig_p[name].kind == inspect.Parameter.KEYWORD_ONLY
        assert sig_p[name].default == REGULARIZER_DEFAULTS[name], name
    assert [n for n in sig_p if sig_p[n].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD] == [
        n for n in sig_t if sig_t[n].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_defaults_match_torch(info) -> None:
    p = torch.zeros(2, requires_grad=True)
    d_t, d_p = info.torch_cls([p]).defaults, info.cls([p]).defaults
    assert {k: v for k, v in d_p.items() if k not in REG_KEYS | info.extensions} == d_t
    assert {k: d_p[k] for k in REG_KEYS} == REGULARIZER_DEFAULTS
    assert {k: d_p[k] for k in ("l1", "l2", "l0", "bounds", "prox_metric")} == {
        "l1": 0.0, "l2": 0.0, "l0": 0.0, "bounds": None, "prox_metric": "euclidean"}


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_closure_and_zero_grad(info) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    models = [nn.Linear(3, 1), nn.Linear(3, 1)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [info.torch_cls(models[0].parameters(), lr=0.05), info.cls(models[1].parameters(), lr=0.05)]
    for _ in range(8):
        losses = []
        for m, o in zip(models, opts):

            def closure(m=m, o=o):
                o.zero_grad()
                loss = nn.functional.mse_loss(m(x), y)
                loss.backward()
                return loss

            losses.append(o.step(closure))
        torch.testing.assert_close(losses[1], losses[0])
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, **TOL[torch.float32])
        assert b.grad is not None
    opts[1].zero_grad()
    assert all(p.grad is None for p in models[1].parameters())


@pytest.mark.parametrize("info", [ADAM_INFO, ADAMW_INFO, SGD_INFO], ids=repr)
def test_grad_scaler_matches_torch(info) -> None:
    """torch.amp.GradScaler: proxopt unscales inside the step, torch unscales the grads first;
    a step with an inf grad is skipped by both."""
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=gen) for s in [(9, 4), (4,), (300,)]]
    p_t = [x.clone().requires_grad_() for x in init]
    p_p = [x.clone().requires_grad_() for x in init]
    kwargs = dict(lr=0.01, momentum=0.9) if info is SGD_INFO else dict(lr=0.01, amsgrad=True)
    o_t, o_p = info.torch_cls(p_t, **kwargs), info.cls(p_p, **kwargs)
    assert getattr(o_p, "_step_supports_amp_scaling", False)
    s_t = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    s_p = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    for step in range(10):
        grads = [torch.randn(p.shape, generator=gen) for p in init]
        if step == 4:
            grads[1][2] = math.inf
        for params, scaler, opt in ((p_t, s_t, o_t), (p_p, s_p, o_p)):
            scaled = scaler.scale(torch.ones(()))  # the scale the "loss" got
            for p, g in zip(params, grads):
                p.grad = g * scaled
            before = [p.detach().clone() for p in params]
            scaler.step(opt)
            scaler.update()
            if step == 4:
                assert all(torch.equal(b, p) for b, p in zip(before, params)), "an inf step must not move params"
        assert s_t.get_scale() == s_p.get_scale()
        assert_params_and_state_close(o_p, p_p, o_t, p_t, info.keys_for(kwargs))
    if info is not SGD_INFO:
        assert float(o_p.state[p_p[0]]["step"]) == 9  # the skipped step is not counted
