"""torch.compile with proxopt.

* A compiled model (``torch.compile(model)``, inductor) trains with a proxopt optimizer
  exactly as the eager model does, to compiled-kernel rounding.
* The compiled-optimizer recipe (``@torch.compile(fullgraph=True) def step(): opt.step()``)
  traces the whole step -- plan checks, grads, the operator ``proxopt::step`` -- with no
  graph break, on the CPU (where torch's own fused AdamW graph-breaks) and on CUDA, and
  gives the eager result bit for bit. A tensor lr changed by a scheduler costs no
  recompilation.
* The compiled step moves no more memory than the eager one: after inductor's post-grad
  passes the graph calls the operator on the parameters and states themselves (no clone
  from functionalization, no copy but the no-op ``copy_(x, x)`` that marks a mutation).
"""

from __future__ import annotations

import pytest
import torch
import torch._inductor.compile_fx as compile_fx
from torch._dynamo.utils import counters

import proxopt

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not (torch.cuda.is_available() and proxopt.backend_info()["cuda_kernels"]),
    reason="needs an NVIDIA GPU and proxopt._C_cuda")])]


def _model(seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(device)


def _data(n: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(12, 8, generator=g).to(device), torch.randn(12, 4, generator=g).to(device)) for _ in range(n)]


def _groups(model, **reg):
    reg = reg or {"l1": 1e-3, "group_lasso": 1e-2}
    return [
        {"params": [p for p in model.parameters() if p.dim() == 2], **reg},
        {"params": [p for p in model.parameters() if p.dim() == 1]},
    ]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def post_grad_graphs(monkeypatch):
    """The FX graphs inductor compiles, as they are after its post-grad passes."""
    graphs: list[torch.fx.Graph] = []
    original = compile_fx.post_grad_passes

    def record(gm, is_inference):
        original(gm, is_inference)
        graphs.append(gm.graph)

    monkeypatch.setattr(compile_fx, "post_grad_passes", record)
    # a cache hit would skip the passes
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield graphs


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


OPTIMIZERS = [
    ("AdamW", dict(), dict(l1=1e-3, group_lasso=1e-2)),
    ("Adam", dict(amsgrad=True, weight_decay=1e-3), dict(l2=1e-2, bounds=(-0.5, 0.5))),
    ("SGD", dict(momentum=0.9, nesterov=True), dict(l1=1e-3, max_norm=0.8)),
    ("Adagrad", dict(lr_decay=1e-3), dict(l1=1e-3, prox_metric="adaptive")),
    ("RMSprop", dict(momentum=0.5, centered=True), dict(l0=1e-4)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kw,reg", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_compiled_optimizer_step_fullgraph_equals_eager(name, kw, reg, device, post_grad_graphs):
    model, ref_model = _model(device=device), _model(device=device)
    lr = 1e-2
    opt = getattr(proxopt, name)(_groups(model, **reg), lr=torch.tensor(lr, device=device), **kw)
    ref = getattr(proxopt, name)(_groups(ref_model, **reg), lr=torch.tensor(lr, device=device), **kw)
    # (an LRScheduler wraps opt.step in a function Dynamo refuses to trace -- torch.optim's own
    # optimizers fail fullgraph the same way -- so the lr tensor is set here as a scheduler sets it)

    @torch.compile(fullgraph=True)
    def compiled_step():
        opt.step()

    for i, (x, y) in enumerate(_data(6, device)):
        for m, step in ((model, compiled_step), (ref_model, ref.step)):
            for p in m.parameters():
                p.grad = None
            torch.nn.functional.mse_loss(m(x), y).backward()
            step()
        for o in (opt, ref):
            for group in o.param_groups:
                group["lr"].fill_(lr * 0.5 ** (i // 2))
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1, "a tensor lr changed between steps recompiled the step"
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    for (k, st), (k2, st2) in zip(opt.state_dict()["state"].items(), ref.state_dict()["state"].items()):
        assert k == k2 and st.keys() == st2.keys()
        for key in st:
            assert torch.equal(st[key], st2[key]), key
    # the operator runs in place on the graph's inputs: nothing is cloned or copied
    (graph,) = post_grad_graphs
    ops = [n for n in graph.nodes if n.op == "call_function"]
    assert sum(n.target is torch.ops.proxopt.step.default for n in ops) == 1
    for n in ops:
        assert n.target is not torch.ops.aten.clone.default, graph
        if n.target is torch.ops.aten.copy_.default:
            assert n.args[0] is n.args[1], f"a real copy in the compiled step: {n.format_node()}"
        else:
            assert n.target is torch.ops.proxopt.step.default, n.format_node()


def test_step_inside_compiled_training_function_equals_eager():
    """A compiled function with forward, backward, step and zero_grad: Dynamo breaks the
    graph at ``backward()`` and at torch's ``zero_grad`` (its own limits, the same with
    torch.optim) and traces the step into the graph between them."""
    runs = []
    for compile_it in (False, True):
        model = _model()
        opt = proxopt.AdamW(_groups(model), lr=torch.tensor(1e-2))

        def train_step(x, y):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        fn = torch.compile(train_step, backend="aot_eager") if compile_it else train_step
        losses = []
        for i, (x, y) in enumerate(_data(6)):
            losses.append(fn(x, y))
            opt.param_groups[0]["lr"].fill_(1e-2 * 0.5 ** (i // 2))
        runs.append((losses, [p.detach().clone() for p in model.parameters()], opt.state_dict()))
    (l_e, p_e, s_e), (l_c, p_c, s_c) = runs
    for a, b in zip(l_e + p_e, l_c + p_c):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for k, st in s_e["state"].items():
        for key, t in st.items():
            torch.testing.assert_close(s_c["state"][k][key], t, rtol=1e-6, atol=1e-7)
    assert int(s_c["state"][0]["step"]) == 6
    reasons = [str(k) for k in counters["graph_break"]]
    assert reasons and all("backward()" in r or "Optimizer.zero_grad" in r for r in reasons), reasons


def test_plan_changes_under_compile_recompile_and_stay_correct():
    """What makes eager rebuild its plan (a parameter gaining a grad, amsgrad switched on,
    a state tensor replaced) makes the compiled step retrace, with the eager result."""
    ps = [torch.randn(6, 4, requires_grad=True) for _ in range(3)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt, ref = proxopt.Adam(ps, lr=0.1, l1=0.01), proxopt.Adam(qs, lr=0.1, l1=0.01)

    @torch.compile(fullgraph=True)
    def compiled_step():
        opt.step()

    def both(grads, change=None):
        for p, q, g in zip(ps, qs, grads):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        if change:
            change(opt, ps)
            change(ref, qs)
        compiled_step()
        ref.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p, q)

    g = [torch.randn(6, 4) for _ in range(3)]
    both([g[0], None, g[2]])
    both(g)  # ps[1] gains a grad: it gets state
    both(g, lambda o, params: o.param_groups[0].__setitem__("amsgrad", True))
    both(g, lambda o, params: o.state[params[0]].__setitem__("exp_avg", torch.full((6, 4), 0.5)))
    assert set(map(id, opt.state)) == set(map(id, ps))
    assert dict(counters["graph_break"]) == {}
