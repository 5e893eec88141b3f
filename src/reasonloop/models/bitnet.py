"""BitNet b1.58: linear layers with ternary weights {-1, 0, +1} and 8-bit activations.

Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits" (arXiv:2402.17764),
building on Wang et al. 2023, "BitNet" (arXiv:2310.11453). `BitLinear` replaces `nn.Linear`:

- weights, per tensor (absmean):  s_w = mean|W| + eps,  W_q = RoundClip(W / s_w, -1, 1),  W ~ s_w * W_q;
- activations, per token (absmax): s_x = 127 / max(max_k |x_k|, eps),  x_q = RoundClip(x * s_x, -128, 127),
  x ~ x_q / s_x (|x * s_x| <= 127, so x_q never reaches -128: the sign trick in the CPU kernel relies on it);
- y = (x_q . W_q) * (s_w / s_x) (+ bias): an integer dot product, one float scale per output;
- an optional RMSNorm on the input before quantising (`norm`): BitNet b1.58's SubLN. `to_bitnet(sub_norm=True)`
  puts one before `o_proj` and `down_proj`, the two projections whose inputs no Llama norm precedes; this is
  the layout of transformers' `bitnet` model type (`attn_sub_norm`, `ffn_sub_norm`), so such a model exports
  there (`bitnet_pack.export_hf`). q/k/v and gate/up already read RMSNorm outputs.
- training: the master weights stay in `weight` (fp32, as the optimizer state); the forward uses the
  quantised values through a straight-through estimator, `v + (q(v) - v).detach()`: the gradient with
  respect to `v` is the upstream gradient unchanged, everywhere (also where a weight is clipped, as in the
  paper and transformers' `AutoBitLinear`, so a clipped weight can come back).

`round` is round-half-to-even (torch.round), which the CPU kernel (`rollout/ternary_decode.cpp`)
reproduces bit for bit. Rounding is done in float32 whatever the model dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5
QMAX = 127  # int8 activations: [-128, 127]; absmax scaling uses [-127, 127]
CONFIG_KEY = "reasonloop_bitnet"  # the HF config attribute recording a BitNet layout: {"head": bool, "sub_norm": bool}


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """s_w = mean|W| + eps (a 0-d float32 tensor)."""
    return w.detach().float().abs().mean() + EPS


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_q int8 in {-1, 0, 1}, s_w) with W_q = RoundClip(W / s_w, -1, 1)."""
    s = weight_scale(w)
    return (w.detach().float() / s).round().clamp(-1, 1).to(torch.int8), s


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q int8 [..., K], s_x float32 [..., 1]) per token (last dim): s_x = 127 / max(absmax, eps).
    A zero row gets x_q = 0 (its scale is 127 / eps)."""
    x = x.detach().float()
    s = QMAX / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * s).round().clamp(-QMAX - 1, QMAX).to(torch.int8), s


def integer_linear(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """The exact integer products x_q [n, K] . W_q [N, K]^T as int32 [n, N] (the kernel's reference)."""
    return (x_q.long() @ w_q.long().t()).to(torch.int32)


def dequantize(acc: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """y = acc * (s_w / s_x) in float32, the order of operations the kernel uses."""
    return acc.float() * (s_w / s_x)


class BitLinear(nn.Linear):
    """`nn.Linear` with BitNet b1.58 quantisation in the forward (see the module docstring).

    The state dict is nn.Linear's (`weight`, `bias`) plus `norm.weight` with a sub-norm, so a BitNet model
    saves and resumes through the ordinary paths. `kernel`, when set (by `rollout/ternary.py` during
    sampling), computes the no-grad forward from packed weights instead.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, norm_eps: float | None = None,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.norm = None if norm_eps is None else RMSNorm(in_features, norm_eps, device=device, dtype=dtype)
        self.kernel = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        if self.kernel is not None and not torch.is_grad_enabled():
            return self.kernel(x)
        x_q, s_x = quantize_activations(x)
        x = x + (x_q.to(x.dtype) / s_x.to(x.dtype) - x).detach()
        w_q, s_w = ternarize(self.weight)
        w = self.weight + ((w_q.float() * s_w).to(self.weight.dtype) - self.weight).detach()
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sub_norm={self.norm is not None}"


class RMSNorm(nn.Module):
    """Llama's RMSNorm (x * rsqrt(mean(x^2) + eps) * weight, computed in float32)."""

    def __init__(self, size: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, device=device, dtype=dtype))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


SUB_NORMED = ("o_proj", "down_proj")  # BitNet b1.58's SubLN positions (transformers' attn/ffn_sub_norm)


def to_bitnet(model: nn.Module, head: bool = False, sub_norm: bool = False) -> nn.Module:
    """Swap every `nn.Linear` of `model` for a `BitLinear` sharing its weight (in place; returns `model`).

    `head`: quantise the LM head too (by default it, like the embeddings, stays in full precision).
    `sub_norm`: add BitNet's SubLN before o_proj and down_proj (unit weights: right for a model trained
    from scratch; it changes what a trained fp32 model computes, so post-training conversion leaves it off).
    The layout is recorded in `model.config` (`reasonloop_bitnet`), so a saved model loads as BitNet again.
    """
    eps = getattr(getattr(model, "config", None), "rms_norm_eps", 1e-6)
    head_names = {"lm_head"}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in head_names and not head:
            continue
        new = BitLinear(module.in_features, module.out_features, module.bias is not None,
                        norm_eps=eps if sub_norm and leaf in SUB_NORMED else None,
                        device=module.weight.device, dtype=module.weight.dtype)
        new.weight = module.weight  # the same Parameter: tied weights and optimizers keep working
        if module.bias is not None:
            new.bias = module.bias
        model.set_submodule(name, new)
    if getattr(model, "config", None) is not None:
        setattr(model.config, CONFIG_KEY, {"head": bool(head), "sub_norm": bool(sub_norm)})
    return model


def saved_layout(config) -> dict | None:
    """The BitNet layout a saved model's config records ({"head", "sub_norm"}), or None."""
    spec = getattr(config, CONFIG_KEY, None)
    return dict(spec) if isinstance(spec, dict) else None


def bit_linears(model: nn.Module) -> list[tuple[str, BitLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]


def is_bitnet(model: nn.Module) -> bool:
    return any(isinstance(m, BitLinear) for m in model.modules())


def load_sub_norms(model: nn.Module, model_dir: str | Path) -> int:
    """Load the sub-norm weights (`*.norm.weight` of BitLinear layers) from a saved model directory's
    safetensors into `model` (transformers' loader does not know them: it built a plain Llama). Returns
    how many were loaded; a missing one is a KeyError."""
    from safetensors import safe_open

    wanted = {f"{n}.norm.weight": m.norm.weight for n, m in bit_linears(model) if m.norm is not None}
    if not wanted:
        return 0
    found = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in set(st.keys()) & wanted.keys():
                with torch.no_grad():
                    wanted[key].copy_(st.get_tensor(key))
                found += 1
    if found != len(wanted):
        raise KeyError(f"{model_dir}: {len(wanted) - found} BitNet sub-norm weights are missing")
    return found
