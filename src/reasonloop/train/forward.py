"""Model forward passes shared by every recipe: per-token log-probs (and entropy) of completions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from reasonloop.algos.logprobs import token_logprobs


@dataclass
class TokenBatch:
    """Prompts left-padded, completions right-padded: the layout the sampler produces."""

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 for tokens that are trained on / scored

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> "TokenBatch":
        """Rows `idx`, trimmed to the longest prompt/completion among them (less padding to compute)."""
        pm, cm = self.prompt_mask[idx], self.completion_mask[idx]
        p_keep = int(pm.sum(-1).max()) if len(pm) else 0
        c_keep = max(int(_last_true(cm)), 1)
        return TokenBatch(self.prompt_ids[idx][:, pm.shape[1] - p_keep:], pm[:, pm.shape[1] - p_keep:],
                          self.completion_ids[idx][:, :c_keep], cm[:, :c_keep])

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.completion_ids,
                                                   self.completion_mask)))


def _last_true(mask: torch.Tensor) -> int:
    cols = mask.any(0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 0


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str], max_len: int | None = None
) -> TokenBatch:
    """Tokenise (rendered prompt, completion) pairs; the completion ends with EOS and is what is trained on."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in completions]
    if max_len is not None:
        c_ids = [c[: max(1, max_len - len(p))] for p, c in zip(p_ids, c_ids)]
    P = max(len(p) for p in p_ids)
    T = max(len(c) for c in c_ids)
    prompt_ids = torch.full((len(p_ids), P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(p_ids), P), dtype=torch.long)
    completion_ids = torch.full((len(c_ids), T), pad, dtype=torch.long)
    completion_mask = torch.zeros((len(c_ids), T), dtype=torch.long)
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        if p:
            prompt_ids[i, P - len(p):] = torch.tensor(p)
            prompt_mask[i, P - len(p):] = 1
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
    with_hidden: bool = False,
) -> ForwardOut:
    """One forward pass over prompt+completion; outputs are aligned with the completion tokens.

    Position P-1+t predicts completion token t, so hidden[:, t] is the state *before* token t (what a
    value head reads as V(s_t)). Values at masked positions are meaningless; callers mask them.
    """
    if batch.prompt_ids.shape[1] == 0:  # nothing to condition on: the first token has no prediction
        raise ValueError("policy_forward needs at least one prompt token (use a BOS or EOS prefix)")
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False,
                output_hidden_states=with_hidden)
    P, T = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    logits = out.logits[:, P - 1 : P + T - 1, :]  # position t predicts token t+1
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    entropy = None
    if with_entropy:
        logp = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
    hidden = out.hidden_states[-1][:, P - 1 : P + T - 1, :] if with_hidden else None
    return ForwardOut(token_logprobs(logits, batch.completion_ids), entropy, hidden)


def completion_logprobs(model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs [N, T] of the completion tokens."""
    return policy_forward(model, batch, temperature).logprobs
