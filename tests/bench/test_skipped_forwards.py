"""The forwards the GRPO step skips are provably redundant (issue 18's first way in; the skips live in
recipes/rl.py: `Trainer._old_is_current` and `kl_coef=0`): the skipped value equals the computed one,
and the update it feeds is the same."""

from __future__ import annotations

import dataclasses

import torch

from reasonloop.algos.aggregation import step_normalizer
from reasonloop.bench import Config
from reasonloop.bench.grpo import rl_config
from reasonloop.config import load_config
from reasonloop.recipes import rl

TINY = ["model=nano", "steps=1", "warmup=0", "prompts=3", "group_size=4", "max_new_tokens=10", "micro_batch_size=5"]


def _update_gradients(trainer, data, scores):
    mask = data.tokens.completion_mask.float()
    estimated = trainer.advantages(data, scores, mask)
    normalizer = step_normalizer(mask, trainer.cfg.agg_mode, max_len=trainer.cfg.sampling.max_new_tokens)
    update = rl.UpdateBatch(data, scores, estimated.advantages, estimated.returns, mask, None, normalizer)
    trainer.optimizer.zero_grad(set_to_none=True)
    out = trainer.accumulate_gradients(update)
    return [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None], out


def test_one_epoch_old_logprobs_equal_the_update_forwards_own_and_give_the_same_update(nano_model_dir, tmp_path):
    trainer = rl.Trainer(rl_config(load_config(Config, TINY), nano_model_dir, tmp_path / "run"))
    assert trainer._old_is_current()
    data, _ = trainer.collect()
    skipped = trainer.score_tokens(data)
    assert skipped.old is None and skipped.ref is not None  # the old pass is skipped, the reference one is not
    temp, T = trainer.cfg.sampling.temperature, data.tokens.completion_ids.shape[1]
    with torch.no_grad():  # what the skipped pass would have computed (eval mode, as score_tokens runs it)
        trainer.model.eval()
        computed = torch.cat([rl.pad_right(trainer._forward(trainer.model, data.tokens.select(rows), temp).logprobs, T,
                                           0.0) for rows in trainer._micro_batches(len(data.tokens))])
        trainer.model.train()
        own = torch.cat([rl.pad_right(trainer._forward(trainer.model, data.tokens.select(rows), temp).logprobs, T, 0.0)
                         for rows in trainer._micro_batches(len(data.tokens))])
    mask = data.tokens.completion_mask.bool()
    torch.testing.assert_close(own[mask], computed[mask], atol=0, rtol=0)  # no dropout: the very same numbers
    g_skip, out_skip = _update_gradients(trainer, data, skipped)
    g_full, out_full = _update_gradients(trainer, data, dataclasses.replace(skipped, old=computed))
    assert out_skip["loss"] == out_full["loss"]
    for a, b in zip(g_skip, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_two_epochs_or_tis_keep_the_old_pass(nano_model_dir, tmp_path):
    cfg = load_config(Config, TINY)
    assert not rl.Trainer(dataclasses.replace(rl_config(cfg, nano_model_dir, tmp_path / "a"), epochs=2))._old_is_current()
    assert not rl.Trainer(dataclasses.replace(rl_config(cfg, nano_model_dir, tmp_path / "b"), tis_cap=2.0))._old_is_current()


def test_kl_coef_zero_has_no_reference_model_and_no_reference_pass(nano_model_dir, tmp_path):
    trainer = rl.Trainer(rl_config(load_config(Config, [*TINY, "beta=0"]), nano_model_dir, tmp_path / "run"))
    assert trainer.ref is None
    calls = []
    inner = trainer._forward
    trainer._forward = lambda model, *a, **k: calls.append(model) or inner(model, *a, **k)
    data, _ = trainer.collect()
    scores = trainer.score_tokens(data)
    assert (scores.old, scores.ref, calls) == (None, None, [])  # neither no-grad pass runs
