"""Packed BitNet checkpoints: 2-bit codes, 4 weights per byte, one scale per tensor, in safetensors,
laid out as transformers' `bitnet` model type reads them (so the directory loads there too).

`export_hf(model, tokenizer, path)` writes a trained reasonloop BitNet model (a Llama-family model whose
linear layers are `BitLinear`, with SubLN) as an HF directory that `AutoModelForCausalLM` loads as
`BitNetForCausalLM` with its offline `BitLinear` layers (transformers >= 4.51; checked with 5.24):

| reasonloop (Llama + BitLinear)                  | transformers `bitnet`                                   |
|-------------------------------------------------|---------------------------------------------------------|
| `*.{q,k,v,o,gate,up,down}_proj.weight` (fp32)    | `*.weight` uint8 [out / 4, in]: codes + 1, row r + i*out/4 in bits 2i |
| absmean scale s_w                                | `*.weight_scale` [1] = 1 / s_w (its forward divides by it) |
| `self_attn.o_proj.norm.weight`                   | `self_attn.attn_sub_norm.weight`                        |
| `mlp.down_proj.norm.weight`                      | `mlp.ffn_sub_norm.weight`                               |
| embeddings, norms, LM head                       | unchanged (full precision; the head is not converted)   |
| config `model_type: llama`, `hidden_act: silu`   | `model_type: bitnet`, `hidden_act: silu`, `quantization_config: {quant_method: bitnet, linear_class: bitlinear, quantization_mode: offline}` |

Where the format does not allow it, `export_hf` raises ValueError naming why: a model without SubLN (a
post-training conversion: the bitnet type always has both sub-norms), a quantised LM head, biases,
q/k norms (qwen3), or an output size not a multiple of 4.

`load_packed(path)` reads such a directory back into a reasonloop BitNet model (Llama + BitLinear),
so the packed directory is also the small form to ship (`assets/tiny-bitnet`): the fp32 master weights
become codes * scale, rescaled so that `BitLinear` re-derives the same codes and the same scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from reasonloop.models import bitnet

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SUB_NORMS = {"self_attn.o_proj": "self_attn.attn_sub_norm", "mlp.down_proj": "mlp.ffn_sub_norm"}
QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline",
                       "use_rms_norm": False, "modules_to_not_convert": None}


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] in {-1, 0, 1} -> uint8 [ceil(N / 4), K], transformers' `bitnet` layout: row r of
    the result holds rows r + i * ceil(N / 4) (i = 0..3) in bits 2i, as the code + 1."""
    N = codes.shape[0]
    R = -(-N // 4)
    c = torch.full((4 * R, *codes.shape[1:]), 1, dtype=torch.uint8)  # padding rows: code 1 (weight 0)
    c[:N] = (codes + 1).to(torch.uint8)
    c = c.view(4, R, *codes.shape[1:])
    return c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6)


def unpack_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of `pack_rows`: int8 codes [n, K]."""
    parts = [((packed >> (2 * i)) & 3) for i in range(4)]
    return (torch.cat(parts)[:n].to(torch.int8) - 1)


def _check_exportable(model: nn.Module) -> dict:
    layout = bitnet.saved_layout(model.config)
    cfg = model.config
    if layout is None:
        raise ValueError("not a BitNet model (no BitLinear layers): convert it with model.bitnet=true first")
    if not layout["sub_norm"]:
        raise ValueError("transformers' bitnet type always has SubLN (attn_sub_norm, ffn_sub_norm); this model has "
                         "none (a post-training conversion): only models built with sub-norms export")
    if layout["head"]:
        raise ValueError("transformers' bitnet type keeps the LM head in full precision; this model quantises it")
    if cfg.model_type not in ("llama", "mistral", "qwen2") or getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"model_type={cfg.model_type} with hidden_act={getattr(cfg, 'hidden_act', None)}: "
                         "only Llama-family models with SiLU export to the bitnet type")
    for layer in model.model.layers:
        if hasattr(layer.self_attn, "q_norm"):
            raise ValueError("q/k norms (qwen3) have no place in the bitnet type")
        for name in PROJECTIONS:
            m = layer.get_submodule(name)
            if not isinstance(m, bitnet.BitLinear) or m.bias is not None:
                raise ValueError(f"{name}: the bitnet type needs bias-free BitLinear projections")
            if m.out_features % 4:
                raise ValueError(f"{name}: {m.out_features} outputs, not a multiple of 4 (transformers' BitLinear "
                                 "stores out_features / 4 packed rows)")
    return layout


def export_hf(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Write `model` (a reasonloop BitNet model with SubLN) as a packed transformers `bitnet` directory."""
    from safetensors.torch import save_file
    from transformers import BitNetConfig

    _check_exportable(model)
    cfg = model.config
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm.weight" in name and any(f"{proj}.norm.weight" in name for proj in SUB_NORMS):
                continue  # written under the bitnet type's names below
            if not any(f".{proj}." in name for proj in PROJECTIONS):
                tensors[name] = p.detach().float().contiguous()
        for i, layer in enumerate(model.model.layers):
            prefix = f"model.layers.{i}."
            for name in PROJECTIONS:
                m = layer.get_submodule(name)
                codes, s_w = bitnet.ternarize(m.weight)
                tensors[prefix + name + ".weight"] = pack_rows(codes).contiguous()
                tensors[prefix + name + ".weight_scale"] = (1.0 / s_w).reshape(1).float()
                if name in SUB_NORMS:
                    tensors[prefix + SUB_NORMS[name] + ".weight"] = m.norm.weight.detach().float().contiguous()
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    hf = BitNetConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, rope_parameters=dict(cfg.rope_parameters), attention_bias=False,
    )
    hf.architectures = ["BitNetForCausalLM"]
    hf.save_pretrained(str(path))
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = dict(QUANTIZATION_CONFIG)
    config["dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def is_packed(path: str | Path) -> bool:
    """Whether `path` is a packed `bitnet` directory (what `export_hf` writes)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text())
    return data.get("model_type") == "bitnet" and data.get("quantization_config", {}).get("quant_method") == "bitnet"


def load_packed(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A reasonloop BitNet model (LlamaForCausalLM + BitLinear with SubLN) from a packed bitnet directory."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    data = json.loads((path / "config.json").read_text())
    if data.get("quantization_config", {}).get("linear_class", "bitlinear") != "bitlinear" or \
            data.get("quantization_config", {}).get("use_rms_norm"):
        raise ValueError(f"{path}: only offline `bitlinear` bitnet checkpoints without per-layer RMSNorm load here")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "pad_token_id", "bos_token_id", "eos_token_id", "rope_parameters")
    config = LlamaConfig(**{k: data[k] for k in keys if k in data}, hidden_act=data.get("hidden_act", "silu"))
    if config.hidden_act != "silu":
        raise ValueError(f"{path}: hidden_act={config.hidden_act}; reasonloop's BitNet models use silu")
    model = LlamaForCausalLM(config)
    bitnet.to_bitnet(model, sub_norm=True)
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    state = {}
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}."
        for name in PROJECTIONS:
            m = layer.get_submodule(name)
            codes = unpack_rows(tensors.pop(prefix + name + ".weight"), m.out_features).float()
            s_w = 1.0 / tensors.pop(prefix + name + ".weight_scale").float().reshape(())
            frac = codes.abs().mean()
            # master weights whose mean |W| + eps is s_w again, so BitLinear re-derives these codes and scale
            state[prefix + name + ".weight"] = codes * ((s_w - bitnet.EPS) / frac if frac > 0 else 0.0)
            if name in SUB_NORMS:
                state[prefix + name + ".norm.weight"] = tensors.pop(prefix + SUB_NORMS[name] + ".weight")
    state.update(tensors)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match a BitNet Llama: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype)
