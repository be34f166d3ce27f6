"""The CUDA kernel of ``torch.ops.proxopt.step`` (``proxopt._C_cuda``).

* without a GPU: the backend says why the CUDA kernels are not used (the module's
  import error, or the CUDA error its probe reports);
* with a GPU and ``proxopt._C_cuda`` built: the backend reports the kernels usable on every
  device, and a CUDA step calls the operator, never the reference;
* where ``proxopt._C_cuda`` is built (also without a GPU): the launch packing, on the
  host, with the kernel's own decoding (every element in exactly one block, the
  kernel-argument limit, at most ``MAX_BUCKETS`` hyperparameter sets per launch);
* with a GPU (skipped here, run on an H100/H200): every optimizer x regularizer x dtype
  against the reference on the CPU over several steps (group proxes along rows and
  columns included), many tensors over several launches, misaligned views, AMP with a
  device ``grad_scale``/``found_inf`` (an overflow step changes nothing, ``step``
  included), no host synchronization in a step, and a step captured in a CUDA graph
  with ``capturable=True``.
"""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

import proxopt
from optim_db import OPTIMS, TOL, assert_close_scaled, prox_configs

from proxopt import _dispatch, reference

try:
    from proxopt import _C_cuda

    IMPORT_ERROR = None
except ImportError as exc:  # not built here
    _C_cuda, IMPORT_ERROR = None, f"{type(exc).__name__}: {exc}"

needs_module = pytest.mark.skipif(_C_cuda is None, reason="proxopt._C_cuda is not built")
# Decided without asking proxopt's backend (the thing under test): a GPU torch sees and the
# module built. A GPU machine whose build cannot use its GPU fails the tests below, not skips them.
HAS_GPU = torch.cuda.is_available() and _C_cuda is not None
# Neither torch nor the module's own CUDA runtime sees a device.
NO_GPU = not torch.cuda.is_available() and (_C_cuda is None or _C_cuda.probe()[0] == 0)


def needs_gpu(fn):
    """Marks a test `cuda` and skips it without a GPU or without proxopt._C_cuda."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and proxopt._C_cuda")(fn))


# ---- without a GPU ------------------------------------------------------------------------


@pytest.mark.skipif(_C_cuda is not None, reason="proxopt._C_cuda is built here")
def test_without_the_module_the_reason_is_its_import_error():
    info = proxopt.backend_info()
    assert info["cuda_kernels"] is False
    assert info["cuda_kernels_error"] == IMPORT_ERROR


@pytest.mark.skipif(_C_cuda is None or not NO_GPU, reason="needs proxopt._C_cuda built and no GPU")
def test_without_a_gpu_the_reason_is_the_probes_cuda_error():
    _, why = _C_cuda.probe()
    assert re.match(r"cudaError\w+: \S", why), why  # the CUDA error's name and its text
    info = proxopt.backend_info()
    assert info["cuda_kernels"] is False
    assert info["cuda_kernels_error"] == f"proxopt._C_cuda cannot use the GPU: {why}"


@pytest.mark.skipif(not NO_GPU, reason="a GPU is visible")
def test_without_a_gpu_no_device_takes_the_kernels():
    """No device index passes the kernels' device check, and the routing rule sends a
    device the kernels cannot reach to the reference (a meta tensor's device type)."""
    assert not _dispatch.kernel_takes(torch.empty(4, device="meta"), None)
    assert proxopt._native.cuda_device_ok(0) is False
    assert proxopt.backend_info()["cuda_device_errors"][0] == "proxopt._C_cuda is not loaded"


@needs_gpu
def test_with_a_gpu_the_kernels_are_usable_on_every_device():
    count, why = _C_cuda.probe()
    assert (count, why) == (torch.cuda.device_count(), "")
    for index in range(count):
        assert proxopt._native.cuda_device_ok(index), proxopt.backend_info()["cuda_device_errors"]
    info = proxopt.backend_info()
    assert info["cuda_kernels"] is True
    assert info["cuda_kernels_error"] is None
    assert info["cuda_device_errors"] == {}
    assert _dispatch.kernel_takes(torch.empty(4, device="cuda"), torch.empty(4, device="cuda"))


@needs_gpu
def test_with_a_gpu_a_step_calls_the_operator_never_the_reference(monkeypatch):
    """Without this the tests against the reference below would pass on a build whose CUDA
    steps fell back to the reference (on the GPU, with the reference's own values)."""
    calls = []
    run = _dispatch._run

    def run_spy(spec, call, args):
        taken = run(spec, call, args)  # False: the operator refused a tensor
        if not args.check_only:
            calls.append((call.device.type, taken))
        return taken

    def no_reference(*args, **kwargs):
        raise AssertionError("a CUDA step took the reference path")

    monkeypatch.setattr(_dispatch, "_run", run_spy)
    monkeypatch.setattr(reference, "step_tensor", no_reference)
    ps = [torch.randn(s, device="cuda", requires_grad=True) for s in [(100,), (8, 30)]]
    before = [p.detach().clone() for p in ps]
    o = proxopt.AdamW(ps, lr=0.1, l1=0.01)
    for p in ps:
        p.grad = torch.randn_like(p)
    o.step()
    assert calls == [("cuda", True)]
    for p, b in zip(ps, before):
        assert not torch.equal(p.detach(), b)


@needs_module
def test_module_constants_and_probe():
    assert _C_cuda.PARAM_BYTES == 4096
    assert _C_cuda.CHUNK_ELEMS % (_C_cuda.THREADS * 8) == 0
    assert _C_cuda.CUDART_VERSION >= 12000
    count, why = _C_cuda.probe()
    assert count >= 0 and (count > 0) == (why == "")
    for nstates in range(4):
        for grouped in (False, True):
            tensors, nbytes = _C_cuda._launch_limits(nstates, grouped)
            assert nbytes <= _C_cuda.PARAM_BYTES and tensors >= 16


def _check_plan(numels, buckets, nstates, elem_size, grouped, addresses=None):
    chunk = _C_cuda.CHUNK_ELEMS
    addresses = addresses or [16 * 1024 * (i + 1) for i in range(len(numels))]
    plan = _C_cuda._plan(numels, buckets, addresses, nstates, elem_size, grouped, True)
    max_tensors, _ = _C_cuda._launch_limits(nstates, grouped)
    covered = {i: [] for i in range(len(numels))}
    for launch in plan:
        assert len(launch["tensors"]) <= max_tensors
        assert len({buckets[src] for src, *_ in launch["tensors"]}) <= _C_cuda.MAX_BUCKETS
        assert len(launch["spans"]) == launch["blocks"]
        for src, begin, end in launch["spans"]:
            if grouped:
                assert end == begin + 1  # one block, one group
            else:
                assert 0 < end - begin <= chunk
            covered[src].append((begin, end))
    for i, n in enumerate(numels):
        spans = sorted(covered[i])
        assert sum(e - b for b, e in spans) == n, f"tensor {i}: {spans}"
        pos = 0
        for b, e in spans:
            assert b == pos
            pos = e
    return plan


@needs_module
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("nstates", [0, 1, 2, 3])
def test_launch_packing_covers_every_element_once(nstates, grouped):
    rng = random.Random(nstates * 2 + grouped)
    chunk = _C_cuda.CHUNK_ELEMS
    pool = [1, 2, 7, 33, 1000, chunk - 1, chunk, chunk + 1, 3 * chunk + 5]
    numels = [rng.choice(pool) for _ in range(rng.randrange(1, 400))]
    buckets = [rng.randrange(3) for _ in numels]
    _check_plan(numels, buckets, nstates, 4, grouped)


@needs_module
def test_launch_packing_marks_misaligned_tensors():
    plan = _check_plan([64, 64, 64], [0, 0, 0], 2, 4, False, addresses=[1 << 20, (1 << 21) + 4, 1 << 22])
    aligned = {src: a for launch in plan for src, _, _, _, _, a in launch["tensors"]}
    assert aligned == {0: True, 1: False, 2: True}


# ---- with a GPU ------------------------------------------------------------------------------


GROUP_CONFIGS = (
    dict(group_lasso=0.05),
    dict(group_lasso=0.05, group_dim=1, l1=0.01),
    dict(max_norm=0.7, max_norm_dim=1, bounds=(-0.5, 0.5)),
    dict(group_lasso=0.02, max_norm=1.5, l2=0.5),
)
SHAPES = [(), (0,), (1,), (7,), (8, 3), (257,), (4, 1000), (16385,), (3, 5, 7)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _twin(info, kwargs, shapes, dtype, seed, *, offset=0):
    """Parameters on the GPU (the CUDA kernel) and their copies on the CPU (the reference)."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    if offset:  # views one element into a buffer: the kernel's misaligned path
        bufs = [torch.zeros(math.prod(s) + offset, dtype=dtype, device="cuda") for s in shapes]
        gpu = [b[offset:].view(s) for b, s in zip(bufs, shapes)]
        for g, w in zip(gpu, init):
            g.copy_(w)
        gpu = [torch.nn.Parameter(g) for g in gpu]
    else:
        gpu = [w.cuda().requires_grad_() for w in init]
    cpu = [w.clone().requires_grad_() for w in init]
    return gpu, info.cls(gpu, **kwargs), cpu, info.cls(cpu, **kwargs, fused=False), gen


def _compare(gpu, o_gpu, cpu, o_cpu, what):
    for i, (a, b) in enumerate(zip(gpu, cpu)):
        tol = TOL[b.dtype]
        assert_close_scaled(a.cpu(), b, **tol, msg=f"{what} param {i}")
        sa, sb = o_gpu.state.get(a, {}), o_cpu.state.get(b, {})
        assert set(sa) == set(sb), what
        for k in sa:
            if k == "step":
                assert float(sa[k]) == float(sb[k]), f"{what} param {i} step"
            else:
                assert_close_scaled(sa[k].cpu(), sb[k], **tol, msg=f"{what} param {i} {k}")


def _run(info, kwargs, shapes, dtype, seed, steps=3, **twin_kw):
    gpu, o_gpu, cpu, o_cpu, gen = _twin(info, kwargs, shapes, dtype, seed, **twin_kw)
    for step in range(steps):
        for i, (a, b) in enumerate(zip(gpu, cpu)):
            if (step + i) % 5 == 4:
                a.grad = b.grad = None  # a parameter without a grad this step
                continue
            g = torch.randn(b.shape, generator=gen, dtype=torch.float64).to(dtype)
            a.grad, b.grad = g.cuda(), g.clone()
        o_gpu.step()
        o_cpu.step()
        torch.cuda.synchronize()
        _compare(gpu, o_gpu, cpu, o_cpu, f"{info.name} {kwargs} {dtype} step {step}")
        with torch.no_grad():  # continue from the kernel's values: each step compared from equal inputs
            for a, b in zip(gpu, cpu):
                b.copy_(a.cpu())
            for a, b in zip(gpu, cpu):
                for k, v in o_gpu.state.get(a, {}).items():
                    if k != "step":
                        o_cpu.state[b][k].copy_(v.cpu())
    return o_gpu


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_every_config_and_regularizer_matches_the_reference(info, dtype):
    for ci, cfg in enumerate(info.configs):
        kw = info.full_kwargs(cfg)
        if isinstance(kw.get("lr"), torch.Tensor):
            kw["lr"] = kw["lr"].cuda()
        for ri, reg in enumerate((*prox_configs(info), None)):
            _run(info, {**kw, **(reg.kwargs() if reg else {})}, SHAPES, dtype, seed=ci * 100 + ri)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_group_proxes_on_rows_and_columns(info, dtype):
    shapes = [(8, 3), (4, 1000), (3, 5, 7), (300, 2), (0, 4)]
    for gi, reg in enumerate(GROUP_CONFIGS):
        _run(info, {**info.defaults, **reg}, shapes, dtype, seed=gi)


@needs_gpu
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_many_tensors_misaligned_views_and_mixed_steps(info):
    """More tensors than one launch holds, two buckets, and views one element into a buffer."""
    rng = random.Random(0)
    shapes = [(rng.choice([1, 3, 64, 100, 4099]),) for _ in range(300)]
    _run(info, {**info.defaults, "l1": 0.01}, shapes, torch.float32, seed=1, steps=2)
    _run(info, {**info.defaults, "l2": 0.5}, shapes[:40], torch.float32, seed=2, steps=2, offset=1)


@needs_gpu
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_found_inf_on_the_device_changes_nothing(info):
    p = torch.randn(5000, device="cuda", requires_grad=True)
    o = info.cls([p], **info.defaults, l1=0.01)
    p.grad = torch.randn_like(p)
    o.step()
    before = p.detach().clone(), {k: v.clone() for k, v in o.state[p].items()}
    o.grad_scale = torch.tensor([4.0], device="cuda")
    o.found_inf = torch.tensor([1.0], device="cuda")
    p.grad = torch.randn_like(p)
    o.step()
    assert torch.equal(p.detach(), before[0])
    for k, v in before[1].items():
        assert torch.equal(o.state[p][k], v), k


@needs_gpu
def test_grad_scaler_parity_with_torch_fused_adamw():
    torch.manual_seed(0)
    model_a = torch.nn.Linear(64, 64).cuda()
    model_b = torch.nn.Linear(64, 64).cuda()
    model_b.load_state_dict(model_a.state_dict())
    opt_a = proxopt.AdamW(model_a.parameters(), lr=1e-3)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-3, fused=True)
    scalers = [torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda")]
    for _ in range(5):
        x = torch.randn(32, 64, device="cuda")
        for model, opt, scaler in ((model_a, opt_a, scalers[0]), (model_b, opt_b, scalers[1])):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(x).float().pow(2).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_a_step_never_synchronizes_with_the_host(info):
    ps = [torch.randn(s, device="cuda", requires_grad=True) for s in [(100,), (8, 30), (3,)]]
    o = info.cls(ps, **info.defaults, l1=0.01)
    for p in ps:
        p.grad = torch.randn_like(p)
    o.step()  # the first step builds the plan (and may read state back)
    o.grad_scale = torch.tensor([2.0], device="cuda")
    o.found_inf = torch.tensor([0.0], device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            o.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_gpu
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_capturable_step_in_a_cuda_graph(info):
    """capturable=True (Adam/AdamW) or any step (SGD): step counters and a tensor lr on the
    device, so the step is captured in a CUDA graph and replays exactly as eager steps."""
    kw = {**info.defaults, "l1": 0.01, "lr": torch.tensor(0.01, device="cuda")}
    if info.name != "SGD":
        kw["capturable"] = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(4096, device="cuda", generator=gen)
    grads = [torch.randn(4096, device="cuda", generator=gen) for _ in range(4)]
    p, q = w.clone().requires_grad_(), w.clone().requires_grad_()
    o_p, o_q = info.cls([p], **kw), info.cls([q], **{**kw, "lr": kw["lr"].clone()})
    p.grad = grads[0].clone()
    q.grad = grads[0].clone()
    o_p.step()  # warm-up outside the graph: the plan and state exist now
    o_q.step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s), torch.cuda.graph(graph):
        o_p.step()
    torch.cuda.current_stream().wait_stream(s)
    for g in grads[1:]:
        p.grad.copy_(g)
        graph.replay()
        q.grad = g.clone()
        o_q.step()
    torch.cuda.synchronize()
    assert torch.equal(p, q)
    if info.name != "SGD":  # SGD keeps no step counter in its state
        assert float(o_p.state[p]["step"]) == float(o_q.state[q]["step"]) == len(grads)
