"""torch.compile with proxopt.

* A compiled model (``torch.compile(model)``, inductor) trains with a proxopt optimizer
  exactly as the eager model does, to compiled-kernel rounding.
* ``opt.step()`` inside a ``torch.compile``'d training function: ``ProxOptimizer.step``
  is marked ``torch.compiler.disable``, so Dynamo makes one clean graph break there and
  runs the step eagerly (the kernel takes raw pointers and keeps Python-side state,
  which no graph can hold); everything around it is compiled. The results are those
  of eager execution, and an lr scheduler changing ``lr`` between calls costs no
  recompilation.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import proxopt

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def _data(n: int):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(12, 8, generator=g), torch.randn(12, 4, generator=g)) for _ in range(n)]


def _groups(model):
    return [
        {"params": [p for p in model.parameters() if p.dim() == 2], "l1": 1e-3, "group_lasso": 1e-2},
        {"params": [p for p in model.parameters() if p.dim() == 1]},
    ]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_model_trains_with_proxopt():
    eager, compiled_src = _model(), _model()
    compiled = torch.compile(compiled_src)  # inductor, the default backend
    opt_e = proxopt.AdamW(_groups(eager), lr=1e-2)
    opt_c = proxopt.AdamW(_groups(compiled_src), lr=1e-2)
    for x, y in _data(3):
        for model, opt in ((eager, opt_e), (compiled, opt_c)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert counters["stats"]["unique_graphs"] >= 1  # it really was compiled
    for a, b in zip(eager.parameters(), compiled_src.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the optimizer saw the compiled module's parameters (the same Parameter objects)
    assert set(map(id, opt_c.state)) == set(map(id, compiled.parameters()))


def _train_fn(model, opt):
    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return train_step


@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_step_inside_compiled_function_equals_eager(opt_name):
    kw = dict(lr=1e-2) if opt_name == "AdamW" else dict(lr=5e-2, momentum=0.9, nesterov=True)
    runs = []
    for compile_it in (False, True):
        model = _model()
        opt = getattr(proxopt, opt_name)(_groups(model), **kw)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        fn = _train_fn(model, opt)
        if compile_it:
            fn = torch.compile(fn, backend="aot_eager")
        losses = []
        for x, y in _data(6):
            losses.append(fn(x, y))
            sched.step()
        runs.append((losses, [p.detach().clone() for p in model.parameters()], opt.state_dict()))
    (l_e, p_e, s_e), (l_c, p_c, s_c) = runs
    for a, b in zip(l_e, l_c):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(p_e, p_c):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for k, st in s_e["state"].items():
        for key, t in st.items():
            torch.testing.assert_close(s_c["state"][k][key], t, rtol=1e-6, atol=1e-7)
    assert int(s_c["state"][0].get("step", 6)) == 6
    # lr changed 3 times; the step reads it at run time: no recompilation for it
    assert counters["stats"]["unique_graphs"] <= 4


def test_step_is_one_clean_graph_break():
    """Dynamo does not trace into the step (no breaks inside proxopt, no pybind11
    calls in a graph): it skips the disabled ProxOptimizer.step as a whole."""
    model = _model()
    opt = proxopt.AdamW(_groups(model), lr=1e-2)
    fn = torch.compile(_train_fn(model, opt), backend="eager")
    for x, y in _data(2):
        fn(x, y)
    reasons = [str(k) for k in counters["graph_break"]]
    assert any("disable" in r and "ProxOptimizer.step" in r for r in reasons), reasons
    for r in reasons:
        assert "proxopt._C" not in r and "pybind11" not in r, r
    assert int(opt.state[model[0].weight]["step"]) == 2


def test_compiled_optimizer_step_alone():
    """The recipe of torch's 'compile the optimizer' tutorial runs (eagerly inside)."""
    model = _model()
    ref_model = _model()
    opt = proxopt.AdamW(_groups(model), lr=1e-2)
    ref = proxopt.AdamW(_groups(ref_model), lr=1e-2)

    @torch.compile(backend="eager")
    def compiled_step():
        opt.step()

    for x, y in _data(3):
        for m, step in ((model, compiled_step), (ref_model, ref.step)):
            for p in m.parameters():
                p.grad = None
            torch.nn.functional.mse_loss(m(x), y).backward()
            step()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
