"""Hugging Face transformers' Trainer with proxopt: a tiny, randomly initialised
Wav2Vec2ForSequenceClassification (no hub access), trained a few steps on random
audio, checkpointed, and resumed from the checkpoint to the same weights.

* ``optimizers=(proxopt.AdamW(...), scheduler)``, the scheduler being a
  ``proxopt.schedules.RegularizerScheduler`` (an l1 warm-up that HF saves and
  restores like any lr scheduler);
* ``optimizer_cls_and_kwargs=(proxopt.AdamW, {...})`` with HF's own param groups and
  lr schedule, and with ``"params": proxopt.param_groups(...)`` for a group lasso.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import proxopt  # noqa: E402
from proxopt.schedules import RegularizerScheduler, linear_warmup  # noqa: E402

STEPS = 4
SAMPLES = 8
AUDIO = 800


def _config():
    return transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), conv_bias=True,
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, num_labels=3,
        classifier_proj_size=8, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
        mask_feature_prob=0.0, vocab_size=8,
    )


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return transformers.Wav2Vec2ForSequenceClassification(_config())


class _Audio(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, AUDIO, generator=g)
        self.y = torch.randint(0, 3, (SAMPLES,), generator=g)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i):
        return {"input_values": self.x[i], "labels": self.y[i]}


def _args(out_dir, **kw):
    return transformers.TrainingArguments(
        output_dir=str(out_dir), max_steps=STEPS, per_device_train_batch_size=2, save_strategy="steps",
        save_steps=2, logging_steps=1, report_to="none", use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, learning_rate=5e-3, **kw,
    )


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-6, atol=1e-7, msg=lambda m: f"{n}: {m}")


def _opt_and_sched(model):
    opt = proxopt.AdamW(model.parameters(), lr=5e-3, l1=1e-2)
    return opt, RegularizerScheduler(opt, "l1", linear_warmup(3))


def test_trainer_with_proxopt_optimizer_and_scheduler_resumes(tmp_path):
    model = _model()
    opt, sched = _opt_and_sched(model)
    trainer = transformers.Trainer(model=model, args=_args(tmp_path), train_dataset=_Audio(),
                                   optimizers=(opt, sched))
    result = trainer.train()
    assert result.global_step == STEPS and torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.optimizer.optimizer is opt if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer is opt
    assert sched.last_epoch == STEPS and opt.param_groups[0]["l1"] == pytest.approx(1e-2)
    final = _params(model)
    assert int(sum((p == 0).sum() for p in final.values())) > 0  # the prox made exact zeros
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "optimizer.pt").exists() and (ckpt / "scheduler.pt").exists()
    saved = torch.load(ckpt / "scheduler.pt", weights_only=True)
    assert saved["last_epoch"] == 2 and saved["key"] == "l1"

    # resume from step 2 with a fresh model, optimizer and scheduler
    model2 = _model(seed=1)
    opt2, sched2 = _opt_and_sched(model2)
    trainer2 = transformers.Trainer(model=model2, args=_args(tmp_path / "resumed"), train_dataset=_Audio(),
                                    optimizers=(opt2, sched2))
    trainer2.train(resume_from_checkpoint=str(ckpt))
    assert sched2.last_epoch == STEPS
    _assert_same(_params(model2), final)
    # the optimizer state was restored, not rebuilt: same step count as uninterrupted
    assert {int(st["step"]) for st in opt2.state.values()} == {STEPS}


def test_trainer_with_optimizer_cls_and_kwargs_resumes(tmp_path):
    def run(out_dir, seed, resume=None, group_lasso=False):
        model = _model(seed)
        kwargs = {"lr": 5e-3, "l1": 1e-3, "weight_decay": 0.0}
        if group_lasso:
            kwargs = {"lr": 5e-3, "params": proxopt.param_groups(model, group_lasso=0.05, l1=1e-3)}
        trainer = transformers.Trainer(model=model, args=_args(out_dir, weight_decay=0.01), train_dataset=_Audio(),
                                       optimizer_cls_and_kwargs=(proxopt.AdamW, kwargs))
        trainer.train(resume_from_checkpoint=resume)
        opt = trainer.optimizer
        opt = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps it
        assert isinstance(opt, proxopt.AdamW)
        return _params(model), opt, trainer

    final, opt, trainer = run(tmp_path / "a", 0)
    # HF's own grouping: weight decay for weights, none for biases and norms; l1 on both
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.01]
    assert all(g["l1"] == 1e-3 for g in opt.param_groups)
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert len(set(lrs)) > 1  # HF's linear schedule drove proxopt's lr
    resumed, _, _ = run(tmp_path / "b", 1, resume=str(tmp_path / "a" / "checkpoint-2"))
    _assert_same(resumed, final)

    final_gl, opt_gl, _ = run(tmp_path / "c", 0, group_lasso=True)
    assert any(g["group_lasso"] == 0.05 for g in opt_gl.param_groups)
    resumed_gl, _, _ = run(tmp_path / "d", 1, resume=str(tmp_path / "c" / "checkpoint-2"), group_lasso=True)
    _assert_same(resumed_gl, final_gl)
