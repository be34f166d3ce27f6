"""The compiled CPU kernel (the default) against the pure-torch reference (``fused=False``).

Random shapes that hit the kernel's internals (0-dim, zero-size, odd sizes for
the SIMD tails, several 256-element tiles, more than one 32768-element chunk,
calls above the 65536-element threshold where the thread pool takes part),
every dtype, hyperparameters and every regularizer at a *nonzero* strength,
many steps, a step where one grad is None, and AMP's grad_scale -- once per SIMD
level. Params and every state key are compared elementwise after every step.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxopt
from optim_db import (
    GROUP_CONFIGS,
    GROUP_SHAPES,
    KERNEL_THREADS,
    OPTIMS,
    TOL,
    assert_params_and_state_close,
    examples,
    torch_threads,
)
from proxopt import _dispatch, _native, reference

C = _native.C
SPECIAL_SHAPES = [(), (0,), (1,), (7,), (8,), (15,), (16,), (17,), (255,), (256,), (257,), (3, 85), (4, 0, 3), (31, 33)]
BIG_SHAPES = [(C.CHUNK_ELEMS + 1,), (70000,), (2, C.CHUNK_ELEMS)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def test_kernel_constants_the_shapes_rely_on() -> None:
    assert C.CHUNK_ELEMS == 32768
    assert BIG_SHAPES[0][0] > C.CHUNK_ELEMS  # and 70000 elements pass the 65536 threshold of the thread pool


# ---- routing: which path ran for which tensor -------------------------------------


class Routes:
    """The params each path updated (by data pointer), recorded without changing behaviour."""

    def __init__(self) -> None:
        self.kernel: list[int] = []
        self.reference: list[int] = []
        self.kernel_calls = 0


@contextlib.contextmanager
def record_routes():
    """Spy on the two ends of a step: the operator call (``proxopt._dispatch._run``, one
    ``torch.ops.proxopt.step`` per device) and ``proxopt.reference.step_tensor``."""
    routes = Routes()
    run, step_tensor = _dispatch._run, reference.step_tensor

    def run_spy(spec, call, args):
        if not args.check_only:
            routes.kernel_calls += 1
            routes.kernel.extend(p.data_ptr() for p, g in zip(args.params, args.grads) if g is not None)
        return run(spec, call, args)

    def step_tensor_spy(h, param, *args, **kwargs):
        routes.reference.append(param.data_ptr())
        return step_tensor(h, param, *args, **kwargs)

    _dispatch._run, reference.step_tensor = run_spy, step_tensor_spy
    try:
        yield routes
    finally:
        _dispatch._run, reference.step_tensor = run, step_tensor


# ---- strategies ----------------------------------------------------------------------

small_shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)
shapes_st = st.one_of(st.sampled_from(SPECIAL_SHAPES), small_shapes, st.sampled_from(BIG_SHAPES))


@st.composite
def regularizers(draw, adaptive_ok: bool) -> dict:
    """A nonempty set of regularizers, each at a nonzero strength."""
    strength = st.floats(1e-3, 5.0)
    kind = draw(st.sampled_from(["l1", "l2", "l1+l2", "l0", "l0+l2", "bounds", "l1+bounds", "all"]))
    reg: dict = {}
    if "l1" in kind or kind == "all":
        reg["l1"] = draw(strength)
    if "l0" in kind:
        reg["l0"] = draw(strength)
    if "l2" in kind or kind == "all":
        reg["l2"] = draw(strength)
    if "bounds" in kind or kind == "all":
        lo = draw(st.sampled_from([-math.inf, 0.0]) | st.floats(-1.5, 0.0))
        hi = draw(st.sampled_from([math.inf]) | st.floats(0.0, 1.5))
        if lo == -math.inf and hi == math.inf:
            hi = 0.5
        reg["bounds"] = (lo, hi)
    if adaptive_ok and draw(st.booleans()):
        reg["prox_metric"] = "adaptive"
    return reg


@st.composite
def cases(draw, info) -> dict:
    shapes = draw(st.lists(shapes_st, min_size=1, max_size=4))
    # keep a case cheap: at most one shape beyond a chunk
    big = [s for s in shapes if math.prod(s) > C.CHUNK_ELEMS]
    shapes = [s for s in shapes if math.prod(s) <= C.CHUNK_ELEMS] + big[:1]
    dtype = draw(st.sampled_from(DTYPES))
    config = draw(st.sampled_from(info.configs))
    steps = draw(st.integers(2, 6))
    return dict(
        shapes=shapes,
        dtype=dtype,
        config=config,
        reg=draw(regularizers(info.adaptive_ok)),
        lr_scale=draw(st.sampled_from([0.2, 1.0, 5.0])),
        w_scale=draw(st.sampled_from([0.05, 1.0, 3.0])),
        g_scale=draw(st.sampled_from([1e-2, 1.0, 5.0])),
        steps=steps,
        # (step, param index) where the grad is None
        grad_none=(draw(st.integers(0, steps - 1)), draw(st.integers(0, len(shapes) - 1))),
        grad_scale=draw(st.sampled_from([None, 1024.0, 0.5])),
        fused_flag=draw(st.sampled_from([None, True])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


# ---- the comparison ---------------------------------------------------------------------


def _sync(opt_dst, params_dst, opt_src, params_src) -> None:
    """Copy params and state from one optimizer into the other (restart from identical values)."""
    with torch.no_grad():
        for pd, ps in zip(params_dst, params_src):
            pd.copy_(ps)
            for k, v in opt_src.state.get(ps, {}).items():
                opt_dst.state[pd][k].copy_(v)


def _coupled_adam(info, kwargs: dict) -> bool:
    """Coupled weight decay in a rule with a per-element denominator (Adam, Adagrad, RMSprop)."""
    return info.name != "SGD" and kwargs.get("weight_decay", 0) != 0 and not (
        info.name == "AdamW" or kwargs.get("decoupled_weight_decay", False)
    )


def _ill_conditioned(p: torch.Tensor, g: torch.Tensor, kwargs: dict, scale: float | None) -> torch.Tensor:
    """Adam with coupled weight decay: elements where g + wd*w cancels to less than a tenth of
    its larger term. The reference's ``g.add(w, alpha=wd)`` is one fma (one rounding, as torch's
    CPU kernels do) and the kernel rounds twice (it is built with -ffp-contract=off); cancellation
    magnifies that last-bit difference, and Adam's normalization m/(sqrt(v)+eps) -- or the
    adaptive prox metric, tau_i = lr*lambda/denom_i -- carries it into the weights."""
    sign = -1.0 if kwargs.get("maximize") else 1.0
    gs = sign * g.double() / (scale or 1.0)
    decay = float(kwargs["weight_decay"]) * p.detach().double()
    return (gs + decay).abs() * 10 < torch.maximum(gs.abs(), decay.abs())


def _assert_ill_conditioned_close(k: torch.Tensor, r: torch.Tensor, lr: float) -> None:
    """Where g + wd*w cancels the two paths see grads a last bit apart, and the rule's
    normalization magnifies that: the elements must be finite alike, and finite ones less than
    one learning rate apart -- a step apart would be another rule, not a rounding (measured: under
    1e-3 lr). Not in float16: its state underflows (v below 6e-8 is 0), and m/(sqrt(v)+eps) of a
    last-bit difference of m is then unbounded."""
    finite = torch.isfinite(k)
    assert torch.equal(finite, torch.isfinite(r)), "ill-conditioned elements finite on one path only"
    if k.dtype != torch.float16:
        diff = (k[finite].double() - r[finite].double()).abs()
        if diff.numel():
            assert float(diff.max()) < lr, f"ill-conditioned elements {float(diff.max())} apart, lr {lr}"


def _put_specials(tensors, specials) -> None:
    """Write (index, position, value) triples into tensors[index] (position modulo its size)."""
    for i, pos, value in specials:
        flat = tensors[i].view(-1)
        flat[pos % flat.numel()] = value


def run_case(info, case: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = case["dtype"]
    kwargs = {**info.full_kwargs(case["config"]), **case["reg"]}
    kwargs["lr"] = kwargs["lr"] * case["lr_scale"]
    init = [(torch.randn(s, generator=gen, dtype=torch.float64) * case["w_scale"]).to(dtype) for s in case["shapes"]]
    _put_specials(init, case.get("weight_specials", ()))
    p_ker = [w.clone().requires_grad_() for w in init]
    p_ref = [w.clone().requires_grad_() for w in init]
    o_ker = info.cls(p_ker, **kwargs, fused=case["fused_flag"])
    o_ref = info.cls(p_ref, **kwargs, fused=False)
    # Low precision: a one-ulp difference of storage is legitimate, so restart both from the
    # kernel's values after each comparison (then every step is compared to one ulp). l0 too:
    # a hard threshold turns a last-bit difference of the input into a jump. And Adam with
    # coupled weight decay, whose ill-conditioned elements are compared loosely (see below).
    coupled = _coupled_adam(info, kwargs)
    resync = dtype in LOW_PRECISION or "l0" in kwargs or coupled
    tol = TOL[dtype]
    keys = info.keys_for(kwargs)
    scale = case["grad_scale"]
    for step in range(case["steps"]):
        ill = []
        for i, (pk, pr) in enumerate(zip(p_ker, p_ref)):
            if (step, i) == case["grad_none"]:
                pk.grad = pr.grad = None
                ill.append(None)
                continue
            g = (torch.randn(pk.shape, generator=gen, dtype=torch.float64) * case["g_scale"] * (scale or 1.0)).to(dtype)
            _put_specials({i: g}, [s for s in case.get("grad_specials", [()] * (step + 1))[step] if s[0] == i])
            pk.grad, pr.grad = g.clone(), g.clone()
            ill.append(_ill_conditioned(pk, g, kwargs, scale) if coupled else None)
        for o in (o_ker, o_ref):
            if scale is not None:
                o.grad_scale = torch.tensor([scale])
                o.found_inf = torch.tensor([0.0])
        with record_routes() as r_ker, torch_threads(KERNEL_THREADS):
            o_ker.step()
        with record_routes() as r_ref:
            o_ref.step()
        with_grad = [p for p in p_ker if p.grad is not None]
        # the default path must be the kernel, one call per dtype present; fused=False never
        assert sorted(r_ker.kernel) == sorted(p.data_ptr() for p in with_grad) and r_ker.reference == []
        assert r_ker.kernel_calls == (1 if with_grad else 0)
        assert r_ref.kernel_calls == 0 and len(r_ref.reference) == len(with_grad)
        for pk, pr, mask in zip(p_ker, p_ref, ill):
            if mask is not None and mask.any():
                # ill-conditioned elements: the same finiteness, element by element, on both paths ...
                _assert_ill_conditioned_close(pk.detach()[mask], pr.detach()[mask], float(kwargs["lr"]))
                with torch.no_grad():  # ... and out of the elementwise comparison, weights and state
                    pr[mask] = pk[mask]
                    for k, v in o_ker.state.get(pk, {}).items():
                        if k != "step":
                            o_ref.state[pr][k][mask] = v[mask]
        assert_params_and_state_close(o_ker, p_ker, o_ref, p_ref, keys, **tol)
        if resync:
            _sync(o_ref, p_ref, o_ker, p_ker)
    return init, p_ker


def _skip_zero_dim_with_grad_scale(case: dict) -> bool:
    # test_grad_scale_zero_dim_on_reference_path covers that combination on its own.
    return case["grad_scale"] is not None and any(len(s) == 0 for s in case["shapes"])


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
@settings(max_examples=examples(25))
@given(data=st.data())
def test_kernel_matches_reference(info, simd_level, data) -> None:
    case = data.draw(cases(info))
    if _skip_zero_dim_with_grad_scale(case):
        case["grad_scale"] = None
    run_case(info, case)


# ---- targeted cases -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_every_regularizer_on_a_threaded_call(info, dtype, simd_level) -> None:
    """Deterministic backstop: every regularizer configuration (each with one of the
    optimizer's configurations, in turn) on a call big enough for the thread pool."""
    from optim_db import prox_configs

    for i, reg in enumerate(prox_configs(info)):
        cfg = info.configs[i % len(info.configs)]
        case = dict(
            shapes=[(70001,), (257,), (), (0,)], dtype=dtype, config=cfg, reg=reg.kwargs(), lr_scale=1.0,
            w_scale=1.0, g_scale=1.0, steps=3, grad_none=(1, 1), grad_scale=None, fused_flag=None, seed=i,
        )
        try:
            init, params = run_case(info, case)
            assert not torch.equal(params[0].detach(), init[0]), "the large parameter did not move"
        except AssertionError as e:
            raise AssertionError(f"{info.name} {cfg.label} + {reg.label}: {e}") from e


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_every_group_regularizer_matches_reference(info, dtype) -> None:
    """Group lasso and max-norm along rows, columns and the last dim, with the elementwise
    proxes before them and bounds after, on matrices and 3-d tensors: groups in blocks,
    a group too large for a block, an empty tensor, a call big enough for the thread pool."""
    for i, reg in enumerate(GROUP_CONFIGS):
        cfg = info.configs[i % len(info.configs)]
        case = dict(
            shapes=GROUP_SHAPES, dtype=dtype, config=cfg, reg=reg.kwargs(), lr_scale=1.0, w_scale=1.0,
            g_scale=1.0, steps=2, grad_none=(1, 2), grad_scale=None, fused_flag=None, seed=i,
        )
        try:
            init, params = run_case(info, case)
            assert not torch.equal(params[-1].detach(), init[-1]), "the large parameter did not move"
        except AssertionError as e:
            raise AssertionError(f"{info.name} {cfg.label} + {reg.label} ({dtype}): {e}") from e


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_nan_and_inf_propagate_alike(info, simd_level) -> None:
    """NaN/inf in a grad give the same NaN/inf pattern on both paths, through every prox."""
    from optim_db import prox_configs

    for reg in prox_configs(info):
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(300, generator=gen)
        g = torch.randn(300, generator=gen)
        g[[3, 100, 290]] = torch.tensor([math.nan, math.inf, -math.inf])
        ps = [w.clone().requires_grad_(), w.clone().requires_grad_()]
        kw = {**info.defaults, "momentum": 0.9} if info.name == "SGD" else dict(info.defaults)
        opts = [info.cls([ps[0]], **kw, **reg.kwargs()), info.cls([ps[1]], **kw, **reg.kwargs(), fused=False)]
        for _ in range(2):
            for p, o in zip(ps, opts):
                p.grad = g.clone()
                o.step()
        torch.testing.assert_close(ps[0], ps[1], equal_nan=True, **TOL[torch.float32], msg=lambda m: f"{reg.label}: {m}")
        assert torch.isnan(ps[0][3]), f"{reg.label}: a NaN grad must leave a NaN weight, not hide it"
        assert torch.isfinite(ps[0][:3]).all()


def test_grad_scale_zero_dim_on_reference_path() -> None:
    """AMP's grad_scale is a 1-element tensor of shape (1,); a 0-dim parameter on the reference
    path (fused=False, or any tensor the kernel cannot take) must still step, as on the kernel."""
    for cls, kw in ((proxopt.SGD, dict(lr=0.1, momentum=0.9)), (proxopt.Adam, dict(lr=0.1))):
        ps = [torch.tensor(1.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)]
        opts = [cls([ps[0]], **kw), cls([ps[1]], **kw, fused=False)]
        for p, o in zip(ps, opts):
            p.grad = torch.tensor(4.0)
            o.grad_scale, o.found_inf = torch.tensor([2.0]), torch.tensor([0.0])
            o.step()  # the reference raised "output with shape [] doesn't match the broadcast shape [1]"
            assert p.shape == torch.Size([])
        torch.testing.assert_close(ps[1], ps[0])
        assert float(ps[0]) != 1.0


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_found_inf_skips_both_paths(info) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1000, generator=gen)
    for fused in (None, False):
        p = w.clone().requires_grad_()
        kw = {**info.defaults, "momentum": 0.9} if info.name == "SGD" else dict(info.defaults)
        o = info.cls([p], **kw, l1=0.5, bounds=(-1.0, 1.0))
        p.grad = torch.randn(1000, generator=gen)
        o.step()
        before_p, before_s = p.detach().clone(), {k: v.clone() for k, v in o.state[p].items()}
        o.grad_scale, o.found_inf = torch.tensor([1.0]), torch.tensor([1.0])
        p.grad = torch.randn(1000, generator=gen)
        o.step()
        assert torch.equal(p.detach(), before_p)
        assert set(o.state[p]) == set(before_s)
        assert all(torch.equal(o.state[p][k], v) for k, v in before_s.items())


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_one_kernel_call_per_device(info) -> None:
    """One operator call per device per step (a bucket per param group and dtype), never
    one per tensor."""
    params = [torch.randn(s, dtype=d, requires_grad=True) for s, d in
              [((10,), torch.float32), ((3, 4), torch.float32), ((5,), torch.float64), ((7,), torch.bfloat16),
               ((2,), torch.float64), ((9,), torch.float16)]]
    o = info.cls([{"params": params[:4]}, {"params": params[4:]}], lr=0.01)
    for p in params:
        p.grad = torch.randn_like(p)
    with record_routes() as routes:
        o.step()
    assert routes.kernel_calls == 1
    assert len(o._plan.calls[0].buckets) == 3 + 2  # group 0: f32, f64, bf16; group 1: f64, f16
    assert sorted(routes.kernel) == sorted(p.data_ptr() for p in params) and routes.reference == []
