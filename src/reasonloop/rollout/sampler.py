"""The default rollout engine: an in-process, batched sampler over an HF causal LM with a KV cache.

The B prompts are prefilled once; the cache is then repeated G times so the G samples of a prompt
share one prefill. Each decode step feeds one token per row. Every sampled token's log-probability is
returned under the temperature-scaled distribution *before* top-k/top-p/min-p truncation, which is
what the trainer recomputes (`algos.logprobs.token_logprobs(logits, ids, temperature)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from contextlib import nullcontext
from typing import Iterator

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from reasonloop.data.records import RolloutBatch, left_padded
from reasonloop.errors import UserError
from reasonloop.models.forward import cache_arg
from reasonloop.rollout import fused, kv_cache, ternary
from reasonloop.rollout.engine import SamplingConfig

log = logging.getLogger(__name__)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set the logits of tokens outside the top-k / top-p nucleus / min-p set to -inf. logits: [N, V]."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # keep tokens until the kept mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        threshold = min_p * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None,
    noise_rows: int | None = None, rows: torch.Tensor | None = None,
    *, pick: torch.Tensor | None = None, noise: torch.Tensor | None = None,
):
    """Pick one token per row; returns (tokens [N], their log-probs [N]).

    Draws exactly what `torch.multinomial(probs, 1)` draws (argmax of probs / Exp(1) noise, which is
    how torch implements it). The noise is drawn for `noise_rows` rows and rows `rows` of it are used,
    so a sampler that drops finished rows consumes the random stream exactly like one that keeps them.
    `noise` ([N, V], on the logits' device) replaces that draw (the multi-turn engine gives each episode its
    own stream); `pick` (default `logits`) are the logits the token is chosen from, e.g. with some tokens
    masked, while the log-probs are always the policy's own, from `logits`.
    """
    # the logits at the temperature (x / 1 == x: no division at 1; greedy's log-probs are taken at 1)
    scaled = logits.float() if sampling.temperature in (0, 1) else logits.float() / sampling.temperature
    if sampling.temperature == 0:
        tokens = (logits if pick is None else pick).argmax(-1)
    else:
        chosen_from = scaled if pick is None else pick.float() / sampling.temperature
        probs = filter_logits(chosen_from, sampling.top_k, sampling.top_p, sampling.min_p).softmax(-1)
        if noise is None:
            noise = exponential_noise((noise_rows or probs.shape[0], probs.shape[1]), generator, probs.device)
            if rows is not None:
                noise = noise[rows]
        tokens = (probs / noise).argmax(-1)
    # token_logprobs' maths (log-softmax at the temperature, before filtering) as one fused kernel:
    # equal within float rounding, and ~10x faster than its logsumexp form on a [rows, V] tensor
    return tokens, scaled.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


def exponential_noise(shape: tuple[int, int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """float32 Exp(1) draws: bit for bit `torch.empty(shape).exponential_(1, generator=generator)`, and the generator
    left in the same state. On a CPU, torch draws each one as `-log1p(-u)` of a float64 uniform from the generator,
    scalar by scalar (~40 ns a draw here); drawing the uniforms as a tensor and taking log1p vectorised gives the
    same numbers 2.5x faster (a 64 x 105 draw: 272 -> 108 us, about 4% of a sampler call on the embedded model).
    tests/rollout/test_sampler.py checks the equality against torch's own draw; other devices use theirs."""
    if device.type != "cpu":
        return torch.empty(shape, device=device).exponential_(1, generator=generator)
    return torch.empty(shape, dtype=torch.float64).uniform_(generator=generator).neg_().log1p_().neg_().float()


class _StopStrings:
    """Stop-string detection: the last few characters each row produced, checked after every token."""

    def __init__(self, stop: list[str], rows: int, text_of):
        self.stop = list(stop)
        self.tail_len = max((len(s) for s in self.stop), default=0) + 8
        self.tails = [""] * rows
        self.text_of = text_of  # token id -> its text

    def __bool__(self) -> bool:
        return bool(self.stop)

    def hits(self, rows: list[int], tokens: list[int]) -> list[bool]:
        """Append each row's new token to its tail; True where the tail now ends with a stop string."""
        out = []
        for row, token in zip(rows, tokens):
            self.tails[row] = (self.tails[row] + self.text_of(token))[-self.tail_len:]
            out.append(any(self.tails[row].endswith(s) for s in self.stop))
        return out


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Turn Python's cyclic garbage collector off inside the block and back on after it (also when the
    block raises), unless it was already off. A sampler call allocates many short-lived objects and
    creates no reference cycles worth collecting. Measured (docs/speed.md), it does not pay at the embedded
    shape (1.02x; few collections fall inside a call): kept as a guard, at no cost. Memory freed by
    reference counting is freed as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_TENSOR_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs")


class TorchSampler:
    """`RolloutEngine` running the policy model in-process; `update_weights` is a no-op (shared weights).

    Llama-family models (see `kv_cache.supports`) decode through `kv_cache.StaticDecoder`: a
    preallocated cache, fused projections and finished rows dropped from the batch; in float32 on a
    CPU, through its compiled decode step (`fused.FusedDecoder`, `fused_decode=False` to opt out) when
    it builds. Other models use transformers' forward with a `DynamicCache`. All paths draw the same
    random numbers, so under one seed they produce the same samples (`static_cache=False` forces the
    generic path).

    `decode_precision="bf16"`: the compiled step's projections in bfloat16 (`fused.bf16_supported()` CPUs only:
    a `UserError` elsewhere); the log-probs it reports are then the bf16 step's, not the float32 model's.

    `min_new_tokens`: EOS is masked out (logit -inf) for the first `min_new_tokens` tokens of every row,
    as transformers' `min_new_tokens` does; the benchmarks force equal completion lengths with it.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, share_prefill: bool = True,
                 static_cache: bool = True, fused_decode: bool = True, min_new_tokens: int = 0,
                 decode_precision: str = "fp32"):
        self.bf16 = decode_precision == "bf16"
        if self.bf16 and next(model.parameters()).device.type == "cpu" and not fused.bf16_supported():
            raise UserError("rollout.decode_precision=bf16 needs a CPU with bf16 instructions (AVX-512 BF16, AMX or "
                            "AVX-NE-CONVERT) and oneDNN; this one has none: use rollout.decode_precision=fp32")
        self.model = model
        self.tokenizer = tokenizer
        self.share_prefill = share_prefill
        self.static_cache = static_cache
        self.fused_decode = fused_decode
        self.min_new_tokens = min_new_tokens
        self._token_text: dict[int, str] = {}
        # the previous call's K/V cache memory, reused to avoid page faults (CPU only; see StaticDecoder)
        self._kv_storage: torch.Tensor | None = None
        self._packed: fused.Packed | None = None  # the compiled decode step's weights, while unchanged
        self._warned_fp32 = False

    def update_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                             padding_side="left")
        return self._generate(enc["input_ids"], enc["attention_mask"], n, sampling, generator)

    def generate_ids(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        """`generate` for prompts given as token ids (`reasonloop serve` receives them so)."""
        ids, mask = left_padded(prompts, self.tokenizer.pad_token_id)
        return self._generate(ids, mask, n, sampling, generator)

    def _generate(self, prompt_ids, prompt_mask, n: int, sampling: SamplingConfig, generator) -> RolloutBatch:
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        was_training = self.model.training
        self.model.eval()
        # inference mode skips autograd's per-tensor bookkeeping: ~4% faster decoding here, same numbers
        try:
            # a BitNet policy's linear layers run on the ternary CPU kernel while sampling (rollout/ternary.py)
            kernel = ternary.attached(self.model) if self.fused_decode else nullcontext()
            with gc_paused(), torch.inference_mode(), kernel:
                if self.static_cache and kv_cache.supports(self.model, prompt_ids.shape[1] + sampling.max_new_tokens):
                    batch = self._generate_static(prompt_ids, prompt_mask, n, sampling, generator)
                else:
                    batch = self._generate_dynamic(prompt_ids, prompt_mask, n, sampling, generator)
        finally:
            self.model.train(was_training)
        # inference tensors may not be saved for backward (the update gathers with completion_ids):
        # hand back ordinary copies
        return dataclasses.replace(batch, **{f: getattr(batch, f).clone() for f in _TENSOR_FIELDS})

    def _generate_static(self, prompt_ids, prompt_mask, n: int, sampling: SamplingConfig, generator):
        B, P = prompt_ids.shape
        rows, T = B * n, sampling.max_new_tokens
        device = prompt_ids.device
        if self.fused_decode and self.share_prefill and fused.supports(self.model, P + T) and fused.available():
            decoder = fused.FusedDecoder(self.model, B, n, P, T, storage=self._kv_storage, packed=self._packed,
                                         bf16=self.bf16)
            self._packed = decoder.packed
        else:
            if self.bf16 and device.type == "cpu" and not self._warned_fp32:
                self._warned_fp32 = True
                log.warning("rollout.decode_precision=bf16: this model or run does not decode through the compiled "
                            "step (fused_decode off, or a structure it does not implement), so it samples in fp32")
            decoder = kv_cache.StaticDecoder(self.model, rows, P + T, storage=self._kv_storage)
        # on a GPU the caching allocator already recycles memory, and a held cache would be memory the
        # training step cannot use; on a CPU a fresh cache is page-faulted in on every call
        self._kv_storage = decoder.storage if device.type == "cpu" else None
        if self.share_prefill:
            logits = decoder.prefill(prompt_ids, prompt_mask, repeat=n).repeat_interleave(n, dim=0)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
        if not self.share_prefill:
            logits = decoder.prefill(prompt_ids, prompt_mask)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        stops = _StopStrings(sampling.stop, rows, self._text_of)
        reasons = ["length"] * rows
        active = torch.arange(rows, device=device)  # original row of each live cache row
        position = prompt_mask.sum(-1) - 1  # [live] position of the last token fed
        steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, tokens, log-probs) per step
        for t in range(T):
            if t < self.min_new_tokens:
                logits[:, eos] = float("-inf")
            tokens, lps = sample_next(logits, sampling, generator, rows, None if len(active) == rows else active)
            steps.append((active, tokens, lps))
            done = tokens == eos
            if stops:
                done |= torch.tensor(stops.hits(active.tolist(), tokens.tolist()), dtype=torch.bool, device=device)
            if bool(done.any()):
                for i in active[done].tolist():
                    reasons[i] = "stop"
                if bool(done.all()):
                    break
                order = decoder.keep(~done)
                active, tokens, position = active[order], tokens[order], position[order]
            if t == T - 1:
                break
            position = position + 1
            logits = decoder.step(tokens, position)
        # the tokens into [rows, steps] tensors with one indexed write each, not three per decode step
        row = torch.cat([r for r, _, _ in steps])
        col = torch.arange(len(steps), device=device).repeat_interleave(torch.tensor([len(r) for r, _, _ in steps],
                                                                                     device=device))
        out_ids = torch.full((rows, len(steps)), pad, dtype=torch.long, device=device)
        out_lp = torch.zeros((rows, len(steps)), device=device)
        out_mask = torch.zeros((rows, len(steps)), dtype=torch.long, device=device)
        out_ids[row, col] = torch.cat([x for _, x, _ in steps])
        out_lp[row, col] = torch.cat([x for _, _, x in steps])
        out_mask[row, col] = 1
        return self._batch(prompt_ids, prompt_mask, out_ids, out_mask, out_lp, reasons, n)

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def _batch(self, prompt_ids, prompt_mask, completion_ids, completion_mask, logprobs, reasons, n) -> RolloutBatch:
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
            completion_mask=completion_mask, logprobs=logprobs * completion_mask, finish_reasons=reasons,
            completions=self._decode(completion_ids, completion_mask), group_size=n,
        )

    def _generate_dynamic(self, prompt_ids, prompt_mask, n: int, sampling: SamplingConfig, generator):
        tok = self.tokenizer
        device = prompt_ids.device
        if self.share_prefill:
            logits, cache = self._prefill(prompt_ids, prompt_mask)
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
            prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
        else:
            prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
            prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
            logits, cache = self._prefill(prompt_ids, prompt_mask)

        rows = prompt_ids.shape[0]
        eos = tok.eos_token_id
        pad = tok.pad_token_id
        stops = _StopStrings(sampling.stop, rows, self._text_of)
        attn = prompt_mask
        position = prompt_mask.sum(-1, keepdim=True) - 1  # [rows, 1] position of the last prompt token
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        reasons = ["length"] * rows
        out_ids, out_lp, out_mask = [], [], []

        for t in range(sampling.max_new_tokens):
            if t < self.min_new_tokens:
                logits[:, eos] = float("-inf")
            tokens, lps = sample_next(logits, sampling, generator)
            tokens = tokens.masked_fill(finished, pad)
            lps = lps.masked_fill(finished, 0.0)
            out_ids.append(tokens)
            out_lp.append(lps)
            out_mask.append((~finished).long())  # this token counts if the row was still running
            now_done = (tokens == eos) & ~finished
            if stops:
                live = (~finished).nonzero().flatten()
                now_done[live] |= torch.tensor(stops.hits(live.tolist(), tokens[live].tolist()), dtype=torch.bool,
                                               device=device)
            for i in now_done.nonzero().flatten().tolist():
                reasons[i] = "stop"
            finished |= now_done
            if bool(finished.all()):
                break
            attn = torch.cat([attn, (~finished).long().unsqueeze(-1)], dim=-1)
            position = position + 1
            out = self.model(
                input_ids=tokens.unsqueeze(-1), attention_mask=attn, position_ids=position,
                use_cache=True, **cache_arg(self.model, cache),
            )
            logits = out.logits[:, -1, :]

        return self._batch(prompt_ids, prompt_mask, torch.stack(out_ids, dim=1), torch.stack(out_mask, dim=1),
                           torch.stack(out_lp, dim=1), reasons, n)

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor):
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True,
                         **cache_arg(self.model, cache))
        return out.logits[:, -1, :], cache

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        texts, eos = [], self.tokenizer.eos_token_id  # read once: a tokenizer attribute lookup is slow
        for row, m in zip(ids.tolist(), mask.tolist()):
            kept = [t for t, keep in zip(row, m) if keep and t != eos]
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True))
        return texts
