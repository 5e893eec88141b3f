"""The ternary CPU kernel for BitNet b1.58 policies (`ternary_decode.cpp`), built on first use.

While the sampler generates from a model with `BitLinear` layers (models/bitnet.py), `attached(model)`
gives every BitLinear a `kernel`: its weights ternarised once and packed 4 per byte, and a call that
quantises the activations to int8 per token and multiplies them by the packed weights with integer
adds and subtracts (no float multiply in the inner loop), then scales once per output. Integer
results equal `bitnet.integer_linear` exactly and the activation codes equal
`bitnet.quantize_activations` bit for bit, so outputs match the torch forward within float rounding
(tests/rollout/test_ternary.py). Decode steps of a supported Llama-family BitNet model run inside the
compiled one-call step (`fused.FusedDecoder`), which calls this kernel's `ternary_linear` op for every
projection; the prefill (and models that step declines) use the BitLinear modules with `kernel` set,
inside `kv_cache.StaticDecoder`'s torch code.

Built like the compiled decode step (`fused.py`): torch's C++ extension loader, ~10 s once per machine,
cached; without a compiler, or with `REASONLOOP_TERNARY=0`, `available()` is False and the sampler runs
the BitLinear torch forward (the same maths, slower). Design and measurements: docs/bitnet.md.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from reasonloop.models import bitnet
from reasonloop.rollout import kv_cache
from reasonloop.rollout.fused import build_extension

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("ternary_decode.cpp")
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]  # no fast-math, no FMA contraction: match torch bit for bit
BLOCK = 128  # weights per packed block (ternary_decode.cpp)
_state: dict[str, object] = {}


def available() -> bool:
    """True when the ternary kernel can be used (building it on the first call)."""
    if "ok" not in _state:
        _state["ok"] = _build()
    return bool(_state["ok"])


def _build() -> bool:
    return build_extension("reasonloop_ternary", _SOURCE, _FLAGS, "REASONLOOP_TERNARY", "the ternary kernel",
                           lambda: hasattr(torch.ops.reasonloop_ternary, "ternary_linear"),
                           "ternary kernel unavailable (%s: %s); BitNet layers sample with their torch forward")


def padded(k: int) -> int:
    return -(-k // BLOCK) * BLOCK


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Ternary codes int8 [N, K] -> the kernel's layout uint8 [N, Kp / 4] (Kp = K rounded up to 128):
    per 128-weight block, byte j holds weights 32 i + j (i = 0..3) in bits 2i, as w + 1."""
    N, K = codes.shape
    c = F.pad(codes.to(torch.uint8) + 1, (0, padded(K) - K), value=1)  # padding: weight 0
    c = c.view(N, -1, 4, BLOCK // 4)
    out = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return out.reshape(N, -1).contiguous()


def unpack(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of `pack`: int8 codes [N, k]."""
    N = packed.shape[0]
    b = packed.view(N, -1, 1, BLOCK // 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    c = (b >> shifts) & 3
    return (c.reshape(N, -1)[:, :k].to(torch.int8) - 1)


def gemm(x_q: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """Exact int32 [n, N] products of int8 activations [n, K] with packed ternary weights."""
    x_q = F.pad(x_q, (0, packed.shape[1] * 4 - x_q.shape[1]))
    return torch.ops.reasonloop_ternary.ternary_gemm(x_q.contiguous(), packed)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's activation quantisation: (int8 [n, K], scales [n, 1]); equals bitnet.quantize_activations."""
    q, s = torch.ops.reasonloop_ternary.quantize_rows(x.float().contiguous(), padded(x.shape[1]))
    return q[:, : x.shape[1]], s


class PackedLinear:
    """A BitLinear's no-grad forward through the kernel: packed codes, per-row scales [N], bias."""

    def __init__(self, layer: bitnet.BitLinear):
        codes, s_w = bitnet.ternarize(layer.weight)
        self.packed = pack(codes)
        self.scale = s_w.expand(codes.shape[0]).contiguous()
        self.bias = torch.empty(0) if layer.bias is None else layer.bias.detach().float().contiguous()
        self.out_features = codes.shape[0]
        self.bytes = self.packed.numel() + 4 * self.scale.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.reasonloop_ternary.ternary_linear(x.reshape(-1, shape[-1]).float(), self.packed, self.scale,
                                                         self.bias)
        return y.view(*shape[:-1], self.out_features).to(x.dtype)


_packed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weights key, {name: PackedLinear})


def packed_layers(model: nn.Module) -> dict[str, PackedLinear]:
    """Each BitLinear of `model` packed, reusing the previous packing while its weights are unchanged
    (`kv_cache.weights_key`)."""
    layers = bitnet.bit_linears(model)
    key = kv_cache.weights_key(m.weight for _, m in layers)
    cached = _packed.get(model)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, {name: PackedLinear(m) for name, m in layers})
        _packed[model] = cached
    return cached[1]


def usable(model: nn.Module) -> bool:
    """The kernel applies: a BitNet model on the CPU (any float dtype) and the extension builds."""
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cpu" and bitnet.is_bitnet(model) and available()


@contextlib.contextmanager
def attached(model: nn.Module) -> Iterator[None]:
    """Route every BitLinear's no-grad forward through the kernel inside the block (a no-op for other
    models or where the kernel is unavailable)."""
    if not usable(model):
        yield
        return
    packed = packed_layers(model)
    layers = dict(bitnet.bit_linears(model))
    try:
        for name, layer in layers.items():
            layer.kernel = packed[name]
        yield
    finally:
        for layer in layers.values():
            layer.kernel = None
