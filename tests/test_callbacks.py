"""Training logs: SparsityReport.scalars(), proxopt.callbacks.training_scalars, and
the Lightning and transformers callbacks driving tiny CPU trainers (each skipped
where its framework is not installed); proxopt.callbacks imports without either."""

from __future__ import annotations

import math
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import proxopt  # noqa: E402
import proxopt.callbacks as cb  # noqa: E402
from proxopt.schedules import RegularizerScheduler, linear_warmup  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- SparsityReport.scalars ---------------------------------------------------------


def _report_model():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[1] = 0.0  # a zero output row (channel) of 4 weights
        model[0].weight[:, 2] = 0.0  # a zero input column: 2 more zeros
        model[2].weight[0, 0] = 0.0
        model[0].bias.zero_()  # 3 zeros in an unregularized bias
    return model


def test_scalars_are_flat_floats_of_the_report():
    rep = proxopt.sparsity(_report_model(), target=0.25)
    s = rep.scalars()
    assert all(isinstance(v, float) for v in s.values())
    # regularized: weights 12 + 6 = 18 elements, 6 + 1 zeros; unregularized: biases 3 + 2, 3 zeros
    assert s["sparsity/fraction"] == 10 / 23
    assert s["sparsity/regularized/fraction"] == 7 / 18
    assert s["sparsity/unregularized/fraction"] == 3 / 5
    assert s["sparsity/zero_channels"] == 1.0 and s["sparsity/zero_inputs"] == 1.0
    assert s["sparsity/target"] == 0.25 and s["sparsity/target_met"] == 1.0
    assert s["sparsity/fraction/0.weight"] == 6 / 12 and s["sparsity/zero_channels/0.weight"] == 1.0
    assert s["sparsity/zero_inputs/2.weight"] == 0.0 and s["sparsity/fraction/0.bias"] == 1.0
    assert set(rep.scalars(per_param=False)) == {
        "sparsity/fraction", "sparsity/regularized/fraction", "sparsity/unregularized/fraction",
        "sparsity/zero_channels", "sparsity/zero_inputs", "sparsity/target", "sparsity/target_met"}  # fmt: skip
    assert set(rep.scalars(prefix="")) == {k.removeprefix("sparsity/") for k in s}
    with pytest.raises(TypeError, match="Invalid prefix value: 3"):
        rep.scalars(prefix=3)


def test_scalars_without_target_or_groups():
    s = proxopt.sparsity({"v": torch.zeros(4)}).scalars()
    assert s == {"sparsity/fraction": 1.0, "sparsity/regularized/fraction": 0.0,
                 "sparsity/unregularized/fraction": 1.0, "sparsity/fraction/v": 1.0}  # fmt: skip


def test_sparsity_of_empty_tensors():
    # reshape(0, -1) is ambiguous: an empty tensor used to fail there
    rep = proxopt.sparsity({"w": torch.zeros(0, 3), "v": torch.zeros(3, 0)})
    assert [(p.numel, p.zeros, p.zero_groups) for p in rep.params] == [
        (0, 0, {0: (0, 0), 1: (3, 3)}),  # a column of no elements has no nonzero: all-zero, as all() says
        (0, 0, {0: (3, 3), 1: (0, 0)}),
    ]
    assert rep.fraction == 0.0 and rep.scalars()["sparsity/zero_channels"] == 3.0


# ---- training_scalars -----------------------------------------------------------------


def _opt_and_model():
    model = _report_model()
    groups = [{"params": [model[0].weight], "l1": 1e-3},
              {"params": [model[2].weight], "group_lasso": 2e-3, "sparsity": 0.5},
              {"params": [model[0].bias, model[2].bias]}]  # fmt: skip
    return model, proxopt.AdamW(groups, lr=1e-3)


def test_training_scalars_per_group_and_controller():
    model, opt = _opt_and_model()
    ctl = proxopt.SparsityTarget(opt, 0.9, by_step=1, every=1, groups=[0])
    s = cb.training_scalars(model, [opt], [ctl])
    assert s["sparsity/group0/fraction"] == 6 / 12 and s["sparsity/group1/fraction"] == 1 / 6
    assert s["sparsity/group2/fraction"] == 3 / 5
    assert (s["sparsity/group0/l1"], s["sparsity/group1/group_lasso"], s["sparsity/group1/sparsity"]) == (1e-3, 2e-3, 0.5)
    assert not any(k.startswith("sparsity/group2/") and k != "sparsity/group2/fraction" for k in s)
    assert "sparsity/group0/l2" not in s and "sparsity/group0/group_lasso" not in s
    # the optimizer's groups decide what is regularized (here the biases are not)
    assert s["sparsity/regularized/fraction"] == 7 / 18
    assert (s["sparsity/controller/target"], s["sparsity/controller/measured"], s["sparsity/controller/scale"]) == (
        0.0, 6 / 12, 1.0)  # fmt: skip
    ctl.step()
    assert cb.training_scalars(model, [opt], [ctl])["sparsity/controller/scale"] == pytest.approx(1.1, rel=1e-12)
    # several optimizers and controllers are told apart
    opt2 = proxopt.SGD([model[0].bias], lr=0.1, l1=1e-4)
    ctl2 = proxopt.SparsityTarget(opt, 0.5, by_step=10, key="group_lasso")
    s2 = cb.training_scalars(model, [opt, opt2], [ctl, ctl2], prefix="s/")
    assert s2["s/opt1/group0/l1"] == 1e-4 and s2["s/opt0/group0/l1"] == pytest.approx(1.1e-3)
    assert s2["s/controller1/measured"] == 0.0 and "s/controller/target" not in s2


def test_training_scalars_log_a_scheduled_lambda_at_zero():
    model, opt = _opt_and_model()
    RegularizerScheduler(opt, "l1", linear_warmup(10))  # l1 starts at 0 x 1e-3
    s = cb.training_scalars(model, [opt])
    assert opt.param_groups[0]["l1"] == 0.0 and s["sparsity/group0/l1"] == 0.0
    assert "sparsity/group2/l1" not in s  # its initial_l1 is 0 too


@pytest.mark.parametrize(
    "kw,exc,match",
    [(dict(every_n_steps=0), ValueError, r"Invalid every_n_steps value: 0 \(must be >= 1\)"),
     (dict(every_n_steps=2.0), TypeError, r"Invalid every_n_steps value: 2.0 \(a float; expected an int\)"),
     (dict(controllers=[3]), TypeError, r"Invalid controllers value: a int \(expected a list of SparsityTarget\)"),
     (dict(prefix=None), TypeError, "Invalid prefix value: None"),
     (dict(per_param="yes"), TypeError, "Invalid per_param value: 'yes'")],
)  # fmt: skip
def test_callback_arguments_are_checked(kw, exc, match):
    with pytest.raises(exc, match=match):
        cb._LightningHooks(**kw)


def test_import_without_the_frameworks():
    # a fresh interpreter in which neither framework can be imported
    code = (
        "import sys\n"
        "for m in ('lightning', 'lightning.pytorch', 'pytorch_lightning', 'transformers'):\n"
        "    sys.modules[m] = None\n"
        "import proxopt.callbacks as cb\n"
        "from proxopt.callbacks import LightningSparsityLogger, HFSparsityLogger\n"
        "for cls, what in ((LightningSparsityLogger, 'PyTorch Lightning'), (HFSparsityLogger, 'transformers')):\n"
        "    try:\n"
        "        cls(None) if cls is HFSparsityLogger else cls()\n"
        "    except ImportError as e:\n"
        "        assert f'proxopt.callbacks.{cls.__name__} needs {what}' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError(cls)\n"
        "assert cb.LightningSparsityLogger.__doc__.startswith('A Lightning callback')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "python"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="has no attribute 'SparsityLogger'"):
        cb.SparsityLogger  # noqa: B018


# ---- Lightning ------------------------------------------------------------------------


def _lightning():
    try:
        import lightning.pytorch as L
    except ImportError:
        L = pytest.importorskip("pytorch_lightning")
    return L


def _loader(n_in=6, n=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, n_in, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def test_lightning_logger_logs_sparsity_lambda_and_controller(tmp_path):
    L = _lightning()

    class Recorder(L.loggers.Logger):
        def __init__(self):
            super().__init__()
            self.logged = []

        @property
        def name(self):
            return "recorder"

        @property
        def version(self):
            return 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            opt = proxopt.AdamW(proxopt.param_groups(self.net, l1=0.5), lr=1e-2)
            self.ctl = proxopt.SparsityTarget(opt, 0.5, by_step=4, every=1)
            return [opt], [
                {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), "interval": "step"},
                {"scheduler": self.ctl, "interval": "step"},
            ]

    torch.manual_seed(0)
    module = Module()
    recorder = Recorder()
    holder = {}

    class Logger(cb.LightningSparsityLogger):  # the controller exists once configure_optimizers ran
        def on_train_start(self, trainer, pl_module):
            self.controllers = [pl_module.ctl]
            holder["ctl"] = pl_module.ctl

    monitor = L.callbacks.LearningRateMonitor(logging_interval="step")
    trainer = L.Trainer(
        default_root_dir=str(tmp_path), max_steps=6, accelerator="cpu", devices=1, logger=recorder,
        callbacks=[Logger(every_n_steps=2), monitor], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader())
    ours = [(step, m) for step, m in recorder.logged if "sparsity/fraction" in m]
    assert [step for step, _ in ours] == [2, 4, 6]
    last = ours[-1][1]
    opt = trainer.optimizers[0]
    assert last["sparsity/group0/l1"] == opt.param_groups[0]["l1"] == holder["ctl"].get_last_value()[0]
    assert last["sparsity/controller/scale"] == math.exp(holder["ctl"].log_scale)
    assert last["sparsity/controller/target"] == 0.5 and last["sparsity/controller/measured"] == holder["ctl"].measured
    rep = proxopt.sparsity(module.net, optimizer=opt)
    assert last["sparsity/fraction"] == rep.fraction > 0
    assert last["sparsity/zero_channels"] == rep.scalars()["sparsity/zero_channels"]
    assert "sparsity/group1/fraction" in last and "sparsity/group1/l1" not in last  # the biases' group: no l1

    # LearningRateMonitor logs every scheduler's optimizer lr: the controller shows up as a
    # second copy of the lr (lr-AdamW-1), never as λ (documented in proxopt.callbacks)
    lrs = [m for _, m in recorder.logged if "lr-AdamW/pg1" in m]
    assert len(lrs) == 6
    for m in lrs:  # one name per param group (pg1, pg2) and per scheduler: the controller's is an lr
        assert set(m) == {"lr-AdamW/pg1", "lr-AdamW/pg2", "lr-AdamW-1/pg1", "lr-AdamW-1/pg2"}
        assert m["lr-AdamW-1/pg1"] == m["lr-AdamW/pg1"]
    assert lrs[0]["lr-AdamW-1/pg1"] == 1e-2  # the lr (StepLR halves it later), not the l1 of 0.5


def test_lightning_logger_is_a_lightning_callback():
    L = _lightning()
    assert isinstance(cb.LightningSparsityLogger(), L.Callback)
    with pytest.raises(ValueError, match="Invalid every_n_steps value: -1"):
        cb.LightningSparsityLogger(every_n_steps=-1)


# ---- transformers ---------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, input_values, labels=None):
        logits = self.net(input_values)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class _Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"input_values": self.x[i], "labels": self.y[i]}


def test_hf_logger_logs_through_the_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it

    class Recorder(transformers.TrainerCallback):  # a reporter placed before the logger
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append((state.global_step, dict(logs)))

    torch.manual_seed(0)
    model = _Tiny()
    opt = proxopt.AdamW(proxopt.param_groups(model, l1=0.5), lr=1e-2)
    sched = RegularizerScheduler(opt, "l1", linear_warmup(4))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2, logging_steps=1, report_to="none",
        use_cpu=True, seed=0, save_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    recorder = Recorder()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(), optimizers=(opt, sched),
                                   callbacks=[recorder])  # fmt: skip
    trainer.add_callback(cb.HFSparsityLogger(trainer, every_n_steps=3))
    trainer.train()
    ours = [(step, m) for step, m in recorder.logs if "sparsity/fraction" in m]
    assert [step for step, _ in ours] == [3, 6]
    assert ours[-1][1]["sparsity/group0/l1"] == opt.param_groups[0]["l1"] == 0.5  # the warm-up ended
    assert ours[0][1]["sparsity/group0/l1"] == pytest.approx(0.5 * 3 / 4)
    assert ours[-1][1]["sparsity/fraction"] == proxopt.sparsity(model, optimizer=opt).fraction > 0
    # the trainer's own loss log at those steps is kept (trainer.log clears should_log)
    assert [step for step, m in recorder.logs if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert sum("sparsity/fraction" in h for h in trainer.state.log_history) == 2
    with pytest.raises(TypeError, match="Invalid trainer value: a NoneType"):
        cb.HFSparsityLogger(None)
