"""copy.deepcopy, pickle and torch.save/torch.load of proxopt optimizers and their
state_dicts, with named parameters (``param_names``): a copy continues exactly
like the original and shares nothing with it."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import proxopt

REG = dict(l1=0.01, group_lasso=0.05)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


def _named_groups(model):
    return [
        {"params": [(n, p) for n, p in model.named_parameters() if p.dim() == 2], **REG},
        {"params": [(n, p) for n, p in model.named_parameters() if p.dim() == 1], "l1": 0.01},
    ]


def _data(n: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g)) for _ in range(n)]


def _train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _make(opt_name="AdamW", **kw):
    model = _model()
    cls = getattr(proxopt, opt_name)
    kwargs = dict(lr=0.05, **kw)
    if opt_name == "SGD":
        kwargs["momentum"] = 0.9
    return model, cls(_named_groups(model), **kwargs)


def _assert_same(a_model, a_opt, b_model, b_opt):
    for (na, pa), (nb, pb) in zip(a_model.named_parameters(), b_model.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na
    sa, sb = a_opt.state_dict(), b_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for key, t in sa["state"][k].items():
            assert torch.equal(t, sb["state"][k][key]), (k, key)


def _copies(model, opt, how):
    if how == "deepcopy":
        return copy.deepcopy((model, opt))
    if how == "pickle":
        return pickle.loads(pickle.dumps((model, opt)))
    buf = io.BytesIO()
    torch.save((model, opt), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("opt_name", ["AdamW", "SGD", "Adagrad", "RMSprop"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copied_optimizer_continues_like_the_original(how, opt_name):
    model, opt = _make(opt_name)
    data = _data(6)
    _train(model, opt, data[:3])
    model2, opt2 = _copies(model, opt, how)
    assert type(opt2) is type(opt)
    # the copy optimizes the copied parameters, not the original ones
    ids = {id(p) for p in model2.parameters()}
    assert all(id(p) in ids for g in opt2.param_groups for p in g["params"])
    assert set(map(id, opt2.state)) <= ids
    assert opt2.param_groups[0]["param_names"] == ["0.weight", "2.weight"]
    # and shares no memory with the original
    for st, st2 in zip(opt.state.values(), opt2.state.values()):
        for key in st:
            assert st[key].data_ptr() != st2[key].data_ptr(), key
    _train(model, opt, data[3:])
    _train(model2, opt2, data[3:])
    _assert_same(model, opt, model2, opt2)


def test_copy_keeps_amp_support():
    """GradScaler reads _step_supports_amp_scaling; pickle/deepcopy keep only what
    Optimizer.__getstate__ returns, so it must be a class attribute."""
    _, opt = _make()
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert getattr(copied, "_step_supports_amp_scaling", False) is True


def test_deepcopy_of_fresh_optimizer_then_step():
    model, opt = _make()
    model2, opt2 = copy.deepcopy((model, opt))
    data = _data(3)
    _train(model, opt, data)
    _train(model2, opt2, data)
    _assert_same(model, opt, model2, opt2)


def test_state_dict_with_param_names_round_trip():
    model, opt = _make(l1=0.0)
    data = _data(6)
    _train(model, opt, data[:3])
    sd = opt.state_dict()
    assert [g["param_names"] for g in sd["param_groups"]] == [["0.weight", "2.weight"], ["0.bias", "2.bias"]]
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": sd}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain data only: loadable with weights_only
    model2 = _model(seed=1)
    model2.load_state_dict(ckpt["model"])
    opt2 = proxopt.AdamW(_named_groups(model2), lr=0.05)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["group_lasso"] == REG["group_lasso"]
    _train(model, opt, data[3:])
    _train(model2, opt2, data[3:])
    _assert_same(model, opt, model2, opt2)


def test_state_dict_deepcopy_and_pickle_are_independent():
    model, opt = _make()
    _train(model, opt, _data(2))
    sd = opt.state_dict()
    for sd2 in (copy.deepcopy(sd), pickle.loads(pickle.dumps(sd))):
        for k, st in sd["state"].items():
            for key, t in st.items():
                assert torch.equal(sd2["state"][k][key], t)
                if t.dim():
                    assert sd2["state"][k][key].data_ptr() != t.data_ptr()
    sd3 = copy.deepcopy(sd)
    _train(model, opt, _data(1, seed=9))  # the original moves on, the saved copy does not
    assert not torch.equal(opt.state_dict()["state"][0]["exp_avg"], sd3["state"][0]["exp_avg"])


def test_named_checkpoint_moves_between_torch_and_proxopt():
    """No regularizer: a named state_dict moves torch.optim.AdamW -> proxopt.AdamW -> torch.optim.AdamW."""
    data = _data(9)
    ref_model = _model()
    ref = torch.optim.AdamW(ref_model.named_parameters(), lr=0.05)
    _train(ref_model, ref, data)

    model = _model()
    t_opt = torch.optim.AdamW(model.named_parameters(), lr=0.05)
    _train(model, t_opt, data[:3])
    p_opt = proxopt.AdamW(model.named_parameters(), lr=0.05)
    p_opt.load_state_dict(copy.deepcopy(t_opt.state_dict()))
    assert p_opt.param_groups[0]["param_names"] == [n for n, _ in model.named_parameters()]
    _train(model, p_opt, data[3:6])
    t_opt2 = torch.optim.AdamW(model.named_parameters(), lr=0.05)
    t_opt2.load_state_dict(copy.deepcopy(p_opt.state_dict()))
    _train(model, t_opt2, data[6:])
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
