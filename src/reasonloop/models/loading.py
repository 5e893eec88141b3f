"""Load any causal LM and tokenizer through transformers' Auto classes, with optional LoRA (peft).

A model name is checked before anything is loaded (docs/reliability.md): a local directory must hold
a config and weights; a name that looks like a path (starts with `.`, `/` or `~`, or names something
under an existing local directory) or is not a valid hub id is never sent to the hub. Every failure
to load is a `ModelError` naming the model and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import logging
import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reasonloop.config import require, require_choice
from reasonloop.models import bitnet, bitnet_pack
from reasonloop.errors import UserError, first_line

log = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded"  # the task's shipped tiny model (a task names it as `embedded_model`)
ASSETS = ("tiny-arith", "tiny-code", "tiny-tool", "tiny-bitnet")  # model directories shipped in reasonloop/assets
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_PATTERN = r"auto|cpu|mps|(cuda|xpu)(:\d+)?"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.gguf")


class ModelError(UserError):
    """A model (or tokenizer) that does not exist, is incomplete or corrupt, or is not a causal LM."""


def check_model_source(name: str, path: str) -> None:
    """Raise a ModelError unless `path` (what `name` resolved to) is a complete local model directory
    or a valid hub id that names nothing local; paths are never sent to the hub."""
    local = Path(path).expanduser()
    if local.is_file():
        raise ModelError(f"model.name={name!r} is a file; give the model directory (the one with config.json)")
    if local.is_dir():
        entries = list(local.iterdir())
        if not entries:
            raise ModelError(f"model.name={name!r} is an empty directory; give a directory written by save_pretrained")
        if not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            raise ModelError(f"model.name={name!r} has no config.json: not a Hugging Face model directory "
                             "(write one with save_pretrained)")
        if not any(any(local.glob(pattern)) for pattern in WEIGHT_FILES):
            raise ModelError(f"model.name={name!r} has a config but no weights (*.safetensors or *.bin); "
                             "the save was incomplete: save the model again")
        return
    first = Path(path).parts[0] if Path(path).parts else ""
    if (path.startswith((".", "/", "~")) or "\\" in path or not HUB_ID.fullmatch(path)
            or (first and len(Path(path).parts) > 1 and Path(first).expanduser().is_dir())):
        raise ModelError(f"model.name={name!r}: no such local directory (a path is never looked up on the hub); "
                         "check the path, or give a hub id such as Qwen/Qwen2.5-0.5B")


def is_shipped(name: str) -> bool:
    """Whether model.name names a model reasonloop ships: 'embedded' or an asset name."""
    return name == DEFAULT_MODEL or name in ASSETS


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
    model (tiny-code for code_arith, tiny-tool for tool_arith, tiny-arith otherwise; the asset names also work)."""
    dtype: str = "float32"
    """Parameter dtype: float32 (CPU default), bfloat16 or float16 (GPU)."""
    device: str = "auto"
    """'auto' picks cuda when available, else cpu."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Optional LoRA adapters via peft."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
    bitnet: bool = False
    """Swap every linear layer for a BitNet b1.58 BitLinear (ternary weights, int8 activations; docs/bitnet.md).
    A model saved as BitNet loads as BitNet without it."""
    bitnet_head: bool = False
    """With bitnet: quantise the LM head too (by default it stays in full precision, like the embeddings)."""
    bitnet_sub_norm: bool = False
    """With bitnet: add BitNet's SubLN (RMSNorm before o_proj and down_proj). Off by default: it changes what
    an already trained model computes; `pretrain bitnet=true` builds its models with it."""
    load_in_4bit: bool = False
    """QLoRA: load the base weights as 4-bit NF4 (bitsandbytes, double quantisation; compute in model.dtype)
    and train LoRA adapters on them (needs model.lora.r > 0 and the `qlora` extra; CPU and CUDA)."""

    def __post_init__(self):
        require(bool(self.name.strip()), "model.name is empty; give a model directory, a hub id or 'embedded'")
        require_choice("model.dtype", self.dtype, list(DTYPES))
        require(re.fullmatch(DEVICE_PATTERN, self.device) is not None,
                f"model.device={self.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        require(self.lora.r >= 0, "model.lora.r must be >= 0")
        require(not (self.bitnet and self.load_in_4bit), "model.bitnet and model.load_in_4bit are two different "
                "quantisations; choose one")
        require(not self.load_in_4bit or self.lora.r > 0,
                "model.load_in_4bit (QLoRA) trains LoRA adapters on the frozen 4-bit base: set model.lora.r > 0")
        require(self.lora.alpha > 0, "model.lora.alpha must be > 0")
        require(0 <= self.lora.dropout < 1, "model.lora.dropout must be in [0, 1)")
        require(all(t.strip() for t in self.lora.target_modules.split(",")),
                f"model.lora.target_modules={self.lora.target_modules!r} has an empty name; give comma-separated "
                "module names (e.g. q_proj,v_proj) or all-linear")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and (not torch.cuda.is_available()
                                      or (device.index or 0) >= torch.cuda.device_count()):
            raise ModelError(f"model.device={self.device!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s); use model.device=cpu or auto")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelError("model.device='mps' but MPS is not available here; use model.device=cpu or auto")
        return device


def load_tokenizer(name: str, task: Any = None) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name, task)
    check_model_source(name, path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for a bad directory
        raise ModelError(f"model.name={name!r}: cannot load its tokenizer: {type(exc).__name__}: "
                         f"{first_line(exc, 500)}") from None
    if tok.eos_token is None and tok.pad_token is None:
        raise ModelError(f"model.name={name!r}: the tokenizer has neither an EOS nor a pad token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(cfg: ModelConfig, task: Any = None) -> PreTrainedModel:
    path = resolve_model_path(cfg.name, task)
    check_model_source(cfg.name, path)
    device = cfg.torch_device()
    quantized = quantization_kwargs(cfg, device) if cfg.load_in_4bit else {}
    try:
        if bitnet_pack.is_packed(path):  # a packed BitNet directory: rebuilt as a trainable Llama + BitLinear
            model = bitnet_pack.load_packed(path, DTYPES[cfg.dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype], **quantized)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "Unrecognized model" in str(exc):
            raise ModelError(f"model.name={cfg.name!r} is not a causal language model (AutoModelForCausalLM cannot "
                             f"load it): {first_line(exc, 500)}") from None
        raise ModelError(f"model.name={cfg.name!r} does not load: ValueError: {first_line(exc, 500)}") from None
    except Exception as exc:  # corrupt or truncated weights, a broken config.json, a hub failure ...
        raise ModelError(f"model.name={cfg.name!r} does not load ({type(exc).__name__}: {first_line(exc, 500)}); "
                         "check that its files are complete, or save the model again") from None
    layout = bitnet.saved_layout(model.config)
    if layout is not None and not bitnet.is_bitnet(model):  # saved as BitNet: rebuild its layers, then load what transformers did not know
        bitnet.to_bitnet(model, head=layout["head"], sub_norm=layout["sub_norm"])
        bitnet.load_sub_norms(model, path)
    elif cfg.bitnet:
        bitnet.to_bitnet(model, head=cfg.bitnet_head, sub_norm=cfg.bitnet_sub_norm)
    if quantized:  # placed by device_map; norms and embeddings to fp32, the 4-bit base frozen
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
    if cfg.lora.r > 0:
        model = add_lora(model, cfg.lora)
    return model


def quantization_kwargs(cfg: ModelConfig, device: torch.device) -> dict[str, Any]:
    """from_pretrained's arguments for QLoRA's 4-bit NF4 base (Dettmers et al. 2023)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError("model.load_in_4bit needs bitsandbytes: pip install 'reasonloop[qlora]'") from None
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=DTYPES[cfg.dtype])
    return {"quantization_config": config, "device_map": {"": str(device)}}


def load_policy(cfg: ModelConfig, task: Any) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and model for training or evaluating on `task` ('embedded' resolves to the task's asset)."""
    return load_tokenizer(cfg.name, task), load_model(cfg, task)


def add_lora(model: PreTrainedModel, lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets: Any = lora.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",")]
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ModelError(f"model.lora.target_modules: {missing} match no module of the model; its linear "
                             f"layers are {linear} (or use all-linear)")
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                              task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ModelError(f"model.lora: {first_line(exc, 500)}") from None


def context_length(model: Any) -> int | None:
    """The longest sequence the model was built for (`max_position_embeddings`), when its config says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def drop_long_prompts(examples: list, tokenizer: PreTrainedTokenizerBase, render: Any, model: Any,
                      max_new_tokens: int, what: str) -> list:
    """The examples whose rendered prompt leaves room for `max_new_tokens` in the model's context; the
    others are dropped, counted and logged (docs/reliability.md). All dropped is a ModelError."""
    limit = context_length(model)
    if limit is None:
        return examples
    room = limit - max_new_tokens
    if room <= 0:
        raise ModelError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                         f"{limit} tokens; lower max_new_tokens")
    if not examples:
        return examples
    ids = tokenizer([render(ex.prompt) for ex in examples], add_special_tokens=False)["input_ids"]  # one batched call
    kept = [ex for ex, prompt in zip(examples, ids) if len(prompt) <= room]
    if len(kept) < len(examples):
        log.warning("%s: dropped %d of %d prompts longer than %d tokens (context %d - max_new_tokens %d)",
                    what, len(examples) - len(kept), len(examples), room, limit, max_new_tokens)
    if not kept:
        raise ModelError(f"{what}: every prompt is longer than {room} tokens (the model's context of {limit} minus "
                         f"max_new_tokens={max_new_tokens}); lower max_new_tokens or use shorter prompts")
    return kept


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool = True,
                  tools: list[dict] | None = None) -> str:
    """The text the model is conditioned on: the chat template around `prompt` when the tokenizer has one;
    `tools`: JSON schemas of the tools the template declares (multi-turn episodes in its tool-call format)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, **extra
        )
    return prompt


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Write an HF directory (safetensors) that `from_pretrained` loads; with LoRA, the adapter (peft format)."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
