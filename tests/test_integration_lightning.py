"""PyTorch Lightning: ``configure_optimizers`` returns a proxopt optimizer (with an lr
scheduler and a RegularizerScheduler); Lightning steps it with a closure, saves it
in its checkpoints, and a run resumed from a mid-training checkpoint ends with the
same weights as the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

try:  # the `lightning` package, or the slimmer standalone `pytorch-lightning`
    import lightning.pytorch as L
except ImportError:
    L = pytest.importorskip("pytorch_lightning")

import proxopt  # noqa: E402
from proxopt.schedules import RegularizerScheduler, linear_warmup  # noqa: E402

STEPS = 6


class _Module(L.LightningModule):
    def __init__(self, opt_name: str = "AdamW") -> None:
        super().__init__()
        self.opt_name = opt_name
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        groups = proxopt.param_groups(self.net, group_lasso=0.05, l1=0.5)
        if self.opt_name == "SGD":
            opt = proxopt.SGD(groups, lr=0.05, momentum=0.9)
        else:
            opt = proxopt.AdamW(groups, lr=1e-2)
        return [opt], [
            {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), "interval": "step"},
            {"scheduler": RegularizerScheduler(opt, "group_lasso", linear_warmup(3)), "interval": "step"},
        ]


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    # One batch an epoch: every step sees the same data, so where Lightning restarts its
    # data loop on resume cannot matter; only the restored weights, optimizer and
    # scheduler states decide the result.
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(root, **kw):
    return L.Trainer(
        default_root_dir=str(root), max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, **kw,
    )


def _fit(root, opt_name, seed, ckpt_path=None, callbacks=()):
    torch.manual_seed(seed)
    module = _Module(opt_name)
    trainer = _trainer(root, callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
    trainer.fit(module, train_dataloaders=_loader(), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_lightning_configure_optimizers_and_resume(tmp_path, opt_name):
    ckpt_cb = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1,
                                          filename="{step}")
    module, trainer = _fit(tmp_path / "a", opt_name, seed=0, callbacks=[ckpt_cb])
    assert trainer.global_step == STEPS
    opt = trainer.optimizers[0]
    assert isinstance(opt, proxopt.ProxOptimizer)
    assert opt.param_groups[0]["group_lasso"] == pytest.approx(0.05)  # the warm-up finished
    assert opt.param_groups[0]["lr"] < opt.param_groups[0]["initial_lr"]  # StepLR ran
    final = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert any((p == 0).any() for p in final.values())

    ckpt = tmp_path / "ckpt" / "step=3.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["optimizer_states"][0]["param_groups"][0]["group_lasso"] == pytest.approx(0.05)
    assert [s.get("key") for s in saved["lr_schedulers"]] == [None, "group_lasso"]

    module2, trainer2 = _fit(tmp_path / "b", opt_name, seed=1, ckpt_path=str(ckpt))
    assert trainer2.global_step == STEPS
    for n, p in module2.named_parameters():
        torch.testing.assert_close(p.detach(), final[n], rtol=1e-6, atol=1e-7, msg=lambda m: f"{n}: {m}")
    if opt_name == "AdamW":
        assert {int(st["step"]) for st in trainer2.optimizers[0].state.values()} == {STEPS}
