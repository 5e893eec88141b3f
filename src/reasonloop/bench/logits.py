"""The output layer at a large vocabulary (`reasonloop bench which=logits [logits.* ...]`).

One training forward + backward of `policy_forward` (log-probs and entropy of every completion token, the loss
`mean log-prob + 0.01 mean entropy`) on a random Llama-shaped model with a Qwen-sized vocabulary, once per
`logits.chunks` entry, each in a fresh process (peak RSS only grows within a process):

- chunk 0:  the model's own logits, [rows, length, vocabulary] at once — what transformers' forward gives any
            trainer that calls it (TRL's GRPOTrainer without its Liger loss), the peer of this benchmark;
- chunk N:  `forward.logit_chunk=N`: N positions of logits at a time, each recomputed in the backward pass.

Reported per entry: peak RSS, its rise above the built model, seconds, and the loss (every entry's must agree).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass, field

from reasonloop.config import require


@dataclass
class LogitsBenchConfig:
    vocab: int = 151_936
    """Vocabulary size (Qwen2.5's)."""
    hidden: int = 256
    """Hidden size (the output layer is vocab x hidden)."""
    layers: int = 2
    """Decoder layers."""
    rows: int = 4
    """Completions in the batch."""
    length: int = 1024
    """Completion tokens per row (after a 32-token prompt)."""
    chunks: list[int] = field(default_factory=lambda: [0, 4096, 1024, 256])
    """forward.logit_chunk values to measure, one fresh process each (0: the model's own logits)."""
    threads: int = 1
    """torch threads of each process."""

    def __post_init__(self):
        require(min(self.vocab, self.hidden, self.layers, self.rows, self.length, self.threads) > 0,
                "logits.vocab, hidden, layers, rows, length and threads must be > 0")
        require(bool(self.chunks) and min(self.chunks) >= 0, "logits.chunks: give values >= 0")


def run(cfg: LogitsBenchConfig, seed: int = 0) -> dict:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for chunk in cfg.chunks:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(_measure, (cfg, chunk, seed)))
    whole = next((r for r in rows if r["chunk"] == 0), None)
    print(f"output layer {cfg.vocab} x {cfg.hidden}, {cfg.rows} x {cfg.length} completion tokens, {cfg.layers} layers, "
          f"{cfg.threads} thread(s); forward + backward of log-probs and entropy")
    print(f"{'logit_chunk':>11s} {'peak RSS MB':>12s} {'above model':>12s} {'seconds':>8s} {'loss':>12s}"
          + ("  vs chunk 0 (memory above the model, time)" if whole else ""))
    for r in rows:
        vs = (f"  {_ratio(r['above_model_mb'], whole['above_model_mb'])}, {_ratio(r['seconds'], whole['seconds'])}"
              if whole and r is not whole else "")
        print(f"{r['chunk']:>11d} {r['peak_mb']:>12.0f} {r['above_model_mb']:>12.0f} {r['seconds']:>8.2f} "
              f"{r['loss']:>12.6f}{vs}")
    losses = [r["loss"] for r in rows]
    agree = max(losses) - min(losses) <= 1e-5 * max(1.0, abs(losses[0]))
    print(f"losses agree: {agree}")
    return {"config": {**cfg.__dict__}, "rows": rows, "losses_agree": agree}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"  # a tiny run may not lift the peak above the built model's


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _measure(cfg: LogitsBenchConfig, chunk: int, seed: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reasonloop.data.records import TokenBatch
    from reasonloop.models.forward import policy_forward

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    heads = max(1, cfg.hidden // 64)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                         num_attention_heads=heads, num_key_value_heads=heads,
                                         intermediate_size=4 * cfg.hidden, max_position_embeddings=cfg.length + 64,
                                         tie_word_embeddings=False)).train()
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, cfg.vocab, (cfg.rows, 32), generator=gen)
    completion = torch.randint(3, cfg.vocab, (cfg.rows, cfg.length), generator=gen)
    batch = TokenBatch(prompt, torch.ones_like(prompt), completion, torch.ones_like(completion))
    base = _peak_mb()
    start = time.perf_counter()
    out = policy_forward(model, batch, with_entropy=True, share_prompts=False, bucket_lengths=False, logit_chunk=chunk)
    loss = out.logprobs.mean() + 0.01 * out.entropy.mean()
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    return {"chunk": chunk, "peak_mb": peak, "above_model_mb": peak - base, "seconds": seconds, "loss": float(loss.detach())}
