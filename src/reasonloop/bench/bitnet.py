"""BitNet b1.58 on this CPU (`reasonloop bench which=bitnet [bitnet.* ...]`): memory and decode speed of the
ternary kernel (rollout/ternary.py) against the fp32 decode the sampler would use, at the tiny model's
shape and at ~100M and ~700M-parameter Llama shapes with random weights (speed and memory do not
depend on training).

Per size, in one fresh subprocess each (so RSS figures are the process's own):

1. memory   weight bytes (the linear layers fp32 vs packed 2-bit codes + scales; embeddings and the LM
            head stay fp32 in both), and the process RSS holding the fp32 model vs holding only the
            packed model (the fp32 master weights of the linear layers freed after packing);
2. decode   tokens/s of one-token decode steps for `rows` sequences after a `prompt_len`-token
            prefill, fp32 (the compiled decode step `fused.FusedDecoder` where it applies, else
            `kv_cache.StaticDecoder`; which one is reported) vs ternary (the compiled one-call step with
            the kernel's projections, what the sampler uses) vs ternary inside StaticDecoder's torch ops
            (every BitLinear on the kernel: the path before the compiled step took BitNet models),
            alternating `repeats` times in the same process so that load changes hit all three, for each
            thread count in `threads`; ratios are medians of the paired ratios;
3. roofline the machine's memory bandwidth (a large copy, best of 5) and, per token, the bytes each
            path must read (weights, head, K/V): bandwidth / bytes is the tokens/s ceiling for rows=1.

Results go to `<output_dir>/bench.json` through `bench/__init__.py`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from reasonloop.config import require

# name: (hidden, layers, heads, intermediate, vocab); 100m/700m follow the Llama family (the 700M shape is
# bitnet.cpp's bitnet_b1_58-large: hidden 1536, 24 layers, MLP 4096, 32k vocabulary)
SHAPES = {
    "tiny": (192, 4, 6, 576, 103),
    "100m": (768, 12, 12, 2048, 32000),
    "700m": (1536, 24, 16, 4096, 32000),
}


@dataclass
class BitNetBenchConfig:
    sizes: list[str] = field(default_factory=lambda: ["tiny", "100m", "700m"])
    """Model shapes to measure: tiny (the embedded model's), 100m, 700m (random weights)."""
    threads: list[int] = field(default_factory=lambda: [1, 2])
    """torch intra-op thread counts to time decoding with."""
    rows: int = 1
    """Sequences decoded together (1: single-stream decoding, bitnet.cpp's setting)."""
    prompt_len: int = 16
    """Prompt tokens prefilled before the timed decode steps."""
    tokens: int = 16
    """Timed decode steps per repeat."""
    repeats: int = 3
    """fp32/ternary alternations per thread count."""

    def __post_init__(self):
        bad = [s for s in self.sizes if s not in SHAPES]
        require(not bad and bool(self.sizes), f"bitnet.sizes: {bad or '[]'} — use {', '.join(SHAPES)}")
        require(all(t > 0 for t in self.threads) and bool(self.threads), "bitnet.threads must be > 0")
        require(self.rows > 0 and self.prompt_len > 0 and self.tokens > 0 and self.repeats > 0,
                "bitnet.rows, prompt_len, tokens and repeats must be > 0")


def build(size: str, seed: int = 0) -> nn.Module:
    """A random-weight LlamaForCausalLM of the shape `size` names (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter, vocab = SHAPES[size]
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=512,
                         tie_word_embeddings=size == "tiny")
    return LlamaForCausalLM(config).eval()


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """GB/s of a large tensor copy (read + write), best of `repeats`."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


def weight_bytes(model: nn.Module) -> dict:
    """Bytes of the linear layers in fp32 and packed (2-bit codes, 4 per byte, K padded to 128; one fp32
    scale per output row as the kernel holds it), and of everything else (embeddings, head, norms)."""
    from reasonloop.rollout.ternary import padded

    lin = _linears(model)
    fp32 = sum(m.weight.numel() * 4 for _, m in lin)
    packed = sum(m.out_features * padded(m.in_features) // 4 + 4 * m.out_features for _, m in lin)
    seen, other = {id(m.weight) for _, m in lin}, 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            other += p.numel() * p.element_size()
    return {"linear_fp32": fp32, "linear_packed": packed, "other_fp32": other,
            "total_fp32": fp32 + other, "total_packed": packed + other}


def _decode_rate(model: nn.Module, cfg: BitNetBenchConfig, ternary_path: bool, compiled: bool = True
                 ) -> tuple[float, str]:
    """Decode tokens/s and the path: fp32 (`ternary_path=False`) or the ternary kernel, through the
    compiled one-call step where it applies (`compiled`) or StaticDecoder's torch ops around the kernel."""
    from reasonloop.rollout import fused, kv_cache

    P, T, rows = cfg.prompt_len, cfg.tokens, cfg.rows
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (1, P), generator=gen)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        if ternary_path and compiled and fused.supports(model, P + T) and fused.available():
            decoder, kind = fused.FusedDecoder(model, 1, rows, P, T), "ternary compiled decode step"
        elif ternary_path:
            decoder, kind = kv_cache.StaticDecoder(model, rows, P + T), "ternary kernel + StaticDecoder"
        elif (fused.supports(model, P + T) and fused.available()
              and sum(p.numel() * 4 for p in model.parameters()) <= kv_cache.FUSE_MAX_BYTES):
            # (fused.supports does not check the size under which StaticDecoder fuses projections: bigger
            # fp32 models would crash FusedDecoder, so they take StaticDecoder, as they should)
            decoder, kind = fused.FusedDecoder(model, 1, rows, P, T), "fp32 compiled decode step"
        else:
            decoder, kind = kv_cache.StaticDecoder(model, rows, P + T), "fp32 StaticDecoder"
        logits = decoder.prefill(ids, mask, repeat=rows)
        tokens = logits.argmax(-1).repeat_interleave(rows)
        position = torch.full((rows,), P - 1)
        start = time.perf_counter()
        for _ in range(T - 1):
            position = position + 1
            tokens = decoder.step(tokens, position).argmax(-1)
        elapsed = time.perf_counter() - start
    return rows * (T - 1) / elapsed, kind


class _Swap:
    """Switch a model's linear layers between nn.Linear and BitLinear (sharing the weights) in place."""

    def __init__(self, model: nn.Module):
        from reasonloop.models import bitnet

        self.model = model
        self.plain = dict(_linears(model))
        self.bits = {}
        for name, m in self.plain.items():
            b = bitnet.BitLinear(m.in_features, m.out_features, m.bias is not None)
            b.weight, b.bias = m.weight, m.bias
            self.bits[name] = b

    def use(self, bits: bool) -> None:
        for name, m in (self.bits if bits else self.plain).items():
            self.model.set_submodule(name, m)


def child(size: str, mode: str, cfg: BitNetBenchConfig) -> dict:
    """One subprocess's measurements: mode 'memory-fp32', 'memory-packed' or 'speed'."""
    from reasonloop.models import bitnet
    from reasonloop.rollout import ternary

    torch.set_num_threads(1)
    model = build(size)
    if mode == "memory-fp32":
        return {"rss_mb": rss_mb()}
    if mode == "memory-packed":
        bitnet.to_bitnet(model)
        packed = ternary.packed_layers(model)
        for _, layer in bitnet.bit_linears(model):  # an inference-only process keeps just the packed weights
            layer.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        import gc

        gc.collect()
        return {"rss_mb": rss_mb(), "packed_layers": len(packed)}
    swap = _Swap(model)
    out: dict = {"weights": weight_bytes(model), "threads": {}}
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        rates: dict[str, list[float]] = {"fp32": [], "ternary": [], "ternary_torch": []}
        kinds = {}
        for _ in range(cfg.repeats):
            swap.use(False)
            rate, kinds["fp32"] = _decode_rate(model, cfg, False)
            rates["fp32"].append(rate)
            swap.use(True)
            with ternary.attached(model):
                rate, kinds["ternary"] = _decode_rate(model, cfg, True)
                rates["ternary"].append(rate)
                rate, kinds["ternary_torch"] = _decode_rate(model, cfg, True, compiled=False)
                rates["ternary_torch"].append(rate)
        out["threads"][threads] = {
            "fp32_tokens_per_s": statistics.median(rates["fp32"]),
            "ternary_tokens_per_s": statistics.median(rates["ternary"]),
            "ternary_torch_tokens_per_s": statistics.median(rates["ternary_torch"]),
            "ratio": statistics.median(t / f for t, f in zip(rates["ternary"], rates["fp32"])),
            # the compiled ternary step against the ternary kernel inside StaticDecoder's torch ops
            "compiled_vs_torch_ternary": statistics.median(
                t / f for t, f in zip(rates["ternary"], rates["ternary_torch"])),
            "paths": kinds,
            "bandwidth_gb_s": memory_bandwidth(),
        }
    return out


def _run_child(size: str, mode: str, cfg: BitNetBenchConfig) -> dict:
    args = json.dumps({"size": size, "mode": mode, "cfg": cfg.__dict__})
    proc = subprocess.run([sys.executable, "-m", "reasonloop.bench.bitnet", args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"bench which=bitnet ({size}, {mode}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: BitNetBenchConfig) -> dict:
    from reasonloop.rollout import ternary

    if not ternary.available():
        raise RuntimeError("the ternary kernel does not build here (a C++ compiler and ninja are needed)")
    results: dict = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "sizes": {}}
    print(f"bench bitnet: load average {results['load_average'][0]:.1f} on {results['cpus']} CPUs "
          "(wall-clock figures on a busy machine are noisy; the ratios are paired)")
    for size in cfg.sizes:
        speed = _run_child(size, "speed", cfg)
        mem = {m: _run_child(size, f"memory-{m}", cfg)["rss_mb"] for m in ("fp32", "packed")}
        w = speed["weights"]
        hidden, layers, heads, inter, vocab = SHAPES[size]
        kv = 2 * layers * hidden * 4 * (cfg.prompt_len + cfg.tokens // 2)  # K/V read per token, fp32, mid-way
        head = vocab * hidden * 4
        row = {"weights": w, "rss_mb": mem, "decode": speed["threads"],
               "bytes_per_token": {"fp32": w["linear_fp32"] + head + kv, "ternary": w["linear_packed"] + head + kv}}
        for threads, d in speed["threads"].items():
            d["fp32_ceiling_tokens_per_s"] = d["bandwidth_gb_s"] * 1e9 / row["bytes_per_token"]["fp32"]
            d["ternary_ceiling_tokens_per_s"] = d["bandwidth_gb_s"] * 1e9 / row["bytes_per_token"]["ternary"]
        results["sizes"][size] = row
        params = (w["linear_fp32"] + w["other_fp32"]) / 4 / 1e6
        print(f"{size} ({params:.0f}M params): weights {w['total_fp32'] / 2**20:.1f} MiB fp32 -> "
              f"{w['total_packed'] / 2**20:.1f} MiB packed (linear layers {w['linear_fp32'] / 2**20:.1f} -> "
              f"{w['linear_packed'] / 2**20:.1f} MiB); RSS {mem['fp32']:.0f} -> {mem['packed']:.0f} MB")
        for threads, d in speed["threads"].items():
            print(f"  threads={threads}: decode {d['fp32_tokens_per_s']:.1f} tok/s fp32 ({d['paths']['fp32']}) vs "
                  f"{d['ternary_tokens_per_s']:.1f} ternary ({d['paths']['ternary']}): x{d['ratio']:.2f}; ternary in "
                  f"StaticDecoder {d['ternary_torch_tokens_per_s']:.1f} tok/s (compiled x{d['compiled_vs_torch_ternary']:.2f}); bandwidth {d['bandwidth_gb_s']:.1f} GB/s, "
                  f"ceilings {d['fp32_ceiling_tokens_per_s']:.1f} / {d['ternary_ceiling_tokens_per_s']:.1f} tok/s")
    return results


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(child(spec["size"], spec["mode"], BitNetBenchConfig(**spec["cfg"]))))
