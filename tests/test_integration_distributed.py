"""proxopt under torch.distributed on the CPU (gloo), 2 processes on this machine.

* DistributedDataParallel: the same parameters as one process on the global batch,
  for every regularizer;
* ZeroRedundancyOptimizer(optimizer_class=proxopt.AdamW, ...): the same result as one
  process, and a consolidate_state_dict / state_dict / load_state_dict round trip;
* FSDP2 (fully_shard, DTensor parameters sharded along dim 0): the optimizer steps the
  local shards; groups along dim 0 need no communication, groups along dim 1 are split
  across the shards and their norms are all-reduced (proxopt.distributed).

The workers rendezvous through a file store in a temporary folder; gloo talks over
the loopback interface only. Each launch is bounded in time (the process group times
out after 60 s and the launcher kills its own workers after ``LAUNCH_TIMEOUT`` s).
Every scenario of one launch runs in the same two processes; the tests below compare
what the workers wrote with a single-process run made here.
"""

from __future__ import annotations

import copy
import datetime
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist

import proxopt
from proxopt import distributed as pdist

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)

WORLD = 2
STEPS = 5
LAUNCH_TIMEOUT = 120.0
DTYPE = torch.float64  # float64 so that sums in another order cannot flip a threshold

# Regularizers for the weight matrices (biases go to a group without group proxes).
CONFIGS = {
    "l1": dict(l1=0.02),
    "l2": dict(l2=0.5),
    "l0": dict(l0=2e-3),
    "bounds": dict(bounds=(-0.2, 0.25)),
    "group_lasso": dict(group_lasso=0.08),
    "group_lasso_dim1": dict(group_lasso=0.08, group_dim=1),
    "max_norm": dict(max_norm=0.5),
    "max_norm_dim1": dict(max_norm=0.3, max_norm_dim=1),
    "sparse_group_bounds": dict(l1=0.01, group_lasso=0.05, bounds=(-0.3, 0.3)),
}
ELEMENTWISE = ("l1", "l2", "l0", "bounds")

# (optimizer, its kwargs, regularizers) for the FSDP2 runs: group dims 0 and 1, every rule.
FSDP_CONFIGS = {
    "adamw_l1": ("AdamW", dict(lr=0.05), dict(l1=0.02)),
    "adam_l0": ("Adam", dict(lr=0.05), dict(l0=2e-3)),
    "adamw_group_dim0": ("AdamW", dict(lr=0.05), dict(group_lasso=0.15)),
    "adamw_group_dim1": ("AdamW", dict(lr=0.05), dict(group_lasso=0.5, group_dim=1)),
    "adamw_max_norm_dim0": ("AdamW", dict(lr=0.05), dict(max_norm=0.4)),
    "adamw_max_norm_dim1": ("AdamW", dict(lr=0.05), dict(max_norm=0.3, max_norm_dim=1)),
    "adamw_sparse_group_bounds_dim1": (
        "AdamW", dict(lr=0.05), dict(l1=0.01, group_lasso=0.1, group_dim=1, bounds=(-0.25, 0.3))
    ),
    "sgd_momentum_group_dim1": ("SGD", dict(lr=0.1, momentum=0.9), dict(group_lasso=0.2, group_dim=1)),
    "adagrad_lr_decay_max_norm_dim1": (
        "Adagrad", dict(lr=0.1, lr_decay=0.1), dict(max_norm=0.3, max_norm_dim=1, group_lasso=0.05, group_dim=1)
    ),
    "rmsprop_group_dim1": ("RMSprop", dict(lr=0.01), dict(group_lasso=0.2, group_dim=1)),
    # the pure-torch reference path (fused=False) on local shards
    "adamw_reference_group_dim1": ("AdamW", dict(lr=0.05, fused=False), dict(group_lasso=0.5, group_dim=1, l1=0.01)),
}


# ---- models, data, param groups (shared by the workers and the single-process runs) --


def _mlp(sizes=(6, 8, 3), seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(torch.nn.Tanh())
        layers.append(torch.nn.Linear(a, b, dtype=DTYPE))
    return torch.nn.Sequential(*layers)


FSDP_SIZES = (5, 6, 3, 1)  # weights [6, 5], [3, 6], [1, 3]: even, uneven and an empty shard on rank 1


def _batches(n_in: int, n_out: int, steps: int, batch: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, n_in, generator=g, dtype=DTYPE), torch.randn(batch, n_out, generator=g, dtype=DTYPE))
            for _ in range(steps)]


def _groups(model: torch.nn.Module, reg: dict) -> list[dict]:
    """Weights get ``reg``; biases its elementwise part (group proxes need 2-D tensors)."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    biases = [p for p in model.parameters() if p.dim() < 2]
    return [
        {"params": weights, **reg},
        {"params": biases, **{k: v for k, v in reg.items() if k in ELEMENTWISE}},
    ]


def _train_step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _local_batch(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = x.shape[0] // world
    return x[rank * n:(rank + 1) * n]


def _single(reg: dict, steps: int = STEPS, opt_name: str = "AdamW", opt_kwargs: dict | None = None,
            sizes=(6, 8, 3)) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _mlp(sizes)
    opt = getattr(proxopt, opt_name)(_groups(model, reg), **(opt_kwargs or dict(lr=0.05)))
    for x, y in _batches(sizes[0], sizes[-1], steps):
        _train_step(model, opt, x, y)
    return model, opt


# ---- the workers --------------------------------------------------------------------


def _ddp_runs(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for name, reg in CONFIGS.items():
        model = _mlp()
        ddp = DDP(model)
        opt = proxopt.AdamW(_groups(model, reg), lr=0.05)
        for x, y in _batches(6, 3, STEPS):
            _train_step(ddp, opt, _local_batch(x, rank, world), _local_batch(y, rank, world))
        out[name] = [p.detach().clone() for p in model.parameters()]
    return out


ZERO_REG = dict(l1=0.01)  # the defaults given to ZeroRedundancyOptimizer
ZERO_GROUP = dict(group_lasso=0.8)  # on the weights' param group


def _zero_groups(model: torch.nn.Module) -> list[dict]:
    return [
        {"params": [p for p in model.parameters() if p.dim() >= 2], **ZERO_GROUP},
        {"params": [p for p in model.parameters() if p.dim() < 2]},
    ]


def _zero_runs(rank: int, world: int, out_dir: str) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    batches = _batches(6, 3, STEPS + 3)
    for bucket_view in (False, True):
        model = _mlp()
        ddp = DDP(model)
        zero = ZeroRedundancyOptimizer(
            _zero_groups(model), optimizer_class=proxopt.AdamW, parameters_as_bucket_view=bucket_view,
            lr=0.05, **ZERO_REG,
        )
        assert isinstance(zero.optim, proxopt.AdamW)
        for x, y in batches[:STEPS]:
            _train_step(ddp, zero, _local_batch(x, rank, world), _local_batch(y, rank, world))
        out[f"params_{bucket_view}"] = [p.detach().clone() for p in model.parameters()]
        # consolidate on rank 0, save, load on every rank into a fresh model and optimizer
        zero.consolidate_state_dict(to=0)
        path = os.path.join(out_dir, f"zero_{bucket_view}.pt")
        if rank == 0:
            sd = zero.state_dict()
            out[f"state_dict_{bucket_view}"] = copy.deepcopy(sd)
            torch.save(sd, path)
        dist.barrier()
        model2 = _mlp(seed=123)  # other weights: the load must bring them in line
        with torch.no_grad():
            for p2, p in zip(model2.parameters(), model.parameters()):
                p2.copy_(p)
        ddp2 = DDP(model2)
        zero2 = ZeroRedundancyOptimizer(
            _zero_groups(model2), optimizer_class=proxopt.AdamW, parameters_as_bucket_view=bucket_view,
            lr=0.05, **ZERO_REG,
        )
        zero2.load_state_dict(torch.load(path, weights_only=True))
        for x, y in batches[STEPS:]:
            _train_step(ddp, zero, _local_batch(x, rank, world), _local_batch(y, rank, world))
            _train_step(ddp2, zero2, _local_batch(x, rank, world), _local_batch(y, rank, world))
        out[f"continued_{bucket_view}"] = [p.detach().clone() for p in model.parameters()]
        out[f"resumed_{bucket_view}"] = [p.detach().clone() for p in model2.parameters()]
    return out


def _fsdp_model():
    from torch.distributed.fsdp import fully_shard

    model = _mlp(FSDP_SIZES)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_runs(rank: int, world: int) -> dict:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, (opt_name, kwargs, reg) in FSDP_CONFIGS.items():
        try:
            model = _fsdp_model()
            params = list(model.parameters())
            assert all(isinstance(p, DTensor) for p in params)
            opt = getattr(proxopt, opt_name)(_groups(model, reg), **kwargs)
            for x, y in _batches(FSDP_SIZES[0], FSDP_SIZES[-1], STEPS):
                _train_step(model, opt, _local_batch(x, rank, world), _local_batch(y, rank, world))
            state_types = sorted({type(t).__name__ for st in opt.state.values() for k, t in st.items() if k != "step"})
            full = [p.full_tensor().detach().clone() for p in params]
            out[name] = dict(params=full, state_types=state_types,
                             local_shapes=[tuple(p.to_local().shape) for p in params])
            if name == "adamw_group_dim1":
                out["reduced_norms"] = [pdist.reduced_group_norms(p, 1) for p in params if p.dim() == 2]
        except Exception:  # the same failure on both ranks: report it, go on
            out[name] = traceback.format_exc()
    return out


def _worker(rank: int, world: int, store: str, out_dir: str, which: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        if which == "ddp_zero":
            result = {"ddp": _ddp_runs(rank, world), "zero": _zero_runs(rank, world, out_dir)}
        else:
            result = {"fsdp": _fsdp_runs(rank, world)}
        torch.save(result, os.path.join(out_dir, f"{which}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _launch(which: str, tmp_path) -> list[dict]:
    """Run ``_worker`` in WORLD fresh processes; kill them past LAUNCH_TIMEOUT."""
    import torch.multiprocessing as mp

    store = str(tmp_path / f"{which}.store")
    ctx = mp.start_processes(_worker, args=(WORLD, store, str(tmp_path), which), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers ({which}) did not finish in {LAUNCH_TIMEOUT} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(tmp_path / f"{which}_rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ddp_zero(tmp_path_factory):
    return _launch("ddp_zero", tmp_path_factory.mktemp("ddp_zero"))


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    pytest.importorskip("torch.distributed.fsdp")
    from torch.distributed import fsdp as _fsdp

    if not hasattr(_fsdp, "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")
    return _launch("fsdp", tmp_path_factory.mktemp("fsdp"))


def _assert_params_equal(got, want, rtol=1e-10, atol=1e-12):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"parameter {i}: {m}")


# ---- DDP --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_matches_single_process(ddp_zero, name):
    model, _ = _single(CONFIGS[name])
    want = [p.detach() for p in model.parameters()]
    plain, _ = _single({})
    # the regularizer changed the result (else the comparison proves nothing)
    assert any(not torch.allclose(a, b.detach()) for a, b in zip(want, plain.parameters()))
    for rank in range(WORLD):
        _assert_params_equal(ddp_zero[rank]["ddp"][name], want)


# ---- ZeroRedundancyOptimizer ---------------------------------------------------------


def _zero_single(steps: int):
    model = _mlp()
    opt = proxopt.AdamW(_zero_groups(model), lr=0.05, **ZERO_REG)
    for x, y in _batches(6, 3, steps):
        _train_step(model, opt, x, y)
    return model, opt


@pytest.mark.parametrize("bucket_view", [False, True])
def test_zero_redundancy_matches_single_process(ddp_zero, bucket_view):
    model, opt = _zero_single(STEPS)
    want = [p.detach() for p in model.parameters()]
    assert any((p == 0).all(dim=1).any() for p in want if p.dim() == 2)  # the group lasso zeroed rows
    for rank in range(WORLD):
        _assert_params_equal(ddp_zero[rank]["zero"][f"params_{bucket_view}"], want)
    # the consolidated state is the single process's state
    sd, ref = ddp_zero[0]["zero"][f"state_dict_{bucket_view}"], opt.state_dict()
    assert sorted(sd["state"]) == sorted(ref["state"])
    for k, st in ref["state"].items():
        assert sorted(sd["state"][k]) == sorted(st)
        for key, t in st.items():
            torch.testing.assert_close(sd["state"][k][key], t, rtol=1e-10, atol=1e-12)
    for g_sd, g_ref in zip(sd["param_groups"], ref["param_groups"]):
        for key in ("l1", "group_lasso", "lr", "betas", "weight_decay"):
            assert g_sd[key] == g_ref[key]


@pytest.mark.parametrize("bucket_view", [False, True])
def test_zero_redundancy_state_dict_round_trip(ddp_zero, bucket_view):
    model, _ = _zero_single(STEPS + 3)
    want = [p.detach() for p in model.parameters()]
    for rank in range(WORLD):
        z = ddp_zero[rank]["zero"]
        _assert_params_equal(z[f"continued_{bucket_view}"], want)
        # the optimizer rebuilt from the consolidated state_dict continues bit for bit
        for a, b in zip(z[f"resumed_{bucket_view}"], z[f"continued_{bucket_view}"]):
            assert torch.equal(a, b)


# ---- FSDP2 -------------------------------------------------------------------------


def _fsdp_result(fsdp, rank, name):
    res = fsdp[rank]["fsdp"][name]
    if isinstance(res, str):
        pytest.fail(f"FSDP2 run {name!r} failed on rank {rank}:\n{res}")
    return res


@pytest.mark.parametrize("name", list(FSDP_CONFIGS))
def test_fsdp2_matches_single_process(fsdp, name):
    opt_name, kwargs, reg = FSDP_CONFIGS[name]
    model, _ = _single(reg, opt_name=opt_name, opt_kwargs=kwargs, sizes=FSDP_SIZES)
    want = [p.detach() for p in model.parameters()]
    plain, _ = _single({}, opt_name=opt_name, opt_kwargs=kwargs, sizes=FSDP_SIZES)
    assert any(not torch.allclose(a, b.detach()) for a, b in zip(want, plain.parameters()))
    for rank in range(WORLD):
        res = _fsdp_result(fsdp, rank, name)
        _assert_params_equal(res["params"], want)
        assert res["state_types"] in ([], ["DTensor"])  # state is sharded like the parameters, as torch.optim


def test_fsdp2_shards_along_dim0_unevenly(fsdp):
    """The runs really were sharded: dim 0 split 3/3, 2/1 and 1/0 (an empty shard)."""
    shapes = [_fsdp_result(fsdp, r, "adamw_l1")["local_shapes"] for r in range(WORLD)]
    assert shapes[0][0] == (3, 5) and shapes[1][0] == (3, 5)
    assert shapes[0][2] == (2, 6) and shapes[1][2] == (1, 6)
    assert shapes[0][4] == (1, 3) and shapes[1][4] == (0, 3)


def test_fsdp2_split_groups_were_shrunk_as_a_whole(fsdp):
    """group_dim=1 under Shard(0): whole columns are zero on every rank, and the
    all-reduced norms (pdist.reduced_group_norms) are the full tensor's."""
    res = _fsdp_result(fsdp, 0, "adamw_group_dim1")
    weights = [p for p in res["params"] if p.dim() == 2]
    assert any((w == 0).all(dim=0).any() for w in weights)
    for rank in range(WORLD):
        norms = fsdp[rank]["fsdp"]["reduced_norms"]
        for w, n in zip(weights, norms):
            torch.testing.assert_close(n, torch.linalg.vector_norm(w, dim=0), rtol=1e-12, atol=1e-12)


# ---- the helpers on one process -------------------------------------------------------


def test_local_tensor_and_split_dims_of_plain_tensors():
    from proxopt import distributed as pd

    t = torch.randn(3, 4)
    assert pd.local_tensor(t) is t and not pd.is_dtensor(t)
    assert pd.split_mesh_dims(t, 1) == ()
    h = proxopt.reference.Hyper(group_lasso=0.1, lo=-1.0, hi=1.0)
    assert pd.split_group_prox(h, [t], 1) == (h, None)


def test_sharded_group_prox_on_plain_tensors_is_the_reference():
    """Without shards, the deferred group prox is reference.prox_group (incl. bounds after it)."""
    from proxopt import distributed as pd
    from proxopt.reference import Hyper, prox_group

    torch.manual_seed(3)
    for dim in (0, 1, -1):
        w = torch.randn(4, 5, 3, dtype=torch.float64)
        h = Hyper(lr=0.1, group_lasso=0.5, max_norm=1.2, lo=-0.4, hi=0.5, group_dim=dim)
        want = prox_group(h, 0.1, w.clone())
        pd.sharded_group_prox_(h, [w], dim)
        torch.testing.assert_close(w, want, rtol=1e-12, atol=1e-12)
    # Adagrad's decayed lr: lr / (1 + (step - 1) * lr_decay)
    w = torch.randn(4, 5, dtype=torch.float64)
    h = Hyper(rule=proxopt.reference.ADAGRAD, lr=0.1, lr_decay=0.5, group_lasso=0.3, group_dim=1)
    want = prox_group(h, 0.1 / (1 + 2 * 0.5), w.clone())
    pd.sharded_group_prox_(h, [w], 1, [torch.tensor(3.0)])
    torch.testing.assert_close(w, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_group_prox_in_low_precision_is_the_reference(dtype):
    """float32 and bfloat16 tensors: as the reference (and the kernels), the factor
    comes from the float64 norm and is rounded once; the arithmetic runs in float32
    and the result is stored back once."""
    from proxopt import distributed as pd
    from proxopt.reference import Hyper, prox_group

    torch.manual_seed(4)
    for dim in (0, 1):
        w = torch.randn(6, 5, dtype=dtype)
        h = Hyper(lr=0.1, group_lasso=0.9, max_norm=1.1, lo=-0.7, hi=0.8, group_dim=dim)
        want = prox_group(h, 0.1, w.float()).to(dtype)
        pd.sharded_group_prox_(h, [w], dim)
        torch.testing.assert_close(w, want, rtol=0, atol=0)


def test_sharded_group_prox_scales_a_group_whose_norm_overflows_float32():
    """A float32 group with a norm above FLT_MAX is scaled by max_norm, not zeroed."""
    from proxopt import distributed as pd
    from proxopt.reference import Hyper, prox_group

    w = torch.tensor([[3e38, 1.0], [3e38, -2.0]], dtype=torch.float32)
    h = Hyper(lr=0.1, max_norm=2.0, group_dim=1)
    want = prox_group(h, 0.1, w.clone())
    pd.sharded_group_prox_(h, [w], 1)
    assert torch.equal(w, want)
    assert (w[:, 0] != 0).all() and torch.linalg.vector_norm(w[:, 0].double()) <= 2.0 + 1e-6
