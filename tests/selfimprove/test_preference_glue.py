"""The preference step's glue: summed log-probs, and micro-batching that does not change the update."""

import copy

import pytest
import torch

from reasonloop.selfimprove import preference
from reasonloop.selfimprove.preference import (
    PreferenceData,
    preference_step,
    sequence_logps,
)
from reasonloop.models.forward import ForwardConfig, completion_logprobs, encode_pairs
from reasonloop.train.optim import OptimConfig, build_optimizer

PROMPTS = ["Q: 1+2=?\n", "Q: 7-3=?\n", "Q: 5+5=?\n"]
CHOSEN = ["<think>1+2=3</think><answer>3</answer>", "<think>7-3=4</think><answer>4</answer>", "<answer>10</answer>"]
REJECTED = ["<answer>4</answer>", "<think>7-3=5</think><answer>5</answer>", "<think>5+5=11</think><answer>11</answer>"]


def test_sequence_logps_sum_completion_tokens_incl_eos(nano_model, tokenizer):
    logps, lengths = sequence_logps(nano_model, tokenizer, PROMPTS, CHOSEN, micro_batch_size=2)
    batch = encode_pairs(tokenizer, PROMPTS, CHOSEN)
    with torch.no_grad():
        manual = (completion_logprobs(nano_model, batch) * batch.completion_mask).sum(-1)
    assert torch.allclose(logps, manual, atol=1e-5)
    chunked, _ = sequence_logps(nano_model, tokenizer, PROMPTS, CHOSEN, forward=ForwardConfig(logit_chunk=3))
    assert torch.allclose(chunked, manual, atol=1e-5)
    assert lengths.tolist() == [len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in CHOSEN]


@pytest.mark.parametrize("loss,kwargs", [("dpo", {"beta": 0.1}), ("ipo", {"beta": 0.5}), ("orpo", {"lam": 0.1}),
                                         ("simpo", {"beta": 2.0, "gamma": 0.5}), ("kto", {"beta": 0.1})])
def test_micro_batch_size_does_not_change_the_step(nano_model, tokenizer, loss, kwargs, monkeypatch):
    ref = copy.deepcopy(nano_model).eval()
    rej_prompts = PROMPTS if loss == "kto" else None
    data = PreferenceData(PROMPTS, CHOSEN, REJECTED, rej_prompts)
    ref_c, _ = sequence_logps(ref, tokenizer, PROMPTS, CHOSEN)
    ref_r, _ = sequence_logps(ref, tokenizer, PROMPTS, REJECTED)
    grads, losses = [], []
    # micro-batches of 1 and 3, and of 3 with the output layer in chunks of 2 positions (forward.logit_chunk)
    for micro, forward in ((1, None), (3, None), (3, ForwardConfig(logit_chunk=2))):
        model = copy.deepcopy(nano_model)
        opt, sched = build_optimizer(model.parameters(), OptimConfig(lr=1e-9), 1)
        captured = {}

        def capture(m_, *_, captured=captured):
            captured["g"] = torch.cat([p.grad.flatten() for p in m_.parameters() if p.grad is not None]).clone()
            return 0.0, True

        monkeypatch.setattr(preference, "clip_and_step", capture)
        m = preference_step(model, tokenizer, data, loss, kwargs, ref_c, ref_r, opt, sched, max_grad_norm=0.0,
                            micro_batch_size=micro, nll_weight=0.3, forward=forward)
        grads.append(captured["g"])
        losses.append(m["loss"])
    for other in (1, 2):
        assert losses[other] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
        assert float((grads[other] - grads[0]).norm() / grads[0].norm()) < 1e-5


def test_dpo_steps_raise_the_chosen_margin(nano_model, tokenizer):
    """Direction: a few DPO steps make chosen more likely than rejected relative to the reference."""
    ref = copy.deepcopy(nano_model).eval()
    model = nano_model
    data = PreferenceData(PROMPTS, CHOSEN, REJECTED)
    ref_c, _ = sequence_logps(ref, tokenizer, PROMPTS, CHOSEN)
    ref_r, _ = sequence_logps(ref, tokenizer, PROMPTS, REJECTED)
    opt, sched = build_optimizer(model.parameters(), OptimConfig(lr=1e-3, min_lr_ratio=1.0), 10)
    for _ in range(10):
        m = preference_step(model, tokenizer, data, "dpo", {"beta": 0.1}, ref_c, ref_r, opt, sched, 1.0)
    pol_c, _ = sequence_logps(model, tokenizer, PROMPTS, CHOSEN)
    pol_r, _ = sequence_logps(model, tokenizer, PROMPTS, REJECTED)
    margin = (pol_c - ref_c) - (pol_r - ref_r)
    assert (margin > 0).all(), margin
    assert m["reward_accuracy"] == 1.0
