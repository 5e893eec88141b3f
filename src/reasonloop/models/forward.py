"""Model forward passes shared by every recipe: per-token log-probs (and entropy) of completions."""

from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedTokenizerBase

from reasonloop.algos.entropy import entropy_from_logits
from reasonloop.algos.logprobs import token_logprobs
from reasonloop.config import ConfigError, require
from reasonloop.data.records import TokenBatch, left_padded


@dataclass
class ForwardConfig:
    """Switches of the training forward (`policy_forward`); each is the same maths, only faster or smaller."""

    share_prompts: bool = True
    """Encode the identical prompt of a group once and repeat its keys/values for the G completions."""
    bucket_lengths: bool = True
    """Split rows into a few buckets of similar completion length so padding is not computed."""
    logit_chunk: int = 0
    """Positions per chunk of the output layer: the completion log-probs (and entropy) come from the last hidden
    state a chunk at a time, each chunk's logits recomputed in the backward pass, so the [rows, length,
    vocabulary] logits are never held whole (a 152k vocabulary: 32 x 1 024 positions of fp32 logits are 20 GB);
    0: the model's own logits. The same values to float rounding (under memory.precision=bf16 the chunks run in
    the weights' fp32, outside the model's autocast); not under FSDP2, nor for a model that changes its logits
    after the output layer (softcapping, logit scales)."""

    def __post_init__(self):
        require(self.logit_chunk >= 0, f"forward.logit_chunk must be >= 0 (0: the model's own logits), got {self.logit_chunk}")

    def options(self) -> dict:
        """These switches as `policy_forward`'s keyword arguments."""
        return asdict(self)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str], max_len: int | None = None
) -> TokenBatch:
    """Tokenise (rendered prompt, completion) pairs; the completion ends with EOS and is what is trained on.

    `max_len` bounds prompt + completion (docs/reliability.md): a prompt keeps at most its last
    max_len - 1 tokens (truncated from the left, so the question nearest the answer stays), then the
    completion is cut to the room left (at least one token)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in completions]
    if max_len is not None:
        p_ids = [p[len(p) - (max_len - 1):] if len(p) > max_len - 1 else p for p in p_ids]
        c_ids = [c[: max(1, max_len - len(p))] for p, c in zip(p_ids, c_ids)]
    prompt_ids, prompt_mask = left_padded(p_ids, pad)
    T = max(len(c) for c in c_ids)
    completion_ids = torch.full((len(c_ids), T), pad, dtype=torch.long)
    completion_mask = torch.zeros((len(c_ids), T), dtype=torch.long)
    for i, c in enumerate(c_ids):
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return TokenBatch(prompt_ids, prompt_mask, completion_ids, completion_mask)


@dataclass
class ForwardOut:
    logprobs: torch.Tensor  # [N, T] log-prob of each completion token
    entropy: torch.Tensor | None  # [N, T] entropy of the predictive distribution, when asked
    hidden: torch.Tensor | None  # [N, T, H] last hidden state at the predicting positions, when asked


def policy_forward(
    model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = False,
    with_hidden: bool = False, share_prompts: bool = True, bucket_lengths: bool = True, logit_chunk: int = 0,
) -> ForwardOut:
    """One forward pass over prompt+completion; outputs are aligned with the completion tokens.

    Position P-1+t predicts completion token t, so hidden[:, t] is the state *before* token t (what a
    value head reads as V(s_t)). Values at masked positions are meaningless; callers mask them.

    Two pure speed-ups, each the same maths (outputs agree to float rounding; every row is computed
    independently of the others):

    - `share_prompts`: runs of identical consecutive prompts (the G samples of a GRPO group) are
      encoded once and their keys/values repeated for the completions (gradients flow through the
      repeat), which skips (G-1)/G of the prompt compute;
    - `bucket_lengths`: when completion lengths vary a lot, rows are split into a few buckets of
      similar length, each trimmed to its own longest row, so padding is not computed. Positions
      past a row's bucket width come back as 0.

    `logit_chunk` > 0 computes the output layer `logit_chunk` positions at a time (ForwardConfig.logit_chunk).
    """
    if batch.prompt_ids.shape[1] == 0:  # nothing to condition on: the first token has no prediction
        raise ValueError("policy_forward needs at least one prompt token (use a BOS or EOS prefix)")
    buckets = _length_buckets(batch.completion_mask) if bucket_lengths else None
    if buckets is None:
        return _policy_forward(model, batch, temperature, with_entropy, with_hidden, share_prompts, logit_chunk)
    T = batch.completion_ids.shape[1]
    parts = [_policy_forward(model, batch.select(idx), temperature, with_entropy, with_hidden, share_prompts,
                             logit_chunk) for idx in buckets]
    inverse = torch.argsort(torch.cat(buckets))

    def merge(name: str):
        if getattr(parts[0], name) is None:
            return None
        padded = [F.pad(getattr(o, name), (0, 0, 0, T - getattr(o, name).shape[1]) if name == "hidden"
                        else (0, T - getattr(o, name).shape[1])) for o in parts]
        return torch.cat(padded)[inverse]

    return ForwardOut(merge("logprobs"), merge("entropy"), merge("hidden"))


def _length_buckets(mask: torch.Tensor, max_buckets: int = 4, min_saving: float = 0.2,
                    bucket_cost: float = 4.0) -> list[torch.Tensor] | None:
    """Row indices (ascending within each bucket) splitting rows by completion length, or None.

    Chooses up to `max_buckets` contiguous ranges of the length-sorted rows (cuts at <= 33 quantiles)
    minimising the padded area plus, per extra bucket, the area of `bucket_cost` columns of the whole
    batch (a forward call has a fixed cost); splits only when that saves `min_saving` of the area.
    """
    n = mask.shape[0]
    if n < 2 * max_buckets:
        return None
    lengths = (mask.shape[1] - mask.flip(-1).long().argmax(-1)) * mask.any(-1)  # last kept column + 1
    order = torch.argsort(lengths, stable=True)
    srt = lengths[order].tolist()
    full, call = n * srt[-1], bucket_cost * n
    cands = sorted({0, n, *(round(i * n / 32) for i in range(33))})
    m = len(cands)
    inf = float("inf")
    best = [[inf] * m for _ in range(max_buckets + 1)]  # best[k][j]: k buckets cover rows < cands[j]
    cut = [[0] * m for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, m):
            for i in range(j):
                c = best[k - 1][i] + (cands[j] - cands[i]) * srt[cands[j] - 1] + call
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda kk: best[kk][m - 1])
    if k == 1 or best[k][m - 1] - call > (1 - min_saving) * full:
        return None
    bounds, j = [], m - 1
    for kk in range(k, 0, -1):
        bounds.append((cands[cut[kk][j]], cands[j]))
        j = cut[kk][j]
    return [order[a:b].sort().values for a, b in reversed(bounds) if b > a]


def _policy_forward(model, batch: TokenBatch, temperature: float, with_entropy: bool, with_hidden: bool,
                    share_prompts: bool, logit_chunk: int = 0) -> ForwardOut:
    T = batch.completion_ids.shape[1]
    hidden_too, logits_too = with_hidden or logit_chunk > 0, logit_chunk == 0
    shared = _shared_prompt_forward(model, batch, hidden_too, logits_too) if share_prompts and T > 1 else None
    logits, hidden = shared if shared is not None else _plain_forward(model, batch, hidden_too, logits_too)
    if logit_chunk:
        logprobs, entropy = _chunked_head(output_layer(model), hidden, batch.completion_ids, temperature,
                                          with_entropy, logit_chunk)
        return ForwardOut(logprobs, entropy, hidden if with_hidden else None)
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    entropy = entropy_from_logits(logits) if with_entropy else None
    return ForwardOut(token_logprobs(logits, batch.completion_ids), entropy, hidden)


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps the last hidden state to the logits (under a DDP or PEFT wrapper too); a ConfigError
    for a model whose logits are changed after it, which the chunked path would not reproduce."""
    base = getattr(model, "module", model)
    config = getattr(base, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, key, None) not in (None, 1, 1.0):
            raise ConfigError(f"forward.logit_chunk: {type(base).__name__} changes its logits after the output layer "
                              f"({key}={getattr(config, key)}); use forward.logit_chunk=0")
    head = base.get_output_embeddings()
    if head is None:
        raise ConfigError(f"forward.logit_chunk: {type(base).__name__} has no output layer to chunk; use 0")
    return head


def _chunked_head(head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float,
                  with_entropy: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `ids` (and the entropy) [N, T] from hidden [N, T, H] through `head`, `chunk` positions at a
    time; under autograd each chunk is checkpointed, so its logits live only while it is computed (twice)."""
    N, T, H = hidden.shape
    dtype = next(head.parameters()).dtype

    def part(h: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = head(h.to(dtype)).float().unsqueeze(0)
        if temperature not in (0.0, 1.0):
            logits = logits / temperature
        lp = token_logprobs(logits, i.unsqueeze(0)).squeeze(0)
        return (lp, entropy_from_logits(logits).squeeze(0)) if with_entropy else (lp,)

    outs = _in_chunks(part, chunk, hidden.reshape(N * T, H), ids.reshape(N * T))
    logprobs = torch.cat([o[0] for o in outs]).view(N, T)
    return logprobs, (torch.cat([o[1] for o in outs]).view(N, T) if with_entropy else None)


def _in_chunks(fn, chunk: int, *rows: torch.Tensor) -> list:
    """[fn(the next `chunk` rows of each of `rows`), ...]; under autograd each call is checkpointed, so what it
    builds inside (a chunk's logits) is freed at once and recomputed in the backward pass."""
    grad = torch.is_grad_enabled()
    return [checkpoint(fn, *(r[s:s + chunk] for r in rows), use_reentrant=False) if grad
            else fn(*(r[s:s + chunk] for r in rows)) for s in range(0, rows[0].shape[0], chunk)]


def paired_logits_chunked(student: torch.nn.Module, teacher: torch.nn.Module, batch: TokenBatch, chunk: int,
                          fn) -> torch.Tensor:
    """fn(student logits, teacher logits) -> one value per position, [N, T] over the completion positions (the
    alignment of `completion_logits`), from both models' last hidden states `chunk` positions at a time: neither
    model's [N, T, V] logits are ever held whole (on-policy distillation at a large vocabulary). The teacher runs
    without gradient; the student's chunks are checkpointed (`forward.logit_chunk`)."""
    hidden = _plain_forward(student, batch, with_hidden=True, with_logits=False)[1]
    with torch.no_grad():
        t_hidden = _plain_forward(teacher, batch, with_hidden=True, with_logits=False)[1]
    s_head, t_head = output_layer(student), output_layer(teacher)
    s_dtype, t_dtype = next(s_head.parameters()).dtype, next(t_head.parameters()).dtype

    def part(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = t_head(t.to(t_dtype))
        return fn(s_head(h.to(s_dtype)), t_logits)

    N, T, _ = hidden.shape
    return torch.cat(_in_chunks(part, chunk, hidden.reshape(N * T, -1), t_hidden.reshape(N * T, -1))).view(N, T)


def cache_arg(model, cache) -> dict:
    """The K/V cache keyword for `model(...)`: transformers renamed `past_key_values` to `cache` (the old name is
    deprecated and goes in 5.40), and `transformers>=4.50` only knows the old one. The cache object is updated in
    place, so callers keep their own reference to it rather than reading it back from the output."""
    return {"cache" if _forward_takes(model, "cache") else "past_key_values": cache}


def _last_logits_only(model) -> dict:
    """`logits_to_keep=1` where the model takes it: the prompt pass needs only its last position's logits."""
    return {"logits_to_keep": 1} if _forward_takes(model, "logits_to_keep") else {}


def _forward_takes(model, keyword: str) -> bool:
    """Whether the forward of `model` (of the base model under a PEFT wrapper) has the parameter `keyword`; read
    once per class (decode loops ask at every token, and `inspect.signature` costs ~0.1 ms)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _class_takes(type(base), keyword)


@functools.lru_cache(maxsize=None)
def _class_takes(cls: type, keyword: str) -> bool:
    return keyword in inspect.signature(cls.forward).parameters


def _shared_prompt_forward(model, batch: TokenBatch, with_hidden: bool, with_logits: bool = True):
    """(logits [N, T, V] | None, hidden [N, T, H] | None) computing each distinct consecutive prompt once, or None.

    None when no prompt repeats (nothing to share) or the model's cache is not a plain DynamicCache. Without
    `with_logits` the model computes its output layer at one position only (`logits_to_keep`) and none come back.
    """
    key = torch.cat([batch.prompt_ids, batch.prompt_mask], dim=1)
    _, counts = torch.unique_consecutive(key, return_counts=True, dim=0)
    if counts.shape[0] * 4 > key.shape[0] * 3:  # under 25% of the rows saved: not worth a second call
        return None
    starts = counts.cumsum(0) - counts
    p_ids, p_mask = batch.prompt_ids[starts], batch.prompt_mask[starts]
    P, T = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    cache = DynamicCache()
    first = model(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                  use_cache=True, output_hidden_states=with_hidden, **cache_arg(model, cache), **_last_logits_only(model))
    if type(cache) is not DynamicCache or any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
        return None
    for layer in cache.layers:  # differentiable repeat: prompt gradients sum over the group
        layer.keys = layer.keys.repeat_interleave(counts, dim=0)
        layer.values = layer.values.repeat_interleave(counts, dim=0)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask[:, : T - 1]], dim=1)
    position = (mask.cumsum(-1) - 1).clamp(min=0)[:, P:]
    rest = model(input_ids=batch.completion_ids[:, : T - 1], attention_mask=mask, position_ids=position,
                 use_cache=True, output_hidden_states=with_hidden, **cache_arg(model, cache),
                 **({} if with_logits else _last_logits_only(model)))
    logits = (torch.cat([first.logits[:, -1:].repeat_interleave(counts, dim=0), rest.logits], dim=1)
              if with_logits else None)
    hidden = None
    if with_hidden:
        hidden = torch.cat([first.hidden_states[-1][:, -1:].repeat_interleave(counts, dim=0),
                            rest.hidden_states[-1]], dim=1)
    return logits, hidden


def completion_logprobs(model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0,
                        forward: ForwardConfig | None = None) -> torch.Tensor:
    """Per-token log-probs [N, T] of the completion tokens (through `forward`'s switches; default: all on but
    logit_chunk)."""
    return policy_forward(model, batch, temperature, **(forward or ForwardConfig()).options()).logprobs


def completion_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """[N, T, V] logits predicting each completion token (same alignment as `policy_forward`)."""
    return _plain_forward(model, batch, with_hidden=False)[0]


def _plain_forward(model, batch: TokenBatch, with_hidden: bool,
                   with_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One forward over prompt+completion; (logits [N, T, V] or None, last hidden [N, T, H] or None) aligned
    with the completion tokens: position P-1+t predicts token t. Without `with_logits` the output layer runs at
    one position only (`logits_to_keep`)."""
    P, T = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False,
                output_hidden_states=with_hidden, **({} if with_logits else _last_logits_only(model)))
    hidden = out.hidden_states[-1][:, P - 1 : P + T - 1, :] if with_hidden else None
    return (out.logits[:, P - 1 : P + T - 1, :] if with_logits else None), hidden
