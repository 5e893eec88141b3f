"""The supervised loss with label smoothing (algos/sft.smoothed_sft_loss, `reasonloop sft label_smoothing=`)."""

from __future__ import annotations

import json

import pytest
import torch

from reasonloop.algos.sft import sft_loss, smoothed_sft_loss
from reasonloop.config import ConfigError, load_config
from reasonloop.recipes import sft


def test_smoothing_mixes_the_nll_with_the_vocabulary_mean():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5), torch.tensor([[1, 4, 0], [2, 2, 3]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    by_hand = ((0.9 * nll + 0.1 * -logp.mean(-1)) * mask).sum() / 5
    torch.testing.assert_close(smoothed_sft_loss(logits, targets, mask, 5.0, 0.1), by_hand)
    plain, _ = sft_loss(nll.neg(), mask, 5.0)
    torch.testing.assert_close(smoothed_sft_loss(logits, targets, mask, 5.0, 0.0), plain)


def test_label_smoothing_leaves_the_fine_tuned_model_more_entropy(tmp_path):
    """The same 20 SFT steps with and without smoothing: the smoothed model's held-out answers carry more entropy."""
    from reasonloop.models.forward import encode_pairs, policy_forward
    from reasonloop.models.loading import ModelConfig, load_model, load_tokenizer, render_prompt
    from reasonloop.tasks import make_task

    entropies = {}
    for eps in (0.0, 0.2):
        out = tmp_path / f"ls{eps}"
        sft.run(load_config(sft.Config, ["task=arithmetic:2", "steps=20", "batch_size=16", "optim.lr=1e-3",
                                         "task_records=320", "eval_n=4", "eval_every=0", "save_every=0",
                                         f"label_smoothing={eps}", f"output_dir={out}", "threads=1"]))
        model, tok = load_model(ModelConfig(name=str(out / "model"))).eval(), load_tokenizer(str(out / "model"))
        rows = make_task("arithmetic:2").sft_records("test", 32)
        batch = encode_pairs(tok, [render_prompt(tok, r["prompt"]) for r in rows], [r["completion"] for r in rows], 256)
        with torch.no_grad():
            ent = policy_forward(model, batch, with_entropy=True).entropy
        entropies[eps] = float((ent * batch.completion_mask).sum() / batch.completion_mask.sum())
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert sum("loss" in r for r in logged) == 20
    assert entropies[0.2] > 2 * entropies[0.0], entropies


def test_label_smoothing_is_checked():
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        load_config(sft.Config, ["label_smoothing=1.0"])
