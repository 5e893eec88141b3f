"""Memory features keep the step: activation checkpointing gives the same gradients; bf16 autocast keeps fp32
master weights and lands near the fp32 step."""

from __future__ import annotations

import pytest
import torch

from dist_workers import one_step, trainer_args
from reasonloop.config import load_config
from reasonloop.recipes import rl
from toy_tasks import LetterFirstTask


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())


def step_with(nano_model_dir, tmp_path, name, data, *extra):
    trainer = rl.Trainer(load_config(rl.Config, trainer_args(nano_model_dir, tmp_path / name, *extra)))
    metrics, grads = one_step(trainer, data)
    return trainer, metrics, grads


def test_activation_checkpointing_gives_the_same_gradients(nano_model_dir, tmp_path, toy_task):
    plain = rl.Trainer(load_config(rl.Config, trainer_args(nano_model_dir, tmp_path / "plain",
                                                           "forward.share_prompts=false")))
    data, _ = plain.collect()
    metrics, grads = one_step(plain, data)
    ckpt, m2, g2 = step_with(nano_model_dir, tmp_path, "ckpt", data, "memory.activation_checkpointing=true",
                             "forward.share_prompts=false")
    assert getattr(ckpt.model, "is_activation_checkpointing", None) or ckpt.model.is_gradient_checkpointing
    for key in ("loss", "entropy", "kl"):
        assert m2[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-8), key
    for name, g in grads.items():
        torch.testing.assert_close(g2[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_keeps_fp32_master_weights_and_the_fp32_step(nano_model_dir, tmp_path, toy_task):
    plain = rl.Trainer(load_config(rl.Config, trainer_args(nano_model_dir, tmp_path / "plain")))
    data, _ = plain.collect()
    metrics, grads = one_step(plain, data)
    bf16, m2, g2 = step_with(nano_model_dir, tmp_path, "bf16", data, "memory.precision=bf16")
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(g.dtype == torch.float32 for g in g2.values())
    assert all(v.dtype == torch.float32 for s in bf16.optimizer.state.values() for v in s.values() if v.dim() > 0)
    # bf16 keeps 8 bits of mantissa: the entropy within 2%, the gradient pointing the same way
    assert m2["entropy"] == pytest.approx(metrics["entropy"], rel=2e-2)
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat2 = torch.cat([g2[k].flatten() for k in grads])
    assert float(torch.nn.functional.cosine_similarity(flat, flat2, dim=0)) > 0.99
    assert not torch.equal(flat, flat2), "autocast really ran in bf16"


def test_activation_checkpointing_with_shared_prompts_is_refused(nano_model_dir, tmp_path, toy_task):
    from reasonloop.config import ConfigError

    with pytest.raises(ConfigError, match="needs forward.share_prompts=false"):
        rl.Trainer(load_config(rl.Config, trainer_args(nano_model_dir, tmp_path,
                                                       "memory.activation_checkpointing=true")))


@pytest.mark.gpu
def test_bf16_autocast_step_on_cuda(nano_model_dir, tmp_path, toy_task):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    trainer = rl.Trainer(load_config(rl.Config, trainer_args(nano_model_dir, tmp_path, "model.device=cuda",
                                                             "memory.precision=bf16")))
    metrics, _ = trainer.step()
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.model.parameters())
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
