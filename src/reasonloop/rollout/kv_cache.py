"""A preallocated KV cache and a lean decode forward for Llama-family HF models (llama, mistral, qwen2, qwen3).

Why: on a CPU a tiny model's decode step is dominated by Python and allocation overhead, not maths.
transformers' generic forward rebuilds masks, grows a `DynamicCache` with `torch.cat` (quadratic
copying) and dispatches through several wrappers per layer. `StaticDecoder` runs the *same modules*
(norms, projections, MLP, rotary tables) of the HF model, but

- writes keys/values into per-layer tensors preallocated for the whole generation ([rows, kv_heads,
  max_len, head_dim]) and attends over a view of the filled part;
- fuses q/k/v and gate/up projections into one matmul each (plain `nn.Linear`s, models <= 512 MiB);
- computes logits for the last position only;
- drops finished rows (`keep`), so late decode steps only pay for the rows still running;
- runs one-token decode steps through `_decode_layer`, the same arithmetic as the general layer in
  fewer ops (per-op overhead dominates a small model's decode step on a CPU);
- can reuse the previous call's cache memory (`storage`), avoiding page faults on a CPU.

Numerics match the HF forward up to float rounding (tests/rollout/test_speed_equivalence.py checks log-probs
and samples against transformers' own forward). Unsupported models (other architectures, sliding
windows, dynamic RoPE, PEFT-wrapped models) fall back to the generic path in `sampler.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
FUSE_MAX_BYTES = 512 * 2**20  # fuse projections only for models up to this size


def backbone(model: nn.Module):
    """The decoder stack inside a causal LM (`model.model`: embeddings, layers, final norm, rotary
    embedding), or None when `model` is not shaped like the Llama family."""
    inner = getattr(model, "model", None)
    if inner is None or getattr(model, "lm_head", None) is None:
        return None
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    return inner if all(hasattr(inner, n) for n in needed) else None


def supports(model: nn.Module, max_len: int) -> bool:
    """True when `StaticDecoder` reproduces `model`'s forward for sequences up to `max_len` tokens."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES or backbone(model) is None:
        return False
    window = getattr(cfg, "sliding_window", None)
    if window is not None and (getattr(cfg, "use_sliding_window", True) and max_len > window):
        return False
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types) and window is not None and max_len > window:
        return False
    rope_type = getattr(backbone(model).rotary_emb, "rope_type", "default")
    return "dynamic" not in str(rope_type) and max_len <= getattr(cfg, "max_position_embeddings", max_len)


def fuse_projections(layer):
    """(layer, q|k|v weight, q|k|v bias, gate|up weight): the projections concatenated so one matmul
    does each group; None in a slot whose modules are not plain Linear layers (they are called instead)."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
    gu = (getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None))
    w_qkv = b_qkv = w_gu = None
    if all(type(m) is nn.Linear for m in qkv):
        w_qkv = torch.cat([m.weight for m in qkv])
        if qkv[0].bias is not None:
            b_qkv = torch.cat([m.bias for m in qkv])
    if all(type(m) is nn.Linear and m.bias is None for m in gu):
        w_gu = torch.cat([gu[0].weight, gu[1].weight])
    return layer, w_qkv, b_qkv, w_gu


def lean_weights(fused):
    """Plain tensors of a `fuse_projections` layer for `StaticDecoder`'s lean decode step (and the
    compiled one in `rollout/fused.py`), or None where the layer needs the general path.

    One-token decode steps are dominated by per-op overhead on a CPU, so the lean path calls
    `F.linear`/`F.silu` on the weights directly (no `nn.Module.__call__`) on 2-D activations.
    It needs fused projections, plain Linear o/down projections, SiLU and no q/k norms (qwen3).
    """
    layer, w_qkv, b_qkv, w_gu = fused
    attn, mlp = layer.self_attn, layer.mlp
    o, down = attn.o_proj, getattr(mlp, "down_proj", None)
    silu = type(getattr(mlp, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation")
    if w_qkv is None or w_gu is None or hasattr(attn, "q_norm") or not silu:
        return None
    if type(o) is not nn.Linear or type(down) is not nn.Linear or down.bias is not None:
        return None
    return (layer.input_layernorm, w_qkv, b_qkv, o.weight, o.bias, layer.post_attention_layernorm, w_gu,
            down.weight, attn.layer_idx)


class StaticDecoder:
    """Prefill + one-token decode steps over a preallocated cache of `rows` sequences of `max_len` tokens.

    Rows share one cache column per step (prompts are left-padded to one length), so a decode step
    writes a single column for every live row. `valid` marks which cache columns each row attends to.
    """

    def __init__(self, model: nn.Module, rows: int, max_len: int, storage: torch.Tensor | None = None,
                 layers: list | None = None):
        """`storage`: a flat tensor to carve the K/V cache from when it is big enough, else a new one is
        allocated; either way `self.storage` is the buffer in use. `layers`: a previous decoder's `layers`
        (its fused projections), for a caller that has checked the weights are unchanged since
        (`weights_key`); else the projections are fused anew.

        Why: a fresh multi-megabyte CPU allocation is mapped lazily, so every first write into it takes
        a page fault and the kernel zeroes the page; on the embedded model that cost 7-14% of the
        sampler's time. Passing the previous decoder's `storage` reuses already-mapped memory. Every
        cache entry a step reads was written earlier in the same generation, so stale contents are
        never seen (tested with a NaN-filled buffer).
        """
        self.model = model
        self.inner = backbone(model)
        cfg = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        first = self.inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.scaling = first.scaling
        self.rows, self.max_len, self.length = rows, max_len, 0
        shape = (rows, self.kv_heads, max_len, self.head_dim)
        n_layers = len(self.inner.layers)
        per = rows * self.kv_heads * max_len * self.head_dim
        if (storage is None or storage.numel() < 2 * n_layers * per or storage.device != self.device
                or storage.dtype != self.dtype):
            storage = torch.empty(2 * n_layers * per, device=self.device, dtype=self.dtype)
        self.storage = storage  # the flat buffer behind k and v: hand it to the next decoder
        chunks = [storage[i * per : (i + 1) * per].view(shape) for i in range(2 * n_layers)]
        self.k, self.v = chunks[:n_layers], chunks[n_layers:]
        self.valid = torch.zeros(rows, max_len, dtype=torch.bool, device=self.device)
        positions = torch.arange(max_len, device=self.device).unsqueeze(0)
        cos, sin = self.inner.rotary_emb(self.inner.embed_tokens.weight[:1].unsqueeze(0), positions)
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]
        # fusing copies the q/k/v and gate/up weights once per generate call: worth it for small models
        # (fewer, larger matmuls), pointless and memory-hungry for big ones, whose matmuls dominate anyway
        if layers is None:
            fuse = sum(p.numel() * p.element_size() for p in model.parameters()) <= FUSE_MAX_BYTES
            layers = [fuse_projections(layer) if fuse else (layer, None, None, None) for layer in self.inner.layers]
        self.layers = layers
        self.gqa = self.heads != self.kv_heads
        # rotate_half(x) * sin == swap_halves(x) * sin_signed exactly (negation is exact), one op fewer per layer
        half = self.head_dim // 2
        self.sin_signed = torch.cat([-self.sin[:, :half], self.sin[:, half:]], dim=-1)
        self.lean = [lean_weights(fused) for fused in self.layers]

    # -- forward --------------------------------------------------------------------------------------
    def _layer(self, fused, h, cos, sin, rows: slice | torch.Tensor, start: int, mask: torch.Tensor):
        layer, w_qkv, b_qkv, w_gu = fused
        attn, mlp = layer.self_attn, layer.mlp
        n, t, _ = h.shape
        x = _rms_norm(layer.input_layernorm, h)
        if w_qkv is not None:
            qkv = F.linear(x, w_qkv, b_qkv)
            q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                 self.kv_heads * self.head_dim], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = q.view(n, t, self.heads, self.head_dim)
        k = k.view(n, t, self.kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):  # qwen3
            q, k = attn.q_norm(q), attn.k_norm(k)
        v = v.view(n, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if w_qkv is not None and not hasattr(attn, "q_norm"):  # rotate q and k in one go: fewer ops
            qk = qkv[..., : (self.heads + self.kv_heads) * self.head_dim].view(n, t, -1, self.head_dim)
            qk = (qk * cos + _rotate_half(qk) * sin).transpose(1, 2)
            q, k = qk[:, : self.heads], qk[:, self.heads :]
        else:
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        kc, vc = self.k[layer.self_attn.layer_idx], self.v[layer.self_attn.layer_idx]
        end = start + t
        kc[rows, :, start:end] = k
        vc[rows, :, start:end] = v
        if t == 1:  # decode: two small batched matmuls beat SDPA's per-call overhead on CPU
            g = self.heads // self.kv_heads
            scores = torch.matmul(q.reshape(n, self.kv_heads, g, self.head_dim) * self.scaling,
                                  kc[rows, :, :end].transpose(-1, -2))  # [n, kv_heads, g, end]
            probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            o = torch.matmul(probs, vc[rows, :, :end]).reshape(n, self.heads, 1, self.head_dim)
        else:
            o = F.scaled_dot_product_attention(q, kc[rows, :, :end], vc[rows, :, :end], attn_mask=mask,
                                               scale=self.scaling, enable_gqa=self.gqa)
        h = h + attn.o_proj(o.transpose(1, 2).reshape(n, t, -1))
        x = _rms_norm(layer.post_attention_layernorm, h)
        if w_gu is not None:
            gate, up = F.linear(x, w_gu).chunk(2, dim=-1)
            h = h + mlp.down_proj(mlp.act_fn(gate) * up)
        else:
            h = h + mlp(x)
        return h

    def _decode_layer(self, lean, h, cos, sin_signed, n: int, col: int, masked_out: torch.Tensor):
        """`_layer` for one token per row (h: [n, hidden]), op for op the same arithmetic, fewer ops.

        Bit-identical to `_layer` (tests/rollout/test_speed_equivalence.py): the same matmuls and elementwise
        ops in the same order; only views, module dispatch and the rotate-half negation are gone.
        """
        norm_in, w_qkv, b_qkv, w_o, b_o, norm_post, w_gu, w_down, idx = lean
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        half = D // 2
        qkv = F.linear(_rms_norm(norm_in, h), w_qkv, b_qkv)  # [n, (H + 2 KV) D]
        qk = qkv[:, : (H + KV) * D].view(n, H + KV, D)
        qk = qk * cos + torch.cat((qk[..., half:], qk[..., :half]), dim=-1) * sin_signed
        kc, vc = self.k[idx], self.v[idx]
        kc[:n, :, col] = qk[:, H:]
        vc[:n, :, col] = qkv[:, (H + KV) * D :].view(n, KV, D)
        end = col + 1
        scores = torch.matmul(qk[:, :H].reshape(n, KV, H // KV, D) * self.scaling,
                              kc[:n, :, :end].transpose(-1, -2))  # [n, KV, g, end]
        probs = scores.masked_fill(masked_out, float("-inf")).softmax(-1)
        o = torch.matmul(probs, vc[:n, :, :end]).reshape(n, H * D)
        h = h + F.linear(o, w_o, b_o)
        gate, up = F.linear(_rms_norm(norm_post, h), w_gu).chunk(2, dim=-1)
        return h + F.linear(F.silu(gate) * up, w_down)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(_rms_norm(self.inner.norm, h))

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, repeat: int = 1, bf16: bool = False) -> torch.Tensor:
        """Run left-padded prompts [B, P]; their K/V fill rows b*repeat .. b*repeat+repeat-1 of the cache.

        Returns the last position's logits [B, V] (not repeated). `bf16`: the layers' matrix multiplies under
        CPU bf16 autocast (the bf16 decode step's prefill); the residual stream, the cache and the head stay float32.
        """
        B, P = ids.shape
        if B * repeat > self.rows or P > self.max_len:
            raise ValueError("prefill does not fit the cache")
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.cos[position].unsqueeze(2), self.sin[position].unsqueeze(2)  # [B, P, 1, D]
        key_ok = mask.bool()
        causal = torch.ones(P, P, dtype=torch.bool, device=self.device).tril()
        # pad queries attend to themselves only, so no row of the softmax is empty (NaN-free padding)
        attn_mask = ((causal & key_ok[:, None, :]) | torch.eye(P, dtype=torch.bool, device=self.device)).unsqueeze(1)
        h = self.inner.embed_tokens(ids)
        staging = slice(0, B)  # compute in rows 0..B-1, then spread to the repeated layout
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            for fused in self.layers:
                h = self._layer(fused, h, cos, sin, staging, 0, attn_mask)
        if repeat > 1:
            for kc, vc in zip(self.k, self.v):
                kc[: B * repeat, :, :P] = kc[:B, :, :P].repeat_interleave(repeat, dim=0)
                vc[: B * repeat, :, :P] = vc[:B, :, :P].repeat_interleave(repeat, dim=0)
        self.valid[: B * repeat, :P] = key_ok.repeat_interleave(repeat, dim=0)
        self.length = P
        return self._logits(h[:, -1])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row (rows 0..n-1); position [n]: its RoPE position. Returns logits [n, V]."""
        n, col = tokens.shape[0], self.length
        if col >= self.max_len:
            raise ValueError("the cache is full")
        self.valid[:n, col] = True
        self.length = col + 1
        if all(lean is not None for lean in self.lean):
            cos, sin_signed = self.cos[position][:, None, :], self.sin_signed[position][:, None, :]
            masked_out = ~self.valid[:n, None, None, : col + 1]  # once per step, not once per layer
            h = self.inner.embed_tokens(tokens)
            for lean in self.lean:
                h = self._decode_layer(lean, h, cos, sin_signed, n, col, masked_out)
            return self._logits(h)
        cos, sin = self.cos[position][:, None, None, :], self.sin[position][:, None, None, :]
        mask = self.valid[:n, None, None, : col + 1]
        h = self.inner.embed_tokens(tokens).unsqueeze(1)
        rows = slice(0, n)
        for fused in self.layers:
            h = self._layer(fused, h, cos, sin, rows, col, mask)
        return self._logits(h[:, 0])

    def keep(self, live: torch.Tensor) -> torch.Tensor:
        """Drop the rows where `live` [n] is False; returns `order` [m]: new row i is old row order[i].

        Live rows beyond the first m slots move into the holes (swap-remove), so only as many rows are
        copied as there are finished rows below m, not the whole cache.
        """
        n, m, end = live.shape[0], int(live.sum()), self.length
        holes = (~live[:m]).nonzero().flatten()
        movers = live[m:].nonzero().flatten() + m
        order = torch.arange(n, device=live.device)
        if len(holes):
            for kc, vc in zip(self.k, self.v):
                kc[holes, :, :end] = kc[movers, :, :end]
                vc[holes, :, :end] = vc[movers, :, :end]
            self.valid[holes] = self.valid[movers]
            order[holes] = movers
        return order[:m]


def weights_key(tensors) -> tuple:
    """What a cache of weights' derived copies (prepacked, ternarised) checks before reuse: each tensor's storage,
    in-place version counter and float64 sum. The version alone misses in-place updates that do not bump it
    (torch's fused AdamW on CPU, writes through `.data`), and a sampler would then decode with stale weights."""
    with torch.no_grad():
        return tuple((t.data_ptr(), t._version, float(t.sum(dtype=torch.float64))) for t in tensors)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """HF's RMSNorm as one fused op for float32 (same maths: x * rsqrt(mean(x^2) + eps) * weight)."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or x.dtype != torch.float32 or getattr(norm, "weight", None) is None:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
