"""QLoRA (`model.load_in_4bit=true`): a 4-bit NF4 base from bitsandbytes (its CPU backend runs here), LoRA
adapters trained on it, the base frozen bit for bit."""

import builtins

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.models.loading import LoraConfig, ModelConfig, ModelError, load_model

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the `qlora` extra (pip install 'reasonloop[qlora]')")


def test_4bit_needs_lora():
    with pytest.raises(ConfigError, match=r"model.load_in_4bit \(QLoRA\) trains LoRA adapters on the frozen 4-bit "
                                          r"base: set model.lora.r > 0"):
        load_config(ModelConfig, ["load_in_4bit=true"])


def test_missing_bitsandbytes_is_one_clear_error(nano_model_dir, monkeypatch):
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ModelError, match=r"pip install 'reasonloop\[qlora\]'"):
        load_model(ModelConfig(name=nano_model_dir, load_in_4bit=True, lora=LoraConfig(r=4)))


def test_rl_steps_train_the_adapters_on_a_frozen_4bit_base(nano_model_dir, tmp_path, monkeypatch):
    from toy_tasks import LetterFirstTask

    from reasonloop.recipes import rl

    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    cfg = load_config(rl.Config, [f"model.name={nano_model_dir}", "model.load_in_4bit=true", "model.lora.r=4",
                                  "kl_coef=0.1", "steps=2", "prompts_per_step=4", "group_size=4",
                                  "sampling.max_new_tokens=6", "eval_n=2", "eval_k=0", "save_every=0",
                                  f"output_dir={tmp_path}", "optim.lr=0.05", "threads=1"])
    trainer = rl.Trainer(cfg)
    quantized = {n: m for n, m in trainer.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) >= 7, "every projection of the decoder layers is 4-bit"
    frozen = {n: m.weight.detach().clone() for n, m in quantized.items()}
    assert all(w.dtype == torch.uint8 for w in frozen.values()), "packed NF4 codes, two per byte"
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    for n, m in quantized.items():
        assert torch.equal(m.weight, frozen[n]), n
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert moved, "the adapters learned"
    assert trainer.ref is None, "the reference is the adapter-free 4-bit policy"
