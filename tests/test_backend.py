"""Which backend runs, and switching it: backend_info, SIMD levels (in process and
through PROXOPT_SIMD), the pure-torch fallback when the extension is disabled,
and the thread pool (when it starts, and after fork)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import proxopt
from optim_db import KERNEL_THREADS, torch_threads


def _run_python(code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROXOPT_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True,
        timeout=timeout, cwd=os.path.dirname(__file__),
    )
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _last_json(proc: subprocess.CompletedProcess):
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- in process ---------------------------------------------------------------------------


def test_backend_info_reports_the_cpu_kernels() -> None:
    info = proxopt.backend_info()
    assert info["backend"] == "cpu-kernels"
    assert info["cpu_kernels"] is True and info["cpu_kernels_error"] is None
    assert proxopt.has_cpu_kernels()
    levels = proxopt.simd_levels()
    assert info["simd_available"] == levels
    assert levels[0] == "baseline" and len(set(levels)) == len(levels)
    assert set(levels) <= {"baseline", "avx2", "avx512", "neon"}
    assert info["simd"] == proxopt.simd_level() and info["simd"] in levels
    assert info["threads"] == torch.get_num_threads()
    assert proxopt._native.C is not None


def test_default_simd_level_is_the_widest() -> None:
    proc = _run_python("import proxopt, json; print(json.dumps([proxopt.simd_level(), proxopt.simd_levels()]))")
    level, levels = _last_json(proc)
    assert level == levels[-1]


def test_set_simd_level_switches_in_process() -> None:
    p = torch.randn(1000, requires_grad=True)
    opt = proxopt.AdamW([p], lr=0.01, l1=0.1)
    for level in proxopt.simd_levels():
        proxopt.set_simd_level(level)
        assert proxopt.simd_level() == level and proxopt.backend_info()["simd"] == level
        p.grad = torch.randn(1000)
        opt.step()
    assert float(opt.state[p]["step"]) == len(proxopt.simd_levels())


def test_set_simd_level_rejects_unknown_names() -> None:
    before = proxopt.simd_level()
    with pytest.raises(ValueError, match="unknown SIMD level 'sse9'"):
        proxopt.set_simd_level("sse9")
    assert proxopt.simd_level() == before


# ---- PROXOPT_SIMD and PROXOPT_DISABLE_EXTENSION (fresh interpreters) ---------------------------


@pytest.mark.parametrize("level", proxopt.simd_levels()[:-1] or ["baseline"])  # the widest is the default
def test_proxopt_simd_env_forces_a_level(level) -> None:
    proc = _run_python("import proxopt, json; print(json.dumps(proxopt.backend_info()))", {"PROXOPT_SIMD": level})
    info = _last_json(proc)
    assert info["simd"] == level and info["backend"] == "cpu-kernels"


def test_proxopt_simd_env_unknown_level_warns_and_uses_the_widest() -> None:
    proc = _run_python(
        """
        import warnings, json
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import proxopt
        print(json.dumps([proxopt.simd_level(), proxopt.simd_levels(), [str(x.message) for x in w if x.category is RuntimeWarning]]))
        """,
        {"PROXOPT_SIMD": "avx9000"},
    )
    level, levels, warns = _last_json(proc)
    assert level == levels[-1]
    assert any("PROXOPT_SIMD='avx9000' is not available" in m for m in warns), warns


def test_disabled_extension_falls_back_to_the_reference(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, generator=gen)
    w[:4] = torch.tensor([0.0, 1e-4, -1e-4, 2e-3])  # tau = lr*l1 = 0.05: all four end at exactly 0
    grads = [torch.randn(300, generator=gen) for _ in range(3)]
    torch.save({"w": w, "grads": grads}, tmp_path / "in.pt")
    proc = _run_python(
        f"""
        import json, torch, proxopt
        data = torch.load({str(tmp_path / 'in.pt')!r})
        info = proxopt.backend_info()
        assert proxopt._native.C is None and not proxopt.has_cpu_kernels()
        try:
            proxopt.set_simd_level("baseline")
            raised = None
        except RuntimeError as e:
            raised = str(e)
        p = data["w"].clone().requires_grad_()
        opt = proxopt.AdamW([p], lr=0.01, l1=5.0)
        for g in data["grads"]:
            p.grad = g.clone()
            opt.step()
        torch.save({{"w": p.detach(), "state": opt.state_dict()}}, {str(tmp_path / 'out.pt')!r})
        print(json.dumps([info, raised]))
        """,
        {"PROXOPT_DISABLE_EXTENSION": "1"},
    )
    info, raised = _last_json(proc)
    assert info["backend"] == "reference" and info["cpu_kernels"] is False
    assert "PROXOPT_DISABLE_EXTENSION" in info["cpu_kernels_error"]
    assert info["simd"] is None and info["simd_available"] == []
    assert raised == "proxopt's CPU kernels are not loaded (disabled by PROXOPT_DISABLE_EXTENSION)"
    out = torch.load(tmp_path / "out.pt")
    w_out = out["w"]
    assert (w_out[:4] == 0).all(), "lr*l1 = 0.05 must zero these weights exactly"
    assert (w_out == 0).sum() >= 4 and (w_out != 0).sum() > 200
    # bit-identical to the reference path in this process, and close to the kernel
    p = w.clone().requires_grad_()
    q = w.clone().requires_grad_()
    o_ref = proxopt.AdamW([p], lr=0.01, l1=5.0, fused=False)
    o_ker = proxopt.AdamW([q], lr=0.01, l1=5.0)
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        o_ref.step()
        o_ker.step()
    assert torch.equal(w_out, p.detach())
    assert torch.equal(out["state"]["state"][0]["exp_avg_sq"], o_ref.state[p]["exp_avg_sq"])
    torch.testing.assert_close(w_out, q.detach(), rtol=1e-5, atol=1e-6)


# ---- the thread pool -----------------------------------------------------------------------------


def test_thread_pool_starts_only_above_parallel_min_elems() -> None:
    """Below PARALLEL_MIN_ELEMS total elements a call stays on the caller's thread even when
    several threads are allowed; from it on, the pool's workers take part."""
    proc = _run_python(
        f"""
        import json, os, torch, proxopt
        torch.set_num_threads(1)  # torch's own ops start no threads of their own
        C = proxopt._native.C
        def threads():
            return len(os.listdir("/proc/self/task"))
        out = []
        for n in (C.PARALLEL_MIN_ELEMS - 1, C.PARALLEL_MIN_ELEMS):
            p = torch.zeros(n, requires_grad=True)
            p.grad = torch.ones(n)
            opt = proxopt.SGD([p], lr=0.5)
            before = threads()
            torch.set_num_threads({KERNEL_THREADS})
            opt.step()
            torch.set_num_threads(1)
            out.append([before, threads(), bool((p == -0.5).all())])
        print(json.dumps(out))
        """
    )
    (b0, a0, ok0), (b1, a1, ok1) = _last_json(proc)
    assert ok0 and ok1
    assert a0 == b0, "a call below PARALLEL_MIN_ELEMS started threads"
    assert a1 > b1, "a call of PARALLEL_MIN_ELEMS elements with several threads allowed did not use the pool"


def test_thread_pool_works_after_fork() -> None:
    """A forked child has none of the parent's OpenMP threads (the kernels run in torch's
    pool), and libgomp hangs if asked for a parallel region there: the child's steps run on
    its own thread. (torch's own ops stay on one thread here for the same reason.)"""
    proc = _run_python(
        f"""
        import os, torch, proxopt
        torch.set_num_threads(1)
        def step_ok():
            p = torch.zeros(200_000, requires_grad=True)
            p.grad = torch.ones(200_000)
            opt = proxopt.SGD([p], lr=0.5)
            torch.set_num_threads({KERNEL_THREADS})  # the kernel may use the pool
            opt.step()
            torch.set_num_threads(1)
            return bool((p == -0.5).all())
        assert step_ok()  # the parent's pool exists now
        pid = os.fork()
        if pid == 0:
            os._exit(0 if step_ok() else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
    )
    assert proc.stdout.strip().splitlines()[-1] == "0"


@pytest.mark.parametrize(
    "shape, reg",
    [
        ((3 * 32768 + 5,), dict(l1=0.5)),  # elementwise chunks
        ((300, 4100), dict(group_lasso=0.05, group_dim=0)),  # rows: blocks of whole groups
        ((300, 4100), dict(group_lasso=0.05, max_norm=2.0, group_dim=1, max_norm_dim=1)),  # columns: panels, narrower on more threads
    ],
    ids=["elementwise", "group_rows", "group_column_panels"],
)
def test_threaded_and_single_threaded_calls_agree(shape, reg) -> None:
    """Chunks split across threads give exactly the single-threaded result."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    grads = [torch.randn(w.shape, generator=gen) for _ in range(3)]
    results = []
    for n in (1, KERNEL_THREADS):
        p = w.clone().requires_grad_()
        opt = proxopt.Adam([p], lr=0.01, amsgrad=True, **reg)
        with torch_threads(n):
            for g in grads:
                p.grad = g.clone()
                opt.step()
        results.append((p.detach(), opt.state[p]))
    assert torch.equal(results[0][0], results[1][0])
    for k in results[0][1]:
        assert torch.equal(results[0][1][k], results[1][1][k]), k
