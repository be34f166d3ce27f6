"""Channel groups that span tensors in the step (proxopt.coupled): group lasso, the
channel budget and max-norm over each channel's slices of every tensor it lives in,
against an oracle written slice by slice from proxopt.channel_groups' members."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import proxopt
from proxopt.coupled import COUPLED_KEY, CoupledChannels, CoupledFamily, CoupledMember
from proxopt.pruning import prune_zero_channels


class Residual(nn.Module):
    """Two convs whose outputs are added (their channels tied), BN after each."""

    def __init__(self, c_in: int = 5, c: int = 6, n_out: int = 3):
        super().__init__()
        self.a = nn.Conv1d(c_in, c, 3, padding=1, bias=False)  # (a bias before a BN gets gradients of pure rounding noise)
        self.bn_a = nn.BatchNorm1d(c)
        self.b = nn.Conv1d(c_in, c, 1)
        self.c = nn.Conv1d(c, c + 1, 3, padding=1)
        self.head = nn.Linear((c + 1) * 7, n_out)

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)) + self.b(x))
        return self.head(torch.flatten(torch.relu(self.c(y)), 1))


def _sequential(g: torch.Generator) -> nn.Module:
    """A random chain: conv blocks (BN or bias), a flatten into a linear, a hidden linear, an output layer."""
    c_in, layers = 4, []
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        c = int(torch.randint(3, 9, (1,), generator=g))
        bn = bool(torch.randint(0, 2, (1,), generator=g))
        layers += [nn.Conv1d(c_in, c, 3, padding=1, bias=not bn)] + ([nn.BatchNorm1d(c)] if bn else []) + [nn.ReLU()]
        c_in = c
    h = int(torch.randint(3, 8, (1,), generator=g))
    layers += [nn.Flatten(), nn.Linear(c_in * 7, h), nn.ReLU(), nn.Linear(h, 3)]
    return nn.Sequential(*layers)


MODELS = [("residual", lambda g: Residual())] + [(f"chain{i}", _sequential) for i in range(4)]


def _oracle_prox_(found, model_params: dict[str, torch.Tensor], opt: torch.optim.Optimizer, h: dict, lr: float,
                  heal_zero: set | None = None) -> None:
    """The coupled group proxes written slice by slice: every family's factors from the norms after the
    step, then each slice times its group's factor; zeroed groups get fresh Adam state."""
    factors = []
    for fam in found:
        norms, sizes = [], []
        for grp in fam.groups:
            sl = [model_params[m.param_name].detach().narrow(m.dim, m.index_start, m.length) for m in grp.members]
            norms.append(math.sqrt(sum(float(s.double().square().sum()) for s in sl)))
            sizes.append(sum(s.numel() for s in sl))
        norm = torch.tensor(norms, dtype=torch.float64)
        f = torch.ones_like(norm)
        if h.get("group_lasso"):
            tau = lr * h["group_lasso"] * torch.tensor(sizes, dtype=torch.float64).sqrt()
            f = torch.where(norm <= tau, torch.zeros_like(norm), 1 - tau / norm)
        if h.get("channel_sparsity"):
            cut = math.ceil(h["channel_sparsity"] * len(norm) - 1e-6)
            order = sorted(range(len(norm)), key=lambda q: (-float(norm[q] * f[q]), q))
            for q in order[len(norm) - cut:]:
                f[q] = 0.0
        if h.get("max_norm"):
            shrunk = norm * f
            f = torch.where(shrunk > h["max_norm"], f * (h["max_norm"] / shrunk), f)
        factors.append(f)
    for fam, f in zip(found, factors):
        for grp, fg in zip(fam.groups, f):
            for m in grp.members:
                p = model_params[m.param_name]
                p.detach().narrow(m.dim, m.index_start, m.length).mul_(float(fg.to(torch.float32)))
                if fg == 0 and h.get("channel_sparsity"):  # (reset_state is on by default with a budget)
                    for t in opt.state.get(p, {}).values():
                        if t.dim():
                            t.narrow(m.dim, m.index_start, m.length).zero_()


def _pair(make, seed: int, **regs):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make(g)
    twin = type(model)() if isinstance(model, Residual) else make(torch.Generator().manual_seed(seed))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(6, 4 if not isinstance(model, Residual) else 5, 7, generator=g)
    return model, twin, x


@pytest.mark.parametrize("name,make", MODELS, ids=[n for n, _ in MODELS])
@pytest.mark.parametrize("regs", [dict(group_lasso=0.05), dict(channel_sparsity=0.5), dict(group_lasso=0.02, max_norm=1.5),
                                  dict(channel_sparsity=0.34, group_lasso=0.01, l1=1e-3)],
                         ids=["gl", "budget", "gl+maxnorm", "budget+gl+l1"])
def test_coupled_step_equals_slice_by_slice_oracle(name, make, regs):
    model, twin, x = _pair(make, 3)
    found = proxopt.channel_groups(model, x)
    opt = proxopt.AdamW(found.param_groups(model, weight_decay=0.01, **regs), lr=0.02)
    # The oracle: the same param groups without the channel groups and group proxes, then the slices.
    found_twin = proxopt.channel_groups(twin, x)
    plain = {k: v for k, v in regs.items() if k not in ("group_lasso", "channel_sparsity", "max_norm")}
    twin_groups = proxopt.param_groups(twin, weight_decay=0.01, **plain)
    ref = proxopt.AdamW(twin_groups, lr=0.02)
    named = dict(twin.named_parameters())
    for step in range(12):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        _oracle_prox_(found_twin, named, ref, regs, 0.02)
        for (n, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6, msg=f"{n} at step {step}")
    if regs.get("channel_sparsity"):
        for fam in found:
            zero = sum(all(bool((m.slice() == 0).all()) for m in grp.members) for grp in fam.groups)
            assert zero == math.ceil(regs["channel_sparsity"] * len(fam.groups) - 1e-6), fam.name


@pytest.mark.parametrize("cls,kw", [(proxopt.SGD, dict(momentum=0.9)), (proxopt.Adagrad, dict(initial_accumulator_value=0.3)),
                                    (proxopt.RMSprop, dict(momentum=0.5)), (proxopt.Adam, dict(amsgrad=True))])
def test_budget_exact_every_step_and_zeroed_groups_get_fresh_state(cls, kw):
    model, _, x = _pair(_sequential, 7)
    found = proxopt.channel_groups(model, x)
    opt = cls(found.param_groups(model, channel_sparsity=0.5), lr=0.01, **kw)
    rule = proxopt.rules.RULES[opt._rule]
    for _ in range(6):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        for fam in found:
            dead = [grp for grp in fam.groups if all(bool((m.slice() == 0).all()) for m in grp.members)]
            assert len(dead) == math.ceil(0.5 * len(fam.groups) - 1e-6)
            for grp in dead:
                for m in grp.members:
                    st = opt.state[m.param]
                    for q, key in enumerate(k for k in rule.state_keys(opt._hyper(opt.param_groups[0])) if k in st):
                        fresh = kw.get("initial_accumulator_value", 0.0) if (q == 0 and cls is proxopt.Adagrad) else 0.0
                        sl = st[key].narrow(m.dim, m.index_start, m.length)
                        assert bool((sl == fresh).all()), (key, grp.name)


def test_heal_keeps_cut_channels_zero_in_every_tensor():
    model, _, x = _pair(_sequential, 11)
    found = proxopt.channel_groups(model, x)
    groups = found.param_groups(model, channel_sparsity=0.5)
    opt = proxopt.AdamW(groups, lr=0.05)
    for t in range(12):
        if t == 4:
            opt.param_groups[0]["heal"] = True
        opt.zero_grad()
        (model(x).square().mean() - 10 * sum(p.sum() for p in model.parameters())).backward()  # pulls everything away from 0
        opt.step()
        if t == 3:
            dead = {grp.name for fam in found for grp in fam.groups if all(bool((m.slice() == 0).all()) for m in grp.members)}
    assert dead
    now = {grp.name for fam in found for grp in fam.groups if all(bool((m.slice() == 0).all()) for m in grp.members)}
    assert now == dead


def test_pruned_model_equals_the_sparse_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 10, 3), nn.BatchNorm1d(10), nn.ReLU(), nn.Conv1d(10, 8, 3), nn.BatchNorm1d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(16, 4, 7)
    found = proxopt.channel_groups(model, x)
    opt = proxopt.AdamW(found.param_groups(model, channel_sparsity=0.5, weight_decay=0.01), lr=0.01)
    for _ in range(20):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()
    pruned, report = prune_zero_channels(model, report=True)
    assert report.params_after < report.params_before
    assert pruned[0].out_channels == 5 and pruned[3].out_channels == 4 and pruned[7].out_features == 3
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-6)


def test_skipped_amp_step_changes_nothing():
    model, _, x = _pair(_sequential, 2)
    found = proxopt.channel_groups(model, x)
    opt = proxopt.AdamW(found.param_groups(model, group_lasso=0.1, channel_sparsity=0.5), lr=0.01)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(x).sum().backward()
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    opt.step()
    del opt.grad_scale, opt.found_inf
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_state_dict_round_trip_and_pickle():
    model, twin, x = _pair(_sequential, 5)
    found = proxopt.channel_groups(model, x)
    opt = proxopt.AdamW(found.param_groups(model, group_lasso=0.02, channel_sparsity=0.5), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    twin.load_state_dict(model.state_dict())
    opt2 = proxopt.AdamW(proxopt.channel_groups(twin, x).param_groups(twin, group_lasso=0.02, channel_sparsity=0.5), lr=0.01)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    assert opt2.param_groups[0][COUPLED_KEY] == opt.param_groups[0][COUPLED_KEY]
    for m, o in ((model, opt), (twin, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def _spec(*members, groups=2):
    return CoupledChannels((CoupledFamily("f", groups, tuple(members)),))


@pytest.mark.parametrize("spec,pattern", [
    (_spec(CoupledMember(0, 5, 0, ((0,), (1,)))), r"channel_groups value of param group 0: family 'f' names parameter 5"),
    (_spec(CoupledMember(0, 0, 3, ((0,), (1,)))), r"channel_groups value .* member dim 3"),
    (_spec(CoupledMember(0, 0, 0, ((0,), (9,)))), r"channel_groups value .* an index along dim 0 is outside"),
    (_spec(CoupledMember(2, 0, 0, ((0,), (1,)))), r"channel_groups value .* names param group 0 \+ 2"),
    (_spec(CoupledMember(0, 0, 0, ((0,),))), r"channel_groups value .* 1 index lists for 2 groups"),
    (_spec(CoupledMember(0, 0, 0, ((0,), (1,))), CoupledMember(0, 0, 0, ((2,), (3,)))), None),
])
def test_bad_channel_groups_raise_naming_the_key_and_change_nothing(spec, pattern):
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    if pattern is None:  # two members on the same (tensor, dim) in two families
        spec = CoupledChannels((CoupledFamily("f", 2, (CoupledMember(0, 0, 0, ((0,), (1,))),)),
                                CoupledFamily("g", 2, (CoupledMember(0, 0, 0, ((2,), (3,))),))))
        pattern = r"family 'g' and family 'f' both hold slices of parameter 0 of its param group along dim 0"
    with pytest.raises(ValueError, match=pattern):
        proxopt.AdamW([{"params": [w], COUPLED_KEY: spec, "group_lasso": 0.1}, {"params": [b]}])
    opt = proxopt.AdamW([{"params": [w], "group_lasso": 0.1}, {"params": [b]}])
    w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    w0 = w.detach().clone()
    opt.param_groups[0][COUPLED_KEY] = spec  # an edit after construction: refused by the next step
    with pytest.raises(ValueError, match=pattern):
        opt.step()
    assert torch.equal(w, w0) and not opt.state


def test_wrong_type_is_a_type_error():
    w = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"Invalid channel_groups value: a list; expected proxopt.coupled.CoupledChannels"):
        proxopt.AdamW([{"params": [w], COUPLED_KEY: [0, 1]}])


def _one_group(found, model) -> CoupledChannels:
    """The channel groups with every tensor in one param group (in model.parameters() order)."""
    pos = {id(p): i for i, p in enumerate(model.parameters())}
    fams = []
    for fam in found:
        members = tuple(CoupledMember(0, pos[id(sm.param)], sm.dim, tuple(tuple(int(i) for i in r if i >= 0) for r in sm.index.tolist()))
                        for sm in fam.stacked())
        fams.append(CoupledFamily(fam.name, len(fam.groups), members))
    return CoupledChannels(tuple(fams))


def test_one_dim_members_need_no_group_dim_checks():
    """BatchNorm γ/β and biases in the regularized group: per-tensor group proxes refuse 1-D tensors, the
    channel groups take them."""
    model = nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv1d(6, 2, 3))
    x = torch.randn(2, 3, 8)
    found = proxopt.channel_groups(model, x)
    groups = [{"params": list(model.parameters()), COUPLED_KEY: _one_group(found, model),
               "group_lasso": 0.5, "channel_sparsity": 0.5}]
    opt = proxopt.AdamW(groups, lr=0.1)
    model(x).sum().backward()
    opt.step()
    assert int((model[1].weight == 0).sum()) == 3 and int((model[0].weight.abs().sum((1, 2)) == 0).sum()) == 3


def test_compiled_step_equals_eager():
    model, twin, x = _pair(_sequential, 9)
    found = proxopt.channel_groups(model, x)
    opt = proxopt.AdamW(found.param_groups(model, group_lasso=0.02, channel_sparsity=0.5), lr=0.01)
    opt2 = proxopt.AdamW(proxopt.channel_groups(twin, x).param_groups(twin, group_lasso=0.02, channel_sparsity=0.5), lr=0.01)
    step = torch.compile(opt2.step)
    for _ in range(3):
        for m, o, s in ((model, opt, opt.step), (twin, opt2, step)):
            o.zero_grad()
            m(x).square().mean().backward()
            s()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
