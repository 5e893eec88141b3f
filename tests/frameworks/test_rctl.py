"""RCTL: the mixed weight, adapters read from peft's files, composition equal to peft's own merge, a mixing
step that trains only the mixing weights, and the mixed task."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig, get_peft_model

from reasonloop.config import load_config
from reasonloop.frameworks import rctl
from reasonloop.recipes import rl
from reasonloop.tasks import make_task
from reasonloop.tasks.ruled import careful_trace


def test_mixed_weight_hand_computed():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    deltas = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]])
    out = rctl.mixed_weight(base, deltas, torch.tensor([0.5, -2.0]))
    assert torch.equal(out, torch.tensor([[1.5, -1.0], [-0.5, 3.0]]))
    with pytest.raises(ValueError, match="weights \\(3,\\)"):
        rctl.mixed_weight(base, deltas, torch.ones(3))


def saved_adapter(model, path, seed: int, targets=("q_proj", "v_proj")):
    """A peft LoRA adapter with random (non-zero) A and B, saved as peft saves it; returns the peft model."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), PeftLoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                                     init_lora_weights=False))
    peft_model.save_pretrained(str(path))
    return peft_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_composition_equals_peft_merge_and_mixes_linearly(nano_model, tmp_path):
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    one = saved_adapter(nano_model, tmp_path / "one", seed=1)
    saved_adapter(nano_model, tmp_path / "two", seed=2, targets=("v_proj", "o_proj"))
    d1, d2 = rctl.adapter_deltas(tmp_path / "one"), rctl.adapter_deltas(tmp_path / "two")
    assert sorted(d1)[0] == "model.layers.0.self_attn.q_proj" and len(d1) == 2 * nano_model.config.num_hidden_layers
    alone = copy.deepcopy(nano_model)
    w = rctl.compose(alone, [d1], [1.0])
    assert torch.allclose(logits(alone, ids), logits(one, ids), atol=1e-5)  # w = 1: the adapter itself
    with torch.no_grad():
        w.fill_(0.0)
    assert torch.allclose(logits(alone, ids), logits(nano_model, ids), atol=1e-6)  # w = 0: the base
    both = copy.deepcopy(nano_model)
    rctl.compose(both, [d1, d2], [0.5, 2.0])
    by_hand = copy.deepcopy(nano_model)
    with torch.no_grad():
        for name, module in by_hand.named_modules():
            if name in d1 or name in d2:
                module.weight += 0.5 * d1.get(name, 0) + 2.0 * d2.get(name, 0)
    assert torch.allclose(logits(both, ids), logits(by_hand, ids), atol=1e-5)
    assert [n for n, p in both.named_parameters() if p.requires_grad] == ["model.layers.0.self_attn.q_proj.parametrizations.weight.0.weights"]


def test_a_mixing_step_moves_only_the_mixing_weights(tmp_path):
    base = rl.Trainer(load_config(rl.Config, [
        "model.lora.r=4", f"output_dir={tmp_path / 'a'}", "steps=1", "threads=1",
        "eval_n=4", "eval_k=0", "samples_every=0", "save_every=0"]))
    with torch.no_grad():  # a non-zero adapter without training one
        for name, p in base.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.001)
    base.model.save_pretrained(str(tmp_path / "adapter"))
    deltas = rctl.adapter_deltas(tmp_path / "adapter")
    cfg = load_config(rl.Config, [f"output_dir={tmp_path / 'm'}", "steps=1", "threads=1",
                                  "prompts_per_step=8", "group_size=4", "eval_n=4", "eval_k=0", "kl_coef=0",
                                  "optim.lr=0.05", "optim.warmup_steps=0", "samples_every=0", "save_every=0"])
    mixer = rctl.MixTrainer(cfg, [deltas], [0.5])
    frozen = {n: p.detach().clone() for n, p in mixer.model.named_parameters() if not p.requires_grad}
    metrics, _ = mixer.step()
    assert 0 < metrics["accuracy"] < 1 and metrics["grad_norm"] > 0
    assert float(mixer.mix_weights[0]) != 0.5
    assert all(torch.equal(p, frozen[n]) for n, p in mixer.model.named_parameters() if not p.requires_grad)


def test_the_mixed_task_interleaves_and_dispatches():
    """The RCTL target, `mix:arithmetic+code_arith` (tasks/mixture.py, tested in tests/tasks/test_mixture.py)."""
    task = make_task("mix:arithmetic+code_arith")
    assert task.embedded_model == "tiny-code"
    examples = task.examples("test", 5)
    assert [e.meta["domain"] for e in examples] == ["arithmetic", "code_arith", "arithmetic", "code_arith", "arithmetic"]
    arith = examples[0]
    assert task.is_correct(careful_trace(arith.prompt), arith)
