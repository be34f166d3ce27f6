"""Keys of param-group dicts: one that looks like a misspelled setting is a
TypeError with a suggestion (torch would keep it, and the group would train
with the default: no regularization, no warning); every other key is kept, as
torch keeps it (torch's own, the schedulers', frameworks', the user's)."""

from __future__ import annotations

import copy

import pytest
import torch

import proxopt

TYPOS = [
    ("l1_lamda", "l1"),  # the example: a regularizer's name as a word of the key
    ("lambda_l1", "l1"),
    ("L1", "l1"),
    ("weight_decy", "weight_decay"),
    ("group_laso", "group_lasso"),
    ("chanel_sparsity", "channel_sparsity"),
    ("sparsty", "sparsity"),
    ("max_norms", "max_norm"),
    ("groupdim", "group_dim"),
]

# Keys real training code puts in groups on purpose, none of them a setting of AdamW.
LEGITIMATE = {
    "initial_lr": 0.1,  # torch's LR schedulers
    "max_lr": 0.1, "min_lr": 0.0, "base_momentum": 0.85, "max_momentum": 0.95,  # OneCycleLR
    "swa_lr": 0.05,  # SWALR
    "initial_l1": 0.5, "initial_sparsity": 0.9,  # proxopt.RegularizerScheduler
    "name": "encoder", "layer_id": 3, "lr_scale": 0.5, "wd_mult": 0.0,  # users' and frameworks' own keys
    "momentum": 0.9, "lr_decay": 0.0, "nesterov": False,  # other optimizers' hyperparameters
}


def _params(n=2):
    return [torch.nn.Parameter(torch.randn(3, 4)) for _ in range(n)]


@pytest.mark.parametrize("cls", [proxopt.AdamW, proxopt.SGD])
@pytest.mark.parametrize("key,meant", TYPOS)
def test_constructor_rejects_a_misspelled_group_key(cls, key, meant):
    w, b = _params()
    group = {"params": [w], key: 0.5}
    with pytest.raises(TypeError, match=rf"proxopt\.{cls.__name__}: param group 0 has the key '{key}', "
                                        rf"which is not a setting\. Did you mean '{meant}'\?"):
        cls([group, {"params": [b]}], lr=0.1)
    assert group == {"params": [w], key: 0.5}  # rejected before torch filled in the defaults


def test_add_param_group_rejects_a_misspelled_key_and_changes_nothing():
    w, b = _params()
    opt = proxopt.AdamW([w], lr=0.1, l1=0.01)
    group = {"params": [b], "l1_lamda": 0.5}
    with pytest.raises(TypeError, match=r"param group 1 has the key 'l1_lamda'.* Did you mean 'l1'\?"):
        opt.add_param_group(group)
    assert len(opt.param_groups) == 1 and group == {"params": [b], "l1_lamda": 0.5}
    opt.add_param_group({"params": [b], "l1": 0.5})  # the right key still goes in
    assert opt.param_groups[1]["l1"] == 0.5


def test_legitimate_extra_keys_are_kept():
    w, b = _params()
    opt = proxopt.AdamW([{"params": [w], "l1": 0.5, **LEGITIMATE}, {"params": [b]}], lr=0.1)
    opt.add_param_group({"params": _params(1), **LEGITIMATE})
    for group in (opt.param_groups[0], opt.param_groups[2]):
        assert {k: group[k] for k in LEGITIMATE} == LEGITIMATE
    assert opt.param_groups[0]["l1"] == 0.5


def test_param_names_from_named_parameters_pass():
    model = torch.nn.Linear(4, 3)
    opt = proxopt.AdamW([{"params": list(model.named_parameters()), "l1": 0.1}], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]


def test_extra_group_keys_lets_a_key_of_ones_own_through(monkeypatch):
    w, b = _params()
    with pytest.raises(TypeError, match=r"key 'l1_target'.*Did you mean 'l1'\?.*extra_group_keys"):
        proxopt.AdamW([{"params": [w], "l1_target": 0.9}], lr=0.1)
    monkeypatch.setattr(proxopt.ProxOptimizer, "extra_group_keys", frozenset({"l1_target"}))
    opt = proxopt.AdamW([{"params": [w], "l1_target": 0.9}, {"params": [b]}], lr=0.1)
    assert opt.param_groups[0]["l1_target"] == 0.9


def test_groups_of_a_scheduled_optimizer_rebuild_and_load():
    """Groups copied from a running optimizer (with its schedulers' keys) make a
    new one, and its state_dict loads into a fresh one: nothing is rejected."""
    w, b = _params()
    opt = proxopt.AdamW([{"params": [w], "l1": 0.5}, {"params": [b]}], lr=0.1)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    proxopt.RegularizerScheduler(opt, "l1", lambda t: 1.0)
    for p in (w, b):
        p.grad = torch.ones_like(p)
    opt.step()
    added = {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", "initial_l1"}
    assert added <= set(opt.param_groups[0])
    rebuilt = proxopt.AdamW(copy.deepcopy(opt.param_groups), lr=0.1)
    assert added <= set(rebuilt.param_groups[0])
    fresh = proxopt.AdamW([{"params": [w], "l1": 0.5}, {"params": [b]}], lr=0.1)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["initial_l1"] == 0.5 and added <= set(fresh.param_groups[1])


def test_keyword_typo_names_the_nearest_argument():
    (w,) = _params(1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'l1_lamda'\. Did you mean 'l1'\?$"):
        proxopt.AdamW([w], lr=0.1, l1_lamda=0.5)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'weight_decy'\. Did you mean 'weight_decay'\?$"):
        proxopt.AdamW([w], lr=0.1, weight_decy=0.5)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'zzz'$"):  # nothing near: no suggestion
        proxopt.AdamW([w], lr=0.1, zzz=0.5)
