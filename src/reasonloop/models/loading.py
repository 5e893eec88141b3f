"""Load any causal LM and tokenizer through transformers' Auto classes, with optional LoRA (peft)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reasonloop.config import require, require_choice

DEFAULT_MODEL = "embedded"  # the task's shipped tiny model (a task names it as `embedded_model`)
ASSETS = ("tiny-arith", "tiny-code")  # model directories shipped in reasonloop/assets
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str, task: Any = None) -> str:
    """'embedded' -> the asset `task.embedded_model` names (tiny-arith when it names none); an asset
    name -> its directory, unless a local path of that name exists; anything else unchanged."""
    if name == DEFAULT_MODEL:
        name = getattr(task, "embedded_model", ASSETS[0])
    if name in ASSETS and not Path(name).exists():
        return str(resources.files("reasonloop") / "assets" / name)
    return name


def model_label(name: str, task: Any = None) -> str:
    """`name` for printing, with the asset 'embedded' stands for: 'embedded (tiny-code)'."""
    return f"{name} ({getattr(task, 'embedded_model', ASSETS[0])})" if name == DEFAULT_MODEL else name


@dataclass
class LoraConfig:
    r: int = 0
    """LoRA rank; 0 trains all weights (no adapters)."""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: str = "all-linear"
    """Comma-separated module names to adapt, or 'all-linear'."""


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL
    """A local model directory or hub id loadable by AutoModelForCausalLM; 'embedded' is the task's shipped tiny
    model (tiny-code for code_arith, tiny-arith otherwise; both names also work)."""
    dtype: str = "float32"
    """Parameter dtype: float32 (CPU default), bfloat16 or float16 (GPU)."""
    device: str = "auto"
    """'auto' picks cuda when available, else cpu."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Optional LoRA adapters via peft."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""

    def __post_init__(self):
        require_choice("model.dtype", self.dtype, list(DTYPES))
        require(self.lora.r >= 0, "model.lora.r must be >= 0")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def load_tokenizer(name: str, task: Any = None) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name, task))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(cfg: ModelConfig, task: Any = None) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.name, task), dtype=DTYPES[cfg.dtype])
    model.to(cfg.torch_device())
    if cfg.lora.r > 0:
        model = add_lora(model, cfg.lora)
    return model


def load_policy(cfg: ModelConfig, task: Any) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and model for training or evaluating on `task` ('embedded' resolves to the task's asset)."""
    return load_tokenizer(cfg.name, task), load_model(cfg, task)


def add_lora(model: PreTrainedModel, lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets: Any = lora.target_modules if lora.target_modules == "all-linear" else lora.target_modules.split(",")
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                              task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool = True) -> str:
    """The text the model is conditioned on: the chat template around `prompt` when the tokenizer has one."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Write an HF directory (safetensors) that `from_pretrained` loads; with LoRA, the adapter (peft format)."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
