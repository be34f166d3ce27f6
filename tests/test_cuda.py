"""The CUDA backend (proxopt._C_cuda, python/proxopt/_fused_cuda.py).

Three tiers, each skipped cleanly where it cannot run:

* always: ``proxopt._fused_cuda`` imports and says "not available" without a
  GPU or without the compiled module;
* with the compiled module, no GPU needed: argument checks, the error a call
  gets when no GPU is reachable, and the launch packing (metadata under the
  4 KB kernel-argument limit, every element covered exactly once) replayed on
  the host by ``_C_cuda._plan`` with the kernel's own decoding;
* with a GPU (``pytest.mark.cuda``): the kernels against the pure-torch
  reference on CPU copies (every rule variant, every elementwise regularizer
  at a nonzero strength, four dtypes, odd sizes, misaligned views, many
  tensors, several steps), parity with torch.optim on CUDA, AMP GradScaler
  steps with and without overflow, and the caller's (non-default) stream.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import zlib

import pytest
import torch

from proxopt import _fused_cuda, reference
from proxopt.reference import ADAGRAD, ADAM, RMSPROP, SGD, Hyper

try:
    from proxopt import _C_cuda
except ImportError:
    _C_cuda = None

needs_module = pytest.mark.skipif(_C_cuda is None, reason="proxopt._C_cuda is not built")
HAS_GPU = _C_cuda is not None and torch.cuda.is_available() and _fused_cuda.available()


def needs_gpu(fn):
    """Marks a test `cuda` and skips it without a usable GPU and proxopt._C_cuda."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and proxopt._C_cuda")(fn))


# ---- the cases: rule variants x regularizers (declarative) -------------------

VARIANTS = {
    "sgd": dict(rule=SGD, lr=0.1),
    "sgd_momentum": dict(rule=SGD, lr=0.05, momentum=0.9, dampening=0.1),
    "sgd_nesterov": dict(rule=SGD, lr=0.05, momentum=0.8, nesterov=True),
    "adam": dict(rule=ADAM, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8),
    "adam_amsgrad": dict(rule=ADAM, lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, amsgrad=True),
    "adamw": dict(rule=ADAM, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True),
    "adagrad": dict(rule=ADAGRAD, lr=0.1, lr_decay=0.01, eps=1e-10),
    "rmsprop": dict(rule=RMSPROP, lr=1e-2, alpha=0.99, eps=1e-8),
    "rmsprop_momentum": dict(rule=RMSPROP, lr=1e-2, alpha=0.9, eps=1e-8, momentum=0.9),
    "rmsprop_centered": dict(rule=RMSPROP, lr=1e-2, alpha=0.95, eps=1e-6, centered=True),
    "rmsprop_centered_momentum": dict(rule=RMSPROP, lr=1e-2, alpha=0.9, eps=1e-6, centered=True, momentum=0.5),
}

REGULARIZERS = {
    "plain": {},
    "weight_decay": dict(weight_decay=0.05),
    "maximize": dict(maximize=True, weight_decay=0.01),
    "l1": dict(l1=0.5),
    "l0": dict(l0=0.02),
    "l2": dict(l2=0.7),
    "elastic_net": dict(l1=0.3, l2=0.4),
    "bounds": dict(lo=-0.5, hi=0.7),
    "everything": dict(l1=0.2, l2=0.3, lo=-0.8, hi=0.6, weight_decay=0.02),
    "adaptive_l1": dict(l1=1e-3, adaptive=True),
    "adaptive_l0_l2": dict(l0=1e-4, l2=1e-3, adaptive=True, lo=-1.0, hi=1.0),
}

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Per-step tolerances (one step from identical inputs): a few ulps of the storage type.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-13),
    torch.float16: dict(rtol=4e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=1.6e-2),
}


def state_count(h: Hyper) -> int:
    if h.rule == SGD:
        return 1 if h.momentum != 0 else 0
    if h.rule == ADAM:
        return 3 if h.amsgrad else 2
    if h.rule == ADAGRAD:
        return 1
    return 1 + (h.momentum > 0) + h.centered


def make_hyper(variant: str, reg: str, rng: random.Random) -> Hyper:
    """The variant's hyperparameters, each scaled by a random factor, plus the regularizers."""
    kw = dict(VARIANTS[variant])
    for key in ("lr", "weight_decay"):
        if key in kw:
            kw[key] *= rng.uniform(0.5, 2.0)
    kw.update(REGULARIZERS[reg])
    if "l1" in kw:
        kw["l1"] *= rng.uniform(0.5, 2.0)
    return Hyper(**kw)


def applicable(variant: str, reg: str) -> bool:
    # The adaptive prox metric needs a per-element preconditioner (not plain SGD).
    return not (REGULARIZERS[reg].get("adaptive") and VARIANTS[variant]["rule"] == SGD)


CASES = [(v, r) for v in VARIANTS for r in REGULARIZERS if applicable(v, r)]


def seed_of(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


# ---- tier 1: always ----------------------------------------------------------


def test_import_never_needs_the_gpu():
    assert isinstance(_fused_cuda.available(), bool)
    if not torch.cuda.is_available():
        assert not _fused_cuda.available()
    p = torch.zeros(4)
    assert not _fused_cuda.cuda_kernel_takes(p, torch.zeros(4), [], torch.tensor(0.0))


def test_disabled_by_environment():
    code = "import proxopt._fused_cuda as f; print(f.available())"
    env = dict(os.environ, PROXOPT_DISABLE_CUDA="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- tier 2: the compiled module, no GPU needed ---------------------------------


def c_hyper(**kw):
    h = _C_cuda.Hyper()
    for k, v in kw.items():
        setattr(h, k, v)
    return h


@needs_module
def test_module_constants():
    assert _C_cuda.PARAM_BYTES == 4096
    assert _C_cuda.CHUNK_ELEMS % (_C_cuda.THREADS * 8) == 0
    assert _C_cuda.CUDART_VERSION >= 12000


@needs_module
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", range(4))
def test_kernel_argument_fits_the_limit(variant, dtype):
    kw = {k: v for k, v in VARIANTS[variant].items()}
    tensors, nbytes = _C_cuda._launch_limits(c_hyper(**kw), dtype)
    assert nbytes <= 4096
    assert tensors >= 32


@needs_module
def test_bad_arguments_raise_before_any_cuda_call():
    h = c_hyper(rule=ADAM, lr=1e-3, beta1=0.9, beta2=0.999)
    good = dict(hyper=h, dtype=0, params=[16], grads=[32], states=[[48], [64]], steps=[80], step_dtype=0,
                numels=[4], fresh=[], grad_scale=0, device=0, stream=0)
    bad = [
        dict(grads=[]),
        dict(states=[[48]]),
        dict(states=[[48], []]),
        dict(steps=[]),
        dict(numels=[-1]),
        dict(dtype=7),
        dict(step_dtype=3),
        dict(params=[0]),
        dict(fresh=[True, False]),
        dict(device=-1),
    ]
    for change in bad:
        with pytest.raises(ValueError, match="proxopt._C_cuda.step"):
            _C_cuda.step(**{**good, **change})


@needs_module
def test_group_proxes_are_rejected():
    for kw in (dict(group_lasso=0.1), dict(max_norm=1.0)):
        h = c_hyper(rule=SGD, lr=0.1, **kw)
        with pytest.raises(NotImplementedError, match="group_lasso"):
            _C_cuda.step(h, 0, [16], [32], [], [], 0, [4], [], 0, 0, 0)
    hp = Hyper(rule=SGD, lr=0.1, group_lasso=0.1) if "group_lasso" in Hyper.__dataclass_fields__ else None
    if hp is not None and _fused_cuda._load() is not None:
        with pytest.raises(NotImplementedError):
            _fused_cuda._to_c(hp)


@needs_module
def test_no_gpu_is_a_runtime_error():
    count, why = _C_cuda.probe()
    if count > 0:
        pytest.skip("a GPU is reachable")
    assert why  # the CUDA error that explains it
    h = c_hyper(rule=SGD, lr=0.1)
    # Pointers are never dereferenced: making the device current fails first.
    with pytest.raises(RuntimeError, match="proxopt._C_cuda"):
        _C_cuda.step(h, 0, [4096], [8192], [], [], 0, [4], [], 0, 0, 0)
    assert _C_cuda.device_error(0)
    # An empty call launches nothing and needs no device.
    _C_cuda.step(h, 0, [], [], [], [], 0, [], [], 0, 0, 0)


def covered(plan, numels):
    """Check that the launches cover every element of every tensor exactly once."""
    seen = {i: [] for i in range(len(numels))}
    for launch in plan:
        assert launch["blocks"] == len(launch["spans"])
        for src, begin, end in launch["spans"]:
            assert 0 <= begin < end <= numels[src]
            assert end - begin <= _C_cuda.CHUNK_ELEMS
            seen[src].append((begin, end))
    for i, n in enumerate(numels):
        spans = sorted(seen[i])
        pos = 0
        for begin, end in spans:
            assert begin == pos, f"tensor {i}: gap or overlap at {pos}"
            pos = end
        assert pos == n


@needs_module
@pytest.mark.parametrize("seed", range(6))
def test_plan_covers_every_element_once(seed):
    rng = random.Random(seed)
    chunk = _C_cuda.CHUNK_ELEMS
    numels = [rng.choice([0, 1, 3, 8, 1000, chunk - 1, chunk, chunk + 1, 3 * chunk + 5, rng.randrange(1, 5 * chunk)])
              for _ in range(rng.randrange(1, 400))]
    addresses = [0x10000 * (i + 1) + rng.choice([0, 4, 16]) for i in range(len(numels))]
    keys = [rng.randrange(rng.choice([1, 2, 7])) for _ in numels]
    h = c_hyper(rule=rng.choice([SGD, ADAM, ADAGRAD, RMSPROP]), momentum=rng.choice([0.0, 0.9]))
    dtype = rng.randrange(4)
    max_tensors, _ = _C_cuda._launch_limits(h, dtype)
    plan = _C_cuda._plan(h, dtype, numels, addresses, keys, 0, True)
    covered(plan, numels)
    size = [4, 8, 2, 2][dtype]
    for launch in plan:
        assert 1 <= len(launch["tensors"]) <= max_tensors
        assert launch["coeffs"] <= _C_cuda.MAX_COEFFS
        # Each launch holds at most MAX_COEFFS distinct (step, fresh) keys.
        assert len({keys[src] for src, *_ in launch["tensors"]}) <= _C_cuda.MAX_COEFFS
        for src, offset, numel, first_block, slot, aligned in launch["tensors"]:
            assert numel == numels[src] - offset
            assert aligned == ((addresses[src] + offset * size) % _C_cuda.VECTOR_BYTES == 0)
    total_blocks = sum(launch["blocks"] for launch in plan)
    assert total_blocks == sum(-(-n // chunk) for n in numels)


@needs_module
def test_plan_splits_long_lists_and_huge_tensors():
    h = c_hyper(rule=ADAM)
    max_tensors, _ = _C_cuda._launch_limits(h, 0)
    n = 3 * max_tensors + 1
    plan = _C_cuda._plan(h, 0, [1] * n, [16 * (i + 1) for i in range(n)], [0] * n)
    assert [len(p["tensors"]) for p in plan] == [max_tensors] * 3 + [1]
    # More blocks than one launch may hold (2**30): the tensor continues in the next launch.
    chunk = _C_cuda.CHUNK_ELEMS
    huge = (1 << 30) * chunk + 3 * chunk + 7
    plan = _C_cuda._plan(h, 0, [5, huge, 9], [16, 1 << 40, 32], [0, 0, 0], 0x1234)
    assert [p["blocks"] for p in plan] == [1 << 30, 5 + 1]
    assert plan[0]["tensors"][1][:3] == (1, 0, huge)
    assert plan[1]["tensors"][0][:3] == (1, (1 << 30) * chunk - chunk, huge - (1 << 30) * chunk + chunk)
    assert all(p["grad_scale"] == 0x1234 for p in plan)


@needs_module
def test_plan_rejects_group_proxes():
    with pytest.raises(NotImplementedError):
        _C_cuda._plan(c_hyper(rule=SGD, group_lasso=1.0), 0, [4], [16], [0])


# ---- tier 3: a GPU ------------------------------------------------------------------


def random_numels(rng: random.Random) -> list[int]:
    chunk = 16384
    pool = [0, 1, 2, 3, 5, 7, 8, 33, 257, 1000, 4096, chunk - 3, chunk, chunk + 1, 2 * chunk + 5]
    return [rng.choice(pool) for _ in range(rng.randrange(3, 9))]


def make_param(numel: int, dtype, device, rng: random.Random, gen: torch.Generator, *, misaligned: bool):
    """A contiguous param; `misaligned` puts it one element into a larger buffer."""
    if misaligned:
        buf = torch.empty(numel + 1, dtype=dtype, device=device)
        p = buf[1:]
    else:
        p = torch.empty(numel, dtype=dtype, device=device)
    p.copy_(torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype))
    if numel > 16 and numel % 4 == 0 and rng.random() < 0.5:
        p = p.view(4, -1)  # shape does not matter to the kernel, only the element count
    return p


def random_grad(shape, gen, dtype, device):
    """Gradients of magnitude 0.5 to 1.5 and random sign. Bounded away from 0
    so that g + weight_decay * w cannot cancel: there g / (sqrt(v) + eps) is
    ill-conditioned (slope 1/eps), and the reference's torch ops, which may
    contract a*b+c into one FMA, and the kernel, which rounds each operation,
    would legitimately differ by far more than an ulp."""
    mag = torch.rand(shape, generator=gen, dtype=dtype, device=device) + 0.5
    sign = torch.randint(0, 2, shape, generator=gen, device=device).to(dtype) * 2 - 1
    return mag * sign


class Twin:
    """The same tensors on the GPU (stepped by the kernel) and on the CPU
    (stepped by the reference), compared after every step."""

    def __init__(self, h: Hyper, numels, dtype, rng, *, misaligned=(), step_dtype=torch.float32, step0=None):
        gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
        self.h, self.dtype, self.gen = h, dtype, gen
        self.params = [make_param(n, dtype, "cuda", rng, gen, misaligned=i in misaligned) for i, n in enumerate(numels)]
        ns = state_count(h)
        self.states = [[torch.zeros_like(p) for p in self.params] for _ in range(ns)]
        has_step = h.rule != SGD
        self.steps = (
            [torch.tensor(float(step0[i] if step0 else 0), dtype=step_dtype) for i in range(len(numels))]
            if has_step
            else None
        )
        self.cpu_params = [p.cpu() for p in self.params]
        self.cpu_states = [[s.cpu() for s in key] for key in self.states]
        self.cpu_steps = [s.clone() for s in self.steps] if has_step else None
        self.fresh = h.rule == SGD and h.momentum != 0

    def grads(self, scale: float = 1.0, misaligned=()):
        out = []
        for i, p in enumerate(self.params):
            g = (random_grad(p.shape, self.gen, torch.float64, "cpu") * scale).to(self.dtype)
            if i in misaligned:
                buf = torch.empty(p.numel() + 1, dtype=self.dtype, device="cuda")
                gd = buf[1:].view(p.shape)
                gd.copy_(g)
            else:
                gd = g.cuda()
            out.append((gd, g))
        return out

    def step(self, grads, grad_scale: float | None = None):
        fresh = [self.fresh] * len(self.params)
        gs_gpu = torch.tensor(grad_scale, dtype=torch.float32, device="cuda") if grad_scale else None
        gs_cpu = torch.tensor(grad_scale, dtype=torch.float32) if grad_scale else None
        _fused_cuda.cuda_step(self.h, self.params, [g for g, _ in grads], self.states, self.steps, fresh, gs_gpu)
        for i, (p, (_, g)) in enumerate(zip(self.cpu_params, grads)):
            reference.step_tensor(
                self.h, p, g, [key[i] for key in self.cpu_states],
                self.cpu_steps[i] if self.cpu_steps is not None else None,
                fresh=self.fresh, grad_scale=gs_cpu,
            )
        self.fresh = False
        torch.cuda.synchronize()

    def check(self, what=""):
        tol = TOL[self.dtype]
        for i, (p, q) in enumerate(zip(self.params, self.cpu_params)):
            torch.testing.assert_close(p.cpu(), q, **tol, equal_nan=True, msg=lambda m: f"{what} param {i}: {m}")
        for k, (key, cpu_key) in enumerate(zip(self.states, self.cpu_states)):
            for i, (s, t) in enumerate(zip(key, cpu_key)):
                torch.testing.assert_close(s.cpu(), t, **tol, equal_nan=True, msg=lambda m: f"{what} state {k} of {i}: {m}")
        if self.steps is not None:
            assert [float(s) for s in self.steps] == [float(s) for s in self.cpu_steps]

    def resync(self):
        """Continue from the kernel's results, so each step is compared from identical inputs."""
        for p, q in zip(self.params, self.cpu_params):
            q.copy_(p.cpu())
        for key, cpu_key in zip(self.states, self.cpu_states):
            for s, t in zip(key, cpu_key):
                t.copy_(s.cpu())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant,reg", CASES)
@needs_gpu
def test_kernel_matches_reference(variant, reg, dtype):
    rng = random.Random(seed_of(variant, reg, str(dtype)))
    h = make_hyper(variant, reg, rng)
    numels = random_numels(rng)
    misaligned = {i for i in range(len(numels)) if rng.random() < 0.3}
    twin = Twin(h, numels, dtype, rng, misaligned=misaligned)
    for step in range(3):
        twin.step(twin.grads(misaligned=misaligned if step == 1 else ()))
        twin.check(f"{variant}/{reg}/{dtype} step {step + 1}:")
        twin.resync()


@needs_gpu
@pytest.mark.parametrize("variant", ["adam", "sgd_momentum", "rmsprop_centered_momentum"])
def test_many_tensors_and_mixed_steps(variant):
    """More tensors than one launch holds and more distinct step counts than
    one launch has coefficient slots: several launches, still exact."""
    rng = random.Random(seed_of("many", variant))
    h = make_hyper(variant, "everything", rng)
    numels = [rng.choice([1, 3, 64, 100, 4099]) for _ in range(300)]
    twin = Twin(h, numels, torch.float32, rng, step0=[i % 9 for i in range(300)], step_dtype=torch.float64)
    for step in range(2):
        twin.step(twin.grads())
        twin.check(f"{variant} step {step + 1}:")
        twin.resync()


@needs_gpu
def test_empty_tensors_only_count_steps():
    h = Hyper(rule=ADAM, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    twin = Twin(h, [0, 0], torch.float32, random.Random(0))
    twin.step(twin.grads())
    twin.check()
    assert [float(s) for s in twin.steps] == [1.0, 1.0]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_params_step_as_their_real_view(dtype):
    h = Hyper(rule=ADAM, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True)
    gen = torch.Generator().manual_seed(0)
    p_cpu = torch.randn(37, 5, dtype=dtype, generator=gen)
    p = p_cpu.cuda()
    states = [[torch.zeros_like(p)], [torch.zeros_like(p)]]
    cpu_states = [torch.zeros_like(p_cpu), torch.zeros_like(p_cpu)]
    steps, cpu_step = [torch.tensor(0.0)], torch.tensor(0.0)
    assert _fused_cuda.cuda_kernel_takes(p, p, [s[0] for s in states], steps[0])
    for _ in range(3):
        g_cpu = torch.randn(37, 5, dtype=dtype, generator=gen)
        _fused_cuda.cuda_step(h, [p], [g_cpu.cuda()], states, steps, [False], None)
        reference.step_tensor(h, p_cpu, g_cpu, cpu_states, cpu_step)
        tol = TOL[torch.float32 if dtype == torch.complex64 else torch.float64]
        torch.testing.assert_close(p.cpu(), p_cpu, **tol)
        for s, t in zip(states, cpu_states):
            torch.testing.assert_close(s[0].cpu(), t, **tol)


@needs_gpu
def test_kernel_takes():
    p = torch.zeros(8, device="cuda")
    step = torch.tensor(0.0)
    assert _fused_cuda.cuda_kernel_takes(p, torch.zeros_like(p), [torch.zeros_like(p)], step)
    assert _fused_cuda.cuda_kernel_takes(p, torch.zeros_like(p), [], None)
    assert _fused_cuda.cuda_kernel_takes(p.half(), p.half(), [], step.double())
    nc = torch.zeros(4, 4, device="cuda").t()
    assert not _fused_cuda.cuda_kernel_takes(nc, torch.zeros_like(nc), [], step)  # non-contiguous param
    assert not _fused_cuda.cuda_kernel_takes(p, p.double(), [], step)  # grad dtype
    assert not _fused_cuda.cuda_kernel_takes(p, p, [p.double()], step)  # state dtype
    assert not _fused_cuda.cuda_kernel_takes(p, p, [], step.cuda())  # step on the device
    assert not _fused_cuda.cuda_kernel_takes(p, p, [], step.half())
    assert not _fused_cuda.cuda_kernel_takes(p.cpu(), p.cpu(), [], step)
    assert not _fused_cuda.cuda_kernel_takes(p.to(torch.int32), p.to(torch.int32), [], step)


# ---- parity with torch.optim on CUDA -------------------------------------------

TORCH_CASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.05, weight_decay=0.01), dict(rule=SGD, lr=0.05, weight_decay=0.01), ()),
    "sgd_momentum": (
        torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, maximize=True),
        dict(rule=SGD, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, maximize=True), ("momentum_buffer",),
    ),
    "sgd_nesterov": (
        torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(rule=SGD, lr=0.05, momentum=0.9, nesterov=True), ("momentum_buffer",),
    ),
    "adam": (
        torch.optim.Adam, dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
        dict(rule=ADAM, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01), ("exp_avg", "exp_avg_sq"),
    ),
    "adam_amsgrad": (
        torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.999), amsgrad=True, maximize=True),
        dict(rule=ADAM, lr=1e-2, beta1=0.8, beta2=0.999, eps=1e-8, amsgrad=True, maximize=True),
        ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    ),
    "adamw": (
        torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1),
        dict(rule=ADAM, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled_weight_decay=True),
        ("exp_avg", "exp_avg_sq"),
    ),
    "adagrad": (
        torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.01),
        dict(rule=ADAGRAD, lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-10), ("sum",),
    ),
    "rmsprop": (
        torch.optim.RMSprop, dict(lr=1e-2, alpha=0.9, weight_decay=0.01),
        dict(rule=RMSPROP, lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.01), ("square_avg",),
    ),
    "rmsprop_centered_momentum": (
        torch.optim.RMSprop, dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True),
        dict(rule=RMSPROP, lr=1e-2, alpha=0.9, eps=1e-8, momentum=0.5, centered=True),
        ("square_avg", "momentum_buffer", "grad_avg"),
    ),
}


# torch's fused implementation where it has one on CUDA, else foreach.
TORCH_FUSED = {torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW}


def torch_optimizer(cls, params, kw):
    return cls(params, **kw, fused=True) if cls in TORCH_FUSED else cls(params, **kw, foreach=True)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_parity_with_torch_optim(name, dtype):
    cls, torch_kw, hyper_kw, keys = TORCH_CASES[name]
    if dtype != torch.float32 and cls not in TORCH_FUSED:
        pytest.skip("torch's foreach path rounds every intermediate to bfloat16; the kernel keeps float math")
    gen = torch.Generator(device="cuda").manual_seed(seed_of(name))
    shapes = [(64, 33), (7,), (16384 + 3,), (3, 5, 2)]
    ours = [torch.randn(s, device="cuda", generator=gen).to(dtype) for s in shapes]
    theirs = [p.clone().requires_grad_() for p in ours]
    opt = torch_optimizer(cls, theirs, torch_kw)
    h = Hyper(**hyper_kw)
    states = [[torch.zeros_like(p) for p in ours] for _ in keys]
    steps = None if h.rule == SGD else [torch.tensor(0.0) for _ in ours]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for step in range(5):
        grads = [random_grad(p.shape, gen, torch.float32, "cuda").to(dtype) for p in ours]
        for t, g in zip(theirs, grads):
            t.grad = g.clone()
        opt.step()
        _fused_cuda.cuda_step(h, ours, grads, states, steps, [step == 0] * len(ours), None)
        for i, (p, t) in enumerate(zip(ours, theirs)):
            torch.testing.assert_close(p, t.detach(), **tol, msg=lambda m: f"{name} step {step + 1} param {i}: {m}")
            for k, key in enumerate(keys):
                torch.testing.assert_close(states[k][i], opt.state[t][key], **tol,
                                           msg=lambda m: f"{name} step {step + 1} {key} {i}: {m}")
            if steps is not None:
                assert float(steps[i]) == float(opt.state[t]["step"]) == step + 1


# ---- AMP -------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("variant", ["adam", "sgd_momentum", "adagrad", "rmsprop_centered"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_grad_scale_is_read_on_the_device(variant, dtype):
    """The kernel divides by the device scalar, as the reference does with the same scale."""
    rng = random.Random(seed_of("scale", variant))
    h = make_hyper(variant, "l1", rng)
    twin = Twin(h, [1000, 16384 + 5, 3], dtype, rng)
    for step in range(2):
        twin.step(twin.grads(scale=64.0 if dtype == torch.float16 else 1024.0), grad_scale=2.0 ** (6 + step))
        twin.check(f"{variant} step {step + 1}:")
        twin.resync()


def _snapshot(opt):
    return {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
        for g in opt.param_groups for p in g["params"]
    }


@needs_gpu
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop"])
def test_grad_scaler_overflow_changes_nothing(name):
    import proxopt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 3)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 3)).cuda()
    twin.load_state_dict(model.state_dict())
    kw = dict(lr=1e-2, l1=1e-3, bounds=(-1.0, 1.0))
    if name == "SGD":
        kw["momentum"] = 0.9
    opt = getattr(proxopt, name)(model.parameters(), **kw)
    ref = getattr(proxopt, name)(twin.parameters(), **kw, fused=False)  # the reference path
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**14)
    ref_scaler = torch.amp.GradScaler("cuda", init_scale=2.0**14)
    x = torch.randn(16, 33, device="cuda")

    def train_step(m, o, s, overflow):
        o.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = m(x).float().square().mean()
        s.scale(loss).backward()
        if overflow:
            m[0].weight.grad[3, 4] = float("inf")
        s.step(o)
        s.update()

    for overflow in (False, True, False):
        before = [p.detach().clone() for p in model.parameters()]
        state_before = _snapshot(opt)
        train_step(model, opt, scaler, overflow)
        train_step(twin, ref, ref_scaler, overflow)
        if overflow:
            for p, b in zip(model.parameters(), before):
                assert torch.equal(p.detach(), b)
            after = _snapshot(opt)
            assert after.keys() == state_before.keys()
            for pid, st in state_before.items():
                assert after[pid].keys() == st.keys()
                for k, v in st.items():
                    assert torch.equal(after[pid][k], v) if torch.is_tensor(v) else after[pid][k] == v
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert scaler.get_scale() == ref_scaler.get_scale() == 2.0**14 * 0.5


@needs_gpu
def test_grad_scaler_parity_with_torch_fused_adamw():
    import proxopt

    torch.manual_seed(1)
    model = torch.nn.Linear(40, 50).cuda()
    twin = torch.nn.Linear(40, 50).cuda()
    twin.load_state_dict(model.state_dict())
    opt = proxopt.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**10) for _ in range(2)]
    x = torch.randn(8, 40, device="cuda")
    for step in range(4):
        for m, o, s in ((model, opt, scalers[0]), (twin, ref, scalers[1])):
            o.zero_grad()
            s.scale(m(x).square().mean()).backward()
            if step == 2:
                m.weight.grad[0, 0] = float("nan")
            s.step(o)
            s.update()
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for p, q in zip(model.parameters(), twin.parameters()):
            assert float(opt.state[p]["step"]) == float(ref.state[q]["step"])


# ---- streams and devices -----------------------------------------------------------


@needs_gpu
def test_runs_on_the_current_non_default_stream():
    h = Hyper(rule=SGD, lr=1.0)
    p = torch.zeros(1 << 16, device="cuda")
    g = torch.zeros_like(p)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keeps `side` busy for ~0.1 s
        g.fill_(1.0)  # ordered before the step only on `side`
        _fused_cuda.cuda_step(h, [p], [g], [], None, [False], None)
    # The default stream does not wait for `side`: had the kernel gone to the
    # default stream, this copy would already see its result (or g = 0).
    seen = p.clone()
    side.synchronize()
    torch.cuda.synchronize()
    assert torch.equal(seen, torch.zeros_like(p)), "the kernel did not wait for the caller's stream"
    assert torch.equal(p, torch.full_like(p, -1.0))


@needs_gpu
def test_second_device_and_current_device_kept():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    h = Hyper(rule=SGD, lr=0.5)
    torch.cuda.set_device(0)
    p = torch.ones(1000, device="cuda:1")
    _fused_cuda.cuda_step(h, [p], [torch.ones_like(p)], [], None, [False], None)
    torch.cuda.synchronize(1)
    assert torch.equal(p, torch.full_like(p, 0.5))
    assert torch.cuda.current_device() == 0


@needs_gpu
def test_cuda_step_rejects_mixed_devices_and_group_proxes():
    p = torch.zeros(4, device="cuda")
    with pytest.raises(ValueError):
        _fused_cuda.cuda_step(Hyper(rule=SGD, lr=0.1), [p], [torch.zeros(4)], [], None, [False], None)
    if "group_lasso" in Hyper.__dataclass_fields__:
        with pytest.raises(NotImplementedError):
            _fused_cuda.cuda_step(Hyper(rule=SGD, lr=0.1, group_lasso=0.1), [p], [p.clone()], [], None, [False], None)
    assert torch.equal(p, torch.zeros_like(p))


@needs_gpu
def test_nonfinite_values_propagate_like_the_reference():
    h = Hyper(rule=ADAM, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, l1=0.1, lo=-2.0, hi=2.0)
    twin = Twin(h, [16], torch.float32, random.Random(3))
    grads = twin.grads()
    for gd, gc in grads:
        gd[2] = float("nan")
        gc[2] = float("nan")
        gd[5] = float("inf")
        gc[5] = float("inf")
    twin.step(grads)
    for p, q in zip(twin.params, twin.cpu_params):
        torch.testing.assert_close(p.cpu(), q, equal_nan=True, **TOL[torch.float32])
    assert math.isnan(float(twin.params[0][2]))
