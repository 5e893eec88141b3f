"""The default rollout engine: an in-process, batched sampler over an HF causal LM with a KV cache.

The B prompts are prefilled once; the cache is then repeated G times so the G samples of a prompt
share one prefill. Each decode step feeds one token per row. Every sampled token's log-probability is
returned under the temperature-scaled distribution *before* top-k/top-p/min-p truncation, which is
what the trainer recomputes (`algos.logprobs.token_logprobs(logits, ids, temperature)`).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from reasonloop.algos.logprobs import token_logprobs
from reasonloop.data.records import RolloutBatch
from reasonloop.rollout.engine import SamplingConfig


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


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None):
    """Pick one token per row; returns (tokens [N], their log-probs [N])."""
    if sampling.temperature == 0:
        tokens = logits.argmax(-1)
    else:
        scaled = filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)
        tokens = torch.multinomial(scaled.softmax(-1), 1, generator=generator).squeeze(-1)
    return tokens, token_logprobs(logits, tokens, sampling.temperature)


class TorchSampler:
    """`RolloutEngine` running the policy model in-process; `update_weights` is a no-op (shared weights)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, share_prefill: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.share_prefill = share_prefill

    def update_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
        prompt_ids = enc["input_ids"].to(device)
        prompt_mask = enc["attention_mask"].to(device)
        was_training = self.model.training
        self.model.eval()

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
        stop_strings = list(sampling.stop)
        tail_len = max((len(s) for s in stop_strings), default=0) + 8
        attn = prompt_mask
        position = prompt_mask.sum(-1, keepdim=True) - 1  # [rows, 1] position of the last prompt token
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        reasons = ["length"] * rows
        out_ids, out_lp, out_mask = [], [], []
        texts_tail = [""] * rows

        for _ in range(sampling.max_new_tokens):
            tokens, lps = sample_next(logits, sampling, generator)
            tokens = tokens.masked_fill(finished, pad)
            lps = lps.masked_fill(finished, 0.0)
            out_ids.append(tokens)
            out_lp.append(lps)
            out_mask.append((~finished).long())  # this token counts if the row was still running
            now_done = (tokens == eos) & ~finished
            if stop_strings:
                now_done |= self._hit_stop(tokens, finished, texts_tail, stop_strings, tail_len)
            for i in now_done.nonzero().flatten().tolist():
                reasons[i] = "stop"
            finished |= now_done
            if bool(finished.all()):
                break
            attn = torch.cat([attn, (~finished).long().unsqueeze(-1)], dim=-1)
            position = position + 1
            out = self.model(
                input_ids=tokens.unsqueeze(-1), attention_mask=attn, position_ids=position,
                past_key_values=cache, use_cache=True,
            )
            logits = out.logits[:, -1, :]

        completion_ids = torch.stack(out_ids, dim=1)
        logprobs = torch.stack(out_lp, dim=1)
        completion_mask = torch.stack(out_mask, dim=1)
        self.model.train(was_training)
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
            completion_mask=completion_mask, logprobs=logprobs * completion_mask, finish_reasons=reasons,
            completions=self._decode(completion_ids, completion_mask), group_size=n,
        )

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor):
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                         use_cache=True)
        return out.logits[:, -1, :], out.past_key_values

    def _hit_stop(self, tokens, finished, tails, stop_strings, tail_len) -> torch.Tensor:
        hit = torch.zeros_like(finished)
        for i, t in enumerate(tokens.tolist()):
            if finished[i]:
                continue
            tails[i] = (tails[i] + self.tokenizer.decode([t]))[-tail_len:]
            hit[i] = any(tails[i].endswith(s) for s in stop_strings)
        return hit

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        texts = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            kept = [t for t, keep in zip(row, m) if keep and t != self.tokenizer.eos_token_id]
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True))
        return texts
