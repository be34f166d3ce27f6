"""Non-contiguous parameters (and grads) are updated in place, correctly.

The kernel cannot take them, so they go through the reference; the update must
land in the parameter's own storage (never a silent ``.contiguous()`` copy that
is then thrown away) and equal what a contiguous clone trained the same way gets.
"""

from __future__ import annotations

import pytest
import torch

import proxopt
from optim_db import OPTIMS, TOL, assert_close_scaled, prox_configs, configs_with_ids

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _layouts(dtype: torch.dtype, gen: torch.Generator):
    """(name, base storage tensor or None, param view) for each non-contiguous layout."""
    t = torch.randn(8, 5, generator=gen, dtype=dtype).t()  # transposed: dense, not contiguous
    base_s = torch.randn(40, generator=gen, dtype=dtype)
    strided = base_s[1::3]  # every third element: gaps that must stay untouched
    base_c = torch.randn(6, 9, generator=gen, dtype=dtype)
    cols = base_c[:, 2:7]  # a block of columns
    cl = torch.randn(2, 3, 4, 5, generator=gen, dtype=dtype).to(memory_format=torch.channels_last)
    base_e = torch.randn(4, 16, generator=gen, dtype=dtype)
    expanded_dim = base_e.t()[3:10]  # transposed then sliced
    return [
        ("transposed", None, t),
        ("strided_slice", base_s, strided),
        ("column_block", base_c, cols),
        ("channels_last", None, cl),
        ("transposed_slice", base_e, expanded_dim),
    ]


def _run(info, kwargs, params, grads_per_step, fused=None):
    opt = info.cls(params, **kwargs, fused=fused)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info,reg", [pytest.param(i, c, id=f"{i.name}-{c.label}") for i in OPTIMS for c in prox_configs(i)][::2]
                         + [pytest.param(i, None, id=f"{i.name}-noreg") for i in OPTIMS])
def test_noncontiguous_params_match_a_contiguous_clone(info, reg, dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    layouts = _layouts(dtype, gen)
    kwargs = {**info.defaults, **(reg.kwargs() if reg else {})}
    if info.name == "SGD":
        kwargs["momentum"] = 0.9
    views = [v.requires_grad_() for _, _, v in layouts]
    clones = [v.detach().clone(memory_format=torch.contiguous_format).requires_grad_() for v in views]
    assert not any(v.is_contiguous() for v in views) and all(c.is_contiguous() for c in clones)
    bases_before = [None if b is None else b.clone() for _, b, _ in layouts]
    ptrs = [v.data_ptr() for v in views]
    steps = [[torch.randn(v.shape, generator=gen, dtype=dtype) for v in views] for _ in range(4)]
    o_views = _run(info, kwargs, views, [[g.clone() for g in s] for s in steps])
    o_clones = _run(info, kwargs, clones, [[g.clone() for g in s] for s in steps])
    tol = TOL[dtype] if dtype != torch.bfloat16 else dict(rtol=2e-2, atol=1e-2)  # bf16: 4 steps, one-ulp roundings
    for (name, base, v), c, ptr, before in zip(layouts, clones, ptrs, bases_before):
        assert v.data_ptr() == ptr, f"{name}: the parameter was replaced"
        assert_close_scaled(v, c, **tol, msg=name)
        for key, s in o_views.state[v].items():
            if key != "step":
                assert_close_scaled(s, o_clones.state[c][key], **tol, msg=f"{name} state {key}")
        if base is not None:
            # the update landed in the base storage, and nothing outside the view moved
            idx = _view_flat_indices(base, v)
            mask = torch.zeros_like(base, dtype=torch.bool)
            mask.view(-1)[idx] = True
            assert_close_scaled(base.view(-1)[idx], c.detach().reshape(-1), **tol, msg=f"{name} base")
            assert torch.equal(base[~mask], before[~mask]), f"{name}: elements outside the view changed"
            assert not torch.equal(base[mask], before[mask]), f"{name}: the base storage was not updated"


def _view_flat_indices(base: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Flat indices into contiguous ``base`` of the elements of ``view``, in ``view``'s
    row-major order."""
    idx = torch.arange(base.numel()).reshape(base.shape)
    return torch.as_strided(idx, view.shape, view.stride(), view.storage_offset() - base.storage_offset()).reshape(-1)


@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_transposed_param_exact_against_reference_on_clone(info, cfg) -> None:
    """The transposed parameter (reference path) equals a contiguous clone on the reference path."""
    gen = torch.Generator().manual_seed(1)
    kwargs = {**info.full_kwargs(cfg), "l1": 0.3, "bounds": (-1.0, 1.0)}
    w = torch.randn(8, 5, generator=gen)
    view = w.t().requires_grad_()
    clone = w.t().contiguous().requires_grad_()
    grads = [[torch.randn(5, 8, generator=gen)] for _ in range(5)]
    _run(info, kwargs, [view], [[g.clone() for g in s] for s in grads])
    _run(info, kwargs, [clone], [[g.clone() for g in s] for s in grads], fused=False)
    torch.testing.assert_close(view, clone, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w, clone.detach().t())  # w is the storage the view points at


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_noncontiguous_grad_on_contiguous_param(info) -> None:
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, generator=gen)
    p_a, p_b = w.clone().requires_grad_(), w.clone().requires_grad_()
    kw = {**info.defaults, "l1": 0.3}
    o_a, o_b = info.cls([p_a], **kw), info.cls([p_b], **kw)
    for _ in range(4):
        g = torch.randn(4, 6, generator=gen)
        p_a.grad = g.t()  # non-contiguous grad
        p_b.grad = g.t().contiguous()
        assert not p_a.grad.is_contiguous()
        o_a.step()
        o_b.step()
    torch.testing.assert_close(p_a, p_b, **TOL[torch.float32])
    assert not torch.equal(p_a.detach(), w)


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_views_of_one_flat_buffer(info) -> None:
    """Params that are disjoint contiguous views of one flat buffer (a common "flat params"
    layout) are allowed, go through the kernel, and update the buffer in place."""
    gen = torch.Generator().manual_seed(3)
    flat = torch.randn(100, generator=gen)
    ref = flat.clone()
    views = [flat[:30].view(5, 6).requires_grad_(), flat[30:31].view(()).requires_grad_(), flat[31:].requires_grad_()]
    clones = [v.detach().clone().requires_grad_() for v in views]
    kw = {**info.defaults, "l1": 0.2}
    o_v, o_c = info.cls(views, **kw), info.cls(clones, **kw)
    for _ in range(3):
        for v, c in zip(views, clones):
            g = torch.randn(v.shape, generator=gen)
            v.grad, c.grad = g.clone(), g.clone()
        o_v.step()
        o_c.step()
    for v, c in zip(views, clones):
        assert torch.equal(v, c)
    assert torch.equal(flat, torch.cat([c.detach().reshape(-1) for c in clones]))
    assert not torch.equal(flat, ref)


# ---- tensors rebound after the first step (``p.data = ...``) -----------------------------------
# Whatever the optimizer caches about a parameter between steps (pointers, sizes, contiguity),
# rebinding ``.data`` -- which pruning, resizing and weight-tying utilities do -- must not make a
# step use stale facts.


def _twin(info, w, **kw):
    """The same parameter twice: one on the default path, one on the reference (the oracle)."""
    p, q = w.clone().requires_grad_(), w.clone().requires_grad_()
    kw = {**info.defaults, **kw}
    o_p, o_q = info.cls([p], **kw), info.cls([q], **kw, fused=False)
    for _ in range(2):  # steps before the rebinding: anything cached is now cached
        g = torch.randn(w.shape)
        p.grad, q.grad = g.clone(), g.clone()
        o_p.step()
        o_q.step()
    return p, o_p, q, o_q


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_param_data_rebound_to_a_transposed_view(info) -> None:
    p, o_p, q, o_q = _twin(info, torch.randn(8, 5), l1=0.1)
    p.data, q.data = p.data.t(), q.data.t()  # same storage, same data_ptr, now non-contiguous
    for st_p, st_q in ((o_p.state[p], o_q.state[q]),):
        for k in st_p:
            if k != "step":
                st_p[k], st_q[k] = st_p[k].t(), st_q[k].t()
    g = torch.arange(40.0).reshape(5, 8) / 40
    p.grad, q.grad = g.clone(), g.clone()
    o_p.step()
    o_q.step()
    torch.testing.assert_close(p, q, **TOL[torch.float32])


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_param_data_rebound_to_a_smaller_view(info) -> None:
    """After ``p.data = p.data.view(-1)[:10]`` a step may touch those 10 elements only."""
    p, o_p, q, o_q = _twin(info, torch.randn(8, 5))
    storage = torch.empty(0).set_(p.untyped_storage())  # all 40 elements of p's storage
    tail = storage[10:].clone()
    p.data, q.data = p.data.view(-1)[:10], q.data.view(-1)[:10]
    for st_p, st_q in ((o_p.state[p], o_q.state[q]),):
        for k in st_p:
            if k != "step":
                st_p[k], st_q[k] = st_p[k].view(-1)[:10].clone(), st_q[k].view(-1)[:10].clone()
    p.grad, q.grad = torch.full((10,), 0.5), torch.full((10,), 0.5)
    o_p.step()
    o_q.step()
    assert torch.equal(storage[10:], tail), "the step wrote past the end of the parameter"
    torch.testing.assert_close(p, q, **TOL[torch.float32])


@pytest.mark.parametrize("info", [i for i in OPTIMS if i.name != "SGD"], ids=repr)
def test_state_tensor_replaced(info) -> None:
    """``state['exp_avg'] = other`` (a new tensor): the step must use it, as torch.optim does.
    proxopt's state tensors are views of one buffer per param group, so the step copies the
    new tensor into it; the old memory is kept alive here so a stale pointer shows up as a
    wrong result, not as a crash. (Rebinding a state tensor's ``.data`` is not seen: see
    docs/STATE.md.)"""
    p, o_p, q, o_q = _twin(info, torch.randn(50))
    key = next(k for k in o_p.state[p] if k != "step")
    new = torch.full((50,), 0.25)
    old_p = o_p.state[p][key]
    o_p.state[p][key] = new.clone()
    o_q.state[q][key] = new.clone()
    g = torch.randn(50)
    p.grad, q.grad = g.clone(), g.clone()
    old_before = old_p.clone()
    o_p.step()
    o_q.step()
    torch.testing.assert_close(o_p.state[p][key], o_q.state[q][key], **TOL[torch.float32])
    torch.testing.assert_close(p, q, **TOL[torch.float32])
    assert torch.equal(old_p, old_before), "the step wrote into memory the state no longer owns"
